//! The payment provider's webhook (ToS 4.2, 5.1-5.4): completed payments
//! of credit packs and memberships, signed like the job webhooks (Standard
//! Webhooks, see `crate::webhooks`) with `ADMEDIA_PAYMENT_SECRET`:
//! headers `payment-id`, `payment-timestamp` (Unix seconds) and
//! `payment-signature` = `v1,` + base64(HMAC-SHA256(secret,
//! `id.timestamp.body`)), several space-separated signatures allowed.
//!
//! Checked in this order: the signature over the raw body (400
//! `invalid-signature`), the timestamp within `ADMEDIA_PAYMENT_TOLERANCE_SECS`
//! of now, either way (400 `stale-timestamp`), then the body. A payment
//! id is applied once: a replay answers 200 with `replayed: true` and
//! changes nothing; the same id with another user or product is 409
//! `payment-id-reused`. Payments are final: there is no refund path.

use std::time::Duration;

use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpRequest, HttpResponse};
use admedia_actors::domain::ids::UserId;
use admedia_actors::domain::payments::{PaymentId, PaymentReview, Period, Product};
use admedia_actors::domain::tier::Tier;
use admedia_actors::domain::wallet::Credits;
use admedia_actors::OrchestratorError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::http::auth::same_secret;
use crate::http::problem::{ApiError, Problem};
use crate::http::AppState;
use crate::views::{UserView, WalletView};
use crate::webhooks::sign;

/// The largest credit pack one payment may buy.
pub const MAX_PACK: i64 = 10_000_000;

/// Verifies the provider's signatures.
#[derive(Clone)]
pub struct PaymentVerifier {
    secret: String,
    tolerance: Duration,
}

impl PaymentVerifier {
    /// Refuses a secret that cannot sign (not base64).
    pub fn new(secret: String, tolerance: Duration) -> Result<PaymentVerifier, String> {
        sign(&secret, "probe", 0, "").map_err(|e| format!("ADMEDIA_PAYMENT_SECRET: {e}"))?;
        Ok(PaymentVerifier { secret, tolerance })
    }

    /// Checks the headers against the raw body at `now` (Unix seconds).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), ApiError> {
        let header = |name: &str| -> Result<&str, ApiError> {
            headers
                .get(name)
                .ok_or_else(|| ApiError::InvalidSignature(format!("missing header {name}")))?
                .to_str()
                .map_err(|_| {
                    ApiError::InvalidSignature(format!("header {name} is not visible ASCII"))
                })
        };
        let id = header("payment-id")?;
        let raw_timestamp = header("payment-timestamp")?;
        let signatures = header("payment-signature")?;
        if id.is_empty() || id.len() > 255 {
            return Err(ApiError::InvalidSignature(
                "payment-id must be 1..=255 characters".into(),
            ));
        }
        let timestamp: i64 = raw_timestamp.trim().parse().map_err(|_| {
            ApiError::InvalidSignature("payment-timestamp must be whole Unix seconds".into())
        })?;
        let body = std::str::from_utf8(body)
            .map_err(|_| ApiError::InvalidRequest("the body is not UTF-8".into()))?;
        let expected = sign(&self.secret, id, timestamp, body)
            .map_err(|e| ApiError::Internal(format!("payment signing: {e}")))?;
        let valid = signatures
            .split(' ')
            .filter(|s| !s.is_empty())
            .any(|s| same_secret(s, &expected));
        if !valid {
            return Err(ApiError::InvalidSignature(
                "no payment-signature matches the body".into(),
            ));
        }
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(timestamp).abs() > tolerance {
            return Err(ApiError::StaleTimestamp(format!(
                "payment-timestamp {timestamp} is more than {tolerance} s from now ({now})"
            )));
        }
        Ok(())
    }
}

/// The event body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentEvent {
    /// The provider's payment id: 1..=255 visible ASCII; the event is
    /// applied once per id.
    #[schema(pattern = r"^[!-~]{1,255}$")]
    pub payment_id: String,
    #[schema(format = Uuid)]
    pub user_id: String,
    #[schema(value_type = ProductDoc)]
    pub product: Value,
}

/// What a payment bought (documentation of `product`).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(as = ProductDoc)]
pub enum ProductDoc {
    /// `{"type": "credits", "credits": N}`, N in 1..=10000000: a credit pack.
    Credits { credits: i64 },
    /// `{"type": "membership", "tier": "basic|professional|enterprise",
    /// "period": "month|year"}`.
    Membership { tier: Tier, period: Period },
}

#[derive(Serialize, ToSchema)]
pub struct PaymentApplied {
    pub payment_id: String,
    /// True when this payment id was applied before: nothing changed.
    pub replayed: bool,
    /// Credits granted by this event: the pack, or the first month's gift.
    pub granted: i64,
    pub user: UserView,
    pub wallet: WalletView,
    /// Set when the payment could not be applied as bought (a grant past
    /// the balance cap): it is recorded for an operator, nothing was
    /// granted, and the event is acknowledged (202) so the provider does
    /// not retry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<String>,
}

/// Payments kept for an operator, oldest first.
#[derive(Serialize, ToSchema)]
pub struct PaymentReviewsPage {
    pub payments: Vec<PaymentReview>,
}

fn unknown(detail: impl Into<String>) -> ApiError {
    ApiError::UnknownProduct(detail.into())
}

/// Parses `product`: an unknown type, tier or period is 422
/// `unknown-product`; a bad amount or an extra field 422 `invalid-params`.
pub fn parse_product(v: &Value) -> Result<Product, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| unknown("product must be an object with a type"))?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| unknown("product.type is missing"))?;
    let allowed: &[&str] = match kind {
        "credits" => &["type", "credits"],
        "membership" => &["type", "tier", "period"],
        other => {
            return Err(unknown(format!(
                "unknown product type {other:?}: expected credits or membership"
            )))
        }
    };
    if let Some(extra) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::InvalidParams(format!(
            "product: unknown field {extra:?}"
        )));
    }
    match kind {
        "credits" => {
            let n = obj.get("credits").and_then(Value::as_i64).ok_or_else(|| {
                ApiError::InvalidParams("product.credits must be a whole number".into())
            })?;
            if !(1..=MAX_PACK).contains(&n) {
                return Err(ApiError::InvalidParams(format!(
                    "product.credits must be 1..={MAX_PACK}"
                )));
            }
            let credits = Credits::positive(n)
                .map_err(|e| ApiError::InvalidParams(format!("product.credits: {e}")))?;
            Ok(Product::Credits { credits })
        }
        _ => {
            let tier = match obj.get("tier").and_then(Value::as_str) {
                Some("basic") => Tier::Basic,
                Some("professional") => Tier::Professional,
                Some("enterprise") => Tier::Enterprise,
                other => {
                    let tiers = "basic, professional or enterprise";
                    return Err(unknown(format!(
                        "unknown membership tier {other:?}: expected {tiers}"
                    )));
                }
            };
            let period = match obj.get("period").and_then(Value::as_str) {
                Some("month") => Period::Month,
                Some("year") => Period::Year,
                other => {
                    return Err(unknown(format!(
                        "unknown membership period {other:?}: expected month or year"
                    )))
                }
            };
            Ok(Product::Membership { tier, period })
        }
    }
}

/// A completed payment, reported by the payment provider.
#[utoipa::path(post, path = "/v1/payments/webhook", request_body = PaymentEvent,
    params(("payment-id" = String, Header), ("payment-timestamp" = i64, Header),
        ("payment-signature" = String, Header, description = "v1,<base64 HMAC-SHA256 of id.timestamp.body>")),
    responses((status = 200, body = PaymentApplied),
        (status = 202, body = PaymentApplied, description = "recorded for an operator, nothing granted (see `review`)"),
        (status = 400, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let verifier = state.payments.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "payment events are not accepted: ADMEDIA_PAYMENT_SECRET is unset".into(),
        )
    })?;
    verifier.verify(req.headers(), &body, chrono::Utc::now().timestamp())?;
    let event: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("malformed payment event: {e}")))?;
    let event: PaymentEvent = crate::http::input::parse_json(event)?;
    let payment_id =
        PaymentId::parse(&event.payment_id).map_err(|e| ApiError::InvalidParams(e.to_string()))?;
    let user_id: UserId = event.user_id.parse().map_err(|_| {
        ApiError::InvalidParams(format!("user_id {:?} is not a user id", event.user_id))
    })?;
    let product = parse_product(&event.product)?;
    let product_kind = match product {
        Product::Credits { .. } => "credits",
        Product::Membership { .. } => "membership",
    };
    let outcome = state
        .orchestrator
        .apply_payment(payment_id.clone(), user_id, product)
        .await
        .map_err(|e| match e {
            OrchestratorError::IdempotencyKeyReused => ApiError::PaymentConflict(format!(
                "payment id {payment_id} was applied to another user or product"
            )),
            OrchestratorError::NotFound(_) => {
                ApiError::InvalidParams(format!("user_id {user_id} does not exist"))
            }
            other => ApiError::from(other),
        })?;
    let mut response = match &outcome.review {
        None => HttpResponse::Ok(),
        Some(reason) => {
            if !outcome.replayed {
                state.metrics.payment_for_review(product_kind);
                tracing::error!(payment = %payment_id, user = %user_id, %reason,
                    "payment kept for an operator: nothing granted");
            }
            HttpResponse::Accepted()
        }
    };
    Ok(response.json(PaymentApplied {
        payment_id: payment_id.to_string(),
        replayed: outcome.replayed,
        granted: outcome.granted.get(),
        user: UserView::of(&outcome.user),
        wallet: WalletView::of(&outcome.wallet),
        review: outcome.review,
    }))
}

/// Paid events that could not be applied as bought (a grant past the
/// balance cap), for an operator to settle by hand.
#[utoipa::path(get, path = "/v1/admin/payments/review", security(("admin_token" = [])),
    responses((status = 200, body = PaymentReviewsPage), (status = 401, body = Problem)))]
pub async fn for_review(
    state: web::Data<AppState>,
    _: crate::http::auth::Admin,
) -> Result<HttpResponse, ApiError> {
    let payments = state.orchestrator.payments_for_review(100).await?;
    Ok(HttpResponse::Ok().json(PaymentReviewsPage { payments }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("payment-id", id.to_owned()),
            ("payment-timestamp", ts.to_string()),
            ("payment-signature", sig.to_owned()),
        ] {
            h.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(&v).expect("header"),
            );
        }
        h
    }

    fn kind(e: ApiError) -> &'static str {
        match e {
            ApiError::InvalidSignature(_) => "invalid-signature",
            ApiError::StaleTimestamp(_) => "stale-timestamp",
            _ => "other",
        }
    }

    #[test]
    fn signatures_and_timestamps_are_checked() {
        let v = PaymentVerifier::new(SECRET.into(), Duration::from_secs(300)).unwrap();
        let body = br#"{"a":1}"#;
        let now = 1_700_000_000;
        let good = sign(SECRET, "evt_1", now, r#"{"a":1}"#).unwrap();
        assert!(v.verify(&headers("evt_1", now, &good), body, now).is_ok());
        // Several signatures: one valid is enough.
        let several = format!("v1,bm9wZQ== {good}");
        assert!(v
            .verify(&headers("evt_1", now, &several), body, now)
            .is_ok());
        // Another body, id or secret: refused.
        assert_eq!(
            kind(
                v.verify(&headers("evt_1", now, &good), b"{}", now)
                    .unwrap_err()
            ),
            "invalid-signature"
        );
        assert_eq!(
            kind(
                v.verify(&headers("evt_2", now, &good), body, now)
                    .unwrap_err()
            ),
            "invalid-signature"
        );
        // Inside the window either way, not outside.
        assert!(v
            .verify(&headers("evt_1", now, &good), body, now + 300)
            .is_ok());
        assert_eq!(
            kind(
                v.verify(&headers("evt_1", now, &good), body, now + 301)
                    .unwrap_err()
            ),
            "stale-timestamp"
        );
        assert_eq!(
            kind(
                v.verify(&headers("evt_1", now, &good), body, now - 301)
                    .unwrap_err()
            ),
            "stale-timestamp"
        );
        // Missing headers.
        assert_eq!(
            kind(v.verify(&HeaderMap::new(), body, now).unwrap_err()),
            "invalid-signature"
        );
        assert!(PaymentVerifier::new("not base64!".into(), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn products_parse_strictly() {
        let ok = |v: Value| parse_product(&v).is_ok();
        assert!(ok(serde_json::json!({"type": "credits", "credits": 500})));
        assert!(ok(
            serde_json::json!({"type": "membership", "tier": "basic", "period": "year"})
        ));
        for bad in [
            serde_json::json!({"type": "gift-card"}),
            serde_json::json!({"type": "membership", "tier": "free", "period": "month"}),
            serde_json::json!({"type": "membership", "tier": "gold", "period": "month"}),
            serde_json::json!({"type": "membership", "tier": "basic", "period": "week"}),
            serde_json::json!({"credits": 5}),
            serde_json::json!("credits"),
            serde_json::json!({"type": "credits", "credits": 0}),
            serde_json::json!({"type": "credits", "credits": 1.5}),
            serde_json::json!({"type": "credits", "credits": MAX_PACK + 1}),
            serde_json::json!({"type": "credits", "credits": 5, "bonus": 1}),
        ] {
            assert!(!ok(bad.clone()), "{bad} accepted");
        }
    }
}

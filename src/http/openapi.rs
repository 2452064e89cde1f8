//! The OpenAPI 3.1 document, generated from the handlers and types, so it
//! cannot disagree with the code. The error answers every operation shares
//! (bad credentials, malformed input, an unavailable store…) are added here
//! by one rule instead of by hand on each handler, all as
//! `application/problem+json` with the `Problem` schema.

use actix_web::HttpResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Object, RefOr, Schema, Type};
use utoipa::{Modify, OpenApi};

use crate::http::operator::{accounts as operator_accounts, fleet, jobs as operator_jobs};
use crate::http::{account_webhooks, keys, models, payments, pricing};
use crate::http::{events, health, jobs, problem, users, wallet, workers};
use crate::views;

#[derive(OpenApi)]
#[openapi(
    info(title = "AdMedia orchestrator", description = "Credits, fair scheduling and GPU workers for AI generation jobs. \
Every error is `application/problem+json` with a stable `type` (see the `Problem` schema)."),
    paths(
        users::register, users::me, users::webhook_secret,
        wallet::wallet, wallet::ledger,
        jobs::submit, jobs::submit_batch, jobs::get, jobs::list, jobs::cancel, events::stream,
        operator_accounts::grant, operator_accounts::membership, operator_accounts::suspend, operator_accounts::reinstate,
        operator_accounts::user_moderation, operator_accounts::suspensions, operator_accounts::terminate, fleet::stats,
        operator_jobs::jobs, operator_jobs::job, operator_jobs::cancel, operator_accounts::users, operator_accounts::user,
        fleet::workers, fleet::drain, fleet::lift_quarantine, models::list,
        health::healthz, health::readyz, health::metrics, openapi,
        keys::issue, keys::list, keys::revoke, users::close,
        payments::webhook, payments::for_review, pricing::get, pricing::announce,
        workers::connect,
        events::user_stream,
        account_webhooks::create, account_webhooks::list, account_webhooks::get,
        account_webhooks::update, account_webhooks::delete, account_webhooks::deliveries,
    ),
    components(schemas(
        problem::Problem, events::JobEventFrame,
        views::UserView, views::WalletView, views::LedgerEntryView, views::JobView,
        users::RegisterRequest, users::Registered, users::Me, users::WebhookSecret,
        wallet::LedgerPage, jobs::JobsPage, jobs::BatchRequest, jobs::BatchItem, jobs::BatchResponse, jobs::BatchResult,
        operator_jobs::AdminJobView, operator_jobs::AdminJobsPage, operator_jobs::AttemptView, operator_jobs::JobDetailView,
        operator_accounts::UsersPage, operator_accounts::UserDetailView, fleet::WorkerInfo, fleet::WorkersPage,
        models::ModelView, models::ModelsPage,
        operator_accounts::GrantRequest, operator_accounts::AdminGrantSource, operator_accounts::MembershipRequest,
        fleet::StatsView, fleet::WorkerStats, fleet::LastHour, fleet::NodeView,
        health::Health,
        keys::ApiKeyView, keys::IssuedKeyView, keys::ApiKeysPage, users::CloseRequest, users::Closed,
        payments::PaymentEvent, payments::ProductDoc, payments::PaymentApplied, payments::PaymentReviewsPage, admedia_actors::domain::payments::PaymentReview,
        pricing::Prices, pricing::PriceVersionView, pricing::Pricing, pricing::AnnounceRequest,
        users::MembershipView, users::GiftView,
        keys::IssueKeyRequest, keys::ScopeName, events::UserEventFrame,
        account_webhooks::EventTypeName, account_webhooks::WebhookEndpointView,
        account_webhooks::WebhookEndpointsPage, account_webhooks::CreateEndpointRequest,
        account_webhooks::UpdateEndpointRequest, account_webhooks::DeliveryAttemptView,
        account_webhooks::DeliveriesPage,
    )),
    modifiers(&Security, &Problems),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer =
            || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        components.add_security_scheme("api_key", bearer());
        components.add_security_scheme("admin_token", bearer());
        components.add_security_scheme("worker_token", bearer());
    }
}

// The document itself, at `/openapi.json` (no doc comment: utoipa would
// make it the operation's summary, which it never had).
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, content_type = "application/json")))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// The shared error answers and the operation tags.
struct Problems;

/// Paths that answer without reading the store.
const STORELESS: [&str; 3] = ["/healthz", "/metrics", "/openapi.json"];

/// What each status means across the API; the `type`s a client may see.
fn problem_description(status: &str) -> &'static str {
    match status {
        "400" => "Malformed request: bad JSON, unknown field, wrong type (`invalid-request`); a bad payment signature (`invalid-signature`, `stale-timestamp`)",
        "401" => "Missing or invalid credentials (`unauthorized`), or an expired API key (`key-expired`)",
        "402" => "Not enough available credits (`insufficient-credits`, with `required` and `available`)",
        "403" => "The account may not act, or be acted on (`account-suspended`, `forbidden`); the API key's scopes do not allow it (`insufficient-scope`, with `required_scope`)",
        "404" => "No such resource, or not the caller's (`not-found`)",
        "410" => "No longer stored: an expired or deleted file (`gone`); a finished job whose record retention pruned (`job-pruned`, with `pruned_at`)",
        "409" => "Conflicts with the current state (`job-finished`, `email-taken`, `last-api-key`, `payment-id-reused`)",
        "413" => "Request body over 64 KiB, or 100 × 64 KiB for a batch (`payload-too-large`)",
        "422" => "Well-formed but refused: `invalid-params`, `invalid-text` (a NUL character anywhere), `idempotency-key-reused`, `batch-too-large`, `content-rejected`, `price-notice-too-short`, `unknown-product`",
        "429" => "Too many requests (`rate-limited`: submissions, registrations or failed authentications from one address; `queue-limit`); see `Retry-After`",
        "500" => "Internal error (`internal`)",
        "503" => "The store or scheduler is unavailable (`unavailable`); see `Retry-After`",
        _ => "Error",
    }
}

fn problem_response(status: &str) -> Response {
    let mut response = ResponseBuilder::new()
        .description(problem_description(status))
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "Problem",
                ))))
                .build(),
        );
    if matches!(status, "429" | "503") {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Object::with_type(Type::Integer))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    response.build()
}

fn secured_by(op: &Operation, scheme: &str) -> bool {
    op.security.as_ref().is_some_and(|reqs| {
        reqs.iter().any(|r| {
            serde_json::to_value(r)
                .ok()
                .and_then(|v| v.as_object().map(|o| o.contains_key(scheme)))
                .unwrap_or(false)
        })
    })
}

fn has_params_in(op: &Operation, place: ParameterIn) -> bool {
    op.parameters
        .as_ref()
        .is_some_and(|ps| ps.iter().any(|p| p.parameter_in == place))
}

/// A header is present or absent, never `null`; the derive makes an
/// optional header's schema nullable.
fn headers_are_never_null(op: &mut Operation) {
    for p in op.parameters.iter_mut().flatten() {
        if p.parameter_in != ParameterIn::Header {
            continue;
        }
        if let Some(RefOr::T(Schema::Object(schema))) = p.schema.as_mut() {
            if let utoipa::openapi::schema::SchemaType::Array(types) = &schema.schema_type {
                let kept: Vec<Type> = types
                    .iter()
                    .filter(|t| **t != Type::Null)
                    .cloned()
                    .collect();
                if let [only] = &kept[..] {
                    schema.schema_type = utoipa::openapi::schema::SchemaType::Type(only.clone());
                }
            }
        }
    }
}

fn has_job_cursor(op: &Operation) -> bool {
    op.parameters.as_ref().is_some_and(|ps| {
        ps.iter().any(|p| {
            p.name == "before"
                && p.parameter_in == ParameterIn::Query
                && op.operation_id.as_deref() != Some("ledger")
        })
    })
}

fn tag_of(path: &str) -> &'static str {
    if path.starts_with("/v1/admin") {
        "admin"
    } else if path.starts_with("/v1/payments") {
        "payments"
    } else if path.starts_with("/v1/workers") {
        "workers"
    } else if path.starts_with("/v1/pricing") {
        "public"
    } else if path.starts_with("/v1/users") {
        "registration"
    } else if path.starts_with("/v1/") {
        "user"
    } else {
        "ops"
    }
}

/// Constraints the derive cannot state.
fn constrain(openapi: &mut utoipa::openapi::OpenApi) {
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    // Closing cannot be undone: `confirm` must be `true`.
    if let Some(RefOr::T(Schema::Object(close))) = components.schemas.get_mut("CloseRequest") {
        if let Some(RefOr::T(Schema::Object(confirm))) = close.properties.get_mut("confirm") {
            confirm.enum_values = Some(vec![serde_json::Value::Bool(true)]);
        }
    }
}

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        constrain(openapi);
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                op.tags = Some(vec![tag_of(path).to_owned()]);
                headers_are_never_null(op);
                let mut statuses: Vec<&str> = vec!["500"];
                if !STORELESS.contains(&path.as_str()) {
                    statuses.push("503");
                }
                if secured_by(op, "api_key") {
                    statuses.extend(["401", "403"]);
                }
                if secured_by(op, "admin_token") || secured_by(op, "worker_token") {
                    // Failed tokens are counted per client address.
                    statuses.extend(["401", "429"]);
                }
                if op.request_body.is_some() {
                    statuses.extend(["400", "413", "422"]);
                }
                if has_params_in(op, ParameterIn::Query) {
                    statuses.extend(["400", "422"]);
                }
                if has_params_in(op, ParameterIn::Header) {
                    statuses.push("422");
                }
                // Acting on a terminated account is refused.
                if path.starts_with("/v1/admin/users/{id}/") {
                    statuses.push("403");
                }
                // A path id, or a `before` cursor naming no job, is not found.
                if has_params_in(op, ParameterIn::Path) || has_job_cursor(op) {
                    statuses.push("404");
                }
                for status in statuses {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::T(problem_response(status)));
                }
                // Every error answer, declared here or on the handler, is a
                // problem document.
                for (status, response) in op.responses.responses.iter_mut() {
                    if status.starts_with('4') || status.starts_with('5') {
                        *response = RefOr::T(problem_response(status));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::to_value(ApiDoc::openapi()).expect("document serializes")
    }

    /// An attempt's outcome is the domain's enum in the document, every
    /// label listed, so a client cannot miss one (as `withheld` once was
    /// missing from a hand-written description).
    #[test]
    fn an_attempt_outcome_lists_every_label() {
        let doc = doc();
        let schema = &doc["components"]["schemas"]["AttemptOutcomeLabel"];
        let labels: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("an enum schema: {schema}"))
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let all: Vec<&str> = admedia_actors::domain::job::AttemptOutcomeLabel::ALL
            .iter()
            .map(|l| l.as_str())
            .collect();
        assert_eq!(labels, all);
    }

    #[test]
    fn query_parameters_are_in_the_query() {
        let doc = doc();
        let params = doc["paths"]["/v1/admin/jobs"]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .clone();
        assert!(!params.is_empty());
        for p in params {
            assert_eq!(p["in"], "query", "{p}");
            assert_ne!(p["required"], true, "{p}");
        }
        let limit = doc["paths"]["/v1/jobs"]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "limit").cloned())
            .expect("limit");
        assert_eq!(limit["in"], "query");
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], 200);
    }

    #[test]
    fn every_error_is_a_problem_document() {
        let doc = doc();
        let mut errors = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                for (status, response) in op["responses"].as_object().expect("responses") {
                    if status.starts_with('4') || status.starts_with('5') {
                        errors += 1;
                        let content = response["content"].as_object().expect("content");
                        assert_eq!(
                            content.keys().collect::<Vec<_>>(),
                            ["application/problem+json"],
                            "{method} {path} {status}"
                        );
                    }
                }
                if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                    assert!(op["responses"]["401"].is_object(), "{method} {path}");
                }
            }
        }
        assert!(errors > 50, "{errors}");
        assert!(
            doc["paths"]["/v1/jobs/{id}/events"]["get"]["responses"]["200"]["content"]
                ["text/event-stream"]
                .is_object()
        );
        assert!(doc["paths"]["/v1/workers/connect"]["get"]["responses"]["101"].is_object());
    }
}

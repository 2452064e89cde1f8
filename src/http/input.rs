//! The API's body and query extractors. They refuse text the store cannot
//! keep (see `admedia_actors::domain::text`) anywhere in the input, with one
//! answer (`422 invalid-text`) whichever handler and field it reaches, before
//! any handler rule runs; then they deserialize as `web::Json` and
//! `web::Query` would.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use admedia_actors::domain::text;
use serde::de::DeserializeOwned;

use crate::http::problem::ApiError;

/// A JSON body (limit, content type and malformed-JSON answers as
/// configured for `web::Json`).
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = web::Json::<serde_json::Value>::from_request(req, payload);
        Box::pin(async move {
            let web::Json(value) = body.await?;
            Ok(Json(parse_json(value)?))
        })
    }
}

/// A JSON document already read: storable text first, then its shape.
pub fn parse_json<T: DeserializeOwned>(mut value: serde_json::Value) -> Result<T, ApiError> {
    text::check_json(&value).map_err(|e| ApiError::InvalidText(e.to_string()))?;
    whole_numbers(&mut value);
    serde_json::from_value(value)
        .map_err(|e| ApiError::InvalidRequest(format!("malformed JSON body: {e}")))
}

/// JSON has one number type: `2.0` is the integer 2 (JSON Schema counts it
/// as one), so a whole number written with a fraction is read as that
/// integer. Only values a double holds exactly (below 2^53) are converted.
fn whole_numbers(value: &mut serde_json::Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < EXACT {
                    // Exact: the magnitude is below 2^53.
                    *value = serde_json::Value::from(f as i64);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// A query string.
pub struct Query<T>(pub T);

impl<T> std::ops::Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(parse_query(req.query_string()).map(Query))
    }
}

/// A query string: storable text in every name and value, then its shape.
pub fn parse_query<T: DeserializeOwned>(raw: &str) -> Result<T, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::InvalidRequest(format!("malformed query string: {e}")))?;
    for (name, value) in &pairs {
        let field = if text::is_storable(name) {
            name.as_str()
        } else {
            "a parameter name"
        };
        text::check(field, name)
            .and_then(|()| text::check(field, value))
            .map_err(|e| ApiError::InvalidText(e.to_string()))?;
    }
    serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::InvalidRequest(format!("malformed query string: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Q {
        email: String,
        limit: Option<usize>,
    }

    fn kind(e: ApiError) -> &'static str {
        match e {
            ApiError::InvalidText(_) => "invalid-text",
            ApiError::InvalidRequest(_) => "invalid-request",
            _ => "other",
        }
    }

    #[test]
    fn queries_with_nul_are_invalid_text_and_others_parse() {
        let q: Q = parse_query("email=ann%40x&limit=3").unwrap();
        assert_eq!((q.email.as_str(), q.limit), ("ann@x", Some(3)));
        assert_eq!(
            kind(parse_query::<Q>("email=a%00b").unwrap_err()),
            "invalid-text"
        );
        assert_eq!(
            kind(parse_query::<Q>("em%00ail=ab").unwrap_err()),
            "invalid-text"
        );
        // Literal "%00" text, percent-encoded, is fine.
        let q: Q = parse_query("email=%2500").unwrap();
        assert_eq!(q.email, "%00");
        assert_eq!(
            kind(parse_query::<Q>("email=a&limit=x").unwrap_err()),
            "invalid-request"
        );
    }

    #[test]
    fn bodies_with_nul_are_invalid_text_before_their_shape() {
        let bad = serde_json::json!({"email": "a\u{0}", "unknown": 1});
        assert_eq!(kind(parse_json::<Q>(bad).unwrap_err()), "invalid-text");
        #[derive(serde::Deserialize, Debug)]
        struct N {
            n: u32,
            m: Vec<i64>,
        }
        let n: N = parse_json(serde_json::json!({"n": 2.0, "m": [-3.0, 4]})).unwrap();
        assert_eq!((n.n, n.m), (2, vec![-3, 4]));
        assert_eq!(
            kind(parse_json::<N>(serde_json::json!({"n": 2.5, "m": []})).unwrap_err()),
            "invalid-request"
        );
        let unknown = serde_json::json!({"email": "a", "unknown": 1});
        assert_eq!(
            kind(parse_json::<Q>(unknown).unwrap_err()),
            "invalid-request"
        );
    }
}

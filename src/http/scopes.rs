//! Which API-key scope each user endpoint needs: one table, read by the
//! [`AuthUser`](crate::http::auth::AuthUser) extractor from the route the
//! request matched, so no handler decides it on its own.
//!
//! A key without scopes passes everything (keys made before scopes
//! existed, the registration key, keys issued without naming scopes). A
//! scoped key passes what its scopes name, and `GET /v1/me`; keys, account
//! webhooks, the webhook secret and closing the account need a key without
//! scopes, so a scoped key can never widen its own access. A route missing
//! from the table is treated as needing full access (and a test checks
//! that every user endpoint of the OpenAPI document is in it).

use actix_web::HttpRequest;
use admedia_actors::domain::api_keys::{Access, Scope};

use Access::{AnyKey, FullAccess, Scope as S};

/// (method, route pattern as registered, what it needs).
pub const TABLE: &[(&str, &str, Access)] = &[
    ("GET", "/v1/me", AnyKey),
    ("GET", "/v1/me/webhook-secret", FullAccess),
    ("POST", "/v1/me/api-keys", FullAccess),
    ("GET", "/v1/me/api-keys", FullAccess),
    ("DELETE", "/v1/me/api-keys/{id}", FullAccess),
    ("POST", "/v1/me/close", FullAccess),
    ("POST", "/v1/me/webhooks", FullAccess),
    ("GET", "/v1/me/webhooks", FullAccess),
    ("GET", "/v1/me/webhooks/{id}", FullAccess),
    ("PATCH", "/v1/me/webhooks/{id}", FullAccess),
    ("DELETE", "/v1/me/webhooks/{id}", FullAccess),
    ("GET", "/v1/me/webhooks/{id}/deliveries", FullAccess),
    ("GET", "/v1/wallet", S(Scope::WalletRead)),
    ("GET", "/v1/wallet/ledger", S(Scope::WalletRead)),
    ("POST", "/v1/jobs", S(Scope::JobsWrite)),
    ("POST", "/v1/jobs/batch", S(Scope::JobsWrite)),
    ("POST", "/v1/jobs/{id}/cancel", S(Scope::JobsWrite)),
    ("DELETE", "/v1/jobs/{id}/outputs/{n}", S(Scope::JobsWrite)),
    ("GET", "/v1/jobs", S(Scope::JobsRead)),
    ("GET", "/v1/jobs/{id}", S(Scope::JobsRead)),
    ("GET", "/v1/jobs/{id}/events", S(Scope::JobsRead)),
    ("GET", "/v1/jobs/{id}/outputs/{n}", S(Scope::JobsRead)),
    ("GET", "/v1/events", S(Scope::JobsRead)),
    ("POST", "/v1/materials", S(Scope::MaterialsWrite)),
    ("GET", "/v1/materials", S(Scope::MaterialsWrite)),
    ("GET", "/v1/materials/{id}", S(Scope::MaterialsWrite)),
    (
        "GET",
        "/v1/materials/{id}/content",
        S(Scope::MaterialsWrite),
    ),
    ("DELETE", "/v1/materials/{id}", S(Scope::MaterialsWrite)),
];

/// What `method` on the route `pattern` needs; full access when the
/// table does not name it.
pub fn lookup(method: &str, pattern: &str) -> Access {
    TABLE
        .iter()
        .find(|(m, p, _)| *m == method && *p == pattern)
        .map_or(FullAccess, |(_, _, access)| *access)
}

/// What the request's matched route needs.
pub fn required(req: &HttpRequest) -> Access {
    match req.match_pattern() {
        Some(pattern) => lookup(req.method().as_str(), &pattern),
        None => FullAccess,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_is_named_once() {
        let mut seen = std::collections::BTreeSet::new();
        for (m, p, _) in TABLE {
            assert!(seen.insert((m, p)), "{m} {p} twice");
        }
    }

    /// Every operation the OpenAPI document secures with a user's key is
    /// in the table.
    #[test]
    fn the_table_covers_every_user_endpoint() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(crate::http::openapi::ApiDoc::openapi()).unwrap_or_default();
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let user = op["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r.get("api_key").is_some()));
                if user {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let table: std::collections::BTreeSet<(String, String)> = TABLE
            .iter()
            .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        let missing: Vec<_> = documented.difference(&table).collect();
        assert!(missing.is_empty(), "not in the scope table: {missing:?}");
        assert!(documented.len() > 15, "{documented:?}");
    }
}

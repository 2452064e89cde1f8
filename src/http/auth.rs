//! Who is calling: a user by API key, an admin by the admin token. Both are
//! extractors, so a handler that names one cannot run unauthenticated.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use admedia_actors::domain::account::User;
use sha2::{Digest, Sha256};

use crate::http::problem::ApiError;
use crate::http::AppState;

fn bearer(req: &HttpRequest) -> Result<String, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("expected 'Authorization: Bearer <key>'".into()))?;
    Ok(token.to_owned())
}

fn state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))
}

/// Compares secrets by their digests, so the comparison's timing says
/// nothing about how much of a guess was right.
pub fn same_secret(presented: &str, expected: &str) -> bool {
    Sha256::digest(presented.as_bytes()) == Sha256::digest(expected.as_bytes())
}

/// An active user, authenticated by an API key that is not expired and
/// whose scopes allow the endpoint called (see [`crate::http::scopes`]).
pub struct AuthUser(pub User);

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req);
        let state = state(req);
        let access = crate::http::scopes::required(req);
        Box::pin(async move {
            let (token, state) = (token?, state?);
            let (user, key) = state.orchestrator.authenticate_key(&token).await?;
            if !key.allows(access) {
                return Err(ApiError::InsufficientScope {
                    detail: format!(
                        "this API key's scopes do not allow this request: it needs {}",
                        match access {
                            admedia_actors::domain::api_keys::Access::FullAccess =>
                                "a key without scopes (full access)".to_owned(),
                            other => format!("the scope {}", other.required()),
                        }
                    ),
                    required: access.required(),
                });
            }
            Ok(AuthUser(user))
        })
    }
}

/// The operator, authenticated by `ADMEDIA_ADMIN_TOKEN`. Wrong tokens
/// count against the client address (`crate::http::client_limits`).
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req);
        let state = state(req);
        let client = crate::http::client_limits::client_key(req);
        Box::pin(async move {
            let (token, state) = (token?, state?);
            state.client_limits.check_auth(&client).await?;
            if same_secret(&token, &state.admin_token) {
                Ok(Admin)
            } else {
                state.client_limits.auth_failed(&client).await;
                Err(ApiError::Unauthorized("invalid admin token".into()))
            }
        })
    }
}

//! Signing in with the admin token, and out.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;

use crate::console::error::ConsoleError;
use crate::console::session::{self, Form, Operator};
use crate::console::view;
use crate::http::auth::same_secret;
use crate::http::AppState;

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    signed_out: Option<String>,
}

fn form(next: Option<&str>, notice: Option<Markup>) -> Markup {
    view::bare(
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(n) = notice { (n) }
            form.card.login method="post" action="/console/login" {
                label for="token" { "Admin token" }
                input #token type="password" name="token" required autofocus
                    autocomplete="current-password" spellcheck="false";
                @if let Some(next) = next {
                    input type="hidden" name="next" value=(next);
                }
                button.primary type="submit" { "Sign in" }
                p.hint {
                    "The token is " code { "ADMEDIA_ADMIN_TOKEN" }
                    ", or the one the server printed at start-up when that is unset. "
                    "A session lasts " (session::LIFETIME.as_secs() / 3600) " hours."
                }
            }
        },
    )
}

pub async fn show(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<LoginQuery>,
) -> HttpResponse {
    if session::current(&req, &state.admin_token).is_some() {
        return view::see_other("/console");
    }
    let next = query.next.as_deref().and_then(session::safe_next);
    let notice = query
        .signed_out
        .is_some()
        .then(|| view::flash_ok("Signed out."));
    view::ok(form(next, notice))
}

pub async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let form_data = Form::parse(&body);
    let next = form_data.get("next").and_then(session::safe_next);
    let token = form_data.get("token").unwrap_or_default();
    // Guessing is limited per client address, not slowed per request: a
    // right token is never held up, a guesser is stopped after a few tries.
    let client = crate::http::client_limits::client_key(&req);
    if let Err(crate::http::problem::ApiError::RateLimited { retry_after, .. }) =
        state.client_limits.check_auth(&client).await
    {
        let mut res = view::html(
            StatusCode::TOO_MANY_REQUESTS,
            form(
                next,
                Some(view::flash_error(&format!(
                    "Too many wrong tokens from this address. Try again in {retry_after} s."
                ))),
            ),
        );
        if let Ok(value) = header::HeaderValue::from_str(&retry_after.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return res;
    }
    if token.is_empty() || !same_secret(token, &state.admin_token) {
        state.client_limits.auth_failed(&client).await;
        return view::html(
            StatusCode::UNAUTHORIZED,
            form(
                next,
                Some(view::flash_error(
                    "That is not the admin token. Check ADMEDIA_ADMIN_TOKEN and try again.",
                )),
            ),
        );
    }
    let id = session::open(&state.admin_token);
    HttpResponse::SeeOther()
        .insert_header((header::SET_COOKIE, session::set_cookie(&req, &id)))
        .insert_header((header::LOCATION, next.unwrap_or("/console").to_owned()))
        .finish()
}

pub async fn sign_out(
    req: HttpRequest,
    op: Operator,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    op.check_csrf(&Form::parse(&body))?;
    op.sign_out();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::SET_COOKIE, session::clear_cookie(&req)))
        .insert_header((header::LOCATION, "/console/login?signed_out=1"))
        .finish())
}

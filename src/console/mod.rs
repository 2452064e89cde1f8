//! The operator console under `/console`: server-rendered HTML (maud) with
//! one small vendored script and one stylesheet served from the binary. No
//! CDN, no build step.
//!
//! Signing in with the admin token opens a session (the `session` module);
//! every page needs one, and every state-changing form carries the
//! session's CSRF token. Actions call the same orchestrator methods as the
//! operator API (`/v1/admin/...`), with the same rules.

mod error;
mod files;
mod frame;
mod jobs;
mod login;
mod overview;
mod session;
mod users;
mod view;
mod workers;

use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpResponse};
use maud::html;

pub use error::ConsoleError;

/// Scripts and styles only from the console itself; no framing; forms post
/// only back to it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        // Pages link assets with a content hash, so a cached copy is never stale.
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .body(body)
}

async fn css() -> HttpResponse {
    asset("text/css; charset=utf-8", frame::CSS)
}

async fn js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", frame::JS)
}

async fn not_found(_: session::Operator) -> HttpResponse {
    view::html(
        actix_web::http::StatusCode::NOT_FOUND,
        view::bare(
            "Not found",
            html! {
                h1 { "Not found" }
                p { "The console has no such page." }
                p { a href="/console" { "Back to the overview" } }
            },
        ),
    )
}

/// Every console route; `crate::startup` mounts them beside the API's.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .wrap(
                DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CSP))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::REFERRER_POLICY, "same-origin"))
                    .add((header::CACHE_CONTROL, "no-store")),
            )
            .route("", web::get().to(overview::page))
            .route("/", web::get().to(overview::page))
            .route("/overview/live", web::get().to(overview::fragment))
            .route("/login", web::get().to(login::show))
            .route("/login", web::post().to(login::submit))
            .route("/logout", web::post().to(login::sign_out))
            .route("/static/console.css", web::get().to(css))
            .route("/static/console.js", web::get().to(js))
            .route("/jobs", web::get().to(jobs::list))
            .route("/jobs/{id}", web::get().to(jobs::detail))
            .route("/jobs/{id}/cancel", web::post().to(jobs::cancel))
            .route("/jobs/{id}/outputs/{n}", web::get().to(files::output))
            .route("/workers", web::get().to(workers::list))
            .route("/workers/{id}/drain", web::post().to(workers::drain))
            .route(
                "/workers/{id}/lift-quarantine",
                web::post().to(workers::lift_quarantine),
            )
            .route("/users", web::get().to(users::search))
            .route("/users/{id}", web::get().to(users::detail))
            .route("/users/{id}/credits", web::post().to(users::grant))
            .route("/users/{id}/suspend", web::post().to(users::suspend))
            .route("/users/{id}/reinstate", web::post().to(users::reinstate))
            .default_service(web::to(not_found)),
    );
}

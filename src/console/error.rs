//! What a console request can fail with, answered as HTML (the API's
//! problem+json is for programs).

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use admedia_actors::OrchestratorError;
use maud::html;

use crate::console::frame;
use crate::http::problem::ApiError;

#[derive(Debug)]
pub enum ConsoleError {
    /// No valid session: to the sign-in form, then back to `next`.
    NeedLogin { next: Option<String> },
    /// A state-changing form without this session's CSRF token.
    Csrf,
    /// What the orchestrator or a parameter check refused.
    Api(ApiError),
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleError::NeedLogin { .. } => f.write_str("sign in first"),
            ConsoleError::Csrf => f.write_str("missing or wrong CSRF token"),
            ConsoleError::Api(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        ConsoleError::Api(e)
    }
}

impl From<crate::ledger_archive::ArchiveError> for ConsoleError {
    fn from(e: crate::ledger_archive::ArchiveError) -> Self {
        ConsoleError::Api(e.into())
    }
}

impl From<OrchestratorError> for ConsoleError {
    fn from(e: OrchestratorError) -> Self {
        ConsoleError::Api(e.into())
    }
}

impl ConsoleError {
    /// The sentence an operator reads; internal details stay in the log.
    pub fn message(&self) -> String {
        match self {
            ConsoleError::Api(ApiError::Internal(detail)) => {
                tracing::error!(%detail, "console: internal error");
                "Something went wrong on the server; the log has the details.".into()
            }
            other => {
                let mut s = other.to_string();
                if let Some(first) = s.get(..1) {
                    let upper = first.to_uppercase();
                    s.replace_range(..1, &upper);
                }
                s
            }
        }
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::NeedLogin { .. } => StatusCode::SEE_OTHER,
            ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::Api(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ConsoleError::NeedLogin { next } => {
                let location = match next {
                    Some(next) => format!(
                        "/console/login?{}",
                        serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default()
                    ),
                    None => "/console/login".to_owned(),
                };
                HttpResponse::SeeOther()
                    .insert_header((header::LOCATION, location))
                    .finish()
            }
            ConsoleError::Csrf => frame::html(
                StatusCode::FORBIDDEN,
                frame::bare(
                    "Refused",
                    html! {
                        h1 { "Refused: this form was not from your console session" }
                        p { "State-changing actions need the form's hidden CSRF token, and this request had none or a stale one. "
                            "Go back, reload the page and try again." }
                        p { a href="/console" { "Back to the console" } }
                    },
                ),
            ),
            ConsoleError::Api(e) => {
                let status = e.status_code();
                frame::html(
                    status,
                    frame::bare(
                        status.canonical_reason().unwrap_or("Error"),
                        html! {
                            h1 { (status.as_u16()) " · " (status.canonical_reason().unwrap_or("Error")) }
                            p.flash.flash-error { (self.message()) }
                            p { a href="/console" { "Back to the overview" } }
                        },
                    ),
                )
            }
        }
    }
}

//! The frame of every console page that needs no session: the document
//! head with the versioned assets, the bare page of sign-in and errors, and
//! HTML responses. Kept apart from the signed-in layout (`view`) so that
//! rendering an error never depends on the session that may be missing.

use std::sync::LazyLock;

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use maud::{html, Markup, DOCTYPE};
use sha2::{Digest, Sha256};

pub const CSS: &str = include_str!("static/console.css");
pub const JS: &str = include_str!("static/console.js");

/// Changes whenever the CSS or JS does, so browsers may cache them.
pub static ASSET_VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    h.update(CSS.as_bytes());
    h.update(JS.as_bytes());
    hex::encode(&h.finalize()[..6])
});

pub(super) fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="same-origin";
            title { (title) " · AdMedia console" }
            link rel="stylesheet" href={ "/console/static/console.css?v=" (*ASSET_VERSION) };
            script src={ "/console/static/console.js?v=" (*ASSET_VERSION) } defer {}
        }
    }
}

/// A page outside a session: sign-in and errors.
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                header.top {
                    a.brand href="/console" { "AdMedia" span { "console" } }
                }
                main.narrow { (body) }
            }
        }
    }
}

pub fn html(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .body(markup.into_string())
}

pub fn ok(markup: Markup) -> HttpResponse {
    html(StatusCode::OK, markup)
}

/// 303 to a console page (after a POST).
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .finish()
}

//! A webhook receiver for the tests: a local server that records every
//! delivery with its signature headers, and the receiver's own check of a
//! signature, written from the Standard Webhooks specification.

use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Clone, Debug)]
pub struct Delivery {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
}

/// How the receiver answers.
#[derive(Clone, Copy)]
pub enum Answer {
    /// 204 to everything.
    Accept,
    /// 500 to the first delivery of every message id, then 204, so the
    /// sender's retry is seen.
    FailFirst,
}

/// Starts a receiver on a free loopback port; returns its base URL
/// (`http://127.0.0.1:port`, any path is accepted) and what it saw.
pub async fn receiver(answer: Answer) -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let state = seen.clone();
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let state = state.clone();
            async move {
                let header = |n: &str| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let d = Delivery {
                    path: req.path().to_owned(),
                    id: header("webhook-id"),
                    timestamp: header("webhook-timestamp"),
                    signature: header("webhook-signature"),
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let mut seen = state.lock().expect("lock");
                let first = !seen.iter().any(|s| s.id == d.id);
                seen.push(d);
                match answer {
                    Answer::FailFirst if first => HttpResponse::InternalServerError().finish(),
                    _ => HttpResponse::NoContent().finish(),
                }
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind receiver");
    let port = server.addrs()[0].port();
    actix_rt::spawn(server.run());
    (format!("http://127.0.0.1:{port}"), seen)
}

/// The receiver's own check of a delivery's signature.
pub fn verify(secret: &str, d: &Delivery) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return false;
    };
    mac.update(format!("{}.{}.{}", d.id, d.timestamp, d.body).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    d.signature
        .split(' ')
        .any(|s| s == format!("v1,{expected}"))
}

//! Console sessions: signing in with the admin token yields a random
//! 256-bit session id in an HttpOnly, SameSite=Strict cookie scoped to
//! `/console`, and a random CSRF token that every state-changing form
//! carries. Sessions live in memory (a restart signs everyone out) and end
//! after [`LIFETIME`] or at sign-out.
//!
//! The map is process-wide because actix-web builds one `App` per worker
//! thread; each session remembers a digest of the admin token it was
//! opened with, so changing the token (or another server in the same
//! process, as in tests) never honours it.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::http::{header, Method};
use actix_web::{web, FromRequest, HttpRequest};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::console::error::ConsoleError;
use crate::http::auth::same_secret;
use crate::http::AppState;

pub const COOKIE: &str = "admedia_console";
/// How long a session lasts from sign-in.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Open sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 1024;

struct Entry {
    csrf: String,
    expires: Instant,
    token: [u8; 32],
}

/// Keyed by the SHA-256 of the session id, so the map never holds the
/// cookie's value itself.
static SESSIONS: LazyLock<Mutex<HashMap<[u8; 32], Entry>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// `bytes` random bytes, hex-encoded.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A signed-in operator: the extractor every console page and action takes.
/// Without a valid session the request is answered with a redirect to the
/// sign-in form.
pub struct Operator {
    key: [u8; 32],
    pub csrf: String,
}

impl Operator {
    /// Refuses a form without this session's CSRF token.
    pub fn check_csrf(&self, form: &Form) -> Result<(), ConsoleError> {
        match form.get("csrf") {
            Some(presented) if same_secret(presented, &self.csrf) => Ok(()),
            _ => Err(ConsoleError::Csrf),
        }
    }

    pub fn sign_out(&self) {
        SESSIONS.lock().remove(&self.key);
    }
}

/// Opens a session; returns the cookie value (the session id).
pub fn open(admin_token: &str) -> String {
    let id = random_hex(32);
    let now = Instant::now();
    let mut sessions = SESSIONS.lock();
    sessions.retain(|_, e| e.expires > now);
    if sessions.len() >= MAX_SESSIONS {
        if let Some(oldest) = sessions
            .iter()
            .min_by_key(|(_, e)| e.expires)
            .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
    }
    sessions.insert(
        digest(&id),
        Entry {
            csrf: random_hex(32),
            expires: now + LIFETIME,
            token: digest(admin_token),
        },
    );
    id
}

/// The operator of the request's session cookie, if it is valid.
pub fn current(req: &HttpRequest, admin_token: &str) -> Option<Operator> {
    let id = cookie(req)?;
    let key = digest(id);
    let mut sessions = SESSIONS.lock();
    let entry = sessions.get(&key)?;
    if entry.expires <= Instant::now() {
        sessions.remove(&key);
        return None;
    }
    if entry.token != digest(admin_token) {
        return None;
    }
    Some(Operator {
        key,
        csrf: entry.csrf.clone(),
    })
}

/// The session cookie's value, from any `Cookie` header.
fn cookie(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

fn secure(req: &HttpRequest) -> &'static str {
    if req.connection_info().scheme() == "https" {
        "; Secure"
    } else {
        ""
    }
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(req: &HttpRequest, id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict{}",
        LIFETIME.as_secs(),
        secure(req)
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(req: &HttpRequest) -> String {
    format!(
        "{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict{}",
        secure(req)
    )
}

fn app_state(req: &HttpRequest) -> Option<web::Data<AppState>> {
    req.app_data::<web::Data<AppState>>().cloned()
}

/// Where to return after signing in: the page asked for, when it was a
/// console page fetched with GET.
fn return_to(req: &HttpRequest) -> Option<String> {
    if req.method() != Method::GET {
        return None;
    }
    let path = req.uri().path_and_query()?.as_str();
    safe_next(path).map(str::to_owned)
}

/// A console-local path to return to after sign-in; anything else (another
/// host, a protocol-relative URL, the sign-in page itself) is dropped.
pub fn safe_next(next: &str) -> Option<&str> {
    let local =
        next == "/console" || next.starts_with("/console/") || next.starts_with("/console?");
    let odd = next.contains('\\') || next.contains("//") || next.chars().any(|c| c.is_control());
    let login = next.starts_with("/console/login");
    (local && !odd && !login && next.len() <= 1024).then_some(next)
}

impl FromRequest for Operator {
    type Error = ConsoleError;
    type Future = Ready<Result<Operator, ConsoleError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let operator = app_state(req).and_then(|state| current(req, &state.admin_token));
        ready(operator.ok_or_else(|| ConsoleError::NeedLogin {
            next: return_to(req),
        }))
    }
}

/// A URL-encoded form body. A body that is not one reads as empty, so a
/// state-changing request without a form fails its CSRF check (403)
/// rather than with a parse error.
pub struct Form(HashMap<String, String>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(
            serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
                .map(|pairs| pairs.into_iter().collect())
                .unwrap_or_default(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_returned_to() {
        assert_eq!(
            safe_next("/console/jobs?state=queued"),
            Some("/console/jobs?state=queued")
        );
        assert_eq!(safe_next("/console"), Some("/console"));
        assert_eq!(safe_next("//evil.example/console"), None);
        assert_eq!(safe_next("/console//evil.example"), None);
        assert_eq!(safe_next("https://evil.example/console"), None);
        assert_eq!(safe_next("/consolex"), None);
        assert_eq!(safe_next("/console/login?next=/console"), None);
        assert_eq!(safe_next("/console/\\evil"), None);
    }

    #[test]
    fn sessions_are_bound_to_the_admin_token() {
        let id = open("token-a");
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::COOKIE, format!("other=1; {COOKIE}={id}")))
            .to_http_request();
        let op = current(&req, "token-a").expect("valid session");
        assert!(current(&req, "token-b").is_none());
        let mut form = Form::parse(format!("csrf={}", op.csrf).as_bytes());
        assert!(op.check_csrf(&form).is_ok());
        form = Form::parse(b"csrf=wrong");
        assert!(op.check_csrf(&form).is_err());
        assert!(op.check_csrf(&Form::parse(b"\xff{not a form")).is_err());
        op.sign_out();
        assert!(current(&req, "token-a").is_none());
    }
}

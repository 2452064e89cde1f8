//! The console's shared markup: the page layout, times, state badges, ids
//! and empty states. Every value goes through maud, which escapes it.

use admedia_actors::domain::account::AccountStatus;
use admedia_actors::domain::job::{AttemptOutcomeLabel, JobState};
use admedia_actors::domain::ledger::EntryKind;
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{html, Markup, DOCTYPE};

use crate::console::frame::head;
pub use crate::console::frame::{bare, html, ok, see_other};
use crate::console::session::Operator;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Jobs,
    Workers,
    Users,
}

impl Nav {
    const ALL: [(Nav, &'static str, &'static str); 4] = [
        (Nav::Overview, "Overview", "/console"),
        (Nav::Jobs, "Jobs", "/console/jobs"),
        (Nav::Workers, "Workers", "/console/workers"),
        (Nav::Users, "Users", "/console/users"),
    ];
}

/// A signed-in page: navigation, sign-out, the body.
pub fn page(title: &str, active: Nav, op: &Operator, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/console" { "AdMedia" span { "console" } }
                    nav {
                        @for (nav, label, href) in Nav::ALL {
                            a href=(href) class=[(nav == active).then_some("active")]
                                aria-current=[(nav == active).then_some("page")] { (label) }
                        }
                    }
                    form.signout method="post" action="/console/logout" {
                        (csrf_field(op))
                        button.link type="submit" { "Sign out" }
                    }
                }
                main { (body) }
                footer { "Times are relative; hover one for the exact time (UTC)." }
            }
        }
    }
}

pub fn csrf_field(op: &Operator) -> Markup {
    html! { input type="hidden" name="csrf" value=(op.csrf); }
}

/// "3 min ago", "in 20 s", "just now" — the same words console.js writes.
pub fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds();
    let span = secs.unsigned_abs();
    if span < 5 {
        return "just now".into();
    }
    let amount = match span {
        0..=59 => format!("{span} s"),
        60..=3599 => format!("{} min", span / 60),
        3600..=86_399 => format!("{} h", span / 3600),
        _ => format!("{} d", span / 86_400),
    };
    if secs >= 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

pub fn exact(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A time shown relative, exact on hover; console.js keeps it current.
pub fn when(t: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339_opts(SecondsFormat::Millis, true)) title=(exact(t)) {
            (ago(t, Utc::now()))
        }
    }
}

pub fn when_opt(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => when(t),
        None => dash(),
    }
}

pub fn dash() -> Markup {
    html! { span.muted { "—" } }
}

/// How long something took: "850 ms", "12.4 s", "3 min 5 s".
pub fn took(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let ms = (to - from).num_milliseconds().max(0);
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The job state badge; the same class for a state on every page.
pub fn state(s: JobState) -> Markup {
    html! { span class={ "state state-" (s.as_str()) } { (s.as_str()) } }
}

/// An attempt's outcome, coloured like the job state it leads to; a system
/// failure (retried or refunded) has its own colour.
pub fn outcome(o: Option<AttemptOutcomeLabel>) -> Markup {
    let (class, label) = match o {
        None => ("state-running", "in flight"),
        Some(AttemptOutcomeLabel::Succeeded) => ("state-succeeded", "succeeded"),
        Some(AttemptOutcomeLabel::Withheld) => ("state-system", "outputs withheld"),
        Some(AttemptOutcomeLabel::UserFailure) => ("state-failed", "user failure"),
        Some(AttemptOutcomeLabel::SystemFailure) => ("state-system", "system failure"),
        Some(AttemptOutcomeLabel::Cancelled) => ("state-cancelled", "cancelled"),
    };
    html! { span class={ "state " (class) } { (label) } }
}

/// A ledger entry's kind, with what it means for the money.
pub fn entry_kind(k: EntryKind) -> Markup {
    let meaning = match k {
        EntryKind::Grant => "credits added",
        EntryKind::Hold => "credits reserved for a job",
        EntryKind::Post => "hold captured: the job was charged",
        EntryKind::Void => "hold released: refunded",
    };
    html! { span class={ "entry entry-" (k.as_str()) } title=(meaning) { (k.as_str()) } }
}

pub fn account_status(s: AccountStatus) -> Markup {
    html! { span class={ "account account-" (s.as_str()) } { (s.as_str()) } }
}

/// A long id shortened to its last 8 characters (UUIDv7s share their
/// leading, time-based ones), the whole id on hover.
pub fn short_id(id: &str) -> Markup {
    let tail = id.char_indices().rev().nth(7).map_or(id, |(i, _)| &id[i..]);
    html! { code.id title=(id) { "…" (tail) } }
}

/// `?notice=…`: what the action that redirected to a page did, for the
/// page to say.
#[derive(serde::Deserialize)]
pub struct NoticeQuery {
    pub notice: Option<String>,
}

pub fn flash_ok(text: &str) -> Markup {
    html! { p.flash.flash-ok role="status" { (text) } }
}

pub fn flash_error(text: &str) -> Markup {
    html! { p.flash.flash-error role="alert" { (text) } }
}

/// What an empty list means, and what would fill it.
pub fn empty(title: &str, detail: Markup) -> Markup {
    html! {
        div.empty {
            p.empty-title { (title) }
            p { (detail) }
        }
    }
}

/// A number with thin grouping: 12 345.
pub fn num(n: impl Into<i128>) -> String {
    let n: i128 = n.into();
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// "1 credit", "20 credits".
pub fn count(n: impl Into<i128>, one: &str, many: &str) -> String {
    let n: i128 = n.into();
    format!("{} {}", num(n), if n == 1 { one } else { many })
}

/// A percentage of `part` in `whole`, 0 when `whole` is 0.
pub fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        (part / whole * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every outcome an attempt can record has its own badge: a withheld
    /// attempt (refunded like a system failure) is not shown raw.
    #[test]
    fn every_attempt_outcome_has_a_badge() {
        for label in AttemptOutcomeLabel::ALL {
            let html = outcome(Some(label)).into_string();
            assert!(!html.contains('_'), "a raw label is shown: {html}");
        }
        let withheld = outcome(Some(AttemptOutcomeLabel::Withheld)).into_string();
        assert!(
            withheld.contains("state-system") && withheld.contains("outputs withheld"),
            "{withheld}"
        );
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        let s = chrono::Duration::seconds;
        assert_eq!(ago(now - s(2), now), "just now");
        assert_eq!(ago(now - s(42), now), "42 s ago");
        assert_eq!(ago(now - s(125), now), "2 min ago");
        assert_eq!(ago(now - s(7300), now), "2 h ago");
        assert_eq!(ago(now - s(3 * 86_400), now), "3 d ago");
        assert_eq!(ago(now + s(90), now), "in 1 min");
    }

    #[test]
    fn ids_and_numbers_are_compact() {
        assert_eq!(
            short_id("0190b8a0-0000-7000-8000-0123456789ab").into_string(),
            r#"<code class="id" title="0190b8a0-0000-7000-8000-0123456789ab">…456789ab</code>"#
        );
        assert_eq!(num(1234567), "1\u{202f}234\u{202f}567");
        assert_eq!(num(-12), "-12");
    }

    #[test]
    fn markup_is_escaped() {
        let m = empty("<b>", html! { ("<script>") });
        assert!(!m.into_string().contains("<script>"));
    }
}

//! Users: search by e-mail; a user's tier, membership, wallet and recent
//! ledger; granting credits, suspending and reinstating.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use admedia_actors::domain::account::AccountStatus;
use admedia_actors::domain::content::evidence::{ModerationKind, Violation};
use admedia_actors::domain::ids::UserId;
use admedia_actors::domain::ledger::{Grant, GrantSource};
use admedia_actors::domain::tier::Tier;
use admedia_actors::domain::wallet::Credits;
use chrono::Utc;
use maud::{html, Markup};
use serde::Deserialize;

use crate::console::error::ConsoleError;
use crate::console::session::{random_hex, Form, Operator};
use crate::console::view::{self, Nav};
use crate::http::problem::ApiError;
use crate::http::AppState;

const RESULTS: usize = 50;
const RECENT_LEDGER: usize = 20;
const MAX_NOTE_CHARS: usize = 500;

#[derive(Deserialize)]
pub struct SearchQuery {
    email: Option<String>,
}

fn search_form(value: &str) -> Markup {
    html! {
        form.search.card method="get" action="/console/users" role="search" {
            label.grow {
                span { "E-mail contains" }
                input type="search" name="email" value=(value) placeholder="e.g. alice@ or example.com"
                    maxlength="254" autocomplete="off" spellcheck="false" autofocus;
            }
            div.filter-actions { button.primary type="submit" { "Search" } }
        }
    }
}

pub async fn search(
    state: web::Data<AppState>,
    op: Operator,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let term = query.email.as_deref().map(str::trim).unwrap_or_default();
    let (users, error) = if term.is_empty() {
        (Vec::new(), None)
    } else if term.len() > 254 {
        (
            Vec::new(),
            Some("Give at most 254 characters to search for.".to_owned()),
        )
    } else {
        match state.orchestrator.find_users(term, RESULTS).await {
            Ok(users) => (users, None),
            Err(e) => (Vec::new(), Some(ConsoleError::from(e).message())),
        }
    };
    let now = Utc::now();
    let body = html! {
        h1 { "Users" }
        (search_form(term))
        @if let Some(e) = &error { (view::flash_error(e)) }
        @if term.is_empty() {
            (view::empty("Find a user by e-mail", html! {
                "Type any part of an address, case-insensitive. A user's page shows their tier, wallet and ledger, and lets you grant credits or suspend the account."
            }))
        } @else if users.is_empty() && error.is_none() {
            (view::empty(&format!("No user's e-mail contains “{term}”"), html! {
                "Check the spelling, or search for a shorter part such as the domain."
            }))
        } @else if !users.is_empty() {
            p.muted.summary {
                (users.len()) " found"
                @if users.len() == RESULTS { " (the first " (RESULTS) "; narrow the search)" }
            }
            div.table-wrap { table.users {
                thead { tr { th { "E-mail" } th { "Name" } th { "Tier" } th { "Status" } th { "Registered" } } }
                tbody { @for u in &users {
                    @let tier = u.tier(now);
                    tr {
                        td { a href={ "/console/users/" (u.id) } { (u.email.to_string()) } }
                        td { (u.display_name.as_str()) }
                        td { span class={ "tier tier-" (tier.as_str()) } { (tier.as_str()) } }
                        td { (view::account_status(u.status)) }
                        td { (view::when(u.created_at)) }
                    }
                } }
            } }
        }
    };
    Ok(view::ok(view::page("Users", Nav::Users, &op, body)))
}

fn user_id(raw: &str) -> Result<UserId, ConsoleError> {
    raw.parse()
        .map_err(|_| ConsoleError::Api(ApiError::not_found("user")))
}

enum Flash {
    Ok(&'static str),
    Error(String),
}

fn notice_text(n: &str) -> Option<&'static str> {
    match n {
        "granted" => Some("Credits granted. Submitting the same form again changes nothing: each form carries its own idempotency key."),
        "suspended" => Some("Account suspended: it can no longer act, and its waiting jobs were cancelled and refunded."),
        "reinstated" => Some("Account reinstated: it can act again."),
        _ => None,
    }
}

/// Refusals shown on a user's page, at most.
const RECENT_REFUSALS: usize = 50;

/// One refusal as evidence: category, who decided and how sure, what
/// matched or scored, and the prompt.
fn refusal_line(v: &Violation) -> Markup {
    let r = &v.refusal;
    html! {
        strong { (r.category) } " "
        span.muted { (r.source.as_str()) " " (format!("{:.2}", r.confidence.get())) }
        @if !r.matched.is_empty() { " " span.muted { "matched: " (r.matched.join(", ")) } }
        @if !r.scores.is_empty() {
            " " span.muted { "scores: "
                (r.scores.iter().map(|(k, s)| format!("{k} {:.2}", s.get())).collect::<Vec<_>>().join(", ")) }
        }
        br;
        code.prompt { (v.prompt) }
    }
}

/// The user's page; `flash` and `status` say how the last action went.
async fn render(
    state: &AppState,
    op: &Operator,
    id: UserId,
    flash: Option<Flash>,
    status: StatusCode,
) -> Result<HttpResponse, ConsoleError> {
    let orch = &state.orchestrator;
    let user = orch.user(id).await?;
    let wallet = orch.wallet(id).await?;
    let ledger = state.archive.ledger(id, None, RECENT_LEDGER).await?;
    let now = Utc::now();
    let refusals = orch
        .violations(id, now - chrono::Duration::days(30), RECENT_REFUSALS)
        .await?;
    let history = orch
        .moderation_actions(Some(id), None, RECENT_REFUSALS)
        .await?;
    let tier = user.tier(now);
    let uid = user.id.to_string();
    let storage = crate::console::files::user_storage(state, &user).await;
    let body = html! {
        @match &flash {
            Some(Flash::Ok(t)) => { (view::flash_ok(t)) },
            Some(Flash::Error(t)) => { (view::flash_error(t)) },
            None => {},
        }
        div.title-row {
            h1 { (user.email.to_string()) }
            (view::account_status(user.status))
        }
        div.columns {
            section.card {
                h2 { "Account" }
                dl.facts {
                    dt { "User id" } dd { code { (uid) } }
                    dt { "Name" } dd { (user.display_name.as_str()) }
                    dt { "Tier" } dd {
                        span class={ "tier tier-" (tier.as_str()) } { (tier.as_str()) }
                        @if tier != user.membership.tier { span.muted { " (" (user.membership.tier.as_str()) " lapsed)" } }
                    }
                    dt { "Membership" } dd {
                        @match (user.membership.tier, user.membership.expires_at) {
                            (Tier::Free, _) => { span.muted { "none (free tier)" } },
                            (_, None) => { "no expiry" },
                            (_, Some(t)) if t > now => { "expires " (view::when(t)) },
                            (_, Some(t)) => { "expired " (view::when(t)) },
                        }
                    }
                    dt { "Status" } dd { (view::account_status(user.status)) }
                    dt { "Registered" } dd { (view::when(user.created_at)) }
                    dt { "Jobs" } dd { a href={ "/console/jobs?user=" (uid) } { "Their jobs, newest first" } }
                }
            }
            section.card {
                h2 { "Wallet" }
                div.wallet {
                    div { p.stat-label { "Balance" } p.stat-value { (view::num(wallet.balance.get())) } }
                    div { p.stat-label { "Held" } p.stat-value { (view::num(wallet.held.get())) } }
                    div { p.stat-label { "Available" } p.stat-value { (view::num(wallet.available().get())) } }
                }
                form.grant method="post" action={ "/console/users/" (uid) "/credits" } {
                    h3 { "Grant credits" }
                    (view::csrf_field(op))
                    input type="hidden" name="idempotency_key" value={ "console-" (random_hex(16)) };
                    label { span { "Amount" } input type="number" name="amount" min="1" step="1" required inputmode="numeric"; }
                    label { span { "Note (kept in the ledger)" }
                        textarea name="note" maxlength=(MAX_NOTE_CHARS) rows="2" placeholder="e.g. goodwill for ticket #123" {} }
                    button.primary type="submit" { "Grant" }
                }
            }
        }
        (storage)
        section.card.danger-zone {
            h2 { "Account actions" }
            @match user.status {
                AccountStatus::Active => {
                    details.confirm {
                        summary { "Suspend…" }
                        form method="post" action={ "/console/users/" (uid) "/suspend" } {
                            (view::csrf_field(op))
                            label { span { "Note (kept in the moderation history)" }
                                textarea name="note" maxlength=(MAX_NOTE_CHARS) rows="2" {} }
                            p { "The account can no longer act (ToS 9.2); its waiting jobs are cancelled and refunded. Jobs already running finish." }
                            button.danger type="submit" { "Suspend " (user.email.to_string()) }
                        }
                    }
                },
                _ => {
                    form method="post" action={ "/console/users/" (uid) "/reinstate" } {
                        (view::csrf_field(op))
                        label { span { "Note (kept in the moderation history)" }
                            textarea name="note" maxlength=(MAX_NOTE_CHARS) rows="2" placeholder="e.g. art-history prompts, not a violation" {} }
                        p { "The account is " (user.status.as_str()) ". Reinstating lets it act again." }
                        button.primary type="submit" { "Reinstate" }
                    }
                },
            }
        }
        section {
            h2 { "Moderation" }
            @if history.is_empty() && refusals.is_empty() {
                (view::empty("No refusals", html! { "Prompts refused by the content policy in the last 30 days, and suspensions on content grounds, appear here." }))
            }
            @if !history.is_empty() {
                div.table-wrap { table.moderation-history {
                    thead { tr { th { "Action" } th { "By" } th { "Note" } th { "Evidence" } th { "When" } } }
                    tbody { @for a in &history {
                        tr {
                            td { (a.kind.as_str()) }
                            td { (a.by) }
                            td { @if let Some(n) = &a.note { span.note { (n) } } }
                            td { @if a.evidence.is_empty() { span.muted { "—" } } @else {
                                ul.evidence { @for v in &a.evidence { li { (refusal_line(v)) } } }
                            } }
                            td { (view::when(a.created_at)) }
                        }
                    } }
                } }
            }
            @if !refusals.is_empty() {
                h3 { "Refused prompts (30 days)" }
                div.table-wrap { table.refusals {
                    thead { tr { th { "Refusal" } th { "Counted" } th { "When" } } }
                    tbody { @for v in &refusals {
                        tr {
                            td { (refusal_line(v)) }
                            td { @if v.counted { "yes" } @else { span.muted { "no (below the confidence)" } } }
                            td { (view::when(v.created_at)) }
                        }
                    } }
                } }
            }
        }
        section {
            h2 { "Recent ledger" }
            @if ledger.is_empty() {
                (view::empty("No ledger entries", html! { "Grants, holds, charges and refunds appear here." }))
            } @else {
                div.table-wrap { table.ledger {
                    thead { tr { th { "Kind" } th.num { "Amount" } th.num { "Balance after" } th.num { "Held after" } th { "Job · source · note" } th { "When" } } }
                    tbody { @for e in &ledger {
                        tr {
                            td { (view::entry_kind(e.kind)) }
                            td.num { (view::num(e.amount.get())) }
                            td.num { (view::num(e.balance.get())) }
                            td.num { (view::num(e.held.get())) }
                            td {
                                @if let Some(j) = e.job_id { @let j = j.to_string(); a href={ "/console/jobs/" (j) } { (view::short_id(&j)) } " " }
                                @if let Some(s) = e.source { span.muted { (s.as_str()) } " " }
                                @if let Some(n) = &e.note { span.note { (n) } }
                            }
                            td { (view::when(e.created_at)) }
                        }
                    } }
                } }
                @if ledger.len() == RECENT_LEDGER { p.hint { "The " (RECENT_LEDGER) " newest entries." } }
            }
        }
    };
    Ok(view::html(status, view::page("User", Nav::Users, op, body)))
}

pub async fn detail(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<String>,
    query: web::Query<view::NoticeQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let id = user_id(&path)?;
    let flash = query.notice.as_deref().and_then(notice_text).map(Flash::Ok);
    render(&state, &op, id, flash, StatusCode::OK).await
}

/// The grant form's fields, checked.
fn grant_of(form: &Form) -> Result<Grant, String> {
    let amount: i64 = form
        .get("amount")
        .map(str::trim)
        .and_then(|a| a.parse().ok())
        .ok_or("Amount: give a whole number of credits.")?;
    let amount = Credits::positive(amount).map_err(|e| format!("Amount: {e}."))?;
    let key = form
        .get("idempotency_key")
        .map(str::trim)
        .unwrap_or_default();
    if key.is_empty() || key.len() > 255 {
        return Err("The form lacks its idempotency key; reload the page and try again.".into());
    }
    let note = form
        .get("note")
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    if note
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS)
    {
        return Err(format!("Note: at most {MAX_NOTE_CHARS} characters."));
    }
    Ok(Grant {
        amount,
        source: GrantSource::Admin,
        idempotency_key: Some(key.to_owned()),
        note,
    })
}

pub async fn grant(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let form = Form::parse(&body);
    op.check_csrf(&form)?;
    let id = user_id(&path)?;
    let grant = match grant_of(&form) {
        Ok(g) => g,
        Err(msg) => {
            return render(
                &state,
                &op,
                id,
                Some(Flash::Error(msg)),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    };
    match state.orchestrator.grant(id, grant).await {
        Ok(_) => Ok(view::see_other(&format!(
            "/console/users/{id}?notice=granted"
        ))),
        Err(e) => {
            let e = ConsoleError::from(e);
            match &e {
                ConsoleError::Api(
                    ApiError::InvalidParams(_) | ApiError::IdempotencyKeyReused(_),
                ) => {
                    let msg = e.message();
                    render(
                        &state,
                        &op,
                        id,
                        Some(Flash::Error(msg)),
                        StatusCode::UNPROCESSABLE_ENTITY,
                    )
                    .await
                }
                _ => Err(e),
            }
        }
    }
}

async fn set_status(
    state: &AppState,
    op: &Operator,
    raw_id: &str,
    body: &[u8],
    status: AccountStatus,
    notice: &str,
) -> Result<HttpResponse, ConsoleError> {
    let form = Form::parse(body);
    op.check_csrf(&form)?;
    let id = user_id(raw_id)?;
    let kind = match status {
        AccountStatus::Active => ModerationKind::Reinstated,
        _ => ModerationKind::Suspended,
    };
    let note = form
        .get("note")
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    state.orchestrator.moderate(id, kind, note).await?;
    Ok(view::see_other(&format!(
        "/console/users/{id}?notice={notice}"
    )))
}

pub async fn suspend(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    set_status(
        &state,
        &op,
        &path,
        &body,
        AccountStatus::Suspended,
        "suspended",
    )
    .await
}

pub async fn reinstate(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    set_status(
        &state,
        &op,
        &path,
        &body,
        AccountStatus::Active,
        "reinstated",
    )
    .await
}

//! Jobs across users: a filtered, paginated list, and a job's page with its
//! attempts, ledger entries and events; cancelling a job.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use admedia_actors::domain::ids::{JobId, UserId, WorkerId};
use admedia_actors::domain::job::{Charge, FailureClass, Job, JobKind, JobState};
use admedia_actors::domain::tier::Tier;
use admedia_actors::orchestrator::JobDetail;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use crate::console::error::ConsoleError;
use crate::console::session::{Form, Operator};
use crate::console::view::{self, Nav};
use crate::http::operator::jobs::AdminJobsQuery;
use crate::http::problem::ApiError;
use crate::http::{before_cursor, AppState};

const PAGE: usize = 50;

/// The "submitted within" choices: (value, label, seconds).
const WINDOWS: [(&str, &str, i64); 5] = [
    ("15m", "last 15 minutes", 15 * 60),
    ("1h", "last hour", 3600),
    ("6h", "last 6 hours", 6 * 3600),
    ("24h", "last 24 hours", 86_400),
    ("7d", "last 7 days", 7 * 86_400),
];

#[derive(Deserialize, Default)]
pub struct JobsQuery {
    state: Option<String>,
    tier: Option<String>,
    kind: Option<String>,
    user: Option<String>,
    window: Option<String>,
    before: Option<String>,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl JobsQuery {
    /// The filters as a query string, with `before` when given.
    fn href(&self, before: Option<&str>) -> String {
        let mut pairs: Vec<(&str, &str)> = [
            ("state", &self.state),
            ("tier", &self.tier),
            ("kind", &self.kind),
            ("user", &self.user),
            ("window", &self.window),
        ]
        .into_iter()
        .filter_map(|(k, v)| nonempty(v).map(|v| (k, v)))
        .collect();
        if let Some(b) = before {
            pairs.push(("before", b));
        }
        let qs = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        if qs.is_empty() {
            "/console/jobs".into()
        } else {
            format!("/console/jobs?{qs}")
        }
    }

    fn parse(&self) -> Result<(admedia_actors::store::JobFilter, Option<JobId>), ApiError> {
        let since = match nonempty(&self.window) {
            None => None,
            Some(w) => {
                let (_, _, secs) = WINDOWS.iter().find(|(v, _, _)| *v == w).ok_or_else(|| {
                    ApiError::InvalidParams(format!("window: {w:?} is not one of the choices"))
                })?;
                Some(Utc::now() - chrono::Duration::seconds(*secs))
            }
        };
        let filter = AdminJobsQuery {
            state: nonempty(&self.state).map(str::to_owned),
            tier: nonempty(&self.tier).map(str::to_owned),
            kind: nonempty(&self.kind).map(str::to_owned),
            user: nonempty(&self.user).map(str::to_owned),
            since,
            until: None,
            limit: None,
            before: None,
        }
        .filter()?;
        let before = before_cursor(nonempty(&self.before), "job")?;
        Ok((filter, before))
    }
}

/// E-mail addresses of the given users (those that can be read).
async fn emails(state: &AppState, ids: impl Iterator<Item = UserId>) -> HashMap<UserId, String> {
    let mut out = HashMap::new();
    for id in ids {
        if out.contains_key(&id) {
            continue;
        }
        if let Ok(u) = state.orchestrator.user(id).await {
            out.insert(id, u.email.to_string());
        }
    }
    out
}

fn select(name: &str, label: &str, current: Option<&str>, options: &[(&str, &str)]) -> Markup {
    html! {
        label {
            span { (label) }
            select name=(name) {
                option value="" { "any" }
                @for (value, text) in options {
                    option value=(value) selected[current == Some(*value)] { (text) }
                }
            }
        }
    }
}

fn filters(q: &JobsQuery) -> Markup {
    let states: Vec<(&str, &str)> = JobState::ALL
        .iter()
        .map(|s| (s.as_str(), s.as_str()))
        .collect();
    let tiers: Vec<(&str, &str)> = Tier::ALL.iter().map(|t| (t.as_str(), t.as_str())).collect();
    let kinds: Vec<(&str, &str)> = JobKind::ALL
        .iter()
        .map(|k| (k.as_str(), k.as_str()))
        .collect();
    let windows: Vec<(&str, &str)> = WINDOWS.iter().map(|(v, l, _)| (*v, *l)).collect();
    html! {
        form.filters.card method="get" action="/console/jobs" {
            (select("state", "State", nonempty(&q.state), &states))
            (select("tier", "Tier", nonempty(&q.tier), &tiers))
            (select("kind", "Kind", nonempty(&q.kind), &kinds))
            label.grow {
                span { "User id" }
                input type="text" name="user" value=[nonempty(&q.user)]
                    placeholder="any user" spellcheck="false" autocomplete="off";
            }
            (select("window", "Submitted", nonempty(&q.window), &windows))
            div.filter-actions {
                button.primary type="submit" { "Filter" }
                a.button href="/console/jobs" { "Reset" }
            }
        }
    }
}

fn jobs_table(jobs: &[Job], emails: &HashMap<UserId, String>) -> Markup {
    html! {
        div.table-wrap {
            table.jobs {
                thead { tr {
                    th { "Job" } th { "State" } th { "User" } th { "Tier" } th { "Kind · model" }
                    th.num { "Cost" } th.num { "Attempts" } th { "Submitted" } th { "Finished" }
                } }
                tbody {
                    @for j in jobs {
                        @let id = j.id.to_string();
                        @let uid = j.user_id.to_string();
                        tr {
                            td { a href={ "/console/jobs/" (id) } { (view::short_id(&id)) } }
                            td { (view::state(j.state)) }
                            td.user {
                                a href={ "/console/users/" (uid) } {
                                    @match emails.get(&j.user_id) {
                                        Some(e) => { (e) },
                                        None => { (view::short_id(&uid)) },
                                    }
                                }
                            }
                            td { span class={ "tier tier-" (j.tier.as_str()) } { (j.tier.as_str()) } }
                            td { (j.spec.kind.as_str()) " · " (j.spec.model) }
                            td.num { (view::num(j.cost.get())) }
                            td.num { (j.attempts) "/" (j.max_attempts) }
                            td { (view::when(j.created_at)) }
                            td { (view::when_opt(j.finished_at)) }
                        }
                    }
                }
            }
        }
    }
}

pub async fn list(
    state: web::Data<AppState>,
    op: Operator,
    query: web::Query<JobsQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let q = query.into_inner();
    let (jobs, more, error) = match q.parse() {
        Ok((filter, before)) => {
            match state
                .orchestrator
                .admin_jobs(&filter, before, PAGE + 1)
                .await
            {
                Ok(mut jobs) => {
                    let more = jobs.len() > PAGE;
                    jobs.truncate(PAGE);
                    (jobs, more, None)
                }
                Err(e) => (Vec::new(), false, Some(ConsoleError::from(e))),
            }
        }
        Err(e) => (Vec::new(), false, Some(ConsoleError::from(e))),
    };
    let status = match &error {
        Some(ConsoleError::Api(ApiError::Internal(_))) => StatusCode::INTERNAL_SERVER_ERROR,
        Some(_) => StatusCode::UNPROCESSABLE_ENTITY,
        None => StatusCode::OK,
    };
    let emails = emails(&state, jobs.iter().map(|j| j.user_id)).await;
    let filtered = [&q.state, &q.tier, &q.kind, &q.user, &q.window]
        .iter()
        .any(|v| nonempty(v).is_some());
    let paged = nonempty(&q.before).is_some();
    let body = html! {
        h1 { "Jobs" }
        (filters(&q))
        @if let Some(e) = &error { (view::flash_error(&e.message())) }
        @if jobs.is_empty() && error.is_none() {
            @if paged {
                (view::empty("No older jobs", html! { "Every job matching these filters is on the newer pages." }))
            } @else if filtered {
                (view::empty("No job matches these filters", html! {
                    "Widen the time window or clear a filter. " a href="/console/jobs" { "Show all jobs" } "."
                }))
            } @else {
                (view::empty("No jobs yet", html! {
                    "Jobs appear here as soon as users submit them (POST /v1/jobs). Newest first."
                }))
            }
        } @else if !jobs.is_empty() {
            p.muted.summary {
                "Newest first · " (jobs.len()) " shown"
                @if paged { " (older page)" }
            }
            (jobs_table(&jobs, &emails))
        }
        nav.pager {
            @if paged { a.button href=(q.href(None)) { "← Newest" } }
            @if more {
                @if let Some(last) = jobs.last() {
                    a.button href=(q.href(Some(&last.id.to_string()))) { "Older →" }
                }
            }
        }
    };
    Ok(view::html(status, view::page("Jobs", Nav::Jobs, &op, body)))
}

fn job_id(raw: &str) -> Result<JobId, ConsoleError> {
    raw.parse()
        .map_err(|_| ConsoleError::Api(ApiError::not_found("job")))
}

fn params(job: &Job) -> String {
    let p = &job.spec.params;
    let mut out = format!("{}×{}", p.width, p.height);
    if let Some(c) = p.count {
        out.push_str(&format!(" · {c} image{}", if c == 1 { "" } else { "s" }));
    }
    if let Some(d) = p.duration_s {
        out.push_str(&format!(" · {d} s"));
    }
    if let Some(seed) = p.seed {
        out.push_str(&format!(" · seed {seed}"));
    }
    out
}

fn worker_label(id: WorkerId, names: &HashMap<WorkerId, String>) -> Markup {
    let full = id.to_string();
    html! {
        @match names.get(&id) {
            Some(name) => { span title=(full) { (name) } },
            None => { (view::short_id(&full)) },
        }
    }
}

/// What happened to the job, in order, from its attempts and ledger.
fn events(d: &JobDetail, names: &HashMap<WorkerId, String>) -> Vec<(DateTime<Utc>, Markup)> {
    let job = &d.job;
    let mut ev: Vec<(DateTime<Utc>, Markup)> = vec![(
        job.created_at,
        html! { "Submitted: " (job.spec.kind.as_str()) " on " (job.spec.model) ", " (job.tier.as_str()) " tier, " (view::count(job.cost.get(), "credit", "credits")) },
    )];
    for a in &d.attempts {
        ev.push((
            a.assigned_at,
            html! { "Attempt " (a.attempt) " assigned to " (worker_label(a.worker_id, names)) },
        ));
        if let Some(t) = a.started_at {
            ev.push((t, html! { "Attempt " (a.attempt) " started" }));
        }
        if let Some(t) = a.finished_at {
            ev.push((
                t,
                html! {
                    "Attempt " (a.attempt) " ended " (view::outcome(a.outcome))
                    @if let Some(m) = &a.message { " " span.message { (m) } }
                },
            ));
        }
    }
    for e in &d.ledger {
        ev.push((
            e.created_at,
            html! { "Ledger " (view::entry_kind(e.kind)) " " (view::count(e.amount.get(), "credit", "credits")) },
        ));
    }
    if let (true, Some(t)) = (job.state.is_terminal(), job.finished_at) {
        ev.push((t, html! { "Job " (view::state(job.state)) }));
    }
    if let (JobState::Queued, Some(t)) = (job.state, job.retry_at) {
        ev.push((t, html! { "Next attempt not before this" }));
    }
    ev.sort_by_key(|(t, _)| *t);
    ev
}

async fn worker_names(state: &AppState) -> HashMap<WorkerId, String> {
    state
        .orchestrator
        .workers()
        .await
        .map(|ws| ws.into_iter().map(|(w, _)| (w.id, w.caps.name)).collect())
        .unwrap_or_default()
}

/// What the last action did, told from the job as it is now.
fn notice_text(n: &str, job: &Job) -> Option<&'static str> {
    match (n, job.charge) {
        ("cancelled", Charge::Voided) => {
            Some("Job cancelled before it ran: its hold was voided (refunded).")
        }
        ("cancelled", Charge::Posted) => Some(
            "Job cancelled while assigned or running: its hold was posted (charged), as when its owner cancels.",
        ),
        ("cancelled", Charge::Held) => Some("Job cancelled."),
        _ => None,
    }
}

pub async fn detail(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<String>,
    query: web::Query<view::NoticeQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let id = job_id(&path)?;
    let d = state.orchestrator.job_detail(id).await?;
    let owner = state.orchestrator.user(d.job.user_id).await.ok();
    let names = worker_names(&state).await;
    let job = &d.job;
    let jid = job.id.to_string();
    let uid = job.user_id.to_string();
    let notice = query.notice.as_deref().and_then(|n| notice_text(n, job));
    let outputs = crate::console::files::job_outputs(&state, job).await;
    let body = html! {
        @if let Some(n) = notice { (view::flash_ok(n)) }
        div.title-row {
            h1 { "Job " (view::short_id(&jid)) }
            (view::state(job.state))
            @if !job.state.is_terminal() {
                form.inline method="post" action={ "/console/jobs/" (jid) "/cancel" } {
                    (view::csrf_field(&op))
                    button.danger type="submit" title="Queued: the hold is voided (refund). Assigned or running: the job is stopped and charged." { "Cancel job" }
                }
            }
        }
        section.card {
            dl.facts {
                dt { "Job id" } dd { code { (jid) } }
                dt { "User" } dd {
                    a href={ "/console/users/" (uid) } {
                        @match &owner { Some(u) => { (u.email.to_string()) }, None => { code { (uid) } } }
                    }
                    " · " a href={ "/console/jobs?user=" (uid) } { "their jobs" }
                }
                dt { "Tier" } dd { span class={ "tier tier-" (job.tier.as_str()) } { (job.tier.as_str()) } " (at submission)" }
                dt { "Kind · model" } dd { (job.spec.kind.as_str()) " · " (job.spec.model) }
                dt { "Parameters" } dd { (params(job)) }
                dt { "Prompt" } dd { p.prompt { (job.spec.prompt) } }
                dt { "Cost" } dd {
                    (view::count(job.cost.get(), "credit", "credits")) " · hold "
                    @match job.charge {
                        Charge::Held => span.charge.charge-held { "held" },
                        Charge::Posted => span.charge.charge-posted { "posted (charged)" },
                        Charge::Voided => span.charge.charge-voided { "voided (refunded)" },
                    }
                }
                dt { "Attempts" } dd { (job.attempts) " of at most " (job.max_attempts) }
                @if job.state == JobState::Queued {
                    dt { "Queue position" } dd {
                        @match d.position { Some(p) => { (p) " among the user's waiting jobs" }, None => { (view::dash()) } }
                    }
                    @if let Some(t) = job.retry_at { dt { "Retry not before" } dd { (view::when(t)) } }
                }
                dt { "Submitted" } dd { (view::when(job.created_at)) }
                dt { "Started" } dd { (view::when_opt(job.started_at)) }
                dt { "Finished" } dd {
                    (view::when_opt(job.finished_at))
                    @if let (Some(s), Some(f)) = (job.started_at, job.finished_at) { span.muted { " · ran " (view::took(s, f)) } }
                }
                @if let Some(e) = &job.error {
                    dt { "Error" } dd.error-text {
                        @match e.class { FailureClass::System => "system: ", FailureClass::User => "user input: " }
                        (e.message)
                    }
                }
                @if let Some(r) = &job.result {
                    dt { "Outputs" } dd {
                        ul.outputs { @for o in &r.outputs { li {
                            code { (o.url) } " " span.muted { (o.content_type) }
                            @if let Some(w) = &o.withheld {
                                " " span.badge.state-failed { "withheld from the user: " (w.category) " " (format!("{:.2}", w.score.get())) }
                            }
                        } } }
                        span.muted { (r.license.as_str()) " licence" }
                    }
                }
            }
        }

        (outputs)
        section {
            h2 { "Attempts" }
            @if d.attempts.is_empty() {
                (view::empty("No attempts yet", html! {
                    @if job.state == JobState::Queued { "The job is waiting for a free worker slot that serves its kind and model." }
                    @else { "The job ended before any worker took it." }
                }))
            } @else {
                div.table-wrap { table.attempts {
                    thead { tr { th.num { "#" } th { "Worker" } th { "Assigned" } th { "Started" } th { "Ended" } th { "Took" } th { "Outcome" } th { "Error" } } }
                    tbody { @for a in &d.attempts {
                        tr {
                            td.num { (a.attempt) }
                            td { (worker_label(a.worker_id, &names)) }
                            td { (view::when(a.assigned_at)) }
                            td { (view::when_opt(a.started_at)) }
                            td { (view::when_opt(a.finished_at)) }
                            td { @match (a.started_at.or(Some(a.assigned_at)), a.finished_at) {
                                (Some(s), Some(f)) => { (view::took(s, f)) },
                                _ => { (view::dash()) },
                            } }
                            td { (view::outcome(a.outcome)) }
                            td.message { @match &a.message { Some(m) => { (m) }, None => { (view::dash()) } } }
                        }
                    } }
                } }
            }
        }

        section {
            h2 { "Ledger entries" }
            @if d.ledger.is_empty() {
                (view::empty("No ledger entries", html! { "A job's hold is written when it is accepted; none is recorded for this one." }))
            } @else {
                div.table-wrap { table.ledger {
                    thead { tr { th { "Entry" } th { "Kind" } th.num { "Amount" } th.num { "Balance after" } th.num { "Held after" } th { "When" } } }
                    tbody { @for e in &d.ledger {
                        tr {
                            td { code.id { (e.id.to_string()) } }
                            td { (view::entry_kind(e.kind)) }
                            td.num { (view::num(e.amount.get())) }
                            td.num { (view::num(e.balance.get())) }
                            td.num { (view::num(e.held.get())) }
                            td { (view::when(e.created_at)) }
                        }
                    } }
                } }
                p.hint { "hold: credits reserved at submission · post: the hold captured (charged) · void: the hold released (refunded)." }
            }
        }

        section {
            h2 { "Events" }
            ol.timeline {
                @for (t, what) in events(&d, &names) {
                    li { (view::when(t)) span.event { (what) } }
                }
            }
        }
    };
    Ok(view::ok(view::page("Job", Nav::Jobs, &op, body)))
}

pub async fn cancel(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    op.check_csrf(&Form::parse(&body))?;
    let id = job_id(&path)?;
    state.orchestrator.admin_cancel(id).await?;
    Ok(view::see_other(&format!(
        "/console/jobs/{id}?notice=cancelled"
    )))
}

//! The overview: what waits and runs per tier, how dispatches were shared
//! against the configured weights, the workers' slots, and the last hour's
//! system failures and refunds. console.js re-fetches the live part.

use actix_web::{web, HttpResponse};
use admedia_actors::actors::scheduler::RECENT_WINDOW;
use admedia_actors::domain::job::{Job, JobState};
use admedia_actors::domain::tier::{PerTier, Tier};
use admedia_actors::store::{Activity, JobFilter};
use chrono::Utc;
use maud::{html, Markup};

use crate::console::error::ConsoleError;
use crate::console::session::Operator;
use crate::console::view::{self, Nav};
use crate::http::AppState;

/// How often the page re-fetches its live part.
const REFRESH_MS: u32 = 5000;
/// In-flight jobs read per state to count them by tier. In-flight jobs are
/// bounded by the workers' slots, so this is rarely reached; when it is,
/// the counts read "at least".
const IN_FLIGHT_READ: usize = 1000;

struct Snapshot {
    waiting: PerTier<usize>,
    retrying: usize,
    running: PerTier<usize>,
    running_capped: bool,
    dispatched: PerTier<u64>,
    weights: PerTier<u32>,
    workers: usize,
    busy_slots: u32,
    slots: u32,
    draining: usize,
    jobs: Vec<(JobState, u64)>,
    last_hour: Activity,
}

async fn snapshot(state: &AppState) -> Result<Snapshot, ConsoleError> {
    let orch = &state.orchestrator;
    let stats = orch.stats().await?;
    let last_hour = orch
        .activity_since(Utc::now() - chrono::Duration::hours(1))
        .await?;
    let mut running = PerTier::splat(0usize);
    let mut running_capped = false;
    for s in [JobState::Assigned, JobState::Running] {
        let filter = JobFilter {
            state: Some(s),
            ..JobFilter::default()
        };
        let jobs: Vec<Job> = orch.admin_jobs(&filter, None, IN_FLIGHT_READ).await?;
        running_capped |= jobs.len() >= IN_FLIGHT_READ;
        for j in &jobs {
            running[j.tier] += 1;
        }
    }
    // Slots from the worker list, as the workers page shows them (the
    // scheduler's idle count leaves out draining workers).
    let workers = orch.workers().await?;
    let draining = workers.iter().filter(|(w, _)| w.draining).count();
    let slots: u32 = workers.iter().map(|(w, _)| w.caps.slots).sum();
    let busy_slots: u32 = workers.iter().map(|(w, _)| w.busy_slots).sum();
    Ok(Snapshot {
        waiting: stats.scheduler.waiting_by_tier,
        retrying: stats.scheduler.retrying,
        running,
        running_capped,
        dispatched: stats.scheduler.recent_dispatches,
        weights: orch.config().tiers.weights(),
        workers: workers.len(),
        busy_slots,
        slots,
        draining,
        jobs: stats.jobs.0,
        last_hour,
    })
}

fn card(label: &str, value: Markup, detail: Markup) -> Markup {
    html! {
        div.card.stat {
            p.stat-label { (label) }
            p.stat-value { (value) }
            p.stat-detail { (detail) }
        }
    }
}

fn live(s: &Snapshot) -> Markup {
    let waiting: usize = s.waiting.values().sum();
    let running: usize = s.running.values().sum();
    let at_least = if s.running_capped { "≥ " } else { "" };
    let slots = s.slots;
    let dispatched: u64 = s.dispatched.values().sum();
    let weight_sum: u32 = s.weights.values().sum();
    let window_min = RECENT_WINDOW.as_secs() / 60;
    html! {
        div.cards {
            (card("Waiting", html! { (view::num(waiting as u64)) }, html! {
                @if s.retrying > 0 { (s.retrying) " waiting out a retry delay" }
                @else { "jobs in line" }
            }))
            (card("Running", html! { (at_least) (view::num(running as u64)) }, html! { "assigned or running" }))
            (card("Workers", html! { (s.workers) }, html! {
                @if s.workers == 0 { "none connected: jobs wait" }
                @else {
                    meter min="0" max=(slots.max(1)) value=(s.busy_slots) {}
                    (s.busy_slots) " of " (view::count(slots, "slot", "slots")) " busy"
                    @if s.draining > 0 { " · " (s.draining) " draining" }
                }
            }))
            (card("System failures", html! { (view::num(s.last_hour.retries)) }, html! {
                "attempts in the last hour (retried or refunded)"
            }))
            (card("Refunds", html! { (view::num(s.last_hour.refunds)) }, html! {
                (view::count(s.last_hour.refunded_credits, "credit", "credits")) " released in the last hour"
            }))
        }

        section {
            h2 { "Per tier" }
            div.table-wrap {
                table.tiers {
                    thead { tr {
                        th { "Tier" }
                        th.num { "Waiting" }
                        th.num { "Running" }
                        th.num title={ "Dispatches over the last " (window_min) " minutes" } { "Dispatched (" (window_min) " min)" }
                        th.share { "Share of dispatches vs. configured weight" }
                    } }
                    tbody {
                        @for t in Tier::ALL {
                            @let share = view::pct(s.dispatched[t] as f64, dispatched as f64);
                            @let target = view::pct(f64::from(s.weights[t]), f64::from(weight_sum));
                            tr {
                                td.tier-name { span class={ "tier tier-" (t.as_str()) } { (t.as_str()) } }
                                td.num data-label="waiting" { a href={ "/console/jobs?state=queued&tier=" (t.as_str()) } { (view::num(s.waiting[t] as u64)) } }
                                td.num data-label="running" { (at_least) (view::num(s.running[t] as u64)) }
                                td.num data-label={ "dispatched (" (window_min) " min)" } { (view::num(s.dispatched[t])) }
                                td.share {
                                    div.bars {
                                        progress.actual max="100" value=(format!("{share:.1}")) {}
                                        span.bar-label { (format!("{share:.0}")) " %" }
                                        progress.target max="100" value=(format!("{target:.1}")) {}
                                        span.bar-label.muted { "weight " (s.weights[t]) " → " (format!("{target:.0}")) " %" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if dispatched == 0 {
                p.hint { "No job was dispatched in the last " (window_min) " minutes, so there is no share to compare yet. "
                    "When every tier has work waiting, each tier's share approaches its weight's share." }
            } @else {
                p.hint { "Shares follow the weights only while every tier has work waiting; an idle tier's share goes to the others." }
            }
        }

        section {
            h2 { "Jobs by state" }
            @if s.jobs.iter().all(|(_, n)| *n == 0) {
                (view::empty("No jobs yet", html! { "Jobs appear here once users submit them (POST /v1/jobs)." }))
            } @else {
                ul.states {
                    @for (st, n) in &s.jobs {
                        li { a href={ "/console/jobs?state=" (st.as_str()) } { (view::state(*st)) " " (view::num(*n)) } }
                    }
                }
            }
        }
        p.updated.muted {
            "Updated " (view::when(Utc::now())) "; refreshes every " (REFRESH_MS / 1000) " s."
        }
    }
}

pub async fn page(state: web::Data<AppState>, op: Operator) -> Result<HttpResponse, ConsoleError> {
    let s = snapshot(&state).await?;
    Ok(view::ok(view::page(
        "Overview",
        Nav::Overview,
        &op,
        html! {
            h1 { "Overview" }
            div #live data-refresh="/console/overview/live" data-every=(REFRESH_MS) { (live(&s)) }
        },
    )))
}

/// The live part alone, for console.js.
pub async fn fragment(
    state: web::Data<AppState>,
    _: Operator,
) -> Result<HttpResponse, ConsoleError> {
    let s = snapshot(&state).await?;
    Ok(view::ok(live(&s)))
}

//! The report: a table on stdout, `report.json`, and a self-contained
//! `report.html` (inline CSS and SVG charts, nothing fetched).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use admedia_actors::domain::tier::Tier;
use serde::Serialize;

use crate::audit::AuditReport;
use crate::charts::{self, Line};
use crate::cli::Plan;
use crate::metrics::{BacklogLevel, Figures, HistSummary};
use crate::recorder::{FaultCounts, Kill, Phase};

/// Fewer dispatches made with every tier backlogged say nothing about shares.
const MIN_SHARE_DISPATCHES: u64 = 100;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplaySummary {
    pub sent: u64,
    pub same_job: u64,
    pub marked_replayed: u64,
    pub other: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CancelSummary {
    pub sent: u64,
    /// 200 and cancelled while waiting (refunded).
    pub voided: u64,
    /// 200 and cancelled while running (charged).
    pub posted: u64,
    /// 409 job-finished.
    pub already_finished: u64,
    pub other: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerInfo {
    pub url: String,
    pub binary: Option<String>,
    pub starts: u32,
    pub kills: Vec<Kill>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub scenario: String,
    pub mode: String,
    pub started_at: String,
    pub run_s: f64,
    pub run_id: String,
    pub plan: Plan,
    pub server: ServerInfo,
    pub phases: Vec<Phase>,
    pub figures: Figures,
    pub backlog: Vec<BacklogLevel>,
    pub faults: FaultCounts,
    pub statuses: BTreeMap<String, u64>,
    pub replays: ReplaySummary,
    pub cancels: CancelSummary,
    pub resubmits: u64,
    pub drained: bool,
    pub warnings: Vec<String>,
    pub anomalies: Vec<String>,
    pub anomaly_count: u64,
    pub audit: AuditReport,
    pub passed: bool,
    /// The fleet scenario's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetFigures>,
    /// The soak scenario's memory and database size over time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::soak::Resources>,
}

/// The soak scenario's section of the text report: memory and database
/// size at the start of the steady state and at the end of the load.
pub fn soak_text(r: &crate::soak::Resources) -> String {
    let f = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} MiB"));
    let pct = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:+.1}%"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsoak: steady state from {:.0} s to the end of the load at {:.0} s ({} samples)",
        r.steady_from_s,
        r.load_end_s,
        r.t_s.len()
    );
    let _ = writeln!(
        out,
        "  server RSS:    {} at steady start, {} at end ({}), peak {}",
        f(r.rss_steady_mb),
        f(r.rss_end_mb),
        pct(r.rss_change_pct),
        f(r.rss_peak_mb)
    );
    let _ = writeln!(
        out,
        "  database size: {} at steady start, {} at end ({})",
        f(r.db_steady_mb),
        f(r.db_end_mb),
        pct(r.db_change_pct)
    );
    if let (Some(first), Some(last)) = (r.stored_jobs.first(), r.stored_jobs.last()) {
        let _ = writeln!(
            out,
            "  stored jobs:   {first:.0} at the first poll, {last:.0} at the last"
        );
    }
    out
}

/// The fleet scenario's section of the text report.
pub fn fleet_text(f: &crate::fleet::FleetFigures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "
fleet: every tier backlogged in every runnable class for {:.1} s of the load",
        f.backlogged_s
    );
    let rows: Vec<Vec<String>> = f
        .shares
        .iter()
        .map(|s| {
            vec![
                s.tier.clone(),
                s.weight.to_string(),
                format!("{:.2}%", s.expected * 100.0),
                format!("{:.1}", s.gpu_s),
                format!("{:.2}%", s.gpu_share * 100.0),
                format!("{:+.2}%", s.gpu_deviation_pct),
                s.dispatches.to_string(),
                format!("{:.2}%", s.dispatch_share * 100.0),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "tier",
            "weight",
            "expected",
            "GPU s",
            "GPU share",
            "deviation",
            "dispatches",
            "dispatch share",
        ],
        &rows,
    ));
    let _ = writeln!(
        out,
        "largest GPU-share deviation {:.2}% of the expected share (limit {:.0}%)",
        f.max_gpu_deviation_pct,
        crate::fleet::MAX_GPU_DEVIATION_PCT
    );
    let rows: Vec<Vec<String>> = f
        .workers
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.slots.to_string(),
                if w.broken { "broken" } else { "healthy" }.into(),
                w.attempts.to_string(),
                format!("{:.1}", w.demand_s),
                format!("{:.2}%", w.utilisation * 100.0),
            ]
        })
        .collect();
    out.push_str(&table(
        &["worker", "slots", "", "attempts", "demand s", "busy"],
        &rows,
    ));
    let _ = writeln!(
        out,
        "healthy slots busy {:.2}% of the time runnable work waited for them (limit {:.0}%)",
        f.utilisation * 100.0,
        crate::fleet::MIN_UTILISATION * 100.0
    );
    let h = &f.head_of_line;
    let _ = writeln!(
        out,
        "waited behind an unrunnable job: longest {:.1} ms in {} episodes; {} unrunnable jobs headed a line with runnable work behind, {} dispatches went past one (longest turn gap meanwhile {:.1} ms)",
        h.longest_wait_ms, h.episodes, h.unrunnable_heads, h.dispatched_past_unrunnable_head, h.longest_turn_gap_ms
    );
    for e in &h.detail {
        let _ = writeln!(
            out,
            "  user {} ({}) from {:.3} s: {:.1} ms, passed by {} dispatches of its tier's other users; head {}",
            e.user, e.tier, e.from_s, e.ms, e.passed_by, e.head_job
        );
    }
    let q: Vec<String> = f
        .quarantines
        .iter()
        .map(|q| match q.lifted_at_s {
            Some(l) => format!("{} {:.1}–{:.1} s", q.worker, q.at_s, l),
            None => format!("{} from {:.1} s", q.worker, q.at_s),
        })
        .collect();
    let _ = writeln!(
        out,
        "quarantines seen in /v1/admin/workers: {} ({}); admedia_worker_quarantines_total {}",
        f.quarantines.len(),
        q.join(", "),
        f.quarantines_metric
            .map_or("not read".to_owned(), |n| n.to_string())
    );
    let e = &f.expiry;
    let _ = writeln!(
        out,
        "expired: {} ({} for the unserved model, {} runnable (sd, xl, video: {:?}); per tier {:?}), {} voided exactly once; {} jobs for the unserved model, {} of them ended otherwise",
        e.expired, e.expired_orphans, e.expired_runnable, e.expired_runnable_by_class, e.by_tier.values().collect::<Vec<_>>(), e.voided, e.orphans, e.orphans_not_expired
    );
    out
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn hist_row(name: &str, h: &HistSummary) -> Vec<String> {
    if h.count == 0 {
        return vec![
            name.into(),
            "0".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ];
    }
    vec![
        name.into(),
        h.count.to_string(),
        ms(h.p50_ms),
        ms(h.p90_ms),
        ms(h.p99_ms),
        ms(h.p999_ms),
        ms(h.max_ms),
        ms(h.mean_ms),
    ]
}

const HIST_HEAD: [&str; 8] = [
    "latency (ms)",
    "count",
    "p50",
    "p90",
    "p99",
    "p99.9",
    "max",
    "mean",
];

/// A plain text table with aligned columns.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i == 0 {
                let _ = write!(s, "{c:<w$}");
            } else {
                let _ = write!(s, "  {c:>w$}");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(
        &head.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        &mut out,
    );
    let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in rows {
        line(r, &mut out);
    }
    out
}

fn latency_rows(r: &Report) -> Vec<Vec<String>> {
    let f = &r.figures;
    let mut rows = vec![
        hist_row("submit (from intended send)", &f.submit_latency),
        hist_row("submit (from actual send)", &f.submit_service),
    ];
    if f.prefill_submit_latency.count > 0 {
        rows.push(hist_row("submit during prefill", &f.prefill_submit_latency));
    }
    rows.push(hist_row("queue wait (to first assign)", &f.queue_wait));
    rows.push(hist_row(
        "dispatch (slot free to assign)",
        &f.dispatch_latency,
    ));
    rows.push(hist_row("end to end (to finished_at)", &f.end_to_end));
    rows
}

fn tier_rows(r: &Report) -> Vec<Vec<String>> {
    r.figures
        .tiers
        .iter()
        .map(|(tier, t)| {
            vec![
                tier.to_string(),
                t.submitted.to_string(),
                t.accepted.to_string(),
                t.succeeded.to_string(),
                t.failed.to_string(),
                t.cancelled.to_string(),
                t.dispatches.to_string(),
                if t.queue_wait.count > 0 {
                    ms(t.queue_wait.p50_ms)
                } else {
                    "-".into()
                },
                if t.queue_wait.count > 0 {
                    ms(t.queue_wait.p99_ms)
                } else {
                    "-".into()
                },
                if t.end_to_end.count > 0 {
                    ms(t.end_to_end.p50_ms)
                } else {
                    "-".into()
                },
                if t.end_to_end.count > 0 {
                    ms(t.end_to_end.p99_ms)
                } else {
                    "-".into()
                },
            ]
        })
        .collect()
}

const TIER_HEAD: [&str; 11] = [
    "tier",
    "submitted",
    "accepted",
    "succeeded",
    "failed",
    "cancelled",
    "dispatches",
    "wait p50",
    "wait p99",
    "e2e p50",
    "e2e p99",
];

fn share_rows(r: &Report) -> Vec<Vec<String>> {
    let s = &r.figures.shares;
    Tier::ALL
        .into_iter()
        .map(|t| {
            vec![
                t.as_str().to_owned(),
                s.counts[t].to_string(),
                format!("{:.1}%", s.observed[t] * 100.0),
                format!("{:.1}%", s.expected[t] * 100.0),
                s.within_tier_jain[t].map_or("-".into(), |j| format!("{j:.3}")),
            ]
        })
        .collect()
}

const SHARE_HEAD: [&str; 5] = ["tier", "dispatches", "observed", "expected", "jain (users)"];

fn backlog_rows(r: &Report) -> Vec<Vec<String>> {
    r.backlog
        .iter()
        .map(|b| {
            vec![
                b.backlog.to_string(),
                b.accepted.to_string(),
                format!("{:.0}", b.fill_rate_per_s),
                format!("{:.0}", b.window_throughput_per_s),
                ms(b.window_dispatch_latency.p50_ms),
                ms(b.window_dispatch_latency.p99_ms),
                format!("{:.0}", b.drain_throughput_per_s),
                format!("{:.1}", b.drain_s),
            ]
        })
        .collect()
}

const BACKLOG_HEAD: [&str; 8] = [
    "backlog",
    "accepted",
    "fill/s",
    "dispatch/s (first 20%)",
    "disp p50 ms",
    "disp p99 ms",
    "dispatch/s (drain)",
    "drain s",
];

/// The stdout summary.
pub fn text(r: &Report) -> String {
    let f = &r.figures;
    let p = &r.plan;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nadmedia-loadtest — scenario {} ({}), run {}, {:.1} s",
        r.scenario, r.mode, r.run_id, r.run_s
    );
    let load = match &p.load {
        crate::cli::Load::Open { rate } => format!("open loop, Poisson at {rate}/s"),
        crate::cli::Load::Closed {
            concurrency,
            batch: 1,
        } => format!("closed loop, {concurrency} clients"),
        crate::cli::Load::Closed { concurrency, batch } => {
            format!("closed loop, {concurrency} clients, batches of {batch}")
        }
    };
    let _ = writeln!(
        out,
        "load: {load}; {} users (mix {:?}); {} workers × {} slots, {} ms jobs; prefill {}",
        p.users,
        p.tier_mix.values().collect::<Vec<_>>(),
        p.workers,
        p.slots,
        p.job_time.as_millis(),
        p.prefill
    );
    let _ = writeln!(
        out,
        "\nload phase {:.1} s: {} submitted, {} accepted ({:.1}/s); dispatched {:.1}/s; succeeded {:.1}/s (peak {:.0}/s)",
        f.load_s, f.submitted, f.accepted, f.accepted_per_s, f.dispatched_per_s, f.succeeded_per_s, f.peak_finished_per_s
    );
    let statuses: Vec<String> = r
        .statuses
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(
        out,
        "answers: {}; resubmissions {}",
        statuses.join(", "),
        r.resubmits
    );
    let _ = writeln!(
        out,
        "replays: {} sent, {} same job, {} marked Idempotent-Replayed; cancels: {} sent, {} refunded, {} charged (running), {} already finished, {} other",
        r.replays.sent, r.replays.same_job, r.replays.marked_replayed, r.cancels.sent, r.cancels.voided, r.cancels.posted, r.cancels.already_finished, r.cancels.other
    );
    let fc = &r.faults;
    let _ = writeln!(
        out,
        "faults injected: {} crashes, {} hangs ({} dropped by the server), {} slow, {} system errors, {} user errors, {} late duplicates ({} refused by the server); {} reconnects",
        fc.crashes, fc.hangs, fc.hang_dropped_by_server, fc.slow, fc.system_errors, fc.user_errors, fc.duplicates_sent, fc.server_errors_received, fc.reconnects
    );
    if !r.server.kills.is_empty() {
        let _ = writeln!(
            out,
            "server SIGKILLed and restarted {} times",
            r.server.kills.len()
        );
    }
    out.push('\n');
    out.push_str(&table(&HIST_HEAD, &latency_rows(r)));
    out.push('\n');
    out.push_str(&table(&TIER_HEAD, &tier_rows(r)));
    let s = &f.shares;
    if s.dispatches >= MIN_SHARE_DISPATCHES {
        let _ = writeln!(
            out,
            "\ndispatch share while every tier was backlogged ({} dispatches over {:.1} s; max deviation {:.2} pp):",
            s.dispatches, s.backlogged_s, s.max_deviation_pp
        );
        out.push_str(&table(&SHARE_HEAD, &share_rows(r)));
    } else {
        let _ = writeln!(
            out,
            "\ndispatch share: {} dispatches happened while every tier was backlogged, too few to compare with the weights (fairness scenario does that)",
            s.dispatches
        );
    }
    if !r.backlog.is_empty() {
        out.push_str("\nbacklog sweep:\n");
        out.push_str(&table(&BACKLOG_HEAD, &backlog_rows(r)));
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if r.anomaly_count > 0 {
        let _ = writeln!(out, "\n{} anomalies noted (first ones):", r.anomaly_count);
        for a in r.anomalies.iter().take(10) {
            let _ = writeln!(out, "  {a}");
        }
    }
    if let Some(fleet) = &r.fleet {
        out.push_str(&fleet_text(fleet));
    }
    if let Some(res) = &r.resources {
        out.push_str(&soak_text(res));
    }
    let a = &r.audit;
    let _ = writeln!(
        out,
        "\naudit: {} users, {} jobs ({} succeeded, {} failed by system, {} failed by user, {} cancelled), {} ledger entries, {} replays, {} cancels, {} assigns checked",
        a.users, a.jobs, a.succeeded, a.failed_system, a.failed_user, a.cancelled, a.ledger_entries, a.replays_checked, a.cancels_checked, a.assigns_checked
    );
    if a.pruned + a.archived > 0 {
        let _ = writeln!(
            out,
            "       and {} pruned and {} archived jobs, not listed, audited from the ledger alone",
            a.pruned, a.archived
        );
    }
    if a.passed {
        out.push_str("AUDIT PASSED: every invariant holds\n");
    } else {
        let _ = writeln!(out, "AUDIT FAILED: {} violations", a.violations.len());
        for v in &a.violations {
            let shown: Vec<&str> = v.ids.iter().take(20).map(String::as_str).collect();
            let more = if v.ids.len() > 20 {
                format!(" … and {} more", v.ids.len() - 20)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  [{}] {}: {}{}",
                v.check,
                v.detail,
                shown.join(", "),
                more
            );
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", esc(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

fn opt_points(t: &[f64], v: &[Option<f64>]) -> Vec<(f64, f64)> {
    t.iter()
        .zip(v)
        .filter_map(|(&t, v)| v.map(|v| (t + 0.5, v)))
        .collect()
}

/// Samples taken at their own times (not per-second buckets).
fn opt_points_at(t: &[f64], v: &[Option<f64>]) -> Vec<(f64, f64)> {
    t.iter()
        .zip(v)
        .filter_map(|(&t, v)| v.map(|v| (t, v)))
        .collect()
}

fn points(t: &[f64], v: &[f64]) -> Vec<(f64, f64)> {
    t.iter().zip(v).map(|(&t, &v)| (t + 0.5, v)).collect()
}

fn charts(r: &Report) -> Vec<(String, Result<String, String>)> {
    let s = &r.figures.series;
    let mut out = vec![
        (
            "Throughput".to_owned(),
            charts::lines(
                "Throughput (per second)",
                "seconds since start",
                "jobs per second",
                &[
                    Line {
                        name: "accepted",
                        points: points(&s.t_s, &s.submitted),
                    },
                    Line {
                        name: "dispatched (assigns)",
                        points: points(&s.t_s, &s.dispatched),
                    },
                    Line {
                        name: "succeeded (finished_at)",
                        points: points(&s.t_s, &s.finished),
                    },
                ],
            ),
        ),
        (
            "Queue depth per tier".to_owned(),
            charts::lines(
                "Waiting jobs per tier, and jobs running (from /v1/admin/stats)",
                "seconds since start",
                "jobs",
                &Tier::ALL
                    .into_iter()
                    .map(|t| Line {
                        name: t.as_str(),
                        points: s
                            .queue_t_s
                            .iter()
                            .copied()
                            .zip(s.queue[t].iter().copied())
                            .collect(),
                    })
                    .chain([Line {
                        name: "running",
                        points: s
                            .queue_t_s
                            .iter()
                            .copied()
                            .zip(s.running.iter().copied())
                            .collect(),
                    }])
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "Latency over time".to_owned(),
            charts::lines(
                "Latency percentiles per second",
                "seconds since start",
                "milliseconds",
                &[
                    Line {
                        name: "submit p50",
                        points: opt_points(&s.t_s, &s.submit_p50_ms),
                    },
                    Line {
                        name: "submit p99",
                        points: opt_points(&s.t_s, &s.submit_p99_ms),
                    },
                    Line {
                        name: "queue wait p50",
                        points: opt_points(&s.t_s, &s.wait_p50_ms),
                    },
                    Line {
                        name: "queue wait p99",
                        points: opt_points(&s.t_s, &s.wait_p99_ms),
                    },
                ],
            ),
        ),
        (
            "Latency distribution".to_owned(),
            charts::percentiles("Latency distribution (load phase)", &r.figures.curves),
        ),
    ];
    if let Some(res) = &r.resources {
        out.push((
            "Server memory and storage".to_owned(),
            charts::lines(
                "Server RSS and database size (MiB)",
                "seconds since start",
                "MiB",
                &[
                    Line {
                        name: "server RSS",
                        points: opt_points_at(&res.t_s, &res.rss_mb),
                    },
                    Line {
                        name: "database size",
                        points: opt_points_at(&res.t_s, &res.db_mb),
                    },
                ],
            ),
        ));
        out.push((
            "Stored and waiting jobs".to_owned(),
            charts::lines(
                "Jobs the store holds (every state) and jobs waiting (from /v1/admin/stats)",
                "seconds since start",
                "jobs",
                &[
                    Line {
                        name: "stored jobs",
                        points: res
                            .stats_t_s
                            .iter()
                            .copied()
                            .zip(res.stored_jobs.iter().copied())
                            .collect(),
                    },
                    Line {
                        name: "waiting",
                        points: res
                            .stats_t_s
                            .iter()
                            .copied()
                            .zip(res.waiting.iter().copied())
                            .collect(),
                    },
                ],
            ),
        ));
    }
    let sh = &r.figures.shares;
    if sh.dispatches >= MIN_SHARE_DISPATCHES {
        out.push((
            "Tier shares".to_owned(),
            charts::paired_bars(
                &format!(
                    "Dispatch share while every tier was backlogged ({} dispatches)",
                    sh.dispatches
                ),
                "% of dispatches",
                &Tier::ALL.map(|t| t.as_str().to_owned()),
                ("observed", "expected"),
                &Tier::ALL.map(|t| (sh.observed[t] * 100.0, sh.expected[t] * 100.0)),
            ),
        ));
    }
    if !r.backlog.is_empty() {
        out.push((
            "Backlog sweep".to_owned(),
            charts::paired_bars(
                "Dispatch throughput by backlog size",
                "dispatches per second",
                &r.backlog
                    .iter()
                    .map(|b| b.backlog.to_string())
                    .collect::<Vec<_>>(),
                ("first 20%", "whole drain"),
                &r.backlog
                    .iter()
                    .map(|b| (b.window_throughput_per_s, b.drain_throughput_per_s))
                    .collect::<Vec<_>>(),
            ),
        ));
    }
    out
}

pub fn html(r: &Report) -> String {
    let mut h = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>admedia-loadtest: {} — {}</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222}}\
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
td:first-child,th:first-child{{text-align:left}}th{{background:#f3f3f3}}\
.badge{{display:inline-block;padding:4px 12px;border-radius:4px;color:#fff;font-weight:bold}}\
.ok{{background:#2a7d2a}}.bad{{background:#b22}}figure{{margin:1em 0}}code{{background:#f3f3f3;padding:1px 4px}}\
.muted{{color:#666}}pre{{white-space:pre-wrap;font-size:12px}}</style></head><body>",
        esc(&r.scenario),
        verdict
    );
    let _ = write!(
        h,
        "<h1>admedia-loadtest: {} <span class=\"badge {}\">audit {}</span></h1>\
<p class=\"muted\">{} · run {} · started {} · {:.1} s · server {}</p>",
        esc(&r.scenario),
        if r.passed { "ok" } else { "bad" },
        verdict,
        esc(&r.mode),
        esc(&r.run_id),
        esc(&r.started_at),
        r.run_s,
        esc(&r.server.url)
    );
    h.push_str("<h2>Summary</h2><pre>");
    h.push_str(&esc(&text(r)));
    h.push_str("</pre>");
    h.push_str("<h2>Latency</h2>");
    h.push_str(&html_table(&HIST_HEAD, &latency_rows(r)));
    h.push_str("<h2>Per tier</h2>");
    h.push_str(&html_table(&TIER_HEAD, &tier_rows(r)));
    if r.figures.shares.dispatches >= MIN_SHARE_DISPATCHES {
        h.push_str("<h2>Dispatch share while every tier was backlogged</h2>");
        h.push_str(&html_table(&SHARE_HEAD, &share_rows(r)));
    }
    if !r.backlog.is_empty() {
        h.push_str("<h2>Backlog sweep</h2>");
        h.push_str(&html_table(&BACKLOG_HEAD, &backlog_rows(r)));
    }
    h.push_str("<h2>Charts</h2>");
    for (name, svg) in charts(r) {
        match svg {
            Ok(svg) if !svg.is_empty() => {
                let _ = write!(
                    h,
                    "<figure><figcaption>{}</figcaption>{svg}</figure>",
                    esc(&name)
                );
            }
            Ok(_) => {
                let _ = write!(h, "<p class=\"muted\">{}: no data</p>", esc(&name));
            }
            Err(e) => {
                let _ = write!(h, "<p class=\"muted\">{}: {}</p>", esc(&name), esc(&e));
            }
        }
    }
    if let Some(fleet) = &r.fleet {
        let _ = write!(h, "<h2>Fleet</h2><pre>{}</pre>", esc(&fleet_text(fleet)));
    }
    if let Some(res) = &r.resources {
        let _ = write!(h, "<h2>Soak</h2><pre>{}</pre>", esc(&soak_text(res)));
    }
    h.push_str("<h2>Audit</h2>");
    if r.audit.violations.is_empty() {
        h.push_str("<p>Every invariant holds.</p>");
    } else {
        let rows: Vec<Vec<String>> = r
            .audit
            .violations
            .iter()
            .map(|v| vec![v.check.clone(), v.detail.clone(), v.ids.join(" ")])
            .collect();
        h.push_str(&html_table(&["check", "detail", "ids"], &rows));
    }
    h.push_str("<h2>Configuration</h2><pre>");
    h.push_str(&esc(
        &serde_json::to_string_pretty(&r.plan).unwrap_or_default()
    ));
    h.push_str("</pre><p class=\"muted\">The same figures are in <code>report.json</code> beside this file.</p></body></html>\n");
    h
}

/// Writes report.json and report.html into `dir`.
pub fn write(dir: &Path, r: &Report) -> Result<(), String> {
    let json = serde_json::to_string_pretty(r).map_err(|e| format!("report.json: {e}"))?;
    std::fs::write(dir.join("report.json"), json)
        .map_err(|e| format!("{}: {e}", dir.join("report.json").display()))?;
    std::fs::write(dir.join("report.html"), html(r))
        .map_err(|e| format!("{}: {e}", dir.join("report.html").display()))?;
    Ok(())
}

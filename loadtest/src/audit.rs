//! The invariant audit: a pure function over what the API returned at the
//! end of a run (every job, every ledger entry, every wallet of the run's
//! users) and what the harness itself observed during the run (the jobs it
//! was told were accepted, idempotent replays, acknowledged cancels, and
//! every `assign` its workers received).
//!
//! The checks are the money and lifecycle rules of `docs/architecture.md`:
//! - every job is terminal;
//! - per user `balance = Σ grants − Σ posts`, `held = 0` and equal to the
//!   open holds, never negative (neither at the end nor after any entry);
//! - every job has exactly one hold of its cost, resolved exactly once: a
//!   succeeded job (and a user-error failure) posted once, a system-failed
//!   job voided once, a cancelled job posted or voided once as its `charge`
//!   says;
//! - one job per idempotency key, and a replay returns the first job;
//! - no job was dispatched again after its cancel was acknowledged, and an
//!   acknowledged cancel is the job's final state.
//!
//! Nothing here does I/O, so it is tested on hand-made broken ledgers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use admedia_actors::domain::job::{Charge, FailureClass, JobState};
use admedia_actors::domain::ledger::EntryKind;
use serde::Serialize;

/// A job as `GET /v1/jobs` returned it.
#[derive(Clone, Debug)]
pub struct AuditJob {
    pub id: String,
    pub user: String,
    pub state: JobState,
    pub cost: i64,
    pub charge: Charge,
    /// `error.class` of a failed job.
    pub error_class: Option<FailureClass>,
    /// The idempotency key it was submitted with, when the harness can
    /// tell (it writes the key into the prompt).
    pub idempotency_key: Option<String>,
    pub attempts: u32,
}

/// A ledger entry as `GET /v1/wallet/ledger` returned it.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    /// The store-wide sequence number: entries replay in this order.
    pub id: i64,
    pub user: String,
    pub kind: EntryKind,
    pub amount: i64,
    /// The wallet right after this entry, as the server recorded it.
    pub balance: i64,
    pub held: i64,
    pub job_id: Option<String>,
}

/// A wallet as `GET /v1/wallet` returned it at the end.
#[derive(Clone, Debug)]
pub struct AuditWallet {
    pub user: String,
    pub balance: i64,
    pub held: i64,
    pub available: i64,
}

/// A cancel the server acknowledged with 200.
#[derive(Clone, Debug)]
pub struct ObservedCancel {
    pub job_id: String,
    /// Microseconds since the start of the run.
    pub acked_at_us: u64,
    /// `attempts` in the cancel's response: any later attempt ran after it.
    pub attempts_at_cancel: u32,
    pub state: JobState,
    pub charge: Charge,
}

/// An `assign` one of the harness's workers received.
#[derive(Clone, Debug)]
pub struct ObservedAssign {
    pub job_id: String,
    pub attempt: u32,
    pub at_us: u64,
}

/// A submission sent again with the same idempotency key and body.
#[derive(Clone, Debug)]
pub struct ObservedReplay {
    pub key: String,
    pub first_job: String,
    pub replay_job: String,
}

#[derive(Clone, Debug, Default)]
pub struct AuditInput {
    pub jobs: Vec<AuditJob>,
    pub entries: Vec<AuditEntry>,
    pub wallets: Vec<AuditWallet>,
    /// Job ids the server acknowledged with 202.
    pub acknowledged: Vec<String>,
    pub cancels: Vec<ObservedCancel>,
    pub assigns: Vec<ObservedAssign>,
    pub replays: Vec<ObservedReplay>,
    /// Acknowledged jobs retention pruned before the read-back: left out of
    /// listings, each confirmed `410 job-pruned` by its own read. Their
    /// money is audited from the ledger alone.
    pub pruned: BTreeSet<String>,
    /// Acknowledged, unlisted jobs whose own read answered `404 not-found`:
    /// the ledger archive took them with their history. They count as
    /// kept only when the ledger (which reads on into the archive) still
    /// holds their hold and its one resolution.
    pub archived: BTreeSet<String>,
    /// Acknowledged, unlisted jobs whose own read did not confirm a prune:
    /// what the read answered, after retries, so a violation says whether
    /// the job is gone from the server or only the read failed.
    pub unconfirmed: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Violation {
    /// A stable name of the broken invariant, e.g. `double-post`.
    pub check: String,
    /// The offending job ids, or user ids for wallet checks.
    pub ids: Vec<String>,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct AuditReport {
    pub passed: bool,
    pub users: usize,
    pub jobs: usize,
    pub ledger_entries: usize,
    pub succeeded: usize,
    pub failed_system: usize,
    pub failed_user: usize,
    pub cancelled: usize,
    pub replays_checked: usize,
    /// Jobs pruned by retention, audited from the ledger alone.
    pub pruned: usize,
    /// Jobs the ledger archive took, audited from the ledger alone.
    pub archived: usize,
    pub cancels_checked: usize,
    pub assigns_checked: usize,
    pub violations: Vec<Violation>,
}

impl AuditReport {
    /// Violations grouped by check, for the summary.
    pub fn by_check(&self) -> BTreeMap<&str, usize> {
        let mut out = BTreeMap::new();
        for v in &self.violations {
            *out.entry(v.check.as_str()).or_insert(0) += v.ids.len().max(1);
        }
        out
    }
}

/// Collects violations, one entry per (check, detail) with its ids.
#[derive(Default)]
struct Findings(BTreeMap<(String, String), BTreeSet<String>>);

impl Findings {
    fn add(&mut self, check: &str, id: &str, detail: impl Into<String>) {
        self.0
            .entry((check.to_owned(), detail.into()))
            .or_default()
            .insert(id.to_owned());
    }

    fn into_violations(self) -> Vec<Violation> {
        self.0
            .into_iter()
            .map(|((check, detail), ids)| Violation {
                check,
                ids: ids.into_iter().collect(),
                detail,
            })
            .collect()
    }
}

#[derive(Default)]
struct JobLedger {
    holds: Vec<i64>,
    posts: Vec<i64>,
    voids: Vec<i64>,
}

fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Runs every check; `passed` is true when no violation was found.
pub fn audit(input: &AuditInput) -> AuditReport {
    let mut f = Findings::default();
    let mut report = AuditReport {
        jobs: input.jobs.len(),
        ledger_entries: input.entries.len(),
        ..AuditReport::default()
    };

    let jobs: HashMap<&str, &AuditJob> = input.jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    if jobs.len() != input.jobs.len() {
        let mut seen = BTreeSet::new();
        for j in &input.jobs {
            if !seen.insert(j.id.as_str()) {
                f.add(
                    "job-listed-twice",
                    &j.id,
                    "the job appears twice in the listing",
                );
            }
        }
    }

    // --- wallets: replay each user's entries in sequence order ---
    let mut by_user: BTreeMap<&str, Vec<&AuditEntry>> = BTreeMap::new();
    for e in &input.entries {
        by_user.entry(e.user.as_str()).or_default().push(e);
    }
    let wallets: BTreeMap<&str, &AuditWallet> =
        input.wallets.iter().map(|w| (w.user.as_str(), w)).collect();
    let mut users: BTreeSet<&str> = by_user.keys().copied().collect();
    users.extend(wallets.keys().copied());
    users.extend(input.jobs.iter().map(|j| j.user.as_str()));
    report.users = users.len();

    let mut per_job: HashMap<&str, JobLedger> = HashMap::new();
    for user in &users {
        let mut entries = by_user.get(user).cloned().unwrap_or_default();
        entries.sort_by_key(|e| e.id);
        let (mut balance, mut held) = (0i64, 0i64);
        let (mut grants, mut posts) = (0i64, 0i64);
        let mut open_holds: HashMap<&str, i64> = HashMap::new();
        let mut went_negative = false;
        let mut drift = false;
        for e in &entries {
            if e.amount <= 0 {
                f.add(
                    "ledger-amount-not-positive",
                    &e.id.to_string(),
                    format!("user {user}: entry amounts are always positive"),
                );
            }
            match e.kind {
                EntryKind::Grant => {
                    balance += e.amount;
                    grants += e.amount;
                }
                EntryKind::Hold => held += e.amount,
                EntryKind::Post => {
                    balance -= e.amount;
                    held -= e.amount;
                    posts += e.amount;
                }
                EntryKind::Void => held -= e.amount,
            }
            if let Some(job) = e.job_id.as_deref() {
                let jl = per_job.entry(job).or_default();
                match e.kind {
                    EntryKind::Hold => {
                        jl.holds.push(e.amount);
                        *open_holds.entry(job).or_insert(0) += e.amount;
                    }
                    EntryKind::Post => {
                        jl.posts.push(e.amount);
                        *open_holds.entry(job).or_insert(0) -= e.amount;
                    }
                    EntryKind::Void => {
                        jl.voids.push(e.amount);
                        *open_holds.entry(job).or_insert(0) -= e.amount;
                    }
                    EntryKind::Grant => {}
                }
            } else if e.kind != EntryKind::Grant {
                f.add(
                    "ledger-entry-without-job",
                    &e.id.to_string(),
                    format!("user {user}: a {} entry names no job", e.kind.as_str()),
                );
            }
            if balance < 0 || held < 0 || balance - held < 0 {
                went_negative = true;
            }
            if e.balance < 0 || e.held < 0 || e.balance - e.held < 0 {
                went_negative = true;
            }
            if e.balance != balance || e.held != held {
                drift = true;
            }
        }
        if went_negative {
            f.add(
                "negative-balance",
                user,
                "balance, held or available went below zero in the ledger",
            );
        }
        if drift {
            f.add(
                "ledger-replay-mismatch",
                user,
                "an entry's recorded balance/held differs from replaying the entries before it",
            );
        }
        let open: i64 = open_holds.values().sum();
        match wallets.get(user) {
            Some(w) => {
                if w.balance < 0 || w.held < 0 || w.available < 0 {
                    f.add("negative-balance", user, "the wallet reads negative");
                }
                if w.balance != grants - posts {
                    f.add(
                        "wallet-balance-mismatch",
                        user,
                        "wallet balance differs from Σ grants − Σ posts",
                    );
                }
                if w.held != 0 {
                    f.add(
                        "wallet-held-not-zero",
                        user,
                        "credits still held after every job ended",
                    );
                }
                if w.held != open {
                    f.add(
                        "wallet-held-mismatch",
                        user,
                        "wallet held differs from the sum of open holds",
                    );
                }
                if w.available != w.balance - w.held {
                    f.add(
                        "wallet-available-mismatch",
                        user,
                        "available differs from balance − held",
                    );
                }
            }
            None => {
                if !entries.is_empty() {
                    f.add("wallet-missing", user, "no wallet was read for this user");
                }
            }
        }
    }

    // --- jobs: state and their holds ---
    for job in &input.jobs {
        match (job.state, job.error_class) {
            (JobState::Succeeded, _) => report.succeeded += 1,
            (JobState::Failed, Some(FailureClass::User)) => report.failed_user += 1,
            (JobState::Failed, _) => report.failed_system += 1,
            (JobState::Cancelled, _) => report.cancelled += 1,
            _ => {}
        }
        if !is_terminal(job.state) {
            f.add(
                "job-not-terminal",
                &job.id,
                "the job had not finished when the run ended",
            );
            continue;
        }
        let empty = JobLedger::default();
        let jl = per_job.get(job.id.as_str()).unwrap_or(&empty);
        if jl.holds.len() != 1 {
            f.add(
                "hold-count",
                &job.id,
                format!("expected one hold per job, found {}", jl.holds.len()),
            );
        }
        if jl.holds.iter().any(|&h| h != job.cost) {
            f.add(
                "hold-amount-mismatch",
                &job.id,
                "a hold differs from the job's cost",
            );
        }
        let held: i64 = jl.holds.iter().sum();
        if jl.posts.iter().chain(jl.voids.iter()).any(|&a| a != held) {
            f.add(
                "resolution-amount-mismatch",
                &job.id,
                "a post or void differs from the amount held",
            );
        }
        if jl.posts.len() > 1 {
            f.add(
                "double-post",
                &job.id,
                "the job's hold was posted more than once",
            );
        }
        if jl.voids.len() > 1 {
            f.add(
                "double-void",
                &job.id,
                "the job's hold was voided more than once",
            );
        }
        if !jl.posts.is_empty() && !jl.voids.is_empty() {
            f.add(
                "posted-and-voided",
                &job.id,
                "the job's hold was both posted and voided",
            );
        }
        if jl.posts.is_empty() && jl.voids.is_empty() {
            f.add(
                "unresolved-hold",
                &job.id,
                "a finished job's hold was neither posted nor voided",
            );
        }
        match (job.state, job.error_class) {
            (JobState::Succeeded, _) if jl.posts.len() != 1 || !jl.voids.is_empty() => f.add(
                "succeeded-not-posted-once",
                &job.id,
                "a succeeded job must be posted exactly once and never voided",
            ),
            (JobState::Failed, Some(FailureClass::User))
                if jl.posts.len() != 1 || !jl.voids.is_empty() =>
            {
                f.add(
                    "user-failure-not-posted-once",
                    &job.id,
                    "a job failed by its input is charged: posted exactly once",
                )
            }
            (JobState::Failed, Some(FailureClass::User)) => {}
            (JobState::Failed, _) if jl.voids.len() != 1 || !jl.posts.is_empty() => f.add(
                "system-failure-not-voided-once",
                &job.id,
                "a system-failed job must be voided (refunded) exactly once",
            ),
            _ => {}
        }
        let charge_says = match job.charge {
            Charge::Held => (0, 0),
            Charge::Posted => (1, 0),
            Charge::Voided => (0, 1),
        };
        if (jl.posts.len(), jl.voids.len()) != charge_says {
            f.add(
                "charge-mismatch",
                &job.id,
                "the job's charge field disagrees with its ledger entries",
            );
        }
    }
    // A pruned job's hold and its one post or void stay in the ledger.
    for id in &input.pruned {
        let empty = JobLedger::default();
        let jl = per_job.get(id.as_str()).unwrap_or(&empty);
        if jl.holds.len() != 1 || jl.posts.len() + jl.voids.len() != 1 {
            f.add(
                "pruned-job-not-settled-once",
                id,
                format!(
                    "a pruned job must keep one hold and one post or void, found {} holds, {} posts, {} voids",
                    jl.holds.len(),
                    jl.posts.len(),
                    jl.voids.len()
                ),
            );
        }
    }
    report.pruned = input.pruned.len();
    // An archived job is gone from the store; only its money proves it
    // was kept.
    for id in &input.archived {
        let empty = JobLedger::default();
        let jl = per_job.get(id.as_str()).unwrap_or(&empty);
        if jl.holds.len() != 1 || jl.posts.len() + jl.voids.len() != 1 {
            f.add(
                "acknowledged-job-missing",
                id,
                format!(
                    "the job answers 404 and the ledger, archive included, holds {} holds, {} posts, {} voids for it, not one hold and its resolution",
                    jl.holds.len(),
                    jl.posts.len(),
                    jl.voids.len()
                ),
            );
        }
    }
    report.archived = input.archived.len();
    for (job_id, _) in per_job.iter() {
        if !jobs.contains_key(job_id)
            && !input.pruned.contains(*job_id)
            && !input.archived.contains(*job_id)
        {
            f.add(
                "orphan-ledger-entry",
                job_id,
                "ledger entries name a job that is not in the user's job list",
            );
        }
    }

    // --- acknowledged submissions and idempotency ---
    for id in &input.acknowledged {
        if !jobs.contains_key(id.as_str())
            && !input.pruned.contains(id)
            && !input.archived.contains(id)
        {
            let detail = match input.unconfirmed.get(id) {
                Some(answer) => format!(
                    "the server acknowledged the job (202) but it is not listed, and its own read answered {answer}"
                ),
                None => "the server acknowledged the job (202) but it is not listed".to_owned(),
            };
            f.add("acknowledged-job-missing", id, detail);
        }
    }
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for job in &input.jobs {
        if let Some(key) = &job.idempotency_key {
            by_key
                .entry(key.as_str())
                .or_default()
                .push(job.id.as_str());
        }
    }
    for ids in by_key.values() {
        if ids.len() > 1 {
            for id in ids {
                f.add(
                    "idempotency-key-charged-twice",
                    id,
                    "more than one job exists for one idempotency key",
                );
            }
        }
    }
    report.replays_checked = input.replays.len();
    for r in &input.replays {
        if r.first_job != r.replay_job {
            f.add(
                "replay-returned-another-job",
                &r.replay_job,
                "a replayed idempotency key answered with a different job than the first",
            );
        }
    }

    // --- cancels ---
    report.cancels_checked = input.cancels.len();
    report.assigns_checked = input.assigns.len();
    let mut cancels: HashMap<&str, &ObservedCancel> = HashMap::new();
    for c in &input.cancels {
        if c.state != JobState::Cancelled {
            continue;
        }
        cancels
            .entry(c.job_id.as_str())
            .and_modify(|prev| {
                if c.acked_at_us < prev.acked_at_us {
                    *prev = c;
                }
            })
            .or_insert(c);
    }
    for c in cancels.values() {
        if let Some(job) = jobs.get(c.job_id.as_str()) {
            if job.state != JobState::Cancelled {
                f.add(
                    "cancel-not-final",
                    &c.job_id,
                    "the cancel was acknowledged, but the job ended in another state",
                );
            }
            if job.charge != c.charge && c.charge != Charge::Held {
                f.add(
                    "cancel-charge-changed",
                    &c.job_id,
                    "the job's charge changed after its cancel was acknowledged",
                );
            }
        }
    }
    for a in &input.assigns {
        if let Some(c) = cancels.get(a.job_id.as_str()) {
            if a.attempt > c.attempts_at_cancel {
                f.add(
                    "ran-after-cancel",
                    &a.job_id,
                    "a new attempt was dispatched after the cancel was acknowledged",
                );
            } else if a.at_us > c.acked_at_us && c.charge == Charge::Voided {
                f.add(
                    "ran-after-cancel",
                    &a.job_id,
                    "the job was cancelled while waiting, yet a worker received it afterwards",
                );
            }
        }
    }

    report.violations = f.into_violations();
    report.passed = report.violations.is_empty();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "user-1";

    fn job(id: &str, state: JobState, charge: Charge, class: Option<FailureClass>) -> AuditJob {
        AuditJob {
            id: id.into(),
            user: U.into(),
            state,
            cost: 2,
            charge,
            error_class: class,
            idempotency_key: Some(format!("key-{id}")),
            attempts: 1,
        }
    }

    /// Builds entries with consistent running balances, as a correct
    /// server records them.
    struct LedgerBuilder {
        next: i64,
        balance: i64,
        held: i64,
        entries: Vec<AuditEntry>,
    }

    impl LedgerBuilder {
        fn new() -> Self {
            LedgerBuilder {
                next: 1,
                balance: 0,
                held: 0,
                entries: Vec::new(),
            }
        }

        fn push(&mut self, kind: EntryKind, amount: i64, job: Option<&str>) -> &mut Self {
            match kind {
                EntryKind::Grant => self.balance += amount,
                EntryKind::Hold => self.held += amount,
                EntryKind::Post => {
                    self.balance -= amount;
                    self.held -= amount;
                }
                EntryKind::Void => self.held -= amount,
            }
            self.entries.push(AuditEntry {
                id: self.next,
                user: U.into(),
                kind,
                amount,
                balance: self.balance,
                held: self.held,
                job_id: job.map(str::to_owned),
            });
            self.next += 1;
            self
        }

        fn wallet(&self) -> AuditWallet {
            AuditWallet {
                user: U.into(),
                balance: self.balance,
                held: self.held,
                available: self.balance - self.held,
            }
        }
    }

    /// A correct run: a grant; a succeeded, a system-failed, a user-failed,
    /// a cancelled-while-waiting and a cancelled-while-running job.
    fn correct() -> AuditInput {
        let mut l = LedgerBuilder::new();
        l.push(EntryKind::Grant, 100, None);
        for id in ["ok", "sys", "usr", "cq", "cr"] {
            l.push(EntryKind::Hold, 2, Some(id));
        }
        l.push(EntryKind::Post, 2, Some("ok"))
            .push(EntryKind::Void, 2, Some("sys"))
            .push(EntryKind::Post, 2, Some("usr"))
            .push(EntryKind::Void, 2, Some("cq"))
            .push(EntryKind::Post, 2, Some("cr"));
        AuditInput {
            jobs: vec![
                job("ok", JobState::Succeeded, Charge::Posted, None),
                job(
                    "sys",
                    JobState::Failed,
                    Charge::Voided,
                    Some(FailureClass::System),
                ),
                job(
                    "usr",
                    JobState::Failed,
                    Charge::Posted,
                    Some(FailureClass::User),
                ),
                job("cq", JobState::Cancelled, Charge::Voided, None),
                job("cr", JobState::Cancelled, Charge::Posted, None),
            ],
            wallets: vec![l.wallet()],
            entries: l.entries,
            acknowledged: vec!["ok".into(), "sys".into()],
            cancels: vec![ObservedCancel {
                job_id: "cq".into(),
                acked_at_us: 1_000,
                attempts_at_cancel: 0,
                state: JobState::Cancelled,
                charge: Charge::Voided,
            }],
            assigns: vec![ObservedAssign {
                job_id: "ok".into(),
                attempt: 1,
                at_us: 500,
            }],
            pruned: BTreeSet::new(),
            archived: BTreeSet::new(),
            unconfirmed: BTreeMap::new(),
            replays: vec![ObservedReplay {
                key: "key-ok".into(),
                first_job: "ok".into(),
                replay_job: "ok".into(),
            }],
        }
    }

    fn checks(report: &AuditReport) -> Vec<&str> {
        report.violations.iter().map(|v| v.check.as_str()).collect()
    }

    #[test]
    fn a_correct_ledger_passes() {
        let report = audit(&correct());
        assert!(report.passed, "{:#?}", report.violations);
        assert_eq!(report.jobs, 5);
        assert_eq!(report.succeeded, 1);
        assert_eq!(report.failed_system, 1);
        assert_eq!(report.failed_user, 1);
        assert_eq!(report.cancelled, 2);
    }

    #[test]
    fn pruned_jobs_are_audited_from_the_ledger_alone() {
        // Retention pruned the succeeded and the system-failed job: they
        // are no longer listed, their entries stay.
        let mut input = correct();
        input.jobs.retain(|j| j.id != "ok" && j.id != "sys");
        let report = audit(&input);
        let found = checks(&report);
        assert!(found.contains(&"acknowledged-job-missing"), "{found:?}");
        assert!(found.contains(&"orphan-ledger-entry"), "{found:?}");
        // A job whose read failed is not taken for pruned: the violation
        // quotes what the read answered.
        input.pruned = ["ok".to_owned()].into();
        input.unconfirmed = [("sys".to_owned(), "no answer: timeout".to_owned())].into();
        let report = audit(&input);
        let missing = report
            .violations
            .iter()
            .find(|v| v.check == "acknowledged-job-missing")
            .expect("the unconfirmed job is missing");
        assert_eq!(missing.ids, ["sys"]);
        assert!(
            missing.detail.ends_with("answered no answer: timeout"),
            "{}",
            missing.detail
        );
        input.unconfirmed.clear();
        input.pruned = ["ok".to_owned(), "sys".to_owned()].into();
        let report = audit(&input);
        assert!(report.passed, "{:?}", report.violations);
        assert_eq!(report.pruned, 2);
        // A pruned job whose hold was never resolved is still caught.
        input
            .entries
            .retain(|e| !(e.kind == EntryKind::Post && e.job_id.as_deref() == Some("ok")));
        let mut l = LedgerBuilder::new();
        for e in &input.entries {
            l.push(e.kind, e.amount, e.job_id.as_deref());
        }
        input.entries = l.entries.clone();
        input.wallets = vec![l.wallet()];
        let report = audit(&input);
        let found = checks(&report);
        assert!(found.contains(&"pruned-job-not-settled-once"), "{found:?}");
    }

    #[test]
    fn archived_jobs_count_only_with_their_money_in_the_ledger() {
        // The archive took the succeeded job: it answers 404, and its
        // hold and post are in the ledger (read on into the archive).
        let mut input = correct();
        input.jobs.retain(|j| j.id != "ok");
        input.archived = ["ok".to_owned()].into();
        let report = audit(&input);
        assert!(report.passed, "{:?}", report.violations);
        assert_eq!(report.archived, 1);
        // A 404 whose money is nowhere is a lost job.
        let mut lost = correct();
        lost.jobs.retain(|j| j.id != "ok");
        lost.archived = ["ok".to_owned()].into();
        let mut l = LedgerBuilder::new();
        for e in lost
            .entries
            .iter()
            .filter(|e| e.job_id.as_deref() != Some("ok"))
        {
            l.push(e.kind, e.amount, e.job_id.as_deref());
        }
        lost.entries = l.entries.clone();
        lost.wallets = vec![l.wallet()];
        let report = audit(&lost);
        let missing = report
            .violations
            .iter()
            .find(|v| v.check == "acknowledged-job-missing")
            .expect("the lost job is missing");
        assert_eq!(missing.ids, ["ok"]);
        assert!(missing.detail.contains("0 holds"), "{}", missing.detail);
    }

    #[test]
    fn a_missing_void_is_caught() {
        let mut input = correct();
        // Drop the void of the system-failed job: its credits stay held.
        input
            .entries
            .retain(|e| !(e.kind == EntryKind::Void && e.job_id.as_deref() == Some("sys")));
        let mut l = LedgerBuilder::new();
        for e in &input.entries {
            l.push(e.kind, e.amount, e.job_id.as_deref());
        }
        input.entries = l.entries.clone();
        input.wallets = vec![l.wallet()];
        let report = audit(&input);
        assert!(!report.passed);
        let found = checks(&report);
        assert!(
            found.contains(&"system-failure-not-voided-once"),
            "{found:?}"
        );
        assert!(found.contains(&"unresolved-hold"), "{found:?}");
        assert!(found.contains(&"wallet-held-not-zero"), "{found:?}");
        let v = report
            .violations
            .iter()
            .find(|v| v.check == "system-failure-not-voided-once")
            .map(|v| v.ids.clone());
        assert_eq!(v, Some(vec!["sys".to_owned()]));
    }

    #[test]
    fn a_double_post_is_caught() {
        let mut input = correct();
        let mut l = LedgerBuilder::new();
        for e in &input.entries {
            l.push(e.kind, e.amount, e.job_id.as_deref());
        }
        // A late duplicate completion charged the job a second time.
        l.push(EntryKind::Post, 2, Some("ok"));
        input.entries = l.entries.clone();
        input.wallets = vec![l.wallet()];
        let report = audit(&input);
        assert!(!report.passed);
        let found = checks(&report);
        assert!(found.contains(&"double-post"), "{found:?}");
        assert!(found.contains(&"succeeded-not-posted-once"), "{found:?}");
        assert!(found.contains(&"negative-balance"), "{found:?}");
        let ids: Vec<_> = report
            .violations
            .iter()
            .filter(|v| v.check == "double-post")
            .flat_map(|v| v.ids.clone())
            .collect();
        assert_eq!(ids, vec!["ok".to_owned()]);
    }

    #[test]
    fn a_negative_balance_is_caught() {
        let mut input = correct();
        // Spend more than was granted: the server let available go negative.
        let mut l = LedgerBuilder::new();
        l.push(EntryKind::Grant, 3, None)
            .push(EntryKind::Hold, 2, Some("ok"))
            .push(EntryKind::Hold, 2, Some("sys"))
            .push(EntryKind::Post, 2, Some("ok"))
            .push(EntryKind::Void, 2, Some("sys"));
        input.jobs.truncate(2);
        input.cancels.clear();
        input.entries = l.entries.clone();
        input.wallets = vec![l.wallet()];
        let report = audit(&input);
        assert_eq!(checks(&report), vec!["negative-balance"]);
        assert_eq!(report.violations[0].ids, vec![U.to_owned()]);
    }

    #[test]
    fn a_wallet_that_disagrees_with_its_ledger_is_caught() {
        let mut input = correct();
        input.wallets[0].balance += 5;
        input.wallets[0].available += 5;
        assert_eq!(checks(&audit(&input)), vec!["wallet-balance-mismatch"]);
    }

    #[test]
    fn unfinished_jobs_and_lost_acknowledgements_are_caught() {
        let mut input = correct();
        input.jobs[0].state = JobState::Running;
        input.acknowledged.push("ghost".into());
        let found = checks(&audit(&input)).join(",");
        assert!(found.contains("job-not-terminal"), "{found}");
        assert!(found.contains("acknowledged-job-missing"), "{found}");
    }

    #[test]
    fn two_jobs_for_one_key_are_caught() {
        let mut input = correct();
        input.jobs[1].idempotency_key = input.jobs[0].idempotency_key.clone();
        input.replays[0].replay_job = "sys".into();
        let report = audit(&input);
        let found = checks(&report);
        assert!(found.contains(&"idempotency-key-charged-twice"));
        assert!(found.contains(&"replay-returned-another-job"));
    }

    #[test]
    fn work_after_an_acknowledged_cancel_is_caught() {
        let mut input = correct();
        input.assigns.push(ObservedAssign {
            job_id: "cq".into(),
            attempt: 1,
            at_us: 2_000,
        });
        let report = audit(&input);
        assert_eq!(checks(&report), vec!["ran-after-cancel"]);
        assert_eq!(report.violations[0].ids, vec!["cq".to_owned()]);
        // An assign that was on its way before the cancel is not a violation
        // when the job was running (attempt not beyond the cancel's).
        let mut input = correct();
        input.cancels[0].job_id = "cr".into();
        input.cancels[0].attempts_at_cancel = 1;
        input.cancels[0].charge = Charge::Posted;
        input.assigns.push(ObservedAssign {
            job_id: "cr".into(),
            attempt: 1,
            at_us: 900,
        });
        assert!(audit(&input).passed);
    }

    #[test]
    fn a_cancel_that_does_not_stick_is_caught() {
        let mut input = correct();
        input.cancels[0].job_id = "ok".into();
        input.cancels[0].charge = Charge::Posted;
        assert!(checks(&audit(&input)).contains(&"cancel-not-final"));
    }
}

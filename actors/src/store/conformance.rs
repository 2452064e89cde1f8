//! One behaviour for every store adapter. Each check takes a fresh, empty
//! store; [`store_conformance_tests!`] turns the list into `#[test]`s for
//! an adapter, so the in-memory and PostgreSQL stores cannot drift apart.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};

use super::*;
use crate::domain::account::{AccountStatus, ApiKey, DisplayName, NewUser, User};
use crate::domain::email::Email;
use crate::domain::ids::{JobId, LeaseToken, UserId, WorkerId};
use crate::domain::job::{
    AttemptOutcome, AttemptOutcomeLabel, Charge, IdempotencyKey, Job, JobKind, JobRequest, JobSpec,
    JobState, ParamsRequest, Priority,
};
use crate::domain::ledger::{replay_from, EntryKind, Grant, GrantSource, LedgerEntry};
use crate::domain::tier::Tier;
use crate::domain::wallet::{Credits, Wallet};

pub type Shared = Arc<dyn Store>;

/// Registration, API keys with their options.
mod accounts;
pub use accounts::*;
/// The ledger archive's chapters.
mod archive;
pub use archive::*;
/// Webhook secrets, election terms.
mod cluster;
pub use cluster::*;
/// The per-user event log, account webhook endpoints.
mod endpoints;
pub use endpoints::*;
/// Grants, jobs and their holds, expiry, retention.
mod jobs;
pub use jobs::*;
/// Refusals and moderation actions.
mod moderation;
pub use moderation::*;
/// The operator's read models.
mod operator;
pub use operator::*;
/// Payments and gifts, price versions.
mod payments;
pub use payments::*;
/// The catalogue of stored files (its own port).
pub mod materials;

/// Now, at the microsecond precision every adapter keeps.
fn now_us() -> DateTime<Utc> {
    crate::clock::Clock::system().now().trunc_subsecs(6)
}

fn credits(v: i64) -> Credits {
    Credits::new(v).expect("test amount")
}

pub async fn user_with(store: &Shared, email: &str, reward: i64) -> User {
    store
        .create_user(
            NewUser {
                email: Email::parse(email).expect("test email"),
                display_name: DisplayName::parse("Test").expect("test name"),
                key_hash: ApiKey::generate().hash(),
            },
            credits(reward),
            crate::clock::Clock::system().now(),
        )
        .await
        .expect("create user")
        .0
}

fn spec(prompt: &str) -> JobSpec {
    JobSpec::parse(JobRequest {
        kind: JobKind::Image,
        model: "sdxl".into(),
        prompt: prompt.into(),
        params: ParamsRequest::default(),
        webhook_url: None,
        priority: None,
    })
    .expect("test spec")
}

pub fn new_job(user: UserId, cost: i64) -> NewJob {
    NewJob {
        id: JobId::generate(),
        user_id: user,
        spec: spec("a lighthouse at dusk"),
        tier: Tier::Free,
        cost: credits(cost),
        max_attempts: 3,
        max_waiting: 1000,
        idempotency: None,
        now: crate::clock::Clock::system().now(),
        price_version: 1,
    }
}

async fn current_epoch(store: &Shared) -> u64 {
    store.leader().await.expect("leader").map_or(0, |l| l.epoch)
}

async fn assign(store: &Shared, job: &Job) -> AttemptRef {
    let attempt = AttemptRef {
        job_id: job.id,
        attempt: job.attempts + 1,
        lease: LeaseToken::generate(),
    };
    store
        .assign_job(
            attempt,
            WorkerId::generate(),
            current_epoch(store).await,
            crate::clock::Clock::system().now(),
        )
        .await
        .expect("assign");
    attempt
}

/// A success with one output.
fn delivered() -> AttemptOutcome {
    AttemptOutcome::Succeeded {
        outputs: vec![crate::domain::job::Output::new("sim://x", "image/png")],
    }
}

fn sys_fail() -> AttemptOutcome {
    AttemptOutcome::SystemFailure {
        message: "gpu fell off the bus".into(),
        retry_at: crate::clock::Clock::system().now() + Duration::milliseconds(10),
    }
}

/// The ledger of every user replays to their wallet, every hold of a
/// finished job is resolved exactly once, and the jobs-by-state counts
/// (which an adapter may keep as it writes rather than count) match the
/// jobs themselves.
pub async fn assert_books_balance(store: &Shared) {
    let jobs = store.jobs_in_states(&JobState::ALL).await.expect("jobs");
    let counted: Vec<(JobState, u64)> = JobState::ALL
        .into_iter()
        .map(|s| (s, jobs.iter().filter(|j| j.state == s).count() as u64))
        .collect();
    let mut kept = store.job_counts().await.expect("job counts").0;
    kept.sort_by_key(|(s, _)| JobState::ALL.iter().position(|x| x == s));
    assert_eq!(kept, counted, "the job counts disagree with the jobs");
    for (user, wallet, entries) in store.audit_ledgers().await.expect("audit") {
        // The live entries replay from where the last archived chapter
        // closed.
        let last = store.chapters(user, None, 1).await.expect("chapters");
        let opening = crate::store::archive::opening(last.first());
        let replayed =
            replay_from(opening, &entries).unwrap_or_else(|e| panic!("user {user}: {e}"));
        assert_eq!(replayed, wallet, "user {user}: ledger and wallet disagree");
        let mut resolved = HashSet::new();
        for e in &entries {
            if matches!(e.kind, EntryKind::Post | EntryKind::Void) {
                let job = e.job_id.expect("resolution names its job");
                assert!(resolved.insert(job), "hold of job {job} resolved twice");
            }
        }
    }
}

/// Text the domain accepts is kept exactly, on every adapter: awkward
/// characters, the longest values, LIKE metacharacters in a search. (The
/// one character no adapter can keep, NUL, never reaches a store: the
/// domain refuses it, see `crate::domain::text`.)
pub async fn accepted_text_is_kept_exactly(store: Shared) {
    let awkward = [
        "🦊 in the snow, 日本語, مرحبا, e\u{301}",
        "\u{1}\u{7}\u{1b}[31m control \u{7f}\u{9f} characters",
        "quotes ' \" ` and \\ backslashes, a literal \\u0000, '; DROP TABLE users; --",
        "\u{feff}\u{200b}\u{fffd}\u{ffff}\u{10ffff}",
    ];
    for (i, text) in awkward.iter().enumerate() {
        assert!(crate::domain::text::check("text", text).is_ok());
        let user = store
            .create_user(
                NewUser {
                    email: Email::parse(&format!("ü{i}+%_\\x@example.com")).expect("email"),
                    display_name: DisplayName::parse(&text.replace(char::is_control, "·"))
                        .expect("name"),
                    key_hash: ApiKey::generate().hash(),
                },
                credits(10),
                crate::clock::Clock::system().now(),
            )
            .await
            .expect("create user")
            .0;
        let stored = store.user(user.id).await.unwrap().expect("user");
        assert_eq!(stored.display_name, user.display_name);
        assert_eq!(stored.email, user.email);
        // The longest prompt, of four-byte characters, and the text itself.
        for prompt in [
            "𝄞".repeat(crate::domain::job::MAX_PROMPT_CHARS),
            text.to_string(),
        ] {
            let mut job = new_job(user.id, 1);
            job.spec = JobSpec::parse(JobRequest {
                kind: JobKind::Image,
                model: "sdxl".into(),
                prompt: prompt.clone(),
                params: ParamsRequest::default(),
                webhook_url: Some(format!("https://example.com/{text}")),
                priority: None,
            })
            .expect("spec");
            let id = store.submit_job(job.clone()).await.unwrap().job.id;
            let kept = store.job(id).await.unwrap().expect("job");
            assert_eq!(kept.spec, job.spec);
        }
        let note = format!("{text}{}", "ß".repeat(400));
        let key = format!("key-{text}");
        let grant = Grant {
            amount: credits(5),
            source: GrantSource::Admin,
            idempotency_key: Some(key.clone()),
            note: Some(note.clone()),
        };
        assert!(grant.check_text().is_ok());
        assert!(
            !store
                .grant(user.id, grant.clone(), crate::clock::Clock::system().now())
                .await
                .unwrap()
                .replayed
        );
        assert!(
            store
                .grant(user.id, grant, crate::clock::Clock::system().now())
                .await
                .unwrap()
                .replayed
        );
        let entries = store.ledger(user.id, None, 1).await.unwrap();
        assert_eq!(entries[0].note.as_deref(), Some(note.as_str()));
    }
    // A search matches its fragment literally, metacharacters included.
    let found = store.find_users("+%_\\", 50).await.unwrap();
    assert_eq!(found.len(), awkward.len());
    assert!(store.find_users("ü1+", 50).await.unwrap().len() == 1);
    assert!(store.find_users("%x", 50).await.unwrap().is_empty());
    assert!(store.find_users("日本", 50).await.unwrap().is_empty());
    assert_books_balance(&store).await;
}

/// Expands to one test per conformance check, each on a fresh store made
/// by `$make`: an async expression yielding `Option<Arc<dyn Store>>`, where
/// `None` means the backing service is absent and the test is skipped (the
/// factory itself fails instead when absence is not allowed, as in CI).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            // the money path (jobs.rs)
            grant_is_idempotent_by_key,
            submit_holds_and_queues_atomically,
            waiting_limit_is_enforced,
            idempotency_key_replays_and_detects_reuse,
            success_posts_the_hold,
            a_completion_before_its_start_keeps_a_start_time,
            stale_and_duplicate_messages_change_nothing,
            system_failures_retry_then_void_once,
            user_failure_posts_without_retry,
            cancel_voids_queued_posts_running_refuses_finished,
            suspension_cancels_queued_jobs,
            listings_paginate_newest_first,
            concurrent_submits_never_overdraw,
            concurrent_resolutions_of_one_hold_apply_once,
            recovery_lists_jobs_by_state_in_submission_order,
            waiting_jobs_are_read_a_page_at_a_time,
            idempotency_keys_expire,
            grant_key_reused_with_another_body_is_refused,
            waiting_jobs_expire_with_their_hold_voided,
            finished_jobs_are_pruned_after_retention,
            pruning_goes_oldest_first_in_batches,
            priority_is_stored_and_orders_the_queue_position,
            // the ledger archive (archive.rs)
            the_oldest_history_closes_into_a_chapter,
            the_archive_visits_every_user_in_turn,
            a_job_a_replay_may_ask_for_stays_until_its_key_expires,
            // accounts (accounts.rs)
            registration_grants_reward_and_email_is_unique,
            api_key_finds_its_user_only,
            one_account_per_canonical_email,
            api_keys_are_issued_listed_and_revoked,
            keys_keep_their_name_expiry_and_scopes,
            // payments, gifts, prices (payments.rs)
            payments_apply_once_and_refuse_a_reused_id,
            memberships_extend_and_grant_each_month_once,
            gifts_of_months_spent_suspended_lapse,
            membership_upgrade_takes_effect_at_once,
            price_versions_are_stored_once_and_announced,
            jobs_record_their_price_version,
            // content rules (moderation.rs)
            content_violations_are_counted_in_their_window,
            moderation_actions_are_kept_with_their_evidence,
            // what the nodes share (cluster.rs)
            webhook_secret_is_created_once_per_user,
            assignments_of_a_deposed_term_are_refused,
            // event stream and endpoints (endpoints.rs)
            user_events_replay_in_order_within_the_window,
            webhook_endpoints_are_created_listed_updated_and_deleted,
            job_events_fan_out_to_every_wanting_endpoint,
            // operator read models (operator.rs)
            operator_views_show_attempts_ledger_and_filters,
            // across concerns
            accepted_text_is_kept_exactly,
        );
    };
    (@each $make:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(store) = $make.await else {
                    return;
                };
                $crate::store::conformance::$name(store).await;
            }
        )*
    };
}

#[cfg(test)]
mod memory_adapter {
    use std::sync::Arc;

    use crate::store::memory::MemoryStore;
    use crate::store::Store;

    async fn fresh() -> Option<Arc<dyn Store>> {
        Some(Arc::new(MemoryStore::new()))
    }

    crate::store_conformance_tests!(fresh());
}

//! Conformance of the money path: grants, submissions with their holds,
//! attempts and their settlement, cancellation, expiry and retention.

use super::*;

pub async fn grant_is_idempotent_by_key(store: Shared) {
    let user = user_with(&store, "grant@example.com", 0).await;
    let grant = Grant {
        amount: credits(50),
        source: GrantSource::Purchase,
        idempotency_key: Some("pay-1".into()),
        note: Some("pack".into()),
    };
    let first = store
        .grant(user.id, grant.clone(), crate::clock::Clock::system().now())
        .await
        .unwrap();
    let again = store
        .grant(user.id, grant, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(again.wallet.balance.get(), 50);
    assert_eq!(store.ledger(user.id, None, 10).await.unwrap().len(), 1);
    assert_books_balance(&store).await;
}

pub async fn submit_holds_and_queues_atomically(store: Shared) {
    let user = user_with(&store, "sub@example.com", 10).await;
    let sub = store.submit_job(new_job(user.id, 4)).await.unwrap();
    assert_eq!(sub.job.state, JobState::Queued);
    assert_eq!(sub.job.charge, Charge::Held);
    assert_eq!((sub.wallet.balance.get(), sub.wallet.held.get()), (10, 4));
    assert_eq!(store.queue_position(sub.job.id).await.unwrap(), Some(1));
    // Too expensive: refused, and nothing is written.
    let err = store.submit_job(new_job(user.id, 7)).await.unwrap_err();
    assert_eq!(
        err,
        StoreError::InsufficientCredits {
            required: credits(7),
            available: credits(6)
        }
    );
    assert_eq!(
        store
            .list_jobs(user.id, None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.ledger(user.id, None, 10).await.unwrap().len(), 2);
    assert_books_balance(&store).await;
}

pub async fn waiting_limit_is_enforced(store: Shared) {
    let user = user_with(&store, "limit@example.com", 100).await;
    for _ in 0..2 {
        let mut j = new_job(user.id, 1);
        j.max_waiting = 2;
        store.submit_job(j).await.unwrap();
    }
    let mut j = new_job(user.id, 1);
    j.max_waiting = 2;
    assert_eq!(
        store.submit_job(j).await.unwrap_err(),
        StoreError::QueueLimit { limit: 2 }
    );
    assert_eq!(store.wallet(user.id).await.unwrap().held.get(), 2);
}

pub async fn idempotency_key_replays_and_detects_reuse(store: Shared) {
    let user = user_with(&store, "idem@example.com", 10).await;
    let key = IdempotencyKey::parse("k-1").unwrap();
    let mut first = new_job(user.id, 3);
    first.idempotency = Some((key.clone(), first.spec.fingerprint()));
    let a = store.submit_job(first.clone()).await.unwrap();
    let mut again = first.clone();
    again.id = JobId::generate();
    let b = store.submit_job(again).await.unwrap();
    assert!(!a.replayed && b.replayed);
    assert_eq!(a.job.id, b.job.id);
    assert_eq!(b.wallet.held.get(), 3, "a replay charges nothing");
    let mut other = new_job(user.id, 3);
    other.spec = spec("something else");
    other.idempotency = Some((key, other.spec.fingerprint()));
    assert_eq!(
        store.submit_job(other).await.unwrap_err(),
        StoreError::IdempotencyKeyReused
    );
    // Keys are per user.
    let bob = user_with(&store, "bob@example.com", 10).await;
    let mut bobs = new_job(bob.id, 3);
    bobs.idempotency = first.idempotency.clone();
    assert!(!store.submit_job(bobs).await.unwrap().replayed);
}

pub async fn success_posts_the_hold(store: Shared) {
    let user = user_with(&store, "ok@example.com", 10).await;
    let job = store.submit_job(new_job(user.id, 4)).await.unwrap().job;
    let attempt = assign(&store, &job).await;
    store
        .start_job(attempt, crate::clock::Clock::system().now())
        .await
        .unwrap();
    let done = store
        .finish_attempt(attempt, delivered(), crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert_eq!(done.job.state, JobState::Succeeded);
    assert_eq!(done.job.charge, Charge::Posted);
    assert_eq!((done.wallet.balance.get(), done.wallet.held.get()), (6, 0));
    let result = done.job.result.expect("result");
    assert_eq!(result.license, crate::domain::tier::License::Personal);
    assert!(done.job.finished_at.is_some() && done.job.started_at.is_some());
    assert_books_balance(&store).await;
}

/// A completion that reaches the store before its start (they may commit
/// in either order) still leaves a start time, on the job and its attempt;
/// the late start is then refused as stale.
pub async fn a_completion_before_its_start_keeps_a_start_time(store: Shared) {
    let user = user_with(&store, "nostart@example.com", 10).await;
    let mut submitted = new_job(user.id, 2);
    submitted.spec.webhook_url = Some("https://example.com/hooks".into());
    let job = store.submit_job(submitted).await.unwrap().job;
    let attempt = assign(&store, &job).await;
    let done = store
        .finish_attempt(attempt, delivered(), crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert_eq!(done.job.state, JobState::Succeeded);
    assert!(done.job.started_at.is_some());
    let records = store.attempts(job.id).await.unwrap();
    assert_eq!(records.len(), 1);
    assert!(records[0].started_at.is_some() && records[0].finished_at.is_some());
    // Its webhook receiver hears it start, then succeed.
    // (Claimed as a dispatcher would after the first try's claim ran out.)
    let later = crate::clock::Clock::system().now() + chrono::Duration::minutes(5);
    let owed: Vec<String> = store
        .claim_webhooks(later, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.delivery.job_id == job.id)
        .map(|w| w.delivery.event_type)
        .collect();
    assert!(owed.contains(&"job.started".to_owned()), "{owed:?}");
    assert!(owed.contains(&"job.succeeded".to_owned()), "{owed:?}");
    assert!(matches!(
        store
            .start_job(attempt, crate::clock::Clock::system().now())
            .await,
        Err(StoreError::StaleTransition { .. })
    ));
    assert_books_balance(&store).await;
}

pub async fn stale_and_duplicate_messages_change_nothing(store: Shared) {
    let user = user_with(&store, "stale@example.com", 10).await;
    let job = store.submit_job(new_job(user.id, 4)).await.unwrap().job;
    let attempt = assign(&store, &job).await;
    // Assigning the same attempt again is refused.
    let epoch = current_epoch(&store).await;
    assert!(matches!(
        store
            .assign_job(
                attempt,
                WorkerId::generate(),
                epoch,
                crate::clock::Clock::system().now()
            )
            .await,
        Err(StoreError::StaleTransition { .. })
    ));
    // A message carrying another lease is fenced off.
    let forged = AttemptRef {
        lease: LeaseToken::generate(),
        ..attempt
    };
    assert!(matches!(
        store
            .start_job(forged, crate::clock::Clock::system().now())
            .await,
        Err(StoreError::StaleTransition { .. })
    ));
    let ok = AttemptOutcome::Succeeded { outputs: vec![] };
    store
        .finish_attempt(attempt, ok.clone(), crate::clock::Clock::system().now())
        .await
        .unwrap();
    // A duplicate completion, and a late failure, are both refused.
    assert!(matches!(
        store
            .finish_attempt(attempt, ok, crate::clock::Clock::system().now())
            .await,
        Err(StoreError::StaleTransition { .. })
    ));
    assert!(matches!(
        store
            .finish_attempt(attempt, sys_fail(), crate::clock::Clock::system().now())
            .await,
        Err(StoreError::StaleTransition { .. })
    ));
    let w = store.wallet(user.id).await.unwrap();
    assert_eq!((w.balance.get(), w.held.get()), (6, 0));
    assert_books_balance(&store).await;
}

pub async fn system_failures_retry_then_void_once(store: Shared) {
    let user = user_with(&store, "retry@example.com", 10).await;
    let mut job = store.submit_job(new_job(user.id, 4)).await.unwrap().job;
    for n in 1..=3 {
        let attempt = assign(&store, &job).await;
        assert_eq!(attempt.attempt, n);
        let s = store
            .finish_attempt(attempt, sys_fail(), crate::clock::Clock::system().now())
            .await
            .unwrap();
        job = s.job;
        if n < 3 {
            assert_eq!(job.state, JobState::Queued);
            assert_eq!(job.charge, Charge::Held);
            assert!(job.retry_at.is_some());
            // Still held while it waits for the retry.
            assert_eq!(s.wallet.held.get(), 4);
        }
        // An old attempt's late failure cannot move money.
        assert!(store
            .finish_attempt(attempt, sys_fail(), crate::clock::Clock::system().now())
            .await
            .is_err());
    }
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.charge, Charge::Voided);
    assert_eq!(job.attempts, 3);
    let w = store.wallet(user.id).await.unwrap();
    assert_eq!((w.balance.get(), w.held.get()), (10, 0), "refunded in full");
    let voids = store
        .ledger(user.id, None, 50)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::Void)
        .count();
    assert_eq!(voids, 1);
    assert_books_balance(&store).await;
}

pub async fn user_failure_posts_without_retry(store: Shared) {
    let user = user_with(&store, "userfail@example.com", 10).await;
    let job = store.submit_job(new_job(user.id, 4)).await.unwrap().job;
    let attempt = assign(&store, &job).await;
    let s = store
        .finish_attempt(
            attempt,
            AttemptOutcome::UserFailure {
                message: "prompt rejected by the model".into(),
            },
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
    assert_eq!(s.job.state, JobState::Failed);
    assert_eq!(s.job.charge, Charge::Posted);
    assert_eq!(s.job.attempts, 1);
    assert_eq!(s.wallet.balance.get(), 6);
}

pub async fn cancel_voids_queued_posts_running_refuses_finished(store: Shared) {
    let user = user_with(&store, "cancel@example.com", 20).await;
    let queued = store.submit_job(new_job(user.id, 4)).await.unwrap().job;
    let c = store
        .cancel_job(user.id, queued.id, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert_eq!(
        (c.previous, c.job.state, c.job.charge),
        (JobState::Queued, JobState::Cancelled, Charge::Voided)
    );
    assert_eq!((c.wallet.balance.get(), c.wallet.held.get()), (20, 0));
    assert_eq!(
        store
            .cancel_job(user.id, queued.id, crate::clock::Clock::system().now())
            .await
            .unwrap_err(),
        StoreError::JobFinished
    );

    let running = store.submit_job(new_job(user.id, 5)).await.unwrap().job;
    let attempt = assign(&store, &running).await;
    store
        .start_job(attempt, crate::clock::Clock::system().now())
        .await
        .unwrap();
    let c = store
        .cancel_job(user.id, running.id, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert_eq!(
        (c.previous, c.job.charge),
        (JobState::Running, Charge::Posted)
    );
    assert_eq!(c.previous_lease, Some(attempt.lease));
    assert_eq!(c.wallet.balance.get(), 15);
    // The worker's late completion is refused.
    assert!(store
        .finish_attempt(
            attempt,
            AttemptOutcome::Succeeded { outputs: vec![] },
            crate::clock::Clock::system().now()
        )
        .await
        .is_err());

    let other = user_with(&store, "other@example.com", 5).await;
    let theirs = store.submit_job(new_job(other.id, 1)).await.unwrap().job;
    assert_eq!(
        store
            .cancel_job(user.id, theirs.id, crate::clock::Clock::system().now())
            .await
            .unwrap_err(),
        StoreError::NotFound("job")
    );
    assert_books_balance(&store).await;
}

pub async fn suspension_cancels_queued_jobs(store: Shared) {
    let user = user_with(&store, "susp@example.com", 20).await;
    for _ in 0..3 {
        store.submit_job(new_job(user.id, 2)).await.unwrap();
    }
    store
        .set_status(
            user.id,
            AccountStatus::Suspended,
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.submit_job(new_job(user.id, 1)).await.unwrap_err(),
        StoreError::AccountInactive(AccountStatus::Suspended)
    );
    let cancelled = store
        .cancel_queued_jobs(user.id, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert_eq!(cancelled.len(), 3);
    assert!(cancelled.iter().all(|j| j.charge == Charge::Voided));
    assert_eq!(store.wallet(user.id).await.unwrap().held.get(), 0);
    let u = store
        .set_status(
            user.id,
            AccountStatus::Active,
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
    assert!(u.is_active());
    assert_books_balance(&store).await;
}

pub async fn listings_paginate_newest_first(store: Shared) {
    let user = user_with(&store, "page@example.com", 100).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(store.submit_job(new_job(user.id, 1)).await.unwrap().job.id);
    }
    let page1 = store.list_jobs(user.id, None, None, 2).await.unwrap();
    assert_eq!(
        page1.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let page2 = store
        .list_jobs(user.id, None, Some(ids[3]), 2)
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    store
        .cancel_job(user.id, ids[0], crate::clock::Clock::system().now())
        .await
        .unwrap();
    let cancelled = store
        .list_jobs(user.id, Some(JobState::Cancelled), None, 10)
        .await
        .unwrap();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(store.queue_position(ids[4]).await.unwrap(), Some(4));

    let entries = store.ledger(user.id, None, 3).await.unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries[0].id > entries[1].id);
    let older = store
        .ledger(user.id, Some(entries[2].id), 100)
        .await
        .unwrap();
    assert_eq!(older.len(), 7 - 3);
}

pub async fn concurrent_submits_never_overdraw(store: Shared) {
    let user = user_with(&store, "race@example.com", 50).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.submit_job(new_job(user.id, 1)).await
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => accepted += 1,
            Err(StoreError::InsufficientCredits { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(accepted, 50);
    let w = store.wallet(user.id).await.unwrap();
    assert_eq!(
        (w.balance.get(), w.held.get(), w.available().get()),
        (50, 50, 0)
    );
    assert_books_balance(&store).await;
}

pub async fn concurrent_resolutions_of_one_hold_apply_once(store: Shared) {
    let user = user_with(&store, "dup@example.com", 10).await;
    let job = store.submit_job(new_job(user.id, 4)).await.unwrap().job;
    let attempt = assign(&store, &job).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = if i % 2 == 0 {
                AttemptOutcome::Succeeded { outputs: vec![] }
            } else {
                AttemptOutcome::UserFailure {
                    message: "x".into(),
                }
            };
            store
                .finish_attempt(attempt, outcome, crate::clock::Clock::system().now())
                .await
                .is_ok()
        }));
    }
    let mut cancels = Vec::new();
    for _ in 0..5 {
        let store = store.clone();
        cancels.push(tokio::spawn(async move {
            store
                .cancel_job(user.id, job.id, crate::clock::Clock::system().now())
                .await
                .is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks.into_iter().chain(cancels) {
        if t.await.expect("task") {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "exactly one resolution wins");
    let w = store.wallet(user.id).await.unwrap();
    assert_eq!((w.balance.get(), w.held.get()), (6, 0));
    assert_books_balance(&store).await;
}

pub async fn recovery_lists_jobs_by_state_in_submission_order(store: Shared) {
    let user = user_with(&store, "rec@example.com", 100).await;
    let a = store.submit_job(new_job(user.id, 1)).await.unwrap().job;
    let b = store.submit_job(new_job(user.id, 1)).await.unwrap().job;
    let c = store.submit_job(new_job(user.id, 1)).await.unwrap().job;
    assign(&store, &b).await;
    let waiting = store.jobs_in_states(&[JobState::Queued]).await.unwrap();
    assert_eq!(
        waiting.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a.id, c.id]
    );
    let flying = store
        .jobs_in_states(&[JobState::Assigned, JobState::Running])
        .await
        .unwrap();
    assert_eq!(flying.len(), 1);
    assert!(flying[0].lease.is_some());
    let counts = store.job_counts().await.unwrap();
    assert!(counts.0.contains(&(JobState::Queued, 2)));
    assert!(counts.0.contains(&(JobState::Assigned, 1)));

    // Several users' waiting jobs come back in submission order, and a
    // cancelled one is neither listed nor counted.
    let other = user_with(&store, "rec2@example.com", 100).await;
    let d = store.submit_job(new_job(other.id, 1)).await.unwrap().job;
    let e = store.submit_job(new_job(user.id, 1)).await.unwrap().job;
    let f = store.submit_job(new_job(other.id, 1)).await.unwrap().job;
    store
        .cancel_job(user.id, c.id, crate::clock::Clock::system().now())
        .await
        .unwrap();
    let waiting = store.jobs_in_states(&[JobState::Queued]).await.unwrap();
    assert_eq!(
        waiting.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a.id, d.id, e.id, f.id]
    );
    let counts = store.job_counts().await.unwrap();
    assert!(counts.0.contains(&(JobState::Queued, 4)), "{counts:?}");
    assert!(counts.0.contains(&(JobState::Cancelled, 1)), "{counts:?}");
    assert_books_balance(&store).await;
}

pub async fn waiting_jobs_are_read_a_page_at_a_time(store: Shared) {
    let user = user_with(&store, "pages@example.com", 100).await;
    let other = user_with(&store, "pages2@example.com", 100).await;
    let mut jobs = Vec::new();
    for i in 0..6 {
        let owner = if i % 2 == 0 { user.id } else { other.id };
        jobs.push(store.submit_job(new_job(owner, 1)).await.unwrap().job);
    }
    // Neither a job in flight nor a cancelled one is waiting.
    assign(&store, &jobs[1]).await;
    store
        .cancel_job(user.id, jobs[4].id, crate::clock::Clock::system().now())
        .await
        .unwrap();
    let ids = |page: &[Job]| page.iter().map(|j| j.id).collect::<Vec<_>>();
    let first = store.queued_jobs_after(0, 2).await.unwrap();
    assert_eq!(ids(&first), vec![jobs[0].id, jobs[2].id]);
    let second = store.queued_jobs_after(first[1].seq, 2).await.unwrap();
    assert_eq!(ids(&second), vec![jobs[3].id, jobs[5].id]);
    assert!(second.iter().all(|j| j.state == JobState::Queued));
    let past = store.queued_jobs_after(second[1].seq, 2).await.unwrap();
    assert!(past.is_empty(), "{past:?}");
    assert!(store.queued_jobs_after(0, 0).await.unwrap().is_empty());
    assert!(store
        .queued_jobs_after(u64::MAX, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn idempotency_keys_expire(store: Shared) {
    let user = user_with(&store, "expire@example.com", 10).await;
    let key = IdempotencyKey::parse("old-key").unwrap();
    let mut first = new_job(user.id, 1);
    first.idempotency = Some((key.clone(), first.spec.fingerprint()));
    let original = store.submit_job(first.clone()).await.unwrap().job.id;
    // Nothing is older than an hour ago: the key still replays.
    assert_eq!(
        store
            .expire_idempotency_keys(crate::clock::Clock::system().now() - Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    let mut again = first.clone();
    again.id = JobId::generate();
    assert!(store.submit_job(again.clone()).await.unwrap().replayed);
    // Once expired, the same key makes a new job.
    assert_eq!(
        store
            .expire_idempotency_keys(crate::clock::Clock::system().now() + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    let fresh = store.submit_job(again).await.unwrap();
    assert!(!fresh.replayed);
    assert_ne!(fresh.job.id, original);
}

/// A grant's idempotency key replays only the same grant: another amount,
/// source or note under it is refused and books nothing.
pub async fn grant_key_reused_with_another_body_is_refused(store: Shared) {
    let user = user_with(&store, "regrant@example.com", 0).await;
    let grant = Grant {
        amount: credits(50),
        source: GrantSource::Admin,
        idempotency_key: Some("goodwill-7".into()),
        note: Some("sorry for the outage".into()),
    };
    assert!(
        !store
            .grant(user.id, grant.clone(), crate::clock::Clock::system().now())
            .await
            .unwrap()
            .replayed
    );
    let mut more = grant.clone();
    more.amount = credits(5000);
    let mut other_source = grant.clone();
    other_source.source = GrantSource::Purchase;
    let mut other_note = grant.clone();
    other_note.note = None;
    for reused in [more, other_source, other_note] {
        assert!(matches!(
            store
                .grant(user.id, reused, crate::clock::Clock::system().now())
                .await,
            Err(StoreError::IdempotencyKeyReused)
        ));
    }
    // The same grant still replays; the wallet saw one grant.
    let again = store
        .grant(user.id, grant, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.wallet.balance.get(), 50);
    assert_eq!(store.ledger(user.id, None, 10).await.unwrap().len(), 1);
    assert_books_balance(&store).await;
}

/// A job that waited past its tier's limit fails as expired with its hold
/// voided, once; a job in flight or another user's is left alone.
pub async fn waiting_jobs_expire_with_their_hold_voided(store: Shared) {
    let user = user_with(&store, "expiry@example.com", 20).await;
    let waiting = store.submit_job(new_job(user.id, 4)).await.unwrap().job;
    let expired = store
        .expire_job(user.id, waiting.id, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert_eq!(
        (expired.job.state, expired.job.charge),
        (JobState::Failed, Charge::Voided)
    );
    assert_eq!(
        expired.job.error.as_ref().and_then(|e| e.code),
        Some(crate::domain::job::JobErrorCode::Expired)
    );
    assert_eq!(
        (expired.wallet.balance.get(), expired.wallet.held.get()),
        (20, 0)
    );
    let stored = store.job(waiting.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.charge, &stored.error),
        (JobState::Failed, Charge::Voided, &expired.job.error)
    );
    assert!(stored.finished_at.is_some());
    assert!(store
        .jobs_in_states(&[JobState::Queued])
        .await
        .unwrap()
        .is_empty());
    // Twice, or a job in flight, or another user's: refused, nothing moves.
    assert!(matches!(
        store
            .expire_job(user.id, waiting.id, crate::clock::Clock::system().now())
            .await,
        Err(StoreError::StaleTransition { .. })
    ));
    let running = store.submit_job(new_job(user.id, 5)).await.unwrap().job;
    assign(&store, &running).await;
    assert!(matches!(
        store
            .expire_job(user.id, running.id, crate::clock::Clock::system().now())
            .await,
        Err(StoreError::StaleTransition { .. })
    ));
    let other = user_with(&store, "other-expiry@example.com", 20).await;
    let theirs = store.submit_job(new_job(other.id, 3)).await.unwrap().job;
    assert_eq!(
        store
            .expire_job(user.id, theirs.id, crate::clock::Clock::system().now())
            .await
            .unwrap_err(),
        StoreError::NotFound("job")
    );
    let ledger = store.job_ledger(waiting.id).await.unwrap();
    assert_eq!(
        ledger.iter().filter(|e| e.kind == EntryKind::Void).count(),
        1
    );
    assert_books_balance(&store).await;
}

/// Submits a job, runs one attempt and ends it with `outcome` at `at`.
async fn finished_at(
    store: &Shared,
    new: NewJob,
    outcome: AttemptOutcome,
    at: chrono::DateTime<Utc>,
) -> Job {
    let job = store.submit_job(new).await.expect("submit").job;
    let attempt = assign(store, &job).await;
    store
        .start_job(attempt, crate::clock::Clock::system().now())
        .await
        .expect("start");
    store
        .finish_attempt(attempt, outcome, at)
        .await
        .expect("finish")
        .job
}

fn one_output() -> AttemptOutcome {
    AttemptOutcome::Succeeded {
        outputs: vec![crate::domain::job::Output::new("sim://kept", "image/png")],
    }
}

/// Retention prunes what a finished job no longer needs once its state's
/// cutoff has passed, and nothing the money needs: the ledger, the hold
/// and the job's id, owner, cost, charge and times stay, so the books
/// balance; unfinished and recent jobs are untouched; pruning again
/// changes nothing; listings leave pruned jobs out.
pub async fn finished_jobs_are_pruned_after_retention(store: Shared) {
    use chrono::SubsecRound;
    // Every adapter keeps microseconds.
    let now = crate::clock::Clock::system().now().trunc_subsecs(6);
    let long_ago = now - Duration::days(10);
    let user = user_with(&store, "prune@example.com", 100).await;
    let mut hooked = new_job(user.id, 3);
    hooked.spec.webhook_url = Some("https://hooks.example.com/done".into());
    let old_success = finished_at(&store, hooked, one_output(), long_ago).await;
    let old_cancel = store.submit_job(new_job(user.id, 2)).await.unwrap().job;
    let old_cancel = store
        .cancel_job(user.id, old_cancel.id, long_ago)
        .await
        .unwrap()
        .job;
    // Failures are kept longer than successes.
    let old_failure = finished_at(
        &store,
        new_job(user.id, 1),
        AttemptOutcome::UserFailure {
            message: "bad input".into(),
        },
        long_ago,
    )
    .await;
    let recent = finished_at(&store, new_job(user.id, 1), one_output(), now).await;
    let waiting = store.submit_job(new_job(user.id, 1)).await.unwrap().job;
    let books = |all: Vec<(UserId, Wallet, Vec<LedgerEntry>)>| {
        all.into_iter()
            .find(|(u, _, _)| *u == user.id)
            .map(|(_, w, entries)| (w, entries))
            .expect("the user's ledger")
    };
    let books_before = books(store.audit_ledgers().await.unwrap());
    let counts_before = store.job_counts().await.unwrap();

    let before = FinishedBefore {
        succeeded: now - Duration::days(7),
        failed: now - Duration::days(30),
        cancelled: now - Duration::days(7),
    };
    assert_eq!(
        store.prune_finished_jobs(&before, now, 500).await.unwrap(),
        2
    );
    assert_eq!(
        store.prune_finished_jobs(&before, now, 500).await.unwrap(),
        0,
        "pruning is idempotent"
    );

    for original in [&old_success, &old_cancel] {
        let thin = store
            .job(original.id)
            .await
            .unwrap()
            .expect("the money record of a pruned job stays");
        assert_eq!(thin.pruned_at, Some(now));
        assert_eq!(
            (thin.user_id, thin.cost, thin.state, thin.charge, thin.seq),
            (
                original.user_id,
                original.cost,
                original.state,
                original.charge,
                original.seq
            )
        );
        assert_eq!(
            (thin.created_at, thin.finished_at, thin.attempts),
            (original.created_at, original.finished_at, original.attempts)
        );
        assert!(thin.spec.prompt.is_empty(), "the prompt is gone");
        assert!(thin.result.is_none() && thin.error.is_none());
        assert!(thin.spec.webhook_url.is_none());
        assert_eq!(
            (thin.spec.params.width, thin.spec.params.height),
            (original.spec.params.width, original.spec.params.height),
            "the shape it was priced by stays"
        );
        assert!(store.attempts(original.id).await.unwrap().is_empty());
        let entries = store.job_ledger(original.id).await.unwrap();
        assert_eq!(entries.len(), 2, "its hold and the hold's resolution stay");
    }
    for kept in [&old_failure, &recent, &waiting] {
        let job = store.job(kept.id).await.unwrap().expect("kept");
        assert_eq!(job.pruned_at, None);
        assert_eq!(job.spec.prompt, kept.spec.prompt);
        assert_eq!(
            (job.result.clone(), job.error.clone()),
            (kept.result.clone(), kept.error.clone())
        );
    }
    assert_eq!(store.attempts(old_failure.id).await.unwrap().len(), 1);
    assert!(store
        .job(recent.id)
        .await
        .unwrap()
        .unwrap()
        .result
        .is_some());

    let listed: HashSet<JobId> = store
        .list_jobs(user.id, None, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    let kept: HashSet<JobId> = [old_failure.id, recent.id, waiting.id].into();
    assert_eq!(listed, kept, "listings leave pruned jobs out");
    let filter = JobFilter {
        user: Some(user.id),
        ..JobFilter::default()
    };
    let operator: HashSet<JobId> = store
        .admin_jobs(&filter, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(operator, kept);

    assert_eq!(books(store.audit_ledgers().await.unwrap()), books_before);
    assert_eq!(store.job_counts().await.unwrap(), counts_before);
    assert_books_balance(&store).await;
    // A pruned job is still finished: it cannot be cancelled again.
    assert_eq!(
        store
            .cancel_job(user.id, old_cancel.id, now)
            .await
            .unwrap_err(),
        StoreError::JobFinished
    );
}

/// Each call prunes at most `limit` jobs, those that ended first.
pub async fn pruning_goes_oldest_first_in_batches(store: Shared) {
    use chrono::SubsecRound;
    let now = crate::clock::Clock::system().now().trunc_subsecs(6);
    let user = user_with(&store, "batches@example.com", 100).await;
    let mut finished = Vec::new();
    for days in [12, 10, 11] {
        let at = now - Duration::days(days);
        finished.push(finished_at(&store, new_job(user.id, 1), one_output(), at).await);
    }
    let before = FinishedBefore {
        succeeded: now - Duration::days(7),
        failed: now,
        cancelled: now,
    };
    assert_eq!(store.prune_finished_jobs(&before, now, 2).await.unwrap(), 2);
    let pruned = |job: Job| job.pruned_at.is_some();
    let mut state = Vec::new();
    for job in &finished {
        state.push(pruned(store.job(job.id).await.unwrap().unwrap()));
    }
    assert_eq!(state, [true, false, true], "the two that ended first");
    assert_eq!(store.prune_finished_jobs(&before, now, 2).await.unwrap(), 1);
    assert_eq!(store.prune_finished_jobs(&before, now, 2).await.unwrap(), 0);
    assert_books_balance(&store).await;
}

/// A job's priority is kept as submitted (normal when none was asked
/// for), read back everywhere the job is, and the queue position counts
/// the user's own jobs the scheduler takes first: higher priority, then
/// earlier submission.
pub async fn priority_is_stored_and_orders_the_queue_position(store: Shared) {
    let user = user_with(&store, "priority@example.com", 100).await;
    let with = |p: &str| {
        let mut job = new_job(user.id, 1);
        job.spec = JobSpec::parse(JobRequest {
            kind: JobKind::Image,
            model: "sdxl".into(),
            prompt: "a lighthouse".into(),
            params: ParamsRequest::default(),
            webhook_url: None,
            priority: Some(p.into()),
        })
        .expect("spec");
        job
    };
    // Each submission answers its place in its owner's line at commit.
    let submit = |job: NewJob| {
        let store = store.clone();
        async move {
            let s = store.submit_job(job).await.unwrap();
            (s.job, s.position)
        }
    };
    let (plain, at) = submit(new_job(user.id, 1)).await;
    assert_eq!((plain.spec.priority, at), (Priority::Normal, Some(1)));
    let (low, at) = submit(with("low")).await;
    assert_eq!(at, Some(2));
    let (high, at) = submit(with("high")).await;
    assert_eq!(at, Some(1));
    let (normal, at) = submit(with("normal")).await;
    assert_eq!(at, Some(3));
    for (job, priority) in [
        (&plain, Priority::Normal),
        (&low, Priority::Low),
        (&high, Priority::High),
        (&normal, Priority::Normal),
    ] {
        let kept = store.job(job.id).await.unwrap().expect("job");
        assert_eq!(kept.spec.priority, priority);
        assert_eq!(kept.spec, job.spec);
    }
    let listed = store.list_jobs(user.id, None, None, 10).await.unwrap();
    assert!(listed
        .iter()
        .any(|j| j.id == high.id && j.spec.priority == Priority::High));
    let recovered = store.jobs_in_states(&[JobState::Queued]).await.unwrap();
    assert_eq!(
        recovered
            .iter()
            .map(|j| j.spec.priority)
            .collect::<Vec<_>>(),
        vec![
            Priority::Normal,
            Priority::Low,
            Priority::High,
            Priority::Normal
        ]
    );
    let position = |id| {
        let store = store.clone();
        async move { store.queue_position(id).await.unwrap() }
    };
    assert_eq!(position(high.id).await, Some(1));
    assert_eq!(position(plain.id).await, Some(2));
    assert_eq!(position(normal.id).await, Some(3));
    assert_eq!(position(low.id).await, Some(4));
    // A cancelled job leaves the line; the others close up.
    store
        .cancel_job(user.id, high.id, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert_eq!(position(plain.id).await, Some(1));
    assert_eq!(position(low.id).await, Some(3));
    // The counts followed the cancel and the assignment: a new job's
    // answer matches its place counted row by row.
    assign(&store, &plain).await;
    let (late_high, at) = submit(with("high")).await;
    assert_eq!(at, Some(1));
    let (late, at) = submit(new_job(user.id, 1)).await;
    assert_eq!(at, Some(3), "a high one and the normal one are ahead");
    assert_eq!(position(late.id).await, at);
    assert_eq!(position(late_high.id).await, Some(1));
    assert_books_balance(&store).await;
}

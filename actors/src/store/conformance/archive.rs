use super::*;
use crate::store::archive::{self, Chapter, History, CHAPTER_ENTRIES};

/// A job of `user` that ran and succeeded now.
pub async fn succeeded_now(store: &Shared, user: UserId, cost: i64) -> Job {
    let job = store
        .submit_job(new_job(user, cost))
        .await
        .expect("submit")
        .job;
    let attempt = assign(store, &job).await;
    store.start_job(attempt, now_us()).await.expect("start");
    store
        .finish_attempt(attempt, delivered(), now_us())
        .await
        .expect("finish")
        .job
}

fn everything_finished(now: DateTime<Utc>) -> FinishedBefore {
    FinishedBefore {
        succeeded: now + Duration::seconds(1),
        failed: now + Duration::seconds(1),
        cancelled: now + Duration::seconds(1),
    }
}

/// A chapter closes the oldest whole part of a user's history: its entries
/// and the thin records of its jobs leave the live store, the wallet does
/// not change and the live entries replay from the chapter's closing
/// balance; closing it again changes nothing; a job still kept in full,
/// or any range that is not the user's oldest, is refused untouched.
pub async fn the_oldest_history_closes_into_a_chapter(store: Shared) {
    let user = user_with(&store, "archive@example.com", 100).await;
    let mut archived = Vec::new();
    for cost in [3, 2, 1] {
        archived.push(succeeded_now(&store, user.id, cost).await);
    }
    let cancelled = store
        .submit_job(new_job(user.id, 4))
        .await
        .expect("submit")
        .job;
    store
        .cancel_job(user.id, cancelled.id, now_us())
        .await
        .expect("cancel");
    archived.push(cancelled);
    let now = now_us();
    assert_eq!(
        store
            .prune_finished_jobs(&everything_finished(now), now, 500)
            .await
            .unwrap(),
        4
    );
    // Finished after the prune: kept in full, so it stays live.
    let kept = succeeded_now(&store, user.id, 5).await;
    let waiting = store
        .submit_job(new_job(user.id, 1))
        .await
        .expect("submit")
        .job;
    let wallet = store.wallet(user.id).await.unwrap();
    let counts = store.job_counts().await.unwrap();
    let horizon = now_us() + Duration::hours(1);

    let history = store
        .oldest_history(user.id, CHAPTER_ENTRIES + 1)
        .await
        .unwrap();
    assert_eq!(history.entries.len(), 1 + 2 * 4 + 2 + 1);
    let body = archive::cut(&history, horizon, now).expect("a chapter");
    // The registration grant, the four pruned jobs, and the kept job's
    // hold: its post stops the chapter, since the job may not leave yet.
    assert_eq!(body.entries.len(), 10);
    assert_eq!(body.jobs.len(), 4);
    let chapter = body.chapter.clone();
    let jobs: Vec<JobId> = body.jobs.iter().map(|j| j.id).collect();

    // Refused, and nothing changes: a range reaching into a job kept in
    // full, one that does not start at the oldest entry, a job left out.
    let longer = archive::cut(
        &History {
            entries: history.entries.clone(),
            jobs: history
                .jobs
                .iter()
                .map(|(id, j)| {
                    let mut j = j.clone();
                    j.pruned_at.get_or_insert(now);
                    (*id, j)
                })
                .collect(),
            protected: Default::default(),
        },
        horizon,
        now,
    )
    .expect("a forged chapter");
    let mut forged_jobs = jobs.clone();
    forged_jobs.push(kept.id);
    assert!(matches!(
        store.close_chapter(&longer.chapter, &forged_jobs).await,
        Err(StoreError::Invariant(_))
    ));
    let mut later = chapter.clone();
    later.first_entry = history.entries[1].id;
    later.entries -= 1;
    assert!(matches!(
        store.close_chapter(&later, &jobs).await,
        Err(StoreError::Invariant(_))
    ));
    assert!(matches!(
        store.close_chapter(&chapter, &jobs[1..]).await,
        Err(StoreError::Invariant(_))
    ));
    let mut wrong_balance = chapter.clone();
    wrong_balance.closing.balance = Credits::ZERO;
    assert!(matches!(
        store.close_chapter(&wrong_balance, &jobs).await,
        Err(StoreError::Invariant(_))
    ));
    assert!(store.chapters(user.id, None, 10).await.unwrap().is_empty());
    assert_eq!(
        store.oldest_history(user.id, 100).await.unwrap().entries,
        history.entries
    );

    assert!(store.close_chapter(&chapter, &jobs).await.unwrap());
    assert!(
        !store.close_chapter(&chapter, &jobs).await.unwrap(),
        "closing it again changes nothing"
    );
    assert_eq!(
        store.chapters(user.id, None, 10).await.unwrap(),
        std::slice::from_ref(&chapter)
    );
    assert_eq!(
        store
            .chapters(user.id, Some(chapter.last_entry), 10)
            .await
            .unwrap(),
        std::slice::from_ref(&chapter),
        "it holds entries older than its last"
    );
    assert!(store
        .chapters(user.id, Some(chapter.first_entry), 10)
        .await
        .unwrap()
        .is_empty());
    for job in &archived {
        assert_eq!(
            store.job(job.id).await.unwrap(),
            None,
            "job {} left",
            job.id
        );
    }
    for job in [&kept, &waiting] {
        assert!(store.job(job.id).await.unwrap().is_some());
    }
    assert_eq!(store.wallet(user.id).await.unwrap(), wallet);
    let live = store.ledger(user.id, None, 100).await.unwrap();
    assert_eq!(live.len(), 2, "the kept job's post and the waiting hold");
    assert!(live.iter().all(|e| e.id > chapter.last_entry));
    let mut after = counts.0.clone();
    for (state, n) in after.iter_mut() {
        if *state == JobState::Succeeded {
            *n -= 3;
        } else if *state == JobState::Cancelled {
            *n -= 1;
        }
    }
    assert_eq!(store.job_counts().await.unwrap().0, after);
    assert_books_balance(&store).await;

    // Nothing else may leave yet: the kept job is not pruned.
    let rest = store.oldest_history(user.id, 100).await.unwrap();
    assert!(archive::cut(&rest, horizon, now).is_none());
    assert!(matches!(
        store
            .close_chapter(
                &Chapter {
                    first_entry: chapter.last_entry,
                    ..chapter.clone()
                },
                &jobs
            )
            .await,
        Err(StoreError::Invariant(_))
    ));
}

/// The archive visits users in id order, a page at a time.
pub async fn the_archive_visits_every_user_in_turn(store: Shared) {
    let mut users = Vec::new();
    for i in 0..5 {
        users.push(
            user_with(&store, &format!("turn{i}@example.com"), 1)
                .await
                .id,
        );
    }
    users.sort();
    let first = store.users_after(None, 3).await.unwrap();
    assert_eq!(first, users[..3]);
    let rest = store.users_after(Some(users[2]), 3).await.unwrap();
    assert_eq!(rest, users[3..]);
    assert!(store
        .users_after(Some(users[4]), 3)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .oldest_history(UserId::generate(), 10)
            .await
            .unwrap_err(),
        StoreError::NotFound("user")
    );
}

/// A job an idempotency record still protects stays in the store, and so
/// does everything after it, until the record expires: a replay must find
/// its job.
pub async fn a_job_a_replay_may_ask_for_stays_until_its_key_expires(store: Shared) {
    let user = user_with(&store, "replayable@example.com", 100).await;
    let mut keyed = new_job(user.id, 2);
    keyed.idempotency = Some((
        IdempotencyKey::parse("archive-1").expect("key"),
        crate::domain::job::RequestHash::of(b"the request"),
    ));
    let job = store.submit_job(keyed).await.expect("submit").job;
    let attempt = assign(&store, &job).await;
    store.start_job(attempt, now_us()).await.expect("start");
    store
        .finish_attempt(attempt, delivered(), now_us())
        .await
        .expect("finish");
    let now = now_us();
    store
        .prune_finished_jobs(&everything_finished(now), now, 500)
        .await
        .expect("prune");
    let horizon = now + Duration::hours(1);
    let history = store.oldest_history(user.id, 100).await.expect("history");
    assert!(history.protected.contains(&job.id));
    let body = archive::cut(&history, horizon, now).expect("the grant and the hold");
    assert_eq!(body.entries.len(), 2);
    assert!(body.jobs.is_empty());
    // Forced with the job, the store refuses it.
    let unprotected = History {
        protected: Default::default(),
        ..history.clone()
    };
    let forced = archive::cut(&unprotected, horizon, now).expect("a forged chapter");
    assert_eq!(forced.jobs.len(), 1);
    assert!(matches!(
        store.close_chapter(&forced.chapter, &[job.id]).await,
        Err(StoreError::Invariant(_))
    ));
    assert!(store.job(job.id).await.expect("job").is_some());
    // Once the key expires, the job may leave.
    store
        .expire_idempotency_keys(now_us() + Duration::seconds(1))
        .await
        .expect("expire");
    let history = store.oldest_history(user.id, 100).await.expect("history");
    assert!(history.protected.is_empty());
    let body = archive::cut(&history, horizon, now).expect("a chapter");
    assert_eq!(body.jobs.len(), 1);
    assert!(store
        .close_chapter(&body.chapter, &[job.id])
        .await
        .expect("close"));
    assert_eq!(store.job(job.id).await.expect("job"), None);
    assert_books_balance(&store).await;
}

//! Conformance of the operator's read models.

use super::*;

pub async fn operator_views_show_attempts_ledger_and_filters(store: Shared) {
    let ann = user_with(&store, "ann.views@example.com", 20).await;
    let bob = user_with(&store, "bob.views@example.com", 20).await;
    let job = store.submit_job(new_job(ann.id, 3)).await.unwrap().job;
    let first = assign(&store, &job).await;
    store
        .start_job(first, crate::clock::Clock::system().now())
        .await
        .unwrap();
    let requeued = store
        .finish_attempt(first, sys_fail(), crate::clock::Clock::system().now())
        .await
        .unwrap()
        .job;
    let second = assign(&store, &requeued).await;
    store
        .finish_attempt(
            second,
            AttemptOutcome::Succeeded { outputs: vec![] },
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
    let other = store.submit_job(new_job(bob.id, 1)).await.unwrap().job;

    let attempts = store.attempts(job.id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!((attempts[0].attempt, attempts[0].lease), (1, first.lease));
    assert_eq!(
        attempts[0].outcome,
        Some(AttemptOutcomeLabel::SystemFailure)
    );
    assert!(attempts[0].started_at.is_some() && attempts[0].finished_at.is_some());
    assert_eq!(attempts[1].outcome, Some(AttemptOutcomeLabel::Succeeded));
    assert!(store.attempts(other.id).await.unwrap().is_empty());
    assert!(matches!(
        store.attempts(JobId::generate()).await,
        Err(StoreError::NotFound(_))
    ));

    let kinds: Vec<EntryKind> = store
        .job_ledger(job.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec![EntryKind::Hold, EntryKind::Post]);

    let all = store
        .admin_jobs(&JobFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![other.id, job.id]
    );
    let queued = JobFilter {
        state: Some(JobState::Queued),
        ..JobFilter::default()
    };
    assert_eq!(store.admin_jobs(&queued, None, 10).await.unwrap().len(), 1);
    let anns = JobFilter {
        user: Some(ann.id),
        ..JobFilter::default()
    };
    assert_eq!(
        store.admin_jobs(&anns, None, 10).await.unwrap()[0].id,
        job.id
    );
    assert_eq!(
        store
            .admin_jobs(&JobFilter::default(), Some(other.id), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let future = JobFilter {
        since: Some(crate::clock::Clock::system().now() + Duration::hours(1)),
        ..JobFilter::default()
    };
    assert!(store
        .admin_jobs(&future, None, 10)
        .await
        .unwrap()
        .is_empty());

    let found = store.find_users("VIEWS@", 10).await.unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(store.find_users("ann.", 10).await.unwrap()[0].id, ann.id);
    assert!(
        store.find_users("%", 10).await.unwrap().is_empty(),
        "wildcards are literal"
    );

    let activity = store
        .activity_since(crate::clock::Clock::system().now() - Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(activity.retries, 1);
    assert_eq!((activity.refunds, activity.refunded_credits), (0, 0));
}

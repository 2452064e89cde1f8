//! Conformance of what the nodes share: webhook secrets and the
//! scheduler's election terms.

use super::*;

pub async fn webhook_secret_is_created_once_per_user(store: Shared) {
    let user = user_with(&store, "hooks@example.com", 1).await;
    let first = store
        .webhook_secret(user.id, "whsec_a".into())
        .await
        .unwrap();
    let again = store
        .webhook_secret(user.id, "whsec_b".into())
        .await
        .unwrap();
    assert_eq!((first.as_str(), again.as_str()), ("whsec_a", "whsec_a"));
    assert!(matches!(
        store
            .webhook_secret(UserId::generate(), "whsec_c".into())
            .await,
        Err(StoreError::NotFound(_))
    ));
    // A job keeps its webhook URL.
    let mut job = new_job(user.id, 1);
    job.spec.webhook_url = Some("https://hooks.example.com/a".into());
    let id = store.submit_job(job).await.unwrap().job.id;
    let stored = store.job(id).await.unwrap().unwrap();
    assert_eq!(
        stored.spec.webhook_url.as_deref(),
        Some("https://hooks.example.com/a")
    );
}

pub async fn assignments_of_a_deposed_term_are_refused(store: Shared) {
    let user = user_with(&store, "fence@example.com", 10).await;
    let job = store.submit_job(new_job(user.id, 1)).await.unwrap().job;
    let first = store
        .become_leader("node-a", "http://a", crate::clock::Clock::system().now())
        .await
        .unwrap();
    let second = store
        .become_leader("node-b", "http://b", crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert_eq!(second, first + 1);
    let leader = store.leader().await.unwrap().expect("a leader");
    assert_eq!(
        (leader.epoch, leader.node.as_str(), leader.url.as_str()),
        (second, "node-b", "http://b")
    );
    let attempt = AttemptRef {
        job_id: job.id,
        attempt: 1,
        lease: LeaseToken::generate(),
    };
    assert_eq!(
        store
            .assign_job(
                attempt,
                WorkerId::generate(),
                first,
                crate::clock::Clock::system().now()
            )
            .await
            .unwrap_err(),
        StoreError::Deposed { current: second }
    );
    assert_eq!(
        store.job(job.id).await.unwrap().unwrap().state,
        JobState::Queued
    );
    store
        .assign_job(
            attempt,
            WorkerId::generate(),
            second,
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
}

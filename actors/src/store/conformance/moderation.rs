//! Conformance of the content rules: refusals counted in their window and
//! moderation actions kept with their evidence.

use super::*;
use crate::domain::content::evidence::{
    ModerationAction, ModerationKind, NewViolation, BY_AUTOMATIC, BY_OPERATOR,
};
use crate::domain::content::{Refusal, Score, Source};

fn violation(category: &str, confidence: f64, counted: bool) -> NewViolation {
    NewViolation {
        refusal: Refusal {
            category: category.into(),
            confidence: Score::new(confidence).expect("score"),
            source: Source::Rules,
            matched: vec!["term".into()],
            scores: Default::default(),
        },
        prompt: format!("a {category} prompt"),
        counted,
    }
}

pub async fn content_violations_are_counted_in_their_window(store: Shared) {
    let user = user_with(&store, "rude@example.com", 1).await;
    let now = now_us();
    let hour = Duration::hours(1);
    for i in 0..3 {
        let at = now - hour * (3 - i);
        store
            .record_violation(
                user.id,
                &violation("violence", 1.0, true),
                at,
                at - hour * 24,
            )
            .await
            .unwrap();
    }
    let unsure = store
        .record_violation(
            user.id,
            &violation("hate", 0.5, false),
            now,
            now - hour * 24,
        )
        .await
        .unwrap();
    assert_eq!(unsure, 3, "a refusal that does not count adds nothing");
    let count = store
        .record_violation(
            user.id,
            &violation("hate", 0.95, true),
            now,
            now - hour * 2 - Duration::minutes(1),
        )
        .await
        .unwrap();
    assert_eq!(count, 3, "two in the window, plus this one");
    let other = user_with(&store, "polite@example.com", 1).await;
    assert_eq!(
        store
            .record_violation(other.id, &violation("hate", 1.0, true), now, now - hour)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        store
            .record_violation(UserId::generate(), &violation("hate", 1.0, true), now, now)
            .await,
        Err(StoreError::NotFound(_))
    ));

    // The evidence: every refusal with its prompt and scores, newest first.
    let all = store
        .violations(user.id, now - hour * 24, false, 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].refusal.category, "hate");
    assert_eq!(all[0].refusal.confidence.get(), 0.95);
    assert_eq!(all[0].prompt, "a hate prompt");
    assert_eq!(all[0].created_at, now);
    assert_eq!(all[0].refusal.matched, vec!["term".to_owned()]);
    let counted = store
        .violations(user.id, now - hour * 24, true, 100)
        .await
        .unwrap();
    assert_eq!(counted.len(), 4);
    assert!(counted.iter().all(|v| v.counted));
    let recent = store
        .violations(user.id, now - hour - Duration::minutes(1), false, 1)
        .await
        .unwrap();
    assert_eq!(recent.len(), 1, "limit");
    assert!(matches!(
        store.violations(UserId::generate(), now, false, 10).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn moderation_actions_are_kept_with_their_evidence(store: Shared) {
    let user = user_with(&store, "flagged@example.com", 1).await;
    let other = user_with(&store, "bystander@example.com", 1).await;
    let now = now_us();
    store
        .record_violation(user.id, &violation("violence", 1.0, true), now, now)
        .await
        .unwrap();
    let evidence = store.violations(user.id, now, true, 10).await.unwrap();
    let suspended = ModerationAction {
        user_id: user.id,
        kind: ModerationKind::Suspended,
        by: BY_AUTOMATIC.into(),
        note: None,
        evidence: evidence.clone(),
        created_at: now,
    };
    store.record_moderation_action(&suspended).await.unwrap();
    let reinstated = ModerationAction {
        user_id: user.id,
        kind: ModerationKind::Reinstated,
        by: BY_OPERATOR.into(),
        note: Some("a museum's prompts".into()),
        evidence: vec![],
        created_at: now + Duration::seconds(1),
    };
    store.record_moderation_action(&reinstated).await.unwrap();
    store
        .record_moderation_action(&ModerationAction {
            user_id: other.id,
            ..suspended.clone()
        })
        .await
        .unwrap();
    let mine = store
        .moderation_actions(Some(user.id), None, 10)
        .await
        .unwrap();
    assert_eq!(mine, vec![reinstated.clone(), suspended.clone()]);
    let suspensions = store
        .moderation_actions(None, Some(ModerationKind::Suspended), 10)
        .await
        .unwrap();
    assert_eq!(suspensions.len(), 2);
    assert!(suspensions
        .iter()
        .all(|a| a.kind == ModerationKind::Suspended));
    assert_eq!(suspensions[1].evidence, evidence);
    assert_eq!(
        store.moderation_actions(None, None, 1).await.unwrap().len(),
        1
    );
    assert!(matches!(
        store
            .record_moderation_action(&ModerationAction {
                user_id: UserId::generate(),
                ..suspended
            })
            .await,
        Err(StoreError::NotFound(_))
    ));
}

//! The embedded store's content rules (ToS 3.2): refused prompts and
//! moderation actions. Each operation runs under the store's one lock.

use std::collections::HashMap;

use super::accounts::status;
use super::*;
use crate::domain::content::evidence::{ModerationAction, ModerationKind, NewViolation, Violation};

#[derive(Default)]
pub(super) struct Moderation {
    violations: HashMap<UserId, Vec<Violation>>,
    actions: Vec<ModerationAction>,
}

pub(super) fn record_violation(
    s: &mut State,
    user: UserId,
    violation: &NewViolation,
    now: DateTime<Utc>,
    since: DateTime<Utc>,
) -> StoreResult<u32> {
    status(s, user)?;
    let list = s.moderation.violations.entry(user).or_default();
    list.push(Violation {
        user_id: user,
        refusal: violation.refusal.clone(),
        prompt: violation.prompt.clone(),
        counted: violation.counted,
        created_at: now,
    });
    Ok(u32::try_from(
        list.iter()
            .filter(|v| v.counted && v.created_at >= since)
            .count(),
    )
    .unwrap_or(u32::MAX))
}

pub(super) fn violations(
    s: &State,
    user: UserId,
    since: DateTime<Utc>,
    counted_only: bool,
    limit: usize,
) -> StoreResult<Vec<Violation>> {
    status(s, user)?;
    let Some(list) = s.moderation.violations.get(&user) else {
        return Ok(Vec::new());
    };
    Ok(list
        .iter()
        .rev()
        .filter(|v| v.created_at >= since && (v.counted || !counted_only))
        .take(limit)
        .cloned()
        .collect())
}

pub(super) fn record_moderation_action(
    s: &mut State,
    action: &ModerationAction,
) -> StoreResult<()> {
    status(s, action.user_id)?;
    s.moderation.actions.push(action.clone());
    Ok(())
}

pub(super) fn moderation_actions(
    s: &State,
    user: Option<UserId>,
    kind: Option<ModerationKind>,
    limit: usize,
) -> StoreResult<Vec<ModerationAction>> {
    Ok(s.moderation
        .actions
        .iter()
        .rev()
        .filter(|a| user.is_none_or(|u| a.user_id == u) && kind.is_none_or(|k| a.kind == k))
        .take(limit)
        .cloned()
        .collect())
}

#[async_trait]
impl ModerationStore for MemoryStore {
    async fn record_violation(
        &self,
        user: UserId,
        violation: &NewViolation,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> StoreResult<u32> {
        record_violation(&mut self.state.lock(), user, violation, now, since)
    }

    async fn violations(
        &self,
        user: UserId,
        since: DateTime<Utc>,
        counted_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<Violation>> {
        violations(&self.state.lock(), user, since, counted_only, limit)
    }

    async fn record_moderation_action(&self, action: &ModerationAction) -> StoreResult<()> {
        record_moderation_action(&mut self.state.lock(), action)
    }

    async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> StoreResult<Vec<ModerationAction>> {
        moderation_actions(&self.state.lock(), user, kind, limit)
    }
}

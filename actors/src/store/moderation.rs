//! Content rules (ToS 3.2): refused prompts counted toward suspension and
//! each account's moderation history.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;
use crate::domain::content::evidence::{ModerationAction, ModerationKind, NewViolation, Violation};
use crate::domain::ids::UserId;

/// Refusals and moderation actions.
#[async_trait]
pub trait ModerationStore: Send + Sync + 'static {
    /// Records a refused prompt and returns the user's counted refusals
    /// since `since`, this one included if it counts.
    async fn record_violation(
        &self,
        user: UserId,
        violation: &NewViolation,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> StoreResult<u32>;
    /// The user's refusals since `since`, newest first, at most `limit`;
    /// `counted_only` leaves out those that did not count.
    async fn violations(
        &self,
        user: UserId,
        since: DateTime<Utc>,
        counted_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<Violation>>;
    /// Appends to an account's moderation history.
    async fn record_moderation_action(&self, action: &ModerationAction) -> StoreResult<()>;
    /// Moderation history, newest first: one user's, or everyone's when
    /// `user` is `None`; only of `kind` when given.
    async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> StoreResult<Vec<ModerationAction>>;
}

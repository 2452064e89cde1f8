//! The content rules as orchestrator operations (ToS 3.2, 9.2): prompts
//! screened before anything is charged, automatic suspension, an
//! operator's moderation.

use chrono::{DateTime, SubsecRound, Utc};

use super::sweep::chrono_span;
use super::Orchestrator;
use crate::domain::account::{AccountStatus, User};
use crate::domain::content::evidence::{
    ModerationAction, ModerationKind, NewViolation, Violation, BY_AUTOMATIC, BY_OPERATOR,
};
use crate::domain::content::Verdict;
use crate::domain::ids::UserId;
use crate::domain::job::JobSpec;
use crate::domain::tier::Tier;
use crate::error::OrchestratorError;

/// The refusals kept as a suspension's evidence, at most.
const EVIDENCE_KEPT: usize = 50;
/// An operator's note on a moderation action, at most.
const MAX_NOTE_CHARS: usize = 500;

impl Orchestrator {
    /// Checks a prompt before anything is charged. A refusal is recorded
    /// with its evidence; confident ones are counted, and enough of them
    /// within the window suspend the account, with the counted refusals
    /// kept as the suspension's evidence.
    pub(super) async fn screen(
        &self,
        user: UserId,
        spec: &JobSpec,
    ) -> Result<(), OrchestratorError> {
        let policy = self.platform.content();
        // Only a policy that acts per tier (a provider's down policy) costs
        // the extra read.
        let tier = if policy.depends_on_tier() {
            self.user(user).await?.tier(self.config.clock.now())
        } else {
            Tier::Free
        };
        let refusal = match policy.check(&spec.prompt, tier).await {
            Verdict::Allowed => return Ok(()),
            Verdict::Unavailable(reason) => {
                tracing::warn!(user = %user, reason = %reason, "prompt not screened: moderation unavailable");
                return Err(OrchestratorError::ModerationUnavailable);
            }
            Verdict::Rejected(refusal) => refusal,
        };
        let rules = &self.config.platform;
        let counted = refusal.confidence >= rules.suspend_min_confidence;
        let category = refusal.category.clone();
        let now = self.config.clock.now().trunc_subsecs(6);
        let since = now - chrono_span(rules.violation_window);
        let violation = NewViolation {
            prompt: spec.prompt.clone(),
            counted,
            refusal,
        };
        let count = self
            .store
            .record_violation(user, &violation, now, since)
            .await?;
        tracing::warn!(user = %user, category = %category, counted, count,
            confidence = violation.refusal.confidence.get(), source = violation.refusal.source.as_str(),
            "prompt refused by the content policy");
        if counted
            && rules.violations_before_suspend > 0
            && count >= rules.violations_before_suspend
        {
            let current = self.user(user).await?;
            if current.status == AccountStatus::Active {
                self.set_status(user, AccountStatus::Suspended).await?;
                let evidence = self
                    .store
                    .violations(user, since, true, EVIDENCE_KEPT)
                    .await?;
                self.store
                    .record_moderation_action(&ModerationAction {
                        user_id: user,
                        kind: ModerationKind::Suspended,
                        by: BY_AUTOMATIC.into(),
                        note: Some(format!(
                            "{count} confident refusals within {} s",
                            rules.violation_window.as_secs()
                        )),
                        evidence,
                        created_at: now,
                    })
                    .await?;
                tracing::warn!(user = %user, count, "account suspended automatically for repeated content violations");
            }
        }
        Err(OrchestratorError::ContentRejected { category })
    }

    /// An operator suspends or reinstates an account; the action is kept
    /// in the account's moderation history with the operator's note.
    pub async fn moderate(
        &self,
        user: UserId,
        kind: ModerationKind,
        note: Option<String>,
    ) -> Result<User, OrchestratorError> {
        if let Some(n) = &note {
            if n.chars().count() > MAX_NOTE_CHARS {
                return Err(OrchestratorError::InvalidParams(format!(
                    "note must be at most {MAX_NOTE_CHARS} characters"
                )));
            }
        }
        let status = match kind {
            ModerationKind::Suspended => AccountStatus::Suspended,
            ModerationKind::Reinstated => AccountStatus::Active,
        };
        let updated = self.set_status(user, status).await?;
        self.store
            .record_moderation_action(&ModerationAction {
                user_id: user,
                kind,
                by: BY_OPERATOR.into(),
                note,
                evidence: Vec::new(),
                created_at: self.config.clock.now().trunc_subsecs(6),
            })
            .await?;
        tracing::warn!(user = %user, action = kind.as_str(), "account moderated by an operator");
        Ok(updated)
    }

    /// The user's refusals (all of them, counted or not) since `since`.
    pub async fn violations(
        &self,
        user: UserId,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Violation>, OrchestratorError> {
        Ok(self.store.violations(user, since, false, limit).await?)
    }

    /// Moderation history, newest first.
    pub async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> Result<Vec<ModerationAction>, OrchestratorError> {
        Ok(self.store.moderation_actions(user, kind, limit).await?)
    }
}

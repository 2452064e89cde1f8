//! The wallet actor's part in purchases and membership gifts (ToS 4.2,
//! 5): both move credits, so both pass through the user's actor; the store
//! decides each one atomically and exactly once.

use actix::prelude::*;
use chrono::{DateTime, Utc};

use super::WalletActor;
use crate::domain::ledger::EntryKind;
use crate::domain::payments::{GiftOutcome, NewPayment, PaymentId, PaymentOutcome};
use crate::store::StoreError;

/// Apply a verified payment: a credit pack or a membership.
#[derive(Message)]
#[rtype(result = "Result<PaymentOutcome, StoreError>")]
pub struct ApplyPayment(pub NewPayment);

impl Handler<ApplyPayment> for WalletActor {
    type Result = AtomicResponse<Self, Result<PaymentOutcome, StoreError>>;

    fn handle(&mut self, msg: ApplyPayment, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let store = self.deps.store.clone();
        let payment_id = msg.0.payment_id.clone();
        let fut = async move { store.apply_payment(msg.0).await };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(move |res, act, _| {
            let outcome = res?;
            act.observe_wallet(outcome.wallet);
            // The membership may have changed: priority and limits follow
            // at once (ToS 5.3).
            act.user = Some(outcome.user.clone());
            if !outcome.granted.is_zero() {
                act.deps
                    .observer
                    .credits_moved(EntryKind::Grant, outcome.granted.get());
            }
            if !outcome.replayed {
                tracing::info!(user = %outcome.user.id, payment = %payment_id,
                    granted = outcome.granted.get(), "payment applied");
            }
            Ok(outcome)
        })))
    }
}

/// Grant one paid month's gift, if it is still due.
#[derive(Message)]
#[rtype(result = "Result<GiftOutcome, StoreError>")]
pub struct GrantGift {
    pub payment: PaymentId,
    pub month: u32,
    /// The sweep's clock: a gift starting after it is not granted.
    pub now: DateTime<Utc>,
}

impl Handler<GrantGift> for WalletActor {
    type Result = AtomicResponse<Self, Result<GiftOutcome, StoreError>>;

    fn handle(&mut self, msg: GrantGift, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let store = self.deps.store.clone();
        let user_id = self.user_id;
        let fut = async move {
            let outcome = store
                .grant_gift(user_id, msg.payment.clone(), msg.month, msg.now)
                .await?;
            Ok((outcome, msg))
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            move |res: Result<_, StoreError>, act, _| {
                let (outcome, msg) = res?;
                act.observe_wallet(outcome.wallet);
                if outcome.granted {
                    let amount = outcome.amount.get();
                    act.deps.observer.credits_moved(EntryKind::Grant, amount);
                    tracing::info!(user = %user_id, payment = %msg.payment, month = msg.month,
                        amount, "membership gift granted");
                }
                Ok(outcome)
            },
        )))
    }
}

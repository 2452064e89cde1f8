//! API keys and account closure as orchestrator operations (ToS 2.2,
//! 9.2, 9.3).

use super::Orchestrator;
use crate::domain::account::{AccountStatus, ApiKey, User};
use crate::domain::api_keys::{ApiKeyRecord, IssuedKey};
use crate::domain::ids::{ApiKeyId, UserId};
use crate::domain::wallet::Wallet;
use crate::error::OrchestratorError;

impl Orchestrator {
    /// A new key for the user, shown this once.
    pub async fn issue_api_key(
        &self,
        user: UserId,
        options: crate::domain::api_keys::KeyOptions,
    ) -> Result<IssuedKey, OrchestratorError> {
        let key = ApiKey::generate_with(&self.config.random);
        let record = self
            .store
            .create_api_key(
                user,
                ApiKeyId::generate(),
                key.hash(),
                options,
                self.config.clock.now(),
            )
            .await?;
        tracing::info!(user = %user, key = %record.id, "API key issued");
        Ok(IssuedKey {
            record,
            key: key.expose().to_owned(),
        })
    }

    pub async fn api_keys(&self, user: UserId) -> Result<Vec<ApiKeyRecord>, OrchestratorError> {
        Ok(self.store.api_keys(user).await?)
    }

    pub async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
    ) -> Result<ApiKeyRecord, OrchestratorError> {
        let record = self
            .store
            .revoke_api_key(user, id, self.config.clock.now())
            .await?;
        tracing::info!(user = %user, key = %id, "API key revoked");
        Ok(record)
    }

    /// Terminates an account (ToS 9.2 by an operator, 9.3 by its owner):
    /// no more access, waiting jobs cancelled and refunded, the ledger and
    /// the balance kept as they are (never paid out), the e-mail address
    /// still taken. Terminating a terminated account changes nothing.
    pub async fn terminate(&self, user: UserId) -> Result<(User, Wallet), OrchestratorError> {
        let user = self.set_status(user, AccountStatus::Terminated).await?;
        let wallet = self.store.wallet(user.id).await?;
        tracing::warn!(user = %user.id, balance = wallet.balance.get(), "account terminated");
        Ok((user, wallet))
    }
}

//! Conformance of accounts: registration, one account per mailbox, API
//! keys with their names, expiry and scopes.

use super::*;
use crate::domain::api_keys::{KeyOptions, Scope, MAX_ACTIVE_KEYS};
use crate::domain::ids::ApiKeyId;

pub async fn registration_grants_reward_and_email_is_unique(store: Shared) {
    let user = user_with(&store, "Ann@Example.com", 100).await;
    let wallet = store.wallet(user.id).await.unwrap();
    assert_eq!((wallet.balance.get(), wallet.held.get()), (100, 0));
    let ledger = store.ledger(user.id, None, 10).await.unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].kind, EntryKind::Grant);
    assert_eq!(ledger[0].source, Some(GrantSource::Registration));
    let dup = store
        .create_user(
            NewUser {
                email: Email::parse(" ann@example.COM ").unwrap(),
                display_name: DisplayName::parse("Other").unwrap(),
                key_hash: ApiKey::generate().hash(),
            },
            credits(100),
            crate::clock::Clock::system().now(),
        )
        .await;
    assert_eq!(dup.unwrap_err(), StoreError::EmailTaken);
}

pub async fn api_key_finds_its_user_only(store: Shared) {
    let key = ApiKey::generate();
    let (user, _) = store
        .create_user(
            NewUser {
                email: Email::parse("key@example.com").unwrap(),
                display_name: DisplayName::parse("Key").unwrap(),
                key_hash: key.hash(),
            },
            credits(1),
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.user_by_key(key.hash()).await.unwrap().map(|u| u.id),
        Some(user.id)
    );
    assert!(store
        .user_by_key(ApiKey::generate().hash())
        .await
        .unwrap()
        .is_none());
}

/// One account per mailbox: another spelling of a registered address is
/// taken, and the address is kept as given.
pub async fn one_account_per_canonical_email(store: Shared) {
    let first = user_with(&store, "first.last+shop@gmail.com", 100).await;
    assert_eq!(first.email.as_str(), "first.last+shop@gmail.com");
    let again = store.user(first.id).await.unwrap().expect("stored");
    assert_eq!(again.email.as_str(), "first.last+shop@gmail.com");
    assert_eq!(again.email.canonical(), "firstlast@gmail.com");
    for other in [
        "firstlast@gmail.com",
        "First.Last+x@GMAIL.com",
        "f.irstlast@gmail.com",
    ] {
        let dup = store
            .create_user(
                NewUser {
                    email: Email::parse(other).unwrap(),
                    display_name: DisplayName::parse("Dup").unwrap(),
                    key_hash: ApiKey::generate().hash(),
                },
                credits(100),
                crate::clock::Clock::system().now(),
            )
            .await;
        assert_eq!(dup.unwrap_err(), StoreError::EmailTaken, "{other}");
    }
    // Dots count at other providers; the refused ones got no credits.
    user_with(&store, "first.last@example.com", 100).await;
    user_with(&store, "firstlast@example.com", 100).await;
    let audit = store.audit_ledgers().await.unwrap();
    assert_eq!(audit.len(), 3);
    assert_books_balance(&store).await;
}

pub async fn api_keys_are_issued_listed_and_revoked(store: Shared) {
    let first = ApiKey::generate();
    let (user, _) = store
        .create_user(
            NewUser {
                email: Email::parse("keys@example.com").unwrap(),
                display_name: DisplayName::parse("Keys").unwrap(),
                key_hash: first.hash(),
            },
            credits(1),
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
    // The registration key is listed.
    let listed = store.api_keys(user.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].hash, first.hash());
    assert!(listed[0].is_active());
    // The only active key cannot be revoked.
    assert_eq!(
        store
            .revoke_api_key(user.id, listed[0].id, crate::clock::Clock::system().now())
            .await
            .unwrap_err(),
        StoreError::LastApiKey
    );
    let second = ApiKey::generate();
    let record = store
        .create_api_key(
            user.id,
            ApiKeyId::generate(),
            second.hash(),
            KeyOptions::full(),
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .user_by_key(second.hash())
            .await
            .unwrap()
            .map(|u| u.id),
        Some(user.id)
    );
    // Another user cannot revoke it, nor can an unknown id be revoked.
    let other = user_with(&store, "other-keys@example.com", 1).await;
    assert_eq!(
        store
            .revoke_api_key(other.id, record.id, crate::clock::Clock::system().now())
            .await
            .unwrap_err(),
        StoreError::NotFound("API key")
    );
    assert_eq!(
        store
            .revoke_api_key(
                user.id,
                ApiKeyId::generate(),
                crate::clock::Clock::system().now()
            )
            .await
            .unwrap_err(),
        StoreError::NotFound("API key")
    );
    // Revoking the first leaves the second working; the first is refused.
    let revoked = store
        .revoke_api_key(user.id, listed[0].id, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(store.user_by_key(first.hash()).await.unwrap().is_none());
    assert!(store.user_by_key(second.hash()).await.unwrap().is_some());
    // Revoking again changes nothing.
    let again = store
        .revoke_api_key(
            user.id,
            listed[0].id,
            crate::clock::Clock::system().now() + Duration::seconds(5),
        )
        .await
        .unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);
    let listed = store.api_keys(user.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().filter(|k| k.is_active()).count(), 1);
    // At most MAX_ACTIVE_KEYS at once.
    for _ in 1..MAX_ACTIVE_KEYS {
        store
            .create_api_key(
                user.id,
                ApiKeyId::generate(),
                ApiKey::generate().hash(),
                KeyOptions::full(),
                crate::clock::Clock::system().now(),
            )
            .await
            .unwrap();
    }
    assert!(matches!(
        store
            .create_api_key(
                user.id,
                ApiKeyId::generate(),
                ApiKey::generate().hash(),
                KeyOptions::full(),
                crate::clock::Clock::system().now()
            )
            .await,
        Err(StoreError::LimitExceeded(_))
    ));
    // An inactive account gets no new key.
    store
        .set_status(other.id, AccountStatus::Suspended, now_us())
        .await
        .unwrap();
    assert_eq!(
        store
            .create_api_key(
                other.id,
                ApiKeyId::generate(),
                ApiKey::generate().hash(),
                KeyOptions::full(),
                crate::clock::Clock::system().now()
            )
            .await
            .unwrap_err(),
        StoreError::AccountInactive(AccountStatus::Suspended)
    );
    assert!(matches!(
        store.api_keys(UserId::generate()).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn keys_keep_their_name_expiry_and_scopes(store: Shared) {
    let key = ApiKey::generate();
    let (user, _) = store
        .create_user(
            NewUser {
                email: Email::parse("scopes@example.com").unwrap(),
                display_name: DisplayName::parse("Scopes").unwrap(),
                key_hash: key.hash(),
            },
            credits(10),
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
    // The registration key has full access and no expiry.
    let (found, record) = store.key_by_hash(key.hash()).await.unwrap().unwrap();
    assert_eq!(found.id, user.id);
    assert_eq!(
        (
            record.scopes.clone(),
            record.expires_at,
            record.name.clone()
        ),
        (None, None, None)
    );
    let expires = now_us() + Duration::days(1);
    let options = KeyOptions {
        name: Some("ci deploy".into()),
        expires_at: Some(expires),
        scopes: Some([Scope::JobsRead, Scope::WalletRead].into_iter().collect()),
    };
    let scoped = ApiKey::generate();
    let issued = store
        .create_api_key(
            user.id,
            ApiKeyId::generate(),
            scoped.hash(),
            options.clone(),
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
    assert_eq!(issued.name.as_deref(), Some("ci deploy"));
    assert_eq!(issued.expires_at, Some(expires));
    assert_eq!(issued.scopes, options.scopes);
    let (_, read) = store.key_by_hash(scoped.hash()).await.unwrap().unwrap();
    assert_eq!(read, issued);
    let listed = store.api_keys(user.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1], issued);
    // A revoked key authenticates nothing.
    store
        .revoke_api_key(user.id, issued.id, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert!(store.key_by_hash(scoped.hash()).await.unwrap().is_none());
    assert!(store
        .key_by_hash(ApiKey::generate().hash())
        .await
        .unwrap()
        .is_none());
}

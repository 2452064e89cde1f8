//! One behaviour for every catalogue adapter ([`MaterialStore`]): quota,
//! ownership, listings, gone and purge. [`material_store_conformance_tests!`]
//! turns the list into `#[test]`s for an adapter.

use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};

use crate::domain::ids::{JobId, MaterialId, UserId};
use crate::domain::material::{MediaType, ObjectRole, StoredObject};
use crate::domain::tier::License;
use crate::store::materials::{CatalogueError, MaterialStore};

pub type SharedCatalogue = Arc<dyn MaterialStore>;

/// Now, at the microsecond a database keeps.
fn now() -> DateTime<Utc> {
    crate::clock::Clock::system().now().trunc_subsecs(6)
}

fn material(user: UserId, size: u64) -> StoredObject {
    let id = MaterialId::generate();
    let now = now();
    StoredObject {
        key: format!("materials/{user}/{id}"),
        user_id: user,
        role: ObjectRole::Material {
            id,
            name: "cat.png".into(),
        },
        media: MediaType::Png,
        size,
        created_at: now,
        expires_at: now + Duration::days(7),
        gone_at: None,
    }
}

fn output(user: UserId, job: JobId, index: u32, size: u64) -> StoredObject {
    let now = now();
    StoredObject {
        key: format!("outputs/{user}/{job}/{index}"),
        user_id: user,
        role: ObjectRole::Output {
            job_id: job,
            index,
            license: License::Personal,
        },
        media: MediaType::Png,
        size,
        created_at: now,
        expires_at: now + Duration::days(7),
        gone_at: None,
    }
}

pub async fn materials_are_kept_within_quota(store: SharedCatalogue) {
    let user = UserId::generate();
    store.add_material(material(user, 600), 1000).await.unwrap();
    let refused = store.add_material(material(user, 500), 1000).await;
    assert_eq!(
        refused,
        Err(CatalogueError::QuotaExceeded {
            used: 600,
            size: 500,
            quota: 1000
        })
    );
    // Exactly at the quota is allowed; another user has their own.
    store.add_material(material(user, 400), 1000).await.unwrap();
    store
        .add_material(material(UserId::generate(), 1000), 1000)
        .await
        .unwrap();
    let usage = store
        .usage(user, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert_eq!((usage.bytes, usage.materials, usage.outputs), (1000, 2, 0));
}

pub async fn concurrent_uploads_never_overshoot_the_quota(store: SharedCatalogue) {
    let user = UserId::generate();
    let attempts = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.add_material(material(user, 300), 1000).await })
    });
    let mut accepted = 0;
    for a in attempts {
        if a.await.unwrap().is_ok() {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 3);
    assert_eq!(
        store
            .usage(user, crate::clock::Clock::system().now())
            .await
            .unwrap()
            .bytes,
        900
    );
}

pub async fn a_material_is_found_only_by_its_owner(store: SharedCatalogue) {
    let (alice, bob) = (UserId::generate(), UserId::generate());
    let m = material(alice, 10);
    let id = m.material_id().unwrap();
    store.add_material(m.clone(), 100).await.unwrap();
    assert_eq!(store.material(alice, id).await.unwrap(), Some(m.clone()));
    assert_eq!(store.material(bob, id).await.unwrap(), None);
    assert!(store
        .materials(bob, crate::clock::Clock::system().now(), 10)
        .await
        .unwrap()
        .is_empty());
    let dup = store.add_material(m.clone(), 100).await;
    assert_eq!(dup, Err(CatalogueError::Duplicate(m.key.clone())));
}

pub async fn listings_are_newest_first_and_live_only(store: SharedCatalogue) {
    let user = UserId::generate();
    let mut keys = Vec::new();
    for _ in 0..3 {
        let m = material(user, 1);
        keys.push(m.key.clone());
        store.add_material(m, 100).await.unwrap();
    }
    let now = crate::clock::Clock::system().now();
    assert!(store.mark_gone(&keys[1], now).await.unwrap().is_some());
    assert_eq!(store.mark_gone(&keys[1], now).await.unwrap(), None);
    let listed: Vec<String> = store
        .materials(user, now, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, vec![keys[2].clone(), keys[0].clone()]);
    assert_eq!(store.materials(user, now, 1).await.unwrap().len(), 1);
}

pub async fn outputs_are_recorded_once_by_index(store: SharedCatalogue) {
    let (user, job) = (UserId::generate(), JobId::generate());
    let first = vec![output(user, job, 0, 5), output(user, job, 1, 7)];
    store.add_outputs(first.clone()).await.unwrap();
    // A retried record changes nothing.
    store.add_outputs(first.clone()).await.unwrap();
    let found = store.outputs(job).await.unwrap();
    assert_eq!(found, first);
    assert_eq!(store.output(job, 1).await.unwrap(), Some(first[1].clone()));
    assert_eq!(store.output(job, 2).await.unwrap(), None);
    let usage = store
        .usage(user, crate::clock::Clock::system().now())
        .await
        .unwrap();
    assert_eq!((usage.bytes, usage.outputs), (12, 2));
}

pub async fn expired_and_gone_objects_are_purged_once(store: SharedCatalogue) {
    let user = UserId::generate();
    let mut old = material(user, 100);
    old.created_at -= Duration::days(8);
    old.expires_at = crate::clock::Clock::system().now() - Duration::seconds(1);
    let kept = material(user, 1);
    let deleted = material(user, 10);
    for m in [&old, &kept, &deleted] {
        store.add_material(m.clone(), 1000).await.unwrap();
    }
    let now = crate::clock::Clock::system().now();
    store.mark_gone(&deleted.key, now).await.unwrap();
    // Expired space is free at once, before any sweep.
    assert_eq!(store.usage(user, now).await.unwrap().bytes, 1);
    let mut due: Vec<String> = store
        .due_for_purge(now, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    due.sort();
    let mut expected = vec![old.key.clone(), deleted.key.clone()];
    expected.sort();
    assert_eq!(due, expected);
    store.purged(&due, now).await.unwrap();
    assert!(store.due_for_purge(now, 10).await.unwrap().is_empty());
    let id = old.material_id().unwrap();
    let gone = store.material(user, id).await.unwrap().unwrap();
    assert!(!gone.is_live(now));

    // A purged output is forgotten: its job lists it, and the catalogue
    // does not keep a row for every output ever made. Purging it again,
    // or purging a key never stored, changes nothing.
    let job = JobId::generate();
    let mut made = output(user, job, 0, 5);
    made.expires_at = now.trunc_subsecs(6) - Duration::seconds(1);
    store.add_outputs(vec![made.clone()]).await.unwrap();
    let due = store.due_for_purge(now, 10).await.unwrap();
    assert_eq!(due, vec![made.clone()]);
    store.purged(&[made.key.clone()], now).await.unwrap();
    store.purged(&[made.key.clone()], now).await.unwrap();
    store
        .purged(&["outputs/never/stored".to_owned()], now)
        .await
        .unwrap();
    store.purged(&[], now).await.unwrap();
    assert_eq!(store.output(job, 0).await.unwrap(), None);
    assert!(store.outputs(job).await.unwrap().is_empty());
    assert!(store.due_for_purge(now, 10).await.unwrap().is_empty());
    assert_eq!(store.usage(user, now).await.unwrap().bytes, 1);
}

/// The sweep's batches: a limit smaller than what is due hands out the
/// earliest due first, and what is purged is not handed out again.
pub async fn purging_goes_earliest_due_first_in_batches(store: SharedCatalogue) {
    let user = UserId::generate();
    let now = now();
    let mut made = Vec::new();
    for n in 0..5 {
        let mut o = output(user, JobId::generate(), 0, 1);
        o.expires_at = now - Duration::seconds(10 - n);
        made.push(o);
    }
    let mut live = output(user, JobId::generate(), 0, 1);
    live.expires_at = now + Duration::days(1);
    made.push(live.clone());
    // Stored out of order.
    made.reverse();
    store.add_outputs(made.clone()).await.unwrap();
    made.reverse();
    let first = store.due_for_purge(now, 2).await.unwrap();
    assert_eq!(first, made[..2].to_vec());
    let keys: Vec<String> = first.iter().map(|o| o.key.clone()).collect();
    store.purged(&keys, now).await.unwrap();
    let rest = store.due_for_purge(now, 10).await.unwrap();
    assert_eq!(rest, made[2..5].to_vec());
    assert_eq!(store.output(live_job(&live), 0).await.unwrap(), Some(live));
}

fn live_job(o: &StoredObject) -> JobId {
    match o.role {
        ObjectRole::Output { job_id, .. } => job_id,
        ObjectRole::Material { .. } => panic!("an output was expected"),
    }
}

pub async fn closing_an_account_expires_all_its_objects(store: SharedCatalogue) {
    let (user, other) = (UserId::generate(), UserId::generate());
    store.add_material(material(user, 3), 100).await.unwrap();
    store
        .add_outputs(vec![output(user, JobId::generate(), 0, 4)])
        .await
        .unwrap();
    store.add_material(material(other, 3), 100).await.unwrap();
    let now = crate::clock::Clock::system().now();
    assert_eq!(store.expire_user(user, now).await.unwrap(), 2);
    let later = now + Duration::milliseconds(1);
    assert_eq!(store.usage(user, later).await.unwrap().bytes, 0);
    assert_eq!(store.due_for_purge(later, 10).await.unwrap().len(), 2);
    assert_eq!(store.usage(other, later).await.unwrap().bytes, 3);
}

/// Expands to one test per catalogue check, each on a fresh catalogue made
/// by `$make` (an async expression yielding `Option<Arc<dyn MaterialStore>>`;
/// `None` skips, as for [`crate::store_conformance_tests!`]).
#[macro_export]
macro_rules! material_store_conformance_tests {
    ($make:expr) => {
        $crate::material_store_conformance_tests!(@each $make;
            materials_are_kept_within_quota,
            concurrent_uploads_never_overshoot_the_quota,
            a_material_is_found_only_by_its_owner,
            listings_are_newest_first_and_live_only,
            outputs_are_recorded_once_by_index,
            expired_and_gone_objects_are_purged_once,
            purging_goes_earliest_due_first_in_batches,
            closing_an_account_expires_all_its_objects,
        );
    };
    (@each $make:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(store) = $make.await else {
                    return;
                };
                $crate::store::conformance::materials::$name(store).await;
            }
        )*
    };
}

#[cfg(test)]
mod memory_adapter {
    use std::sync::Arc;

    use crate::store::materials::memory::MemoryMaterialStore;
    use crate::store::materials::MaterialStore;

    async fn fresh() -> Option<Arc<dyn MaterialStore>> {
        Some(Arc::new(MemoryMaterialStore::new()))
    }

    crate::material_store_conformance_tests!(fresh());
}

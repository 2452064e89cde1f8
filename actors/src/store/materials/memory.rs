//! The in-memory catalogue: the embedded default, and the reference the
//! PostgreSQL adapter is checked against.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::{CatalogueError, CatalogueResult, MaterialStore};
use crate::domain::ids::{JobId, MaterialId, UserId};
use crate::domain::material::{ObjectRole, StorageUsage, StoredObject};

struct Entry {
    object: StoredObject,
    purged: bool,
}

/// When an entry's bytes are due for deletion: as soon as it is gone, or
/// when it expires.
fn due_at(o: &StoredObject) -> DateTime<Utc> {
    o.gone_at.unwrap_or(o.expires_at).min(o.expires_at)
}

/// The entries by creation number (listings rely on the order), with
/// indexes so that the hot lookups (a completion's outputs, a user's
/// quota, the sweep's due objects) do not scan every object ever stored.
/// A purged output is removed altogether (its job still lists it, which is
/// how a read knows it is gone), so memory follows the live objects, not
/// every output ever made; a purged material stays as a tombstone.
#[derive(Default)]
struct Catalogue {
    next: u64,
    entries: BTreeMap<u64, Entry>,
    by_key: HashMap<String, u64>,
    by_output: BTreeMap<(JobId, u32), u64>,
    by_user: HashMap<UserId, BTreeSet<u64>>,
    /// Entries not purged yet, by when they are due.
    due: BTreeSet<(DateTime<Utc>, u64)>,
}

impl Catalogue {
    fn push(&mut self, object: StoredObject) {
        self.next += 1;
        let at = self.next;
        self.by_key.insert(object.key.clone(), at);
        if let ObjectRole::Output { job_id, index, .. } = object.role {
            self.by_output.insert((job_id, index), at);
        }
        self.by_user.entry(object.user_id).or_default().insert(at);
        self.due.insert((due_at(&object), at));
        self.entries.insert(
            at,
            Entry {
                object,
                purged: false,
            },
        );
    }

    /// The user's entries, oldest first.
    fn of_user(&self, user: UserId) -> impl DoubleEndedIterator<Item = &Entry> + '_ {
        self.by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|at| self.entries.get(at))
    }

    /// Changes entry `at` with `change`, keeping the due index in step.
    fn update(&mut self, at: u64, change: impl FnOnce(&mut StoredObject)) -> Option<&StoredObject> {
        let e = self.entries.get_mut(&at)?;
        let before = due_at(&e.object);
        change(&mut e.object);
        if !e.purged {
            self.due.remove(&(before, at));
            self.due.insert((due_at(&e.object), at));
        }
        Some(&e.object)
    }

    /// The bytes of entry `at` are deleted.
    fn purge(&mut self, at: u64, now: DateTime<Utc>) {
        let Some(e) = self.entries.get_mut(&at) else {
            return;
        };
        if e.purged {
            return;
        }
        self.due.remove(&(due_at(&e.object), at));
        e.purged = true;
        e.object.gone_at.get_or_insert(now);
        if let ObjectRole::Output { job_id, index, .. } = e.object.role {
            let user = e.object.user_id;
            let key = e.object.key.clone();
            self.entries.remove(&at);
            self.by_key.remove(&key);
            self.by_output.remove(&(job_id, index));
            if let Some(mine) = self.by_user.get_mut(&user) {
                mine.remove(&at);
                if mine.is_empty() {
                    self.by_user.remove(&user);
                }
            }
        }
    }
}

#[derive(Default)]
pub struct MemoryMaterialStore {
    catalogue: Mutex<Catalogue>,
}

impl MemoryMaterialStore {
    pub fn new() -> MemoryMaterialStore {
        MemoryMaterialStore::default()
    }
}

fn used(c: &Catalogue, user: UserId, now: DateTime<Utc>) -> StorageUsage {
    let mut usage = StorageUsage::default();
    for e in c.of_user(user).filter(|e| e.object.is_live(now)) {
        usage.bytes = usage.bytes.saturating_add(e.object.size);
        match e.object.role {
            ObjectRole::Material { .. } => usage.materials += 1,
            ObjectRole::Output { .. } => usage.outputs += 1,
        }
    }
    usage
}

#[async_trait]
impl MaterialStore for MemoryMaterialStore {
    fn adapter(&self) -> &'static str {
        "memory"
    }

    async fn add_material(&self, object: StoredObject, quota: u64) -> CatalogueResult<()> {
        let mut c = self.catalogue.lock();
        if c.by_key.contains_key(&object.key) {
            return Err(CatalogueError::Duplicate(object.key));
        }
        let used = used(&c, object.user_id, object.created_at).bytes;
        if used.saturating_add(object.size) > quota {
            return Err(CatalogueError::QuotaExceeded {
                used,
                size: object.size,
                quota,
            });
        }
        c.push(object);
        Ok(())
    }

    async fn add_outputs(&self, objects: Vec<StoredObject>) -> CatalogueResult<()> {
        let mut c = self.catalogue.lock();
        for object in objects {
            let ObjectRole::Output { job_id, index, .. } = object.role else {
                return Err(CatalogueError::Internal(format!(
                    "{} is not an output",
                    object.key
                )));
            };
            // Recorded once: a repeated completion changes nothing.
            let exists =
                c.by_key.contains_key(&object.key) || c.by_output.contains_key(&(job_id, index));
            if !exists {
                c.push(object);
            }
        }
        Ok(())
    }

    async fn material(
        &self,
        user: UserId,
        id: MaterialId,
    ) -> CatalogueResult<Option<StoredObject>> {
        let c = self.catalogue.lock();
        let found = c
            .of_user(user)
            .find(|e| e.object.material_id() == Some(id))
            .map(|e| e.object.clone());
        Ok(found)
    }

    async fn materials(
        &self,
        user: UserId,
        now: DateTime<Utc>,
        limit: usize,
    ) -> CatalogueResult<Vec<StoredObject>> {
        let c = self.catalogue.lock();
        let found = c
            .of_user(user)
            .rev()
            .filter(|e| {
                e.object.is_live(now) && matches!(e.object.role, ObjectRole::Material { .. })
            })
            .take(limit)
            .map(|e| e.object.clone())
            .collect();
        Ok(found)
    }

    async fn output(&self, job: JobId, index: u32) -> CatalogueResult<Option<StoredObject>> {
        let c = self.catalogue.lock();
        Ok(c.by_output
            .get(&(job, index))
            .and_then(|at| c.entries.get(at))
            .map(|e| e.object.clone()))
    }

    async fn outputs(&self, job: JobId) -> CatalogueResult<Vec<StoredObject>> {
        let c = self.catalogue.lock();
        // Keyed by (job, index): in index order.
        Ok(c.by_output
            .range((job, 0)..=(job, u32::MAX))
            .filter_map(|(_, at)| c.entries.get(at))
            .map(|e| e.object.clone())
            .collect())
    }

    async fn mark_gone(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> CatalogueResult<Option<StoredObject>> {
        let mut c = self.catalogue.lock();
        let Some(at) = c.by_key.get(key).copied() else {
            return Ok(None);
        };
        if !c.entries.get(&at).is_some_and(|e| e.object.is_live(now)) {
            return Ok(None);
        }
        Ok(c.update(at, |o| o.gone_at = Some(now)).cloned())
    }

    async fn usage(&self, user: UserId, now: DateTime<Utc>) -> CatalogueResult<StorageUsage> {
        Ok(used(&self.catalogue.lock(), user, now))
    }

    async fn due_for_purge(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> CatalogueResult<Vec<StoredObject>> {
        let c = self.catalogue.lock();
        let due = c
            .due
            .range(..=(now, u64::MAX))
            .filter_map(|(_, at)| c.entries.get(at))
            .filter(|e| !e.purged && !e.object.is_live(now))
            .take(limit)
            .map(|e| e.object.clone())
            .collect();
        Ok(due)
    }

    async fn purged(&self, keys: &[String], now: DateTime<Utc>) -> CatalogueResult<()> {
        let mut c = self.catalogue.lock();
        for key in keys {
            if let Some(at) = c.by_key.get(key).copied() {
                c.purge(at, now);
            }
        }
        Ok(())
    }

    async fn expire_user(&self, user: UserId, now: DateTime<Utc>) -> CatalogueResult<u64> {
        let mut c = self.catalogue.lock();
        let Some(mine) = c.by_user.get(&user).cloned() else {
            return Ok(0);
        };
        let mut n = 0;
        for at in mine {
            if c.entries.get(&at).is_some_and(|e| e.object.is_live(now)) {
                c.update(at, |o| o.expires_at = now);
                n += 1;
            }
        }
        Ok(n)
    }
}

//! The in-memory catalogue: the embedded default, and the reference the
//! PostgreSQL adapter is checked against.

use std::collections::{BTreeMap, HashMap};

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

/// The entries in creation order (listings rely on it), with indexes so
/// that the hot lookups (a completion's outputs, a user's quota) do not
/// scan every object ever stored.
#[derive(Default)]
struct Catalogue {
    entries: Vec<Entry>,
    by_key: HashMap<String, usize>,
    by_output: BTreeMap<(JobId, u32), usize>,
    by_user: HashMap<UserId, Vec<usize>>,
}

impl Catalogue {
    fn push(&mut self, object: StoredObject) {
        let at = self.entries.len();
        self.by_key.insert(object.key.clone(), at);
        if let ObjectRole::Output { job_id, index, .. } = object.role {
            self.by_output.insert((job_id, index), at);
        }
        self.by_user.entry(object.user_id).or_default().push(at);
        self.entries.push(Entry {
            object,
            purged: false,
        });
    }

    /// The user's entries, oldest first.
    fn of_user(&self, user: UserId) -> impl DoubleEndedIterator<Item = &Entry> + '_ {
        self.by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.entries.get(i))
    }

    fn by_key_mut(&mut self, key: &str) -> Option<&mut Entry> {
        let at = *self.by_key.get(key)?;
        self.entries.get_mut(at)
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
            .and_then(|&at| c.entries.get(at))
            .map(|e| e.object.clone()))
    }

    async fn outputs(&self, job: JobId) -> CatalogueResult<Vec<StoredObject>> {
        let c = self.catalogue.lock();
        // Keyed by (job, index): in index order.
        Ok(c.by_output
            .range((job, 0)..=(job, u32::MAX))
            .filter_map(|(_, &at)| c.entries.get(at))
            .map(|e| e.object.clone())
            .collect())
    }

    async fn mark_gone(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> CatalogueResult<Option<StoredObject>> {
        let mut c = self.catalogue.lock();
        let Some(e) = c.by_key_mut(key).filter(|e| e.object.is_live(now)) else {
            return Ok(None);
        };
        e.object.gone_at = Some(now);
        Ok(Some(e.object.clone()))
    }

    async fn usage(&self, user: UserId, now: DateTime<Utc>) -> CatalogueResult<StorageUsage> {
        Ok(used(&self.catalogue.lock(), user, now))
    }

    async fn due_for_purge(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> CatalogueResult<Vec<StoredObject>> {
        let mut due: Vec<StoredObject> = self
            .catalogue
            .lock()
            .entries
            .iter()
            .filter(|e| !e.purged && !e.object.is_live(now))
            .map(|e| e.object.clone())
            .collect();
        due.sort_by_key(|o| o.gone_at.unwrap_or(o.expires_at).min(o.expires_at));
        due.truncate(limit);
        Ok(due)
    }

    async fn purged(&self, key: &str, now: DateTime<Utc>) -> CatalogueResult<()> {
        if let Some(e) = self.catalogue.lock().by_key_mut(key) {
            e.purged = true;
            e.object.gone_at.get_or_insert(now);
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
            if let Some(e) = c.entries.get_mut(at).filter(|e| e.object.is_live(now)) {
                e.object.expires_at = now;
                n += 1;
            }
        }
        Ok(n)
    }
}

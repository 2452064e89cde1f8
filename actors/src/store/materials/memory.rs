//! The in-memory catalogue: the embedded default, and the reference the
//! PostgreSQL adapter is checked against.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::{CatalogueError, CatalogueResult, MaterialStore};
use crate::ids::{JobId, MaterialId, UserId};
use crate::material::{ObjectRole, StorageUsage, StoredObject};

struct Entry {
    object: StoredObject,
    purged: bool,
}

#[derive(Default)]
pub struct MemoryMaterialStore {
    // Insertion order is creation order, which listings rely on.
    entries: Mutex<Vec<Entry>>,
}

impl MemoryMaterialStore {
    pub fn new() -> MemoryMaterialStore {
        MemoryMaterialStore::default()
    }
}

fn used(entries: &[Entry], user: UserId, now: DateTime<Utc>) -> StorageUsage {
    let mut usage = StorageUsage::default();
    for e in entries
        .iter()
        .filter(|e| e.object.user_id == user && e.object.is_live(now))
    {
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
        let mut entries = self.entries.lock();
        if entries.iter().any(|e| e.object.key == object.key) {
            return Err(CatalogueError::Duplicate(object.key));
        }
        let used = used(&entries, object.user_id, object.created_at).bytes;
        if used.saturating_add(object.size) > quota {
            return Err(CatalogueError::QuotaExceeded {
                used,
                size: object.size,
                quota,
            });
        }
        entries.push(Entry {
            object,
            purged: false,
        });
        Ok(())
    }

    async fn add_outputs(&self, objects: Vec<StoredObject>) -> CatalogueResult<()> {
        let mut entries = self.entries.lock();
        for object in objects {
            let ObjectRole::Output { job_id, index, .. } = object.role else {
                return Err(CatalogueError::Internal(format!(
                    "{} is not an output",
                    object.key
                )));
            };
            let exists = entries.iter().any(|e| {
                e.object.key == object.key
                    || matches!(e.object.role, ObjectRole::Output { job_id: j, index: i, .. } if j == job_id && i == index)
            });
            if !exists {
                entries.push(Entry {
                    object,
                    purged: false,
                });
            }
        }
        Ok(())
    }

    async fn material(
        &self,
        user: UserId,
        id: MaterialId,
    ) -> CatalogueResult<Option<StoredObject>> {
        Ok(self
            .entries
            .lock()
            .iter()
            .find(|e| e.object.user_id == user && e.object.material_id() == Some(id))
            .map(|e| e.object.clone()))
    }

    async fn materials(
        &self,
        user: UserId,
        now: DateTime<Utc>,
        limit: usize,
    ) -> CatalogueResult<Vec<StoredObject>> {
        Ok(self
            .entries
            .lock()
            .iter()
            .rev()
            .filter(|e| {
                e.object.user_id == user
                    && e.object.is_live(now)
                    && matches!(e.object.role, ObjectRole::Material { .. })
            })
            .take(limit)
            .map(|e| e.object.clone())
            .collect())
    }

    async fn output(&self, job: JobId, index: u32) -> CatalogueResult<Option<StoredObject>> {
        Ok(self
            .entries
            .lock()
            .iter()
            .find(|e| matches!(e.object.role, ObjectRole::Output { job_id, index: i, .. } if job_id == job && i == index))
            .map(|e| e.object.clone()))
    }

    async fn outputs(&self, job: JobId) -> CatalogueResult<Vec<StoredObject>> {
        let mut found: Vec<(u32, StoredObject)> = self
            .entries
            .lock()
            .iter()
            .filter_map(|e| match e.object.role {
                ObjectRole::Output { job_id, index, .. } if job_id == job => {
                    Some((index, e.object.clone()))
                }
                _ => None,
            })
            .collect();
        found.sort_by_key(|(i, _)| *i);
        Ok(found.into_iter().map(|(_, o)| o).collect())
    }

    async fn mark_gone(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> CatalogueResult<Option<StoredObject>> {
        let mut entries = self.entries.lock();
        let Some(e) = entries
            .iter_mut()
            .find(|e| e.object.key == key && e.object.is_live(now))
        else {
            return Ok(None);
        };
        e.object.gone_at = Some(now);
        Ok(Some(e.object.clone()))
    }

    async fn usage(&self, user: UserId, now: DateTime<Utc>) -> CatalogueResult<StorageUsage> {
        Ok(used(&self.entries.lock(), user, now))
    }

    async fn due_for_purge(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> CatalogueResult<Vec<StoredObject>> {
        let mut due: Vec<StoredObject> = self
            .entries
            .lock()
            .iter()
            .filter(|e| !e.purged && !e.object.is_live(now))
            .map(|e| e.object.clone())
            .collect();
        due.sort_by_key(|o| o.gone_at.unwrap_or(o.expires_at).min(o.expires_at));
        due.truncate(limit);
        Ok(due)
    }

    async fn purged(&self, key: &str, now: DateTime<Utc>) -> CatalogueResult<()> {
        if let Some(e) = self.entries.lock().iter_mut().find(|e| e.object.key == key) {
            e.purged = true;
            e.object.gone_at.get_or_insert(now);
        }
        Ok(())
    }

    async fn expire_user(&self, user: UserId, now: DateTime<Utc>) -> CatalogueResult<u64> {
        let mut n = 0;
        for e in self
            .entries
            .lock()
            .iter_mut()
            .filter(|e| e.object.user_id == user && e.object.is_live(now))
        {
            e.object.expires_at = now;
            n += 1;
        }
        Ok(n)
    }
}

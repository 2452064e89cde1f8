//! Materials and outputs as the platform offers them: uploads within the
//! tier's quota, job references checked at submission, signed URLs for each
//! attempt's inputs and outputs, the check of a worker's uploads before a
//! completion counts, downloads, early deletion and the retention sweep.
//! It joins the object store ([`Objects`]) with the catalogue port.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use admedia_actors::attempt_files::{AttemptFiles, AttemptPlan, InputFile, OutputSlot};
use admedia_actors::domain::account::User;
use admedia_actors::domain::ids::{JobId, MaterialId, UserId};
use admedia_actors::domain::job::{Job, JobKind, Output, ParamsRequest};
use admedia_actors::domain::material::{ObjectRole, StorageRules, StorageUsage, StoredObject};
use admedia_actors::store::materials::{CatalogueError, MaterialStore};
use async_trait::async_trait;
use chrono::Utc;
use futures_util::Stream;

use crate::objects::{Access, Download, ObjectError, Objects, UploadError};

/// Longest file name kept for a material (it is only shown).
const MAX_NAME_CHARS: usize = 200;
/// Signed URLs of an attempt outlive its deadline by this much, so an
/// upload that started in time can finish.
const URL_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} is no longer stored (expired or deleted)")]
    Gone(&'static str),
    #[error("storage quota exceeded: {used} of {quota} bytes used; this upload needs {size} more")]
    QuotaExceeded { used: u64, size: u64, quota: u64 },
    #[error("{0}")]
    Upload(UploadError),
    #[error("{0}")]
    InvalidReference(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<CatalogueError> for MaterialError {
    fn from(e: CatalogueError) -> Self {
        match e {
            CatalogueError::QuotaExceeded { used, size, quota } => {
                MaterialError::QuotaExceeded { used, size, quota }
            }
            other => MaterialError::Unavailable(other.to_string()),
        }
    }
}

impl From<ObjectError> for MaterialError {
    fn from(e: ObjectError) -> Self {
        MaterialError::Unavailable(e.to_string())
    }
}

/// A user's storage: what they use and may use.
#[derive(Clone, Copy, Debug)]
pub struct Storage {
    pub usage: StorageUsage,
    pub quota_bytes: u64,
    pub retention: Duration,
}

pub struct Materials {
    objects: Arc<Objects>,
    catalogue: Arc<dyn MaterialStore>,
    rules: StorageRules,
    /// How long a download redirect stays valid.
    url_ttl: Duration,
    image_deadline: Duration,
    video_deadline: Duration,
}

fn material_key(user: UserId, id: MaterialId) -> String {
    format!("materials/{user}/{id}")
}

/// An output's key: one file in its user's directory, so that on a local
/// directory a job creates and later deletes one file and no directory.
/// (File systems pay for each inode made and freed: with a job and an
/// attempt directory per output, those were two thirds of the inodes a
/// job churned, and on an ext4 without a journal every new inode is
/// searched for past the ones freed in the last minute.)
fn output_key(job: &Job, attempt: u32, index: u32) -> String {
    format!("outputs/{}/{}.{attempt}.{index}", job.user_id, job.id)
}

/// The key an attempt assigned by an earlier release was given (job and
/// attempt directories): a worker that outlives the upgrade still reports
/// its outputs under it.
fn earlier_output_key(job: &Job, attempt: u32, index: u32) -> String {
    format!("outputs/{}/{}/{attempt}/{index}", job.user_id, job.id)
}

/// The file name a user gave, kept printable and short.
fn clean_name(raw: Option<&str>) -> String {
    let name: String = raw
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    let name = name.trim();
    if name.is_empty() {
        "upload".into()
    } else {
        name.to_owned()
    }
}

impl Materials {
    pub fn new(
        objects: impl Into<Arc<Objects>>,
        catalogue: Arc<dyn MaterialStore>,
        rules: StorageRules,
        url_ttl: Duration,
        image_deadline: Duration,
        video_deadline: Duration,
    ) -> Materials {
        Materials {
            objects: objects.into(),
            catalogue,
            rules,
            url_ttl,
            image_deadline,
            video_deadline,
        }
    }

    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// The object store, shared (the ledger archive keeps its chapters
    /// there too).
    pub fn shared_objects(&self) -> Arc<Objects> {
        self.objects.clone()
    }

    pub fn catalogue(&self) -> &Arc<dyn MaterialStore> {
        &self.catalogue
    }

    pub fn rules(&self) -> &StorageRules {
        &self.rules
    }

    pub async fn storage(&self, user: &User) -> Result<Storage, MaterialError> {
        let now = Utc::now();
        let tier = self.rules.of(user.tier(now));
        Ok(Storage {
            usage: self.catalogue.usage(user.id, now).await?,
            quota_bytes: tier.quota_bytes,
            retention: tier.retention,
        })
    }

    /// Streams an upload into the store and records it, within the user's
    /// quota and the size limit. `declared` (Content-Length) lets an upload
    /// that cannot fit be refused before a byte is read.
    pub async fn upload<S, E>(
        &self,
        user: &User,
        name: Option<&str>,
        declared: Option<u64>,
        body: S,
    ) -> Result<StoredObject, MaterialError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let now = Utc::now();
        let tier = user.tier(now);
        let quota = self.rules.of(tier).quota_bytes;
        let used = self.catalogue.usage(user.id, now).await?.bytes;
        let room = quota.saturating_sub(used);
        let max = self.rules.max_material_bytes;
        if let Some(size) = declared {
            if size > max {
                return Err(MaterialError::Upload(UploadError::TooLarge { limit: max }));
            }
            if size > room {
                return Err(MaterialError::QuotaExceeded { used, size, quota });
            }
        }
        let id = MaterialId::generate();
        let key = material_key(user.id, id);
        let stored = match self.objects.upload(&key, body, max.min(room)).await {
            Ok(stored) => stored,
            Err(UploadError::TooLarge { .. }) if room < max => {
                return Err(MaterialError::QuotaExceeded {
                    used,
                    size: declared.unwrap_or(room.saturating_add(1)),
                    quota,
                })
            }
            Err(UploadError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(MaterialError::Upload(e)),
        };
        let object = StoredObject {
            key: key.clone(),
            user_id: user.id,
            role: ObjectRole::Material {
                id,
                name: clean_name(name),
            },
            media: stored.media,
            size: stored.size,
            created_at: now,
            expires_at: self.rules.expiry(tier, now),
            gone_at: None,
        };
        if let Err(e) = self.catalogue.add_material(object.clone(), quota).await {
            // Another upload took the room meanwhile: nothing is kept.
            if let Err(delete) = self.objects.delete(&key).await {
                tracing::warn!(key, error = %delete, "could not delete a refused upload");
            }
            return Err(e.into());
        }
        Ok(object)
    }

    /// The user's material while it is stored.
    pub async fn material(
        &self,
        user: UserId,
        id: MaterialId,
    ) -> Result<StoredObject, MaterialError> {
        let found = self
            .catalogue
            .material(user, id)
            .await?
            .ok_or(MaterialError::NotFound("material"))?;
        if !found.is_live(Utc::now()) {
            return Err(MaterialError::Gone("material"));
        }
        Ok(found)
    }

    pub async fn materials(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<StoredObject>, MaterialError> {
        Ok(self.catalogue.materials(user, Utc::now(), limit).await?)
    }

    pub async fn download(&self, object: &StoredObject) -> Result<Download, MaterialError> {
        self.objects
            .download(&object.key, self.url_ttl)
            .await
            .map_err(|e| match e {
                // Recorded but its bytes are gone: a purge is under way.
                ObjectError::NotFound(_) => MaterialError::Gone("object"),
                other => other.into(),
            })
    }

    /// Stops serving the object and deletes its bytes (or leaves that to
    /// the sweep if the store is unreachable now).
    async fn remove(&self, object: &StoredObject) -> Result<(), MaterialError> {
        let now = Utc::now();
        if self.catalogue.mark_gone(&object.key, now).await?.is_none() {
            return Err(MaterialError::Gone("object"));
        }
        match self.objects.delete(&object.key).await {
            Ok(()) => {
                self.catalogue
                    .purged(std::slice::from_ref(&object.key), now)
                    .await?
            }
            Err(e) => {
                tracing::warn!(key = %object.key, error = %e, "object left for the sweep to delete")
            }
        }
        Ok(())
    }

    pub async fn delete_material(&self, user: UserId, id: MaterialId) -> Result<(), MaterialError> {
        let found = self.material(user, id).await?;
        self.remove(&found).await
    }

    /// Output `index` of a job the caller was shown as theirs.
    pub async fn output(&self, job: JobId, index: u32) -> Result<StoredObject, MaterialError> {
        let found = self
            .catalogue
            .output(job, index)
            .await?
            .ok_or(MaterialError::NotFound("output"))?;
        if !found.is_live(Utc::now()) {
            return Err(MaterialError::Gone("output"));
        }
        Ok(found)
    }

    /// Deletes an output (found by [`Materials::output`]) before its
    /// retention ends.
    pub async fn delete_output(&self, found: &StoredObject) -> Result<(), MaterialError> {
        self.remove(found).await
    }

    /// The materials a submission names must be the caller's, stored, and
    /// images.
    pub async fn check_references(
        &self,
        user: UserId,
        params: &ParamsRequest,
    ) -> Result<(), MaterialError> {
        let named = params
            .init_image
            .iter()
            .map(|id| ("init_image", *id))
            .chain(
                params
                    .reference_images
                    .iter()
                    .map(|id| ("reference_images", *id)),
            );
        for (field, id) in named {
            let found = match self.material(user, id).await {
                Ok(found) => found,
                Err(MaterialError::NotFound(_)) => {
                    return Err(MaterialError::InvalidReference(format!(
                        "{field}: no material {id}"
                    )))
                }
                Err(MaterialError::Gone(_)) => {
                    return Err(MaterialError::InvalidReference(format!(
                        "{field}: material {id} is no longer stored"
                    )))
                }
                Err(e) => return Err(e),
            };
            if !found.media.is_image() {
                return Err(MaterialError::InvalidReference(format!(
                    "{field}: material {id} is {}, not an image",
                    found.media.mime()
                )));
            }
        }
        Ok(())
    }

    /// Closing or terminating an account: all its objects expire now and
    /// the next sweep deletes them.
    pub async fn expire_user(&self, user: UserId) -> Result<u64, MaterialError> {
        Ok(self.catalogue.expire_user(user, Utc::now()).await?)
    }

    /// Deletes the bytes of every expired or deleted object, `batch` at a
    /// time, until a batch comes back short; returns how many. One batch
    /// per round would purge at most `batch` objects per sweep interval,
    /// far fewer than a busy server's outputs expire, so the store would
    /// grow without end. An object the store cannot delete now stays due
    /// for the next round (and ends this one, so a failing store is not
    /// asked again and again).
    pub async fn sweep(&self, batch: usize) -> Result<usize, MaterialError> {
        let batch = batch.max(1);
        let mut purged = 0;
        loop {
            let now = Utc::now();
            let due = self.catalogue.due_for_purge(now, batch).await?;
            let full = due.len() >= batch;
            let mut deleted = Vec::with_capacity(due.len());
            for object in due {
                match self.objects.delete(&object.key).await {
                    Ok(()) => deleted.push(object.key),
                    Err(e) => {
                        tracing::warn!(key = %object.key, error = %e, "could not purge; later")
                    }
                }
            }
            self.catalogue.purged(&deleted, now).await?;
            let this_batch = deleted.len();
            purged += this_batch;
            if !full || this_batch < batch {
                return Ok(purged);
            }
            tokio::task::yield_now().await;
        }
    }

    fn attempt_ttl(&self, kind: JobKind) -> Duration {
        let deadline = match kind {
            JobKind::Image => self.image_deadline,
            JobKind::Video => self.video_deadline,
        };
        (deadline + URL_GRACE).max(self.url_ttl)
    }
}

#[async_trait]
impl AttemptFiles for Materials {
    async fn prepare(&self, job: &Job, attempt: u32) -> Result<AttemptPlan, String> {
        let ttl = self.attempt_ttl(job.spec.kind);
        let mut plan = AttemptPlan::default();
        for id in job.spec.params.materials() {
            let material = self
                .material(job.user_id, id)
                .await
                .map_err(|e| format!("material {id}: {e}"))?;
            let url = self
                .objects
                .signed_url(Access::Get, &material.key, ttl)
                .await
                .map_err(|e| e.to_string())?;
            let role = if job.spec.params.init_image == Some(id) {
                "init_image"
            } else {
                "reference_image"
            };
            plan.inputs.push(InputFile {
                role: role.into(),
                material_id: id,
                content_type: material.media.mime().into(),
                url,
            });
        }
        for index in 0..job.spec.params.expected_outputs() {
            let key = output_key(job, attempt, index);
            let upload_url = self
                .objects
                .signed_url(Access::Put, &key, ttl)
                .await
                .map_err(|e| e.to_string())?;
            plan.outputs.push(OutputSlot {
                index,
                key,
                upload_url,
            });
        }
        Ok(plan)
    }

    async fn accept(
        &self,
        job: &Job,
        attempt: u32,
        reported: &[Output],
    ) -> Result<Vec<Output>, String> {
        let expected = job.spec.params.expected_outputs();
        if reported.len() != expected as usize {
            return Err(format!(
                "{} outputs reported; the job asked for {expected}",
                reported.len()
            ));
        }
        let now = Utc::now();
        let mut objects = Vec::with_capacity(reported.len());
        let mut seen = vec![false; expected as usize];
        for output in reported {
            let index = (0..expected)
                .find(|i| {
                    output_key(job, attempt, *i) == output.url
                        || earlier_output_key(job, attempt, *i) == output.url
                })
                .ok_or_else(|| format!("{:?} is not an upload slot of this attempt", output.url))?;
            let slot = &mut seen[index as usize];
            if *slot {
                return Err(format!("output {index} is reported twice"));
            }
            *slot = true;
            let inspected = self
                .objects
                .inspect(&output.url)
                .await
                .map_err(|e| format!("output {index}: {e}"))?
                .ok_or_else(|| format!("output {index} was not uploaded"))?;
            if inspected.size == 0 {
                return Err(format!("output {index} is empty"));
            }
            if inspected.size > self.rules.max_output_bytes {
                return Err(format!(
                    "output {index} is larger than {} bytes",
                    self.rules.max_output_bytes
                ));
            }
            let media = inspected
                .media
                .filter(|m| m.fits_output_of(job.spec.kind))
                .ok_or_else(|| {
                    format!(
                        "output {index} is not a valid {} file",
                        job.spec.kind.as_str()
                    )
                })?;
            objects.push(StoredObject {
                key: output.url.clone(),
                user_id: job.user_id,
                role: ObjectRole::Output {
                    job_id: job.id,
                    index,
                    license: job.tier.license(),
                },
                media,
                size: inspected.size,
                created_at: now,
                expires_at: self.rules.expiry(job.tier, now),
                gone_at: None,
            });
        }
        objects.sort_by_key(|o| match o.role {
            ObjectRole::Output { index, .. } => index,
            ObjectRole::Material { .. } => u32::MAX,
        });
        let outputs = objects
            .iter()
            .map(|o| {
                let index = match o.role {
                    ObjectRole::Output { index, .. } => index,
                    ObjectRole::Material { .. } => 0,
                };
                // The worker's safety labels go with the stored output, for
                // the content checks to weigh.
                let safety = reported
                    .iter()
                    .find(|r| r.url == o.key)
                    .map(|r| r.safety.clone())
                    .unwrap_or_default();
                let mut output = Output::new(
                    format!("/v1/jobs/{}/outputs/{index}", job.id),
                    o.media.mime(),
                );
                output.safety = safety;
                output
            })
            .collect();
        self.catalogue
            .add_outputs(objects)
            .await
            .map_err(|e| format!("recording the outputs: {e}"))?;
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectSettings;
    use admedia_actors::domain::material::MediaType;
    use admedia_actors::domain::tier::License;
    use admedia_actors::store::materials::memory::MemoryMaterialStore;

    fn expired_output(user: UserId, n: u32) -> StoredObject {
        let now = Utc::now();
        let job = JobId::generate();
        StoredObject {
            key: format!("outputs/{user}/{job}/1/{n}"),
            user_id: user,
            role: ObjectRole::Output {
                job_id: job,
                index: 0,
                license: License::Personal,
            },
            media: MediaType::Png,
            size: 3,
            created_at: now - chrono::Duration::hours(1),
            expires_at: now - chrono::Duration::seconds(1),
            gone_at: None,
        }
    }

    /// A round purges everything due, a batch at a time: with one batch a
    /// round, a server making more outputs per sweep interval than a batch
    /// would keep every output for ever. A batch of zero is taken as one.
    #[tokio::test]
    async fn a_sweep_purges_everything_due_a_batch_at_a_time() {
        let dir = tempfile::tempdir().expect("dir");
        let objects = Objects::open(
            &ObjectSettings::Local {
                root: dir.path().to_owned(),
            },
            "http://127.0.0.1:1",
            b"secret".to_vec(),
        )
        .expect("objects");
        let catalogue = Arc::new(MemoryMaterialStore::new());
        let user = UserId::generate();
        let due: Vec<StoredObject> = (0..7).map(|n| expired_output(user, n)).collect();
        for o in &due {
            let path = dir.path().join(&o.key);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, b"png").expect("write");
        }
        catalogue.add_outputs(due.clone()).await.expect("recorded");
        let materials = Materials::new(
            objects,
            catalogue.clone(),
            StorageRules::default(),
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        assert_eq!(materials.sweep(3).await.expect("swept"), 7);
        for o in &due {
            assert!(!dir.path().join(&o.key).exists(), "{} left behind", o.key);
        }
        assert!(catalogue
            .due_for_purge(Utc::now(), 10)
            .await
            .expect("due")
            .is_empty());
        catalogue
            .add_outputs(vec![expired_output(user, 8), expired_output(user, 9)])
            .await
            .expect("recorded");
        assert_eq!(materials.sweep(0).await.expect("swept"), 2);
    }
}

//! Object storage for materials and outputs, through the `object_store`
//! crate: a local directory by default, any S3-compatible store by
//! configuration. Everything else in the server goes through [`Objects`]
//! and never learns which backend it is.
//!
//! Signed URLs look the same to their users either way: for S3 they are
//! the store's own presigned URLs; for the local directory the server signs
//! its own (HMAC over method, key and expiry) and serves them itself
//! (`/v1/objects/…`, see `http::objects`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use admedia_actors::domain::material::{MediaType, SNIFF_BYTES};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::Sha256;

/// Parts of a streamed upload are this big (S3's least part size is 5 MiB);
/// at most two are in flight, so an upload holds about 10 MiB whatever its
/// size.
const PART_BYTES: usize = 5 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 2;

/// Where objects are kept, as configured.
#[derive(Clone, Debug)]
pub enum ObjectSettings {
    /// A local directory (created if missing).
    Local { root: PathBuf },
    /// An S3-compatible bucket.
    S3(S3Settings),
}

#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub bucket: String,
    /// `http(s)://host:port` of an S3-compatible service; AWS when unset.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible
    /// servers want; virtual-hosted style otherwise.
    pub path_style: bool,
}

impl ObjectSettings {
    /// `ADMEDIA_OBJECT_STORE`: `s3://bucket`, `file:///dir` or a directory.
    pub fn parse(raw: &str, s3: S3Settings) -> Result<ObjectSettings, String> {
        let raw = raw.trim();
        if let Some(bucket) = raw.strip_prefix("s3://") {
            let bucket = bucket.trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') {
                return Err(format!(
                    "ADMEDIA_OBJECT_STORE {raw:?}: expected s3://<bucket>"
                ));
            }
            return Ok(ObjectSettings::S3(S3Settings {
                bucket: bucket.to_owned(),
                ..s3
            }));
        }
        let dir = raw.strip_prefix("file://").unwrap_or(raw);
        if dir.is_empty() {
            return Err("ADMEDIA_OBJECT_STORE is empty".into());
        }
        if dir.contains("://") {
            return Err(format!(
                "ADMEDIA_OBJECT_STORE {raw:?}: use s3://<bucket>, file:///<dir> or a directory"
            ));
        }
        Ok(ObjectSettings::Local {
            root: PathBuf::from(dir),
        })
    }
}

/// An object store failure; the caller maps it to `unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store: {0}")]
    Backend(String),
}

impl From<object_store::Error> for ObjectError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => ObjectError::NotFound(path),
            other => ObjectError::Backend(other.to_string()),
        }
    }
}

/// Why a streamed upload was refused; nothing is left stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the file is empty")]
    Empty,
    #[error("the content is not PNG, JPEG, WebP or MP4")]
    UnsupportedType,
    #[error("the upload was interrupted: {0}")]
    Body(String),
    #[error(transparent)]
    Store(#[from] ObjectError),
}

/// What a finished upload holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub media: MediaType,
}

/// What a stored object is, read back from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub size: u64,
    pub media: Option<MediaType>,
}

/// How a client gets an object's bytes.
pub enum Download {
    /// A short-lived URL on the object store itself.
    Redirect(String),
    /// Streamed by this server.
    Stream {
        size: u64,
        body: BoxStream<'static, Result<Bytes, std::io::Error>>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Get,
    Put,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Get => "GET",
            Access::Put => "PUT",
        }
    }
}

enum Signing {
    S3(Arc<AmazonS3>),
    Local(LocalSigner),
}

/// Signs and checks the server's own URLs for the local directory.
struct LocalSigner {
    secret: Vec<u8>,
    /// Where clients and workers reach this server.
    base_url: String,
}

impl LocalSigner {
    fn mac(&self, access: Access, key: &str, expires: i64) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(access.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        Some(mac)
    }

    fn sign(&self, access: Access, key: &str, ttl: Duration) -> Result<String, ObjectError> {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
        let expires = (chrono::Utc::now() + ttl).timestamp();
        let mac = self
            .mac(access, key, expires)
            .ok_or_else(|| ObjectError::Backend("signing key unusable".into()))?;
        let signature = hex::encode(mac.finalize().into_bytes());
        let path: String = key
            .split('/')
            .map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>())
            .collect::<Vec<_>>()
            .join("/");
        Ok(format!(
            "{}/v1/objects/{path}?expires={expires}&signature={signature}",
            self.base_url.trim_end_matches('/')
        ))
    }

    fn verify(&self, access: Access, key: &str, expires: i64, signature: &str) -> bool {
        if expires < chrono::Utc::now().timestamp() {
            return false;
        }
        let Ok(presented) = hex::decode(signature) else {
            return false;
        };
        self.mac(access, key, expires)
            .is_some_and(|mac| mac.verify_slice(&presented).is_ok())
    }
}

/// The object store, whichever it is.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    signing: Signing,
    backend: &'static str,
    /// The directory of a local store: a delete there also removes the
    /// directories it leaves empty (S3 has none).
    local_root: Option<PathBuf>,
}

/// Leading key segments whose directories a delete keeps (`outputs/{user}`):
/// they are shared with other objects, and one that appears again at once
/// is not worth racing an upload into it for.
const KEPT_KEY_DIRS: usize = 2;

impl Objects {
    /// `base_url` is where this server is reached (for the local directory's
    /// signed URLs); `secret` signs them.
    pub fn open(
        settings: &ObjectSettings,
        base_url: &str,
        secret: Vec<u8>,
    ) -> Result<Objects, String> {
        match settings {
            ObjectSettings::Local { root } => {
                std::fs::create_dir_all(root)
                    .map_err(|e| format!("object directory {}: {e}", root.display()))?;
                let fs = LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| format!("object directory {}: {e}", root.display()))?;
                if secret.is_empty() {
                    return Err("the object signing secret is empty".into());
                }
                Ok(Objects {
                    store: Arc::new(fs),
                    signing: Signing::Local(LocalSigner {
                        secret,
                        base_url: base_url.to_owned(),
                    }),
                    backend: "local",
                    local_root: Some(root.clone()),
                })
            }
            ObjectSettings::S3(s3) => {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_virtual_hosted_style_request(!s3.path_style);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(id) = &s3.access_key_id {
                    builder = builder.with_access_key_id(id);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let s3 = Arc::new(builder.build().map_err(|e| format!("S3: {e}"))?);
                Ok(Objects {
                    store: s3.clone(),
                    signing: Signing::S3(s3),
                    backend: "s3",
                    local_root: None,
                })
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    fn path(key: &str) -> Result<Path, ObjectError> {
        Path::parse(key).map_err(|e| ObjectError::Backend(format!("key {key:?}: {e}")))
    }

    /// A URL that allows `access` to `key` for `ttl`.
    pub async fn signed_url(
        &self,
        access: Access,
        key: &str,
        ttl: Duration,
    ) -> Result<String, ObjectError> {
        match &self.signing {
            Signing::Local(signer) => signer.sign(access, key, ttl),
            Signing::S3(s3) => {
                let method = match access {
                    Access::Get => http::Method::GET,
                    Access::Put => http::Method::PUT,
                };
                let url = s3.signed_url(method, &Self::path(key)?, ttl).await?;
                Ok(url.to_string())
            }
        }
    }

    /// Whether a local signed URL's parameters allow `access` to `key` now.
    /// Always false for S3, whose URLs never reach this server.
    pub fn verify_local(&self, access: Access, key: &str, expires: i64, signature: &str) -> bool {
        match &self.signing {
            Signing::Local(signer) => signer.verify(access, key, expires, signature),
            Signing::S3(_) => false,
        }
    }

    /// Streams `body` into `key`: at most `limit` bytes, of one of our media
    /// types (read from its first bytes, before anything is kept). Memory
    /// stays bounded by a couple of parts, whatever the size.
    pub async fn upload<S, E>(&self, key: &str, body: S, limit: u64) -> Result<Stored, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut body = body;
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        let mut pending = Vec::new();
        // The type is known before the first byte is stored.
        while head.len() < SNIFF_BYTES {
            match body.next().await {
                Some(Ok(chunk)) => {
                    let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                    pending.push(chunk);
                }
                Some(Err(e)) => return Err(UploadError::Body(e.to_string())),
                None => break,
            }
        }
        if head.is_empty() {
            return Err(UploadError::Empty);
        }
        let media = MediaType::sniff(&head).ok_or(UploadError::UnsupportedType)?;
        let mut size: u64 = pending.iter().map(|c| c.len() as u64).sum();
        if size > limit {
            return Err(UploadError::TooLarge { limit });
        }
        // A body that ends within one part (every image, most clips) is
        // written whole: one blocking file call on a local directory, one
        // request on S3, where a multipart upload costs three of each.
        while size < PART_BYTES as u64 {
            match body.next().await {
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(UploadError::TooLarge { limit });
                    }
                    pending.push(chunk);
                }
                Some(Err(e)) => return Err(UploadError::Body(e.to_string())),
                None => {
                    let whole: PutPayload = pending.into_iter().collect();
                    self.store
                        .put(&Self::path(key)?, whole)
                        .await
                        .map_err(ObjectError::from)?;
                    return Ok(Stored { size, media });
                }
            }
        }
        let upload = self
            .store
            .put_multipart(&Self::path(key)?)
            .await
            .map_err(ObjectError::from)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let result: Result<(), UploadError> = async {
            for chunk in pending {
                writer.put(chunk);
            }
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(UploadError::TooLarge { limit });
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(ObjectError::from)?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                writer.finish().await.map_err(ObjectError::from)?;
                Ok(Stored { size, media })
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key, error = %abort, "could not abort a refused upload");
                }
                Err(e)
            }
        }
    }

    /// The object's size and the media type of its first bytes; `None`
    /// when there is no such object.
    pub async fn inspect(&self, key: &str) -> Result<Option<Inspected>, ObjectError> {
        let path = Self::path(key)?;
        // One ranged read answers both: its metadata holds the size.
        let sniff = GetOptions {
            range: Some((0..SNIFF_BYTES as u64).into()),
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&path, sniff).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            // A range from 0 is refused only for an empty object; any
            // other failure stands.
            Err(e) => {
                return match self.store.head(&path).await {
                    Ok(meta) if meta.size == 0 => Ok(Some(Inspected {
                        size: 0,
                        media: None,
                    })),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    _ => Err(e.into()),
                };
            }
        };
        let size = got.meta.size;
        let head = got.bytes().await?;
        Ok(Some(Inspected {
            size,
            media: MediaType::sniff(&head),
        }))
    }

    /// The object's bytes as a stream.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, std::io::Error>>), ObjectError> {
        let got = self.store.get(&Self::path(key)?).await?;
        let size = got.meta.size;
        let body = got
            .into_stream()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .boxed();
        Ok((size, body))
    }

    /// How a client downloads `key`: a redirect to a short-lived URL on S3,
    /// streamed by this server for the local directory (one round trip
    /// fewer, and no URL that outlives the request).
    pub async fn download(&self, key: &str, ttl: Duration) -> Result<Download, ObjectError> {
        match &self.signing {
            Signing::S3(_) => Ok(Download::Redirect(
                self.signed_url(Access::Get, key, ttl).await?,
            )),
            Signing::Local(_) => {
                let (size, body) = self.stream(key).await?;
                Ok(Download::Stream { size, body })
            }
        }
    }

    /// Writes `bytes` to `key` whole (small documents the server makes
    /// itself, such as a ledger chapter; uploads use [`Objects::upload`]).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ObjectError> {
        self.store.put(&Self::path(key)?, bytes.into()).await?;
        Ok(())
    }

    /// The whole of `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        Ok(self.store.get(&Self::path(key)?).await?.bytes().await?)
    }

    /// The keys of the objects directly in `dir` whose name starts with
    /// `start`. S3 lists in key order from an offset, so the listing stops
    /// at the first name past them; a local directory is walked whole.
    pub async fn keys_starting(&self, dir: &str, start: &str) -> Result<Vec<String>, ObjectError> {
        let wanted = format!("{dir}/{start}");
        let offset = Self::path(&wanted)?;
        let in_key_order = self.local_root.is_none();
        let mut listing = self
            .store
            .list_with_offset(Some(&Self::path(dir)?), &offset);
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            let key = meta?.location.to_string();
            if key
                .strip_prefix(&wanted)
                .is_some_and(|rest| !rest.contains('/'))
            {
                keys.push(key);
            } else if in_key_order && !key.starts_with(&wanted) {
                break;
            }
        }
        Ok(keys)
    }

    /// Deletes `key`; deleting what is not there is not an error. In a
    /// local directory the directories the key leaves empty go too (an
    /// output of the earlier layout's job and attempt directories):
    /// otherwise each such output would leave two empty directories behind
    /// for good.
    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let path = Self::path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // A key whose directories are all kept (every output in the
        // current layout) leaves none to look at: skip the blocking call.
        let parts = path.parts().count();
        if let Some(root) = self
            .local_root
            .as_ref()
            .filter(|_| parts > KEPT_KEY_DIRS + 1)
        {
            let dirs: Vec<String> = path.parts().map(|p| p.as_ref().to_owned()).collect();
            let root = root.clone();
            // Blocking file system calls, off the async threads.
            let _ = tokio::task::spawn_blocking(move || remove_empty_dirs(&root, &dirs)).await;
        }
        Ok(())
    }
}

/// Removes the directories of `parts` (a key's segments, the object's name
/// last) from the deepest up, while they are empty, keeping the first
/// [`KEPT_KEY_DIRS`].
fn remove_empty_dirs(root: &std::path::Path, parts: &[String]) {
    let dirs = parts.len().saturating_sub(1);
    for depth in (KEPT_KEY_DIRS..dirs).rev() {
        let dir: PathBuf = parts[..=depth]
            .iter()
            .fold(root.to_path_buf(), |d, p| d.join(p));
        // Not empty (another object), or gone already: either way stop.
        if std::fs::remove_dir(&dir).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deleting an output of the earlier layout removes its job and
    /// attempt directories once empty, and keeps the user's directory and
    /// any other object.
    #[actix_rt::test]
    async fn a_delete_leaves_no_empty_directories_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let objects = Objects::open(
            &ObjectSettings::Local {
                root: dir.path().to_path_buf(),
            },
            "http://127.0.0.1:1",
            b"secret".to_vec(),
        )
        .expect("objects");
        for key in ["outputs/u/j1/1/0", "outputs/u/j1/1/1", "outputs/u/j2/1/0"] {
            objects
                .put(key, Bytes::from_static(b"x"))
                .await
                .expect("put");
        }
        objects.delete("outputs/u/j1/1/0").await.expect("delete");
        assert!(
            dir.path().join("outputs/u/j1/1").is_dir(),
            "another output is there"
        );
        objects.delete("outputs/u/j1/1/1").await.expect("delete");
        assert!(
            !dir.path().join("outputs/u/j1").exists(),
            "the job's directories went"
        );
        assert!(dir.path().join("outputs/u/j2/1/0").is_file());
        objects.delete("outputs/u/j2/1/0").await.expect("delete");
        assert!(
            dir.path().join("outputs/u").is_dir(),
            "the user's directory stays"
        );
        assert!(!dir.path().join("outputs/u/j2").exists());
        // Deleting what is not there is still no error.
        objects.delete("outputs/u/j3/1/0").await.expect("delete");
        assert!(
            objects.delete("../escape").await.is_err(),
            "a bad key is refused"
        );
    }

    #[test]
    fn the_store_is_chosen_by_url() {
        let s3 = S3Settings {
            region: "us-east-1".into(),
            ..Default::default()
        };
        assert!(matches!(
            ObjectSettings::parse("s3://media", s3.clone()),
            Ok(ObjectSettings::S3(S3Settings { ref bucket, .. })) if bucket == "media"
        ));
        assert!(matches!(
            ObjectSettings::parse("file:///srv/objects", s3.clone()),
            Ok(ObjectSettings::Local { ref root }) if root == &PathBuf::from("/srv/objects")
        ));
        assert!(ObjectSettings::parse("s3://", s3.clone()).is_err());
        assert!(ObjectSettings::parse("s3://a/b", s3.clone()).is_err());
        assert!(ObjectSettings::parse("gs://bucket", s3.clone()).is_err());
        assert!(ObjectSettings::parse("  ", s3).is_err());
    }

    #[test]
    fn local_signatures_bind_method_key_and_expiry() {
        let signer = LocalSigner {
            secret: b"secret".to_vec(),
            base_url: "http://127.0.0.1:1".into(),
        };
        let url = signer
            .sign(Access::Get, "outputs/a/b", Duration::from_secs(60))
            .unwrap();
        let query = url.split_once('?').unwrap().1;
        let mut expires = 0;
        let mut signature = String::new();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "expires" => expires = v.parse().unwrap(),
                "signature" => signature = v.into_owned(),
                _ => {}
            }
        }
        assert!(signer.verify(Access::Get, "outputs/a/b", expires, &signature));
        assert!(!signer.verify(Access::Put, "outputs/a/b", expires, &signature));
        assert!(!signer.verify(Access::Get, "outputs/a/c", expires, &signature));
        assert!(!signer.verify(Access::Get, "outputs/a/b", expires + 1, &signature));
        assert!(!signer.verify(Access::Get, "outputs/a/b", expires, "zz"));
        let past = chrono::Utc::now().timestamp() - 1;
        let mac = signer.mac(Access::Get, "outputs/a/b", past).unwrap();
        let stale = hex::encode(mac.finalize().into_bytes());
        assert!(!signer.verify(Access::Get, "outputs/a/b", past, &stale));
    }
}

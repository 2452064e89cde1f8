//! The PostgreSQL adapter of the catalogue port (`stored_objects`, see
//! `schema/V8__materials.sql`). It has a small pool of its own, so it is
//! independent of the main store's adapter. A user's quota check and insert
//! run under a transaction-scoped advisory lock on the user, so concurrent
//! uploads are serialized per user only.

use admedia_actors::domain::ids::{JobId, MaterialId, UserId};
use admedia_actors::domain::material::{MediaType, ObjectRole, StorageUsage, StoredObject};
use admedia_actors::domain::tier::License;
use admedia_actors::store::materials::{CatalogueError, CatalogueResult, MaterialStore};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

/// Advisory lock namespace of the per-user quota check.
const QUOTA_LOCK: i32 = 0x006d_6174;

const COLUMNS: &str = "key, user_id, material_id, name, job_id, output_index, license, media, \
    size, created_at, expires_at, gone_at";

pub struct PgMaterialStore {
    pool: Pool,
}

fn db(e: tokio_postgres::Error) -> CatalogueError {
    match e.code() {
        None => CatalogueError::Unavailable(e.to_string()),
        Some(code) if code.code().starts_with("08") || *code == SqlState::ADMIN_SHUTDOWN => {
            CatalogueError::Unavailable(e.to_string())
        }
        Some(_) => CatalogueError::Internal(e.to_string()),
    }
}

fn size_of(v: u64) -> CatalogueResult<i64> {
    i64::try_from(v).map_err(|_| CatalogueError::Internal(format!("size {v} out of range")))
}

fn object(r: &Row) -> CatalogueResult<StoredObject> {
    let bad = |what: &str| CatalogueError::Internal(format!("stored_objects: bad {what}"));
    let material_id: Option<uuid::Uuid> = r.get(2);
    let role = match material_id {
        Some(id) => ObjectRole::Material {
            id: MaterialId::from_uuid(id),
            name: r.get::<_, Option<String>>(3).unwrap_or_default(),
        },
        None => {
            let job: uuid::Uuid = r
                .get::<_, Option<uuid::Uuid>>(4)
                .ok_or_else(|| bad("job"))?;
            let index: i32 = r.get::<_, Option<i32>>(5).ok_or_else(|| bad("index"))?;
            let license = match r.get::<_, Option<String>>(6).as_deref() {
                Some("commercial") => License::Commercial,
                Some("personal") => License::Personal,
                _ => return Err(bad("license")),
            };
            ObjectRole::Output {
                job_id: JobId::from_uuid(job),
                index: u32::try_from(index).map_err(|_| bad("index"))?,
                license,
            }
        }
    };
    Ok(StoredObject {
        key: r.get(0),
        user_id: UserId::from_uuid(r.get(1)),
        role,
        media: MediaType::parse(r.get::<_, &str>(7)).ok_or_else(|| bad("media"))?,
        size: u64::try_from(r.get::<_, i64>(8)).map_err(|_| bad("size"))?,
        created_at: r.get(9),
        expires_at: r.get(10),
        gone_at: r.get(11),
    })
}

impl PgMaterialStore {
    pub fn connect(url: &str, max_connections: usize) -> Result<PgMaterialStore, String> {
        Self::from_config(super::postgres::database_config(url)?, max_connections)
    }

    /// The table must exist: the main store's migrations create it.
    pub fn from_config(
        config: tokio_postgres::Config,
        max_connections: usize,
    ) -> Result<PgMaterialStore, String> {
        Ok(PgMaterialStore {
            pool: super::postgres::pool(config, max_connections)?,
        })
    }

    async fn client(&self) -> CatalogueResult<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| CatalogueError::Unavailable(format!("no database connection: {e}")))
    }
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

/// The role columns of an object: material id, name, job, index, licence.
type RoleColumns<'a> = (
    Option<uuid::Uuid>,
    Option<&'a str>,
    Option<uuid::Uuid>,
    Option<i32>,
    Option<&'static str>,
);

fn role_columns(o: &StoredObject) -> RoleColumns<'_> {
    match &o.role {
        ObjectRole::Material { id, name } => (Some(id.as_uuid()), Some(name), None, None, None),
        ObjectRole::Output {
            job_id,
            index,
            license,
        } => (
            None,
            None,
            Some(job_id.as_uuid()),
            i32::try_from(*index).ok(),
            Some(license.as_str()),
        ),
    }
}

const INSERT: &str = "INSERT INTO stored_objects (key, user_id, material_id, name, job_id, output_index, \
    license, media, size, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

#[async_trait]
impl MaterialStore for PgMaterialStore {
    fn adapter(&self) -> &'static str {
        "postgres"
    }

    async fn add_material(&self, o: StoredObject, quota: u64) -> CatalogueResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let user = o.user_id.as_uuid();
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2::text))",
            &[&QUOTA_LOCK, &user.to_string()],
        )
        .await
        .map_err(db)?;
        let used: i64 = tx
            .query_one(
                "SELECT COALESCE(SUM(size), 0)::bigint FROM stored_objects \
                 WHERE user_id = $1 AND gone_at IS NULL AND expires_at > $2",
                &[&user, &o.created_at],
            )
            .await
            .map_err(db)?
            .get(0);
        let used = u64::try_from(used).unwrap_or(0);
        if used.saturating_add(o.size) > quota {
            return Err(CatalogueError::QuotaExceeded {
                used,
                size: o.size,
                quota,
            });
        }
        let (material, name, job, index, license) = role_columns(&o);
        let size = size_of(o.size)?;
        let params: [Param; 11] = [
            &o.key,
            &user,
            &material,
            &name,
            &job,
            &index,
            &license,
            &o.media.as_str(),
            &size,
            &o.created_at,
            &o.expires_at,
        ];
        match tx.execute(INSERT, &params).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(CatalogueError::Duplicate(o.key));
            }
            Err(e) => return Err(db(e)),
        }
        tx.commit().await.map_err(db)
    }

    async fn add_outputs(&self, objects: Vec<StoredObject>) -> CatalogueResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let insert = format!("{INSERT} ON CONFLICT DO NOTHING");
        for o in &objects {
            if !matches!(o.role, ObjectRole::Output { .. }) {
                return Err(CatalogueError::Internal(format!(
                    "{} is not an output",
                    o.key
                )));
            }
            let (material, name, job, index, license) = role_columns(o);
            let size = size_of(o.size)?;
            let user = o.user_id.as_uuid();
            let params: [Param; 11] = [
                &o.key,
                &user,
                &material,
                &name,
                &job,
                &index,
                &license,
                &o.media.as_str(),
                &size,
                &o.created_at,
                &o.expires_at,
            ];
            tx.execute(insert.as_str(), &params).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn material(
        &self,
        user: UserId,
        id: MaterialId,
    ) -> CatalogueResult<Option<StoredObject>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM stored_objects WHERE material_id = $1 AND user_id = $2"
                ),
                &[&id.as_uuid(), &user.as_uuid()],
            )
            .await
            .map_err(db)?;
        row.as_ref().map(object).transpose()
    }

    async fn materials(
        &self,
        user: UserId,
        now: DateTime<Utc>,
        limit: usize,
    ) -> CatalogueResult<Vec<StoredObject>> {
        let client = self.client().await?;
        let limit = super::postgres::limit_param(limit);
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM stored_objects WHERE user_id = $1 AND material_id IS NOT NULL \
                     AND gone_at IS NULL AND expires_at > $2 ORDER BY created_at DESC, key DESC LIMIT $3"
                ),
                &[&user.as_uuid(), &now, &limit],
            )
            .await
            .map_err(db)?;
        rows.iter().map(object).collect()
    }

    async fn output(&self, job: JobId, index: u32) -> CatalogueResult<Option<StoredObject>> {
        let Ok(index) = i32::try_from(index) else {
            return Ok(None);
        };
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM stored_objects WHERE job_id = $1 AND output_index = $2"
                ),
                &[&job.as_uuid(), &index],
            )
            .await
            .map_err(db)?;
        row.as_ref().map(object).transpose()
    }

    async fn outputs(&self, job: JobId) -> CatalogueResult<Vec<StoredObject>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM stored_objects WHERE job_id = $1 ORDER BY output_index"
                ),
                &[&job.as_uuid()],
            )
            .await
            .map_err(db)?;
        rows.iter().map(object).collect()
    }

    async fn mark_gone(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> CatalogueResult<Option<StoredObject>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE stored_objects SET gone_at = $2 \
                     WHERE key = $1 AND gone_at IS NULL AND expires_at > $2 RETURNING {COLUMNS}"
                ),
                &[&key, &now],
            )
            .await
            .map_err(db)?;
        row.as_ref().map(object).transpose()
    }

    async fn usage(&self, user: UserId, now: DateTime<Utc>) -> CatalogueResult<StorageUsage> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COALESCE(SUM(size), 0)::bigint, \
                        COUNT(*) FILTER (WHERE material_id IS NOT NULL), \
                        COUNT(*) FILTER (WHERE job_id IS NOT NULL) \
                 FROM stored_objects WHERE user_id = $1 AND gone_at IS NULL AND expires_at > $2",
                &[&user.as_uuid(), &now],
            )
            .await
            .map_err(db)?;
        let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(StorageUsage {
            bytes: n(0),
            materials: n(1),
            outputs: n(2),
        })
    }

    async fn due_for_purge(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> CatalogueResult<Vec<StoredObject>> {
        let client = self.client().await?;
        let limit = super::postgres::limit_param(limit);
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM stored_objects WHERE purged_at IS NULL \
                     AND (gone_at IS NOT NULL OR expires_at <= $1) \
                     ORDER BY LEAST(COALESCE(gone_at, expires_at), expires_at) LIMIT $2"
                ),
                &[&now, &limit],
            )
            .await
            .map_err(db)?;
        rows.iter().map(object).collect()
    }

    async fn purged(&self, keys: &[String], now: DateTime<Utc>) -> CatalogueResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // An output's row goes (its job still lists it, so a read answers
        // gone), or the table would keep a row for every output ever made;
        // a material's stays as a tombstone, so its id answers gone.
        tx.execute(
            "DELETE FROM stored_objects WHERE key = ANY($1) AND job_id IS NOT NULL",
            &[&keys],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "UPDATE stored_objects SET purged_at = $2, gone_at = COALESCE(gone_at, $2) \
             WHERE key = ANY($1) AND purged_at IS NULL",
            &[&keys, &now],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn expire_user(&self, user: UserId, now: DateTime<Utc>) -> CatalogueResult<u64> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE stored_objects SET expires_at = $2 \
                 WHERE user_id = $1 AND gone_at IS NULL AND expires_at > $2",
                &[&user.as_uuid(), &now],
            )
            .await
            .map_err(db)
    }
}

//! Materials (ToS 6.4): upload, list, read, download, delete; and a job's
//! outputs: download and early delete. Another user's material or job is
//! `404`; one that is no longer stored is `410`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use admedia_actors::domain::ids::{JobId, MaterialId};
use admedia_actors::domain::material::{MediaType, ObjectRole, StoredObject};
use admedia_actors::domain::tier::License;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::auth::AuthUser;
use crate::http::problem::{ApiError, Problem};
use crate::http::{page_limit, AppState};
use crate::materials::MaterialError;
use crate::objects::Download;

/// The licence of a downloaded output (ToS 6.3).
pub const LICENSE_HEADER: &str = "X-Content-License";

#[derive(Serialize, ToSchema)]
pub struct MaterialView {
    pub id: String,
    /// The file name given at upload (shown only).
    pub name: String,
    /// Read from the content, not from the name.
    pub content_type: String,
    pub media: MediaType,
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
    /// After this it is deleted (the tier's retention).
    pub expires_at: DateTime<Utc>,
    /// Where its bytes are downloaded.
    pub content_url: String,
}

impl MaterialView {
    pub fn of(o: &StoredObject) -> Option<MaterialView> {
        let ObjectRole::Material { id, name } = &o.role else {
            return None;
        };
        Some(MaterialView {
            id: id.to_string(),
            name: name.clone(),
            content_type: o.media.mime().into(),
            media: o.media,
            size_bytes: o.size,
            created_at: o.created_at,
            expires_at: o.expires_at,
            content_url: format!("/v1/materials/{id}/content"),
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct MaterialsPage {
    pub materials: Vec<MaterialView>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// A file name to show with it; its type is read from the content.
    pub name: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1..=200, default 50.
    pub limit: Option<usize>,
}

fn material_id(raw: &str) -> Result<MaterialId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("material"))
}

/// Upload a material: the request body is the file itself (any
/// `Content-Type`; the type is read from the bytes), streamed to storage.
#[utoipa::path(post, path = "/v1/materials", params(UploadQuery), security(("api_key" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = MaterialView), (status = 401, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
pub async fn upload(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    req: HttpRequest,
    query: web::Query<UploadQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let object = state
        .materials
        .upload(&user, query.name.as_deref(), declared, body)
        .await?;
    let view = MaterialView::of(&object)
        .ok_or_else(|| ApiError::Internal("an upload recorded as an output".into()))?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/materials/{}", view.id)))
        .json(view))
}

/// The caller's stored materials, newest first.
#[utoipa::path(get, path = "/v1/materials", params(ListQuery), security(("api_key" = [])),
    responses((status = 200, body = MaterialsPage), (status = 401, body = Problem)))]
pub async fn list(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let found = state.materials.materials(user.id, limit).await?;
    Ok(HttpResponse::Ok().json(MaterialsPage {
        materials: found.iter().filter_map(MaterialView::of).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/materials/{id}", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = MaterialView), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub async fn get(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let found = state
        .materials
        .material(user.id, material_id(&path)?)
        .await?;
    let view =
        MaterialView::of(&found).ok_or_else(|| ApiError::Internal("not a material".into()))?;
    Ok(HttpResponse::Ok().json(view))
}

/// The material's bytes.
#[utoipa::path(get, path = "/v1/materials/{id}/content", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "the file"), (status = 302, description = "a short-lived URL of the file"),
        (status = 404, body = Problem), (status = 410, body = Problem)))]
pub async fn content(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let found = state
        .materials
        .material(user.id, material_id(&path)?)
        .await?;
    let download = state.materials.download(&found).await?;
    Ok(respond(download, &found, None))
}

#[utoipa::path(delete, path = "/v1/materials/{id}", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub async fn delete(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .materials
        .delete_material(user.id, material_id(&path)?)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's job, or 404 (also for another user's job).
async fn own_output(
    state: &AppState,
    user: admedia_actors::domain::ids::UserId,
    job: &str,
    index: &str,
) -> Result<OwnOutput, ApiError> {
    let job: JobId = job.parse().map_err(|_| ApiError::not_found("job"))?;
    let (found, _) = state.orchestrator.job(user, job).await?;
    let index: u32 = index.parse().map_err(|_| ApiError::not_found("output"))?;
    let listed = found
        .result
        .as_ref()
        .and_then(|r| r.outputs.get(index as usize));
    // An output the content checks withheld is kept for operators only: to
    // its owner it does not exist, as in the job's view.
    if listed.is_some_and(|o| o.withheld.is_some()) {
        return Err(ApiError::not_found("output"));
    }
    Ok(OwnOutput {
        job,
        index,
        listed: listed.is_some(),
    })
}

/// An output of the caller's job, and whether the job lists it.
struct OwnOutput {
    job: JobId,
    index: u32,
    listed: bool,
}

impl OwnOutput {
    /// Its catalogue entry. The catalogue forgets an output once its bytes
    /// are deleted; the job still lists it, so it is gone, not unknown.
    async fn find(&self, state: &AppState) -> Result<StoredObject, ApiError> {
        match state.materials.output(self.job, self.index).await {
            Err(MaterialError::NotFound(_)) if self.listed => {
                Err(MaterialError::Gone("output").into())
            }
            found => Ok(found?),
        }
    }
}

/// Output `n` (from 0) of one of the caller's jobs, with its licence in
/// the `X-Content-License` header.
#[utoipa::path(get, path = "/v1/jobs/{id}/outputs/{n}", security(("api_key" = [])),
    params(("id" = String, Path), ("n" = u32, Path)),
    responses((status = 200, description = "the file"), (status = 302, description = "a short-lived URL of the file"),
        (status = 404, body = Problem), (status = 410, body = Problem)))]
pub async fn output(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let found = own_output(&state, user.id, &path.0, &path.1)
        .await?
        .find(&state)
        .await?;
    let license = match found.role {
        ObjectRole::Output { license, .. } => Some(license),
        ObjectRole::Material { .. } => None,
    };
    let download = state.materials.download(&found).await?;
    Ok(respond(download, &found, license))
}

/// Delete an output before its retention ends.
#[utoipa::path(delete, path = "/v1/jobs/{id}/outputs/{n}", security(("api_key" = [])),
    params(("id" = String, Path), ("n" = u32, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub async fn delete_output(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let found = own_output(&state, user.id, &path.0, &path.1)
        .await?
        .find(&state)
        .await?;
    state.materials.delete_output(&found).await?;
    Ok(HttpResponse::NoContent().finish())
}

fn file_name(o: &StoredObject) -> String {
    match &o.role {
        ObjectRole::Material { id, .. } => format!("{id}.{}", o.media.extension()),
        ObjectRole::Output { job_id, index, .. } => {
            format!("{job_id}-{index}.{}", o.media.extension())
        }
    }
}

fn respond(download: Download, object: &StoredObject, license: Option<License>) -> HttpResponse {
    let license = license.map(|l| (LICENSE_HEADER, l.as_str()));
    match download {
        Download::Redirect(url) => {
            let mut r = HttpResponse::Found();
            r.insert_header((header::LOCATION, url))
                .insert_header((header::CACHE_CONTROL, "no-store"));
            if let Some(l) = license {
                r.insert_header(l);
            }
            r.finish()
        }
        Download::Stream { size, body } => {
            let mut r = HttpResponse::Ok();
            r.insert_header((header::CONTENT_TYPE, object.media.mime()))
                .insert_header((
                    header::CONTENT_DISPOSITION,
                    format!("inline; filename=\"{}\"", file_name(object)),
                ))
                .insert_header((header::CACHE_CONTROL, "private, no-store"))
                .no_chunking(size);
            if let Some(l) = license {
                r.insert_header(l);
            }
            r.streaming(body)
        }
    }
}

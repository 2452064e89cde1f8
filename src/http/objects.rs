//! Signed object URLs when objects are kept in a local directory: the
//! server checks its own signature (method, key, expiry) and streams the
//! file out (`GET`) or in (`PUT`, a worker's output upload). With an S3
//! store the signed URLs point at the store and never reach these routes.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use crate::http::problem::ApiError;
use crate::http::AppState;
use crate::materials::MaterialError;
use crate::objects::{Access, UploadError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    expires: i64,
    signature: String,
}

fn check(state: &AppState, access: Access, key: &str, q: &Signed) -> Result<(), ApiError> {
    if state
        .materials
        .objects()
        .verify_local(access, key, q.expires, &q.signature)
    {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "the signed URL is invalid or has expired".into(),
        ))
    }
}

pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<Signed>,
) -> Result<HttpResponse, ApiError> {
    let key = path.into_inner();
    check(&state, Access::Get, &key, &query)?;
    let objects = state.materials.objects();
    let media = objects
        .inspect(&key)
        .await
        .map_err(MaterialError::from)?
        .ok_or_else(|| ApiError::not_found("object"))?
        .media;
    let (size, body) = objects.stream(&key).await.map_err(MaterialError::from)?;
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            media.map_or("application/octet-stream", |m| m.mime()),
        ))
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .no_chunking(size)
        .streaming(body))
}

pub async fn put(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<Signed>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let key = path.into_inner();
    check(&state, Access::Put, &key, &query)?;
    let limit = state.materials.rules().max_output_bytes;
    match state.materials.objects().upload(&key, body, limit).await {
        Ok(_) => Ok(HttpResponse::Ok().finish()),
        Err(UploadError::Store(e)) => Err(MaterialError::from(e).into()),
        Err(e) => Err(MaterialError::Upload(e).into()),
    }
}

//! Stored files in the console: thumbnails of a job's outputs on its page,
//! and a user's materials and storage use on theirs. Thumbnails are
//! streamed through the console (never a redirect), so its
//! `img-src 'self'` policy holds whatever the object store is.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use admedia_actors::domain::account::User;
use admedia_actors::domain::ids::JobId;
use admedia_actors::domain::job::Job;
use admedia_actors::domain::material::ObjectRole;
use chrono::Utc;
use maud::{html, Markup};

use crate::console::error::ConsoleError;
use crate::console::session::Operator;
use crate::console::view;
use crate::http::problem::ApiError;
use crate::http::AppState;

/// Materials listed on a user's page.
const MATERIALS_SHOWN: usize = 20;

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// `GET /console/jobs/{id}/outputs/{n}`: the output's bytes, for a thumbnail.
pub async fn output(
    state: web::Data<AppState>,
    _op: Operator,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ConsoleError> {
    let job: JobId = path.0.parse().map_err(|_| ApiError::not_found("job"))?;
    let index: u32 = path.1.parse().map_err(|_| ApiError::not_found("output"))?;
    let found = state
        .materials
        .output(job, index)
        .await
        .map_err(ApiError::from)?;
    let (len, body) = state
        .materials
        .objects()
        .stream(&found.key)
        .await
        .map_err(|e| ApiError::from(crate::materials::MaterialError::from(e)))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, found.media.mime()))
        .no_chunking(len)
        .streaming(body))
}

/// The job's stored outputs: a thumbnail per image, a line per video.
pub async fn job_outputs(state: &AppState, job: &Job) -> Markup {
    let stored = match state.materials.catalogue().outputs(job.id).await {
        Ok(stored) => stored,
        Err(e) => return html! { p.error-text { "stored outputs unavailable: " (e.to_string()) } },
    };
    let now = Utc::now();
    html! {
        @if !stored.is_empty() {
            section.card {
                h2 { "Outputs" }
                div.thumbs {
                    @for o in &stored {
                        @let index = match o.role { ObjectRole::Output { index, .. } => index, ObjectRole::Material { .. } => 0 };
                        figure.thumb {
                            @if !o.is_live(now) {
                                span.muted { "#" (index) " no longer stored" }
                            } @else if o.media.is_image() {
                                img src={ "/console/jobs/" (job.id) "/outputs/" (index) } alt={ "output " (index) } width="160" loading="lazy";
                            } @else {
                                span { "#" (index) " " (o.media.mime()) }
                            }
                            figcaption.muted { "#" (index) " · " (size(o.size)) " · kept until " (view::when(o.expires_at)) }
                        }
                    }
                }
            }
        }
    }
}

/// The user's storage use and newest materials.
pub async fn user_storage(state: &AppState, user: &User) -> Markup {
    let storage = state.materials.storage(user).await;
    let materials = state.materials.materials(user.id, MATERIALS_SHOWN).await;
    html! {
        section.card {
            h2 { "Storage" }
            @match (&storage, &materials) {
                (Ok(s), Ok(list)) => {
                    p {
                        (size(s.usage.bytes)) " of " (size(s.quota_bytes)) " used · "
                        (view::count(s.usage.materials, "material", "materials")) " · "
                        (view::count(s.usage.outputs, "output", "outputs")) " · kept "
                        (s.retention.as_secs() / 86_400) " days"
                    }
                    @if list.is_empty() {
                        p.muted { "No materials." }
                    } @else {
                        table {
                            thead { tr { th { "Material" } th { "Type" } th { "Size" } th { "Uploaded" } th { "Kept until" } } }
                            tbody {
                                @for m in list {
                                    @if let ObjectRole::Material { id, name } = &m.role {
                                        tr {
                                            td { (name) " " span.muted { (view::short_id(&id.to_string())) } }
                                            td { (m.media.mime()) }
                                            td { (size(m.size)) }
                                            td { (view::when(m.created_at)) }
                                            td { (view::when(m.expires_at)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
                _ => { p.error-text { "storage unavailable" } },
            }
        }
    }
}

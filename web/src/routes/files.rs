//! Uploads (device) and downloads (backend) of files.
//!
//! The session is asked first ([`CheckUpload`]), so an upload the session would refuse
//! is refused unread; accepted, the upload becomes the one of its kind streaming in,
//! ending an unfinished earlier one. An upload is read into memory only: the body
//! streams into an [`UploadBuffer`] that takes memory from the broker-wide staging
//! budget as bytes arrive, under the 5 MiB cap, so an oversized or over-budget body is
//! refused while it is still arriving, and a stalled one holds only what it sent. The
//! body must arrive within the upload timeout (SPEC §3: 30 s). The session actor then
//! holds it until approve (SPEC §2).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use idv_actors::ids::FileId;
use idv_actors::model::is_file_scope;
use idv_actors::session::messages::{CheckUpload, StageFile, UploadTicket};
use idv_actors::staging::{BufferFull, StagingBudget, UploadBuffer};
use idv_actors::write::ImageType;
use idv_actors::SessionError;

use super::session_id;
use crate::auth::{Backend, Device};
use crate::dto::Uploaded;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// How long an upload's body may take to arrive, from its request head (SPEC §3).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Seconds a client is told to wait when the staging budget is full: staged bytes go
/// back as sessions are decided or expire, which takes seconds to minutes.
const BUDGET_RETRY_AFTER: u64 = 5;

fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "uploads are at most {} bytes",
            idv_actors::staging::MAX_UPLOAD_BYTES
        ),
    )
}

fn budget_full() -> ApiError {
    ApiError::unavailable(
        "the broker holds as many uploads in memory as it may; try again shortly",
        BUDGET_RETRY_AFTER,
    )
}

fn unsupported(message: &str) -> ApiError {
    ApiError::new(ErrorCode::UnsupportedMediaType, message)
}

/// Reads the body into an [`UploadBuffer`] charging `budget`, refusing (`413`) the
/// chunk that takes it past the cap or (`503`) past the budget. Gives up with `408`
/// at `deadline` (`allowed` after the request came in), and with `409` as soon as
/// `ticket` says a newer upload of the kind replaced this one or the session ended.
/// Whatever was read is wiped and given back to the budget on every refusal.
async fn read_body(
    mut payload: web::Payload,
    announced: Option<usize>,
    budget: &Arc<StagingBudget>,
    ticket: &mut UploadTicket,
    deadline: tokio::time::Instant,
    allowed: Duration,
) -> Result<UploadBuffer, ApiError> {
    let mut buffer = UploadBuffer::new(budget, announced);
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::invalid(format!("the upload was cut off: {e}")))?;
            buffer.push(&chunk).map_err(|e| match e {
                BufferFull::TooLarge => too_large(),
                BufferFull::Budget => budget_full(),
            })?;
        }
        Ok::<(), ApiError>(())
    };
    tokio::select! {
        res = read => res?,
        _ = &mut ticket.ended => return Err(SessionError::UploadReplaced.into()),
        () = tokio::time::sleep_until(deadline) => {
            return Err(ApiError::new(
                ErrorCode::Timeout,
                format!("the upload's body did not arrive within {allowed:?}; try again"),
            ))
        }
    }
    Ok(buffer)
}

#[utoipa::path(
    put,
    path = "/v1/sessions/{id}/files/{file}",
    tag = "device",
    security(("device_jwt" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
        ("file" = crate::schema::FileKind, Path, description = "The kind of image: a file scope of the session."),
    ),
    request_body(description = "The image, raw, at most 5 MiB.", content(
        (crate::schema::Binary = "image/jpeg"),
        (crate::schema::Binary = "image/png")
    )),
    responses(
        (status = 201, description = "The image is staged until approve; a second upload of a kind replaces the first.", body = Uploaded),
        (status = 400, description = "A bad id, or a kind that is not a file scope of the session.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing, expired or untrusted device token.", body = crate::error::ErrorBody),
        (status = 403, description = "Another device is bound to the session.", body = crate::error::ErrorBody),
        (status = 404, description = "No such session.", body = crate::error::ErrorBody),
        (status = 408, description = "timeout: the body did not arrive within 30 s.", body = crate::error::ErrorBody),
        (status = 409, description = "invalid_state: the session is not retrieved, or a newer upload of the kind replaced this one.", body = crate::error::ErrorBody),
        (status = 413, description = "The image is larger than 5 MiB.", body = crate::error::ErrorBody),
        (status = 415, description = "Not Content-Type image/jpeg or image/png, or the bytes are not such an image.", body = crate::error::ErrorBody),
    )
)]
/// `PUT /v1/sessions/{id}/files/{kind}`: stages an image with the session's actor.
pub async fn upload(
    state: web::Data<AppState>,
    device: Device,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let deadline = tokio::time::Instant::now() + state.upload_timeout;
    let (id, kind) = path.into_inner();
    let id = session_id(&id)?;
    // Checks that need no session come first, so a bad request is refused unread.
    if !is_file_scope(&kind) {
        return Err(ApiError::invalid(format!(
            "{kind:?} is not a file scope (selfie, document_front, document_back)"
        )));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(ImageType::from_content_type)
        .ok_or_else(|| unsupported("uploads must be Content-Type: image/jpeg or image/png"))?;
    let announced = match req.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => {
            let len = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("Content-Length is not a number"))?;
            if len > idv_actors::staging::MAX_UPLOAD_BYTES as u64 {
                return Err(too_large());
            }
            Some(len as usize)
        }
    };
    // The session's rules before a byte of the body is read or reserved: a device may
    // not stream an upload at a session it cannot use. `StageFile` checks again after.
    let mut ticket = state
        .registry
        .call(
            id,
            CheckUpload {
                device: device.id.clone(),
                kind: kind.clone(),
            },
        )
        .await?;
    let buffer = read_body(
        payload,
        announced,
        state.registry.staging_budget_for(&device.id),
        &mut ticket,
        deadline,
        state.upload_timeout,
    )
    .await?;
    if !content_type.matches(buffer.as_slice()) {
        return Err(unsupported(&format!(
            "the body does not start like a {} image ({})",
            content_type.name(),
            content_type.as_str()
        )));
    }
    let staged = state
        .registry
        .call(
            id,
            StageFile {
                device: device.id,
                kind,
                upload_id: ticket.id,
                upload: buffer.finish(content_type),
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(Uploaded::from(staged)))
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/files/{file}",
    tag = "backend",
    security(("api_key" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
        ("file" = String, Path, format = Uuid, description = "The file id (from the decision's files)."),
    ),
    responses(
        (status = 200, description = "The stored bytes.", content(
            (crate::schema::Binary = "image/jpeg"),
            (crate::schema::Binary = "image/png")
        ),
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "An id is not a UUID.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or unknown credential.", body = crate::error::ErrorBody),
        (status = 404, description = "No such session or file, or it was deleted.", body = crate::error::ErrorBody),
    )
)]
/// `GET /v1/sessions/{id}/files/{file_id}`: the stored bytes, `404` once deleted.
pub async fn download(
    state: web::Data<AppState>,
    backend: Backend,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, file_id) = path.into_inner();
    let id = session_id(&id)?;
    let file_id = FileId::parse(&file_id)
        .ok_or_else(|| ApiError::invalid(format!("file id {file_id:?} is not a UUID")))?;
    let file = state
        .registry
        .file(id, file_id, &backend.owner)
        .await
        .map_err(|e| match e {
            SessionError::NotFound => ApiError::not_found("no such file (or it was deleted)"),
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok()
        .content_type(file.content_type)
        // Personal data: no cache may keep a copy, and no browser may guess another type.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(file.bytes))
}

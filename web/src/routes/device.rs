//! The device's routes (trusted-issuer JWT).

use std::time::Instant;

use actix_web::{web, HttpResponse};
use idv_actors::metrics::{stage, Stage};
use idv_actors::session::messages::{Decide, Retrieve};

use super::{ok_no_store, session_id};
use crate::auth::Device;
use crate::dto::{Information, Update, Updated};
use crate::error::ApiError;
use crate::json::Json;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/information",
    tag = "device",
    security(("device_jwt" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
    ),
    responses(
        (status = 200, description = "What the session asks, whether approve needs the binding code, and where the session is shown; the first call binds the device and moves the session to retrieved.", body = Information,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "The id is not a UUID.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing, expired or untrusted device token.", body = crate::error::ErrorBody),
        (status = 403, description = "Another device is bound to the session.", body = crate::error::ErrorBody),
        (status = 404, description = "No such session.", body = crate::error::ErrorBody),
        (status = 409, description = "invalid_state: the session is terminal.", body = crate::error::ErrorBody),
    )
)]
/// `GET /v1/sessions/{id}/information`: binds the device and moves to `retrieved`.
pub async fn information(
    state: web::Data<AppState>,
    device: Device,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let began = Instant::now();
    let session = state
        .registry
        .call(id, Retrieve { device: device.id })
        .await?;
    stage(Stage::Session, began.elapsed());
    Ok(ok_no_store().json(Information::from(&session)))
}

#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/update",
    tag = "device",
    security(("device_jwt" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
    ),
    request_body = Update,
    responses(
        (status = 200, description = "The decision is committed.", body = Updated),
        (status = 400, description = "A bad value, an unknown field, shared_data outside the scopes, or malformed JSON.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing, expired or untrusted device token.", body = crate::error::ErrorBody),
        (status = 403, description = "Another device is bound to the session.", body = crate::error::ErrorBody),
        (status = 404, description = "No such session.", body = crate::error::ErrorBody),
        (status = 409, description = "invalid_state: the session is not retrieved.", body = crate::error::ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB.", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not Content-Type: application/json.", body = crate::error::ErrorBody),
        (status = 422, description = "incomplete: approve lacks a value or an upload for a scope; binding_mismatch: a wrong binding_code (the third ends the session declined; tries_left says how many remain).", body = crate::error::ErrorBody),
    )
)]
/// `POST /v1/sessions/{id}/update`: approve or deny.
pub async fn update(
    state: web::Data<AppState>,
    device: Device,
    path: web::Path<String>,
    body: Json<Update>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let answer = body.into_inner().into_answer()?;
    let began = Instant::now();
    let session = state
        .registry
        .call(
            id,
            Decide {
                device: device.id,
                answer,
            },
        )
        .await?;
    stage(Stage::Session, began.elapsed());
    Ok(HttpResponse::Ok().json(Updated::from(&session)))
}

//! The device's routes (trusted-issuer JWT).

use actix_web::{web, HttpResponse};
use idv_actors::session::messages::{Decide, Retrieve};

use super::{ok_no_store, session_id};
use crate::auth::Device;
use crate::dto::{Information, Update, Updated};
use crate::error::ApiError;
use crate::json::Json;
use crate::state::AppState;

/// `GET /v1/sessions/{id}/information`: binds the device and moves to `retrieved`.
pub async fn information(
    state: web::Data<AppState>,
    device: Device,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let session = state
        .registry
        .call(id, Retrieve { device: device.id })
        .await?;
    Ok(ok_no_store().json(Information::from(&session)))
}

/// `POST /v1/sessions/{id}/update`: approve or deny.
pub async fn update(
    state: web::Data<AppState>,
    device: Device,
    path: web::Path<String>,
    body: Json<Update>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let answer = body.into_inner().into_answer()?;
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
    Ok(HttpResponse::Ok().json(Updated::from(&session)))
}

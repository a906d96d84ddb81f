//! The backend's user routes. Users are kept per API key: a key sees the users its
//! own confirmed sessions bound, and those it set.

use actix_web::{web, HttpResponse};
use idv_actors::ids::UserId;
use idv_actors::model::UserStatus;

use crate::auth::Backend;
use crate::dto::{SetUserStatus, UserView};
use crate::error::ApiError;
use crate::json::Json;
use crate::state::AppState;

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).ok_or_else(|| {
        ApiError::invalid("user_id must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -")
    })
}

#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/status",
    tag = "backend",
    security(("api_key" = [])),
    params(
        ("user_id" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "The device's sub."),
    ),
    request_body = SetUserStatus,
    responses(
        (status = 200, description = "The user, with its new status.", body = UserView),
        (status = 400, description = "A bad user id or status, an unknown field, or malformed JSON.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or unknown credential.", body = crate::error::ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB.", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not Content-Type: application/json.", body = crate::error::ErrorBody),
    )
)]
/// `PUT /v1/users/{user_id}/status`.
pub async fn set_status(
    state: web::Data<AppState>,
    backend: Backend,
    path: web::Path<String>,
    body: Json<SetUserStatus>,
) -> Result<HttpResponse, ApiError> {
    let user = user_id(&path)?;
    let status = UserStatus::parse(&body.status).ok_or_else(|| {
        ApiError::invalid(format!(
            "status must be PENDING, CREATED or BLOCKED, not {:?}",
            body.status
        ))
    })?;
    let record = state
        .registry
        .set_user_status(backend.owner, user, status)
        .await?;
    Ok(HttpResponse::Ok().json(UserView::from(&record)))
}

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}",
    tag = "backend",
    security(("api_key" = [])),
    params(
        ("user_id" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "The device's sub."),
    ),
    responses(
        (status = 200, description = "The user.", body = UserView),
        (status = 400, description = "A bad user id.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or unknown credential.", body = crate::error::ErrorBody),
        (status = 404, description = "No user of this API key has this id.", body = crate::error::ErrorBody),
    )
)]
/// `GET /v1/users/{user_id}`.
pub async fn get(
    state: web::Data<AppState>,
    backend: Backend,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = user_id(&path)?;
    let record = state.registry.user(backend.owner, user).await?;
    let record = record.ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(HttpResponse::Ok().json(UserView::from(&record)))
}

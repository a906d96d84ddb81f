//! Liveness and readiness.

use actix_web::{web, HttpResponse};

use crate::error::ApiError;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process answers.", body = crate::dto::Health),
    )
)]
/// `GET /healthz`: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The store answers.", body = crate::dto::Health),
        (status = 503, description = "The store is not reachable.", body = crate::error::ErrorBody),
    )
)]
/// `GET /readyz`: the store answers.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.registry.ping_store().await {
        Ok(()) => Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))),
        Err(e) => {
            tracing::error!(error = %e, "readiness check failed");
            Err(ApiError::unavailable("the store is not reachable", 5))
        }
    }
}

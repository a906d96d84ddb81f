//! Liveness, readiness and the Prometheus metrics.

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
        (status = 200, description = "The store answers (and NATS is connected, with several nodes).", body = crate::dto::Health),
        (status = 503, description = "The store or, with several nodes, NATS is not reachable; or an issuer trusted by a JWKS has no key set yet.", body = crate::error::ErrorBody),
    )
)]
/// `GET /readyz`: the store answers and, with several nodes, NATS is connected (SPEC §7);
/// every JWKS issuer has a key set (SPEC §6).
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if let Err(e) = state.registry.ping_store().await {
        tracing::error!(error = %e, "readiness check failed");
        return Err(ApiError::unavailable("the store is not reachable", 5));
    }
    // With several nodes, a node cut off from NATS can reach no session of another.
    if !state.registry.router_ready() {
        tracing::error!("readiness check failed: NATS is not reachable");
        return Err(ApiError::unavailable(
            "the other nodes are not reachable (NATS)",
            5,
        ));
    }
    // An issuer trusted by a JWKS whose set never arrived: its devices would all be
    // refused (SPEC §6).
    let pending = state.credentials.load().issuers.pending_jwks().join(", ");
    if !pending.is_empty() {
        tracing::warn!(issuers = %pending, "readiness check failed: no JWKS key set yet");
        return Err(ApiError::unavailable(
            format!("no key set fetched yet for the issuer(s) {pending}"),
            5,
        ));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

/// The content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every metric of the process, in the Prometheus text \
            exposition format (names in docs/api.md).", content_type = "text/plain; version=0.0.4", body = String),
    )
)]
/// `GET /metrics`: the Prometheus text exposition (see [`idv_actors::metrics`]).
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(METRICS_CONTENT_TYPE)
        .body(idv_actors::metrics::render())
}

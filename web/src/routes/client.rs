//! The client app's routes (session token).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::session_id;
use crate::auth::Client;
use crate::dto::StatusView;
use crate::error::ApiError;
use crate::state::AppState;

/// Whether `If-None-Match` names the tag `etag` (or `*`).
fn none_match(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
        })
}

/// `GET /v1/sessions/{id}/status`, with `ETag: "<seq>"`.
pub async fn status(
    state: web::Data<AppState>,
    client: Client,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let session = state.registry.inspect(id, client.caller).await?;
    let etag = format!("\"{}\"", session.seq);
    if none_match(&req, &etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(StatusView::from(&session)))
}

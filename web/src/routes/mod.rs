//! Handlers, one module per role. Each extracts and validates, makes one registry
//! call (one actor message, or one read the registry answers from the store), and
//! maps the answer.

pub mod client;
pub mod demo;
pub mod device;
pub mod files;
pub mod ops;
pub mod pages;
pub mod sessions;
pub mod users;

use actix_web::http::header;
use actix_web::{HttpResponse, HttpResponseBuilder};
use idv_actors::ids::SessionId;

use crate::error::ApiError;

/// Parses a session id from the path; anything but a UUID is `400`.
pub(crate) fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw)
        .ok_or_else(|| ApiError::invalid(format!("session id {raw:?} is not a UUID")))
}

/// A `200` that carries personal data or what a session holds about a person: no cache
/// may keep a copy (SPEC §3, `Cache-Control: no-store`).
pub(crate) fn ok_no_store() -> HttpResponseBuilder {
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CACHE_CONTROL, "no-store"));
    res
}

//! Handlers, one module per role. Each extracts and validates, sends one actor
//! message or makes one store call, and maps the answer.

pub mod client;
pub mod demo;
pub mod device;
pub mod files;
pub mod ops;
pub mod pages;
pub mod sessions;
pub mod users;

use idv_actors::ids::SessionId;

use crate::error::ApiError;

/// Parses a session id from the path; anything but a UUID is `400`.
pub(crate) fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw)
        .ok_or_else(|| ApiError::invalid(format!("session id {raw:?} is not a UUID")))
}

//! What can go wrong with a session command, in the terms of SPEC §5.

use crate::status::{Refusal, Status};
use crate::store::StoreError;

/// Why a command on a session was refused or failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session, or it belongs to another API key (`404`).
    #[error("session not found")]
    NotFound,
    /// The credential does not fit this session (`401`).
    #[error("credential not valid for this session")]
    Unauthorized,
    /// A valid credential that may not touch this session (`403`).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Not allowed in the current status (`409 invalid_state`).
    #[error("not allowed while the session is {0}")]
    InvalidState(Status),
    /// An upload ended before it was staged: a newer upload of the same kind replaced
    /// it, or the session ended (`409 invalid_state`).
    #[error("a newer upload of this kind replaced this one, or the session ended")]
    UploadReplaced,
    /// The same idempotency key was used with another body (`409 idempotency_conflict`).
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyConflict,
    /// A wrong binding code, counted; `tries_left` more may be tried before the session
    /// ends (`422 binding_mismatch`).
    #[error("{}", binding_mismatch_message(*tries_left))]
    BindingMismatch {
        /// Wrong codes still allowed before the session ends.
        tries_left: u8,
    },
    /// Something the approval needs is missing (`422 incomplete`).
    #[error("{0}")]
    Incomplete(String),
    /// The command's content is not acceptable (`400 invalid_request`).
    #[error("{0}")]
    Invalid(String),
    /// A limit of the broker is reached (`503 unavailable`).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The session's actor restarted while handling the command; the registry retries.
    #[error("the session restarted")]
    Restarted,
    /// The store failed (`500`, the cause goes to the log only).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<Refusal> for SessionError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::WrongDevice => {
                SessionError::Forbidden("the session is bound to another device")
            }
            Refusal::InvalidState(s) => SessionError::InvalidState(s),
            r @ (Refusal::CodeMissing | Refusal::CodeUnexpected) => {
                SessionError::Invalid(r.to_string())
            }
        }
    }
}

/// What a wrong binding code is told, in words, with the tries left.
fn binding_mismatch_message(tries_left: u8) -> String {
    if tries_left == 0 {
        return "binding_code does not match the number shown on the screen where the \
                session started, for the last time: the session was ended for safety"
            .to_owned();
    }
    let tries = if tries_left == 1 { "try" } else { "tries" };
    format!(
        "binding_code does not match the number shown on the screen where the session \
         started; {tries_left} {tries} left before the session ends"
    )
}

//! The one error type of the HTTP API: SPEC §5's codes and body.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use idv_actors::SessionError;
use serde::Serialize;

/// The wire codes of SPEC §5; the snake_case names are what clients see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400
    InvalidRequest,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 408
    Timeout,
    /// 409
    InvalidState,
    /// 409
    IdempotencyConflict,
    /// 413
    PayloadTooLarge,
    /// 415
    UnsupportedMediaType,
    /// 422
    Incomplete,
    /// 422: a wrong binding code (SPEC §2)
    BindingMismatch,
    /// 429
    RateLimited,
    /// 500
    Internal,
    /// 503
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status of the code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::InvalidState | ErrorCode::IdempotencyConflict => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Incomplete | ErrorCode::BindingMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An error answered to a caller.
///
/// `message` is for the person reading it; `cause` is the unexpected failure behind an
/// `internal` error, logged with its chain and never sent.
#[derive(Debug)]
pub struct ApiError {
    /// The wire code.
    pub code: ErrorCode,
    /// The message in the body.
    pub message: String,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
    /// Whether the answer asks the client to close the connection.
    close: bool,
    /// For `binding_mismatch`: the wrong codes still allowed before the session ends.
    pub tries_left: Option<u8>,
    cause: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl ApiError {
    /// An error with a message for the caller.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
            close: false,
            cause: None,
            tries_left: None,
        }
    }

    /// The same error, answered with `Connection: close`.
    pub fn closing(self) -> Self {
        Self {
            close: true,
            ..self
        }
    }

    /// `400 invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// `401 unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `500 internal`: the caller sees a generic message, the log sees `cause`.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self {
            code: ErrorCode::Internal,
            message: "internal error; it has been logged".into(),
            retry_after: None,
            close: false,
            cause: Some(cause.to_string()),
            tries_left: None,
        }
    }

    /// `503 unavailable` with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(ErrorCode::Unavailable, message)
        }
    }

    /// `429 rate_limited` with `Retry-After`, saying which limit.
    pub fn rate_limited_because(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }

    /// `429 rate_limited` with `Retry-After`.
    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                ErrorCode::RateLimited,
                "too many requests from this address; slow down",
            )
        }
    }
}

/// The body of every error (SPEC §5).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// What went wrong.
    pub error: ErrorDetail<'a>,
}

/// `error` in [`ErrorBody`].
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// The wire code; the HTTP status follows from it.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: &'a str,
    /// Only with `binding_mismatch`: how many more wrong codes end the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 2)]
    pub tries_left: Option<u8>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(cause) = &self.cause {
            tracing::error!(cause = %cause, "internal error");
        }
        let mut res = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if self.close {
            res.force_close();
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                tries_left: self.tries_left,
            },
        })
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotFound => ApiError::not_found("no such session"),
            SessionError::Unauthorized => {
                ApiError::unauthorized("the session token is not valid for this session")
            }
            SessionError::Forbidden(m) => ApiError::new(ErrorCode::Forbidden, m),
            SessionError::InvalidState(s) => ApiError::new(
                ErrorCode::InvalidState,
                format!("not allowed while the session is {s}"),
            ),
            SessionError::UploadReplaced => ApiError::new(
                ErrorCode::InvalidState,
                "this upload was ended: a newer upload of the same kind replaced it, or the session ended",
            ),
            SessionError::IdempotencyConflict => ApiError::new(
                ErrorCode::IdempotencyConflict,
                "this Idempotency-Key was already used with a different request body",
            ),
            SessionError::Incomplete(m) => ApiError::new(ErrorCode::Incomplete, m),
            e @ SessionError::BindingMismatch { tries_left } => ApiError {
                tries_left: Some(tries_left),
                ..ApiError::new(ErrorCode::BindingMismatch, e.to_string())
            },
            SessionError::Invalid(m) => ApiError::invalid(m),
            SessionError::Unavailable(m) => ApiError::unavailable(m, 1),
            SessionError::Restarted => {
                ApiError::unavailable("the session is restarting; try again", 1)
            }
            SessionError::Store(e) => e.into(),
        }
    }
}

impl From<idv_actors::store::StoreError> for ApiError {
    fn from(e: idv_actors::store::StoreError) -> Self {
        match e {
            idv_actors::store::StoreError::Busy => {
                ApiError::unavailable("the broker is overloaded; try again", 1)
            }
            idv_actors::store::StoreError::Closed => {
                ApiError::unavailable("the broker is shutting down", 5)
            }
            idv_actors::store::StoreError::NoLease => {
                ApiError::unavailable("this node is rejoining the cluster; try again", 1)
            }
            idv_actors::store::StoreError::Unavailable(e) => {
                // The cause goes to the log (once per request), not to the client.
                tracing::warn!(error = %e, "the database is unavailable");
                ApiError::unavailable("the database is unavailable; try again shortly", 2)
            }
            e => ApiError::internal(format!("store: {e}")),
        }
    }
}

/// Maps actix-web's JSON extractor errors onto SPEC §5 (`413`, `415`, `400`).
pub fn json_error(
    err: actix_web::error::JsonPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let api = match &err {
        E::OverflowKnownLength { .. } | E::Overflow { .. } => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("JSON bodies are at most {} bytes", crate::MAX_JSON_BODY),
        ),
        E::ContentType => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON with Content-Type: application/json",
        ),
        E::Deserialize(e) => ApiError::invalid(format!("invalid JSON body: {e}")),
        other => ApiError::invalid(format!("unreadable body: {other}")),
    };
    api.into()
}

/// Maps query-string errors onto `400`.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    // serde_urlencoded does not name the field; the numeric parameters are few, so say
    // which they are rather than leave the caller guessing.
    let detail = match &err {
        actix_web::error::QueryPayloadError::Deserialize(e) => e.to_string(),
        other => other.to_string(),
    };
    ApiError::invalid(format!(
        "invalid query string ({detail}): after_seq and wait are whole numbers"
    ))
    .into()
}

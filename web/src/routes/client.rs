//! The client app's routes (session token): polling and the QR code; the WebSocket
//! lives in [`crate::ws`].

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use idv_actors::ids::{Seq, SessionId};
use idv_actors::metrics::GaugeGuard;
use idv_actors::model::SessionRecord;
use idv_actors::session::messages::Caller;
use idv_actors::session::messages::Change;
use serde::Deserialize;

use super::session_id;
use crate::auth::{BrowserClient, Client};
use crate::dto::StatusView;
use crate::error::ApiError;
use crate::state::AppState;

/// Longest long-poll, in seconds (SPEC §3).
pub const MAX_WAIT_SECS: u64 = 30;

/// How often one long-poll waits again after its session's actor died under it;
/// past that (an actor that keeps dying) it answers with what it has.
const MAX_REWAITS: usize = 3;

/// `?after_seq=N&wait=S` (and the `token` the auth extractor reads).
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    /// Answer once `seq` is above this; default: the current seq.
    pub after_seq: Option<u64>,
    /// Seconds to wait for a change, 0..=30.
    pub wait: Option<u64>,
}

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

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/status",
    tag = "client",
    security(("session_token" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
        ("after_seq" = Option<u64>, Query, description = "Long-poll: answer once seq is above this (default: the current seq)."),
        ("wait" = Option<u64>, Query, minimum = 0, maximum = 30, description = "Long-poll: seconds to wait for a change."),
        ("If-None-Match" = Option<String>, Header, description = "The ETag of a previous answer."),
    ),
    responses(
        (status = 200, description = "The session's status.", body = StatusView,
            headers(("ETag" = String, description = "\"<seq>\""))),
        (status = 304, description = "If-None-Match names the current tag.",
            headers(("ETag" = String, description = "\"<seq>\""))),
        (status = 400, description = "The id is not a UUID, or wait is above 30.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing session token, or not this session's.", body = crate::error::ErrorBody),
        (status = 403, description = "The token may not read this session.", body = crate::error::ErrorBody),
        (status = 404, description = "No such session.", body = crate::error::ErrorBody),
    )
)]
/// `GET /v1/sessions/{id}/status`, with `ETag: "<seq>"` and the long-poll form.
/// A waiting poll holds no thread: it is a parked future on a oneshot channel.
pub async fn status(
    state: web::Data<AppState>,
    client: Client,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::invalid(format!(
            "wait must be 0 to {MAX_WAIT_SECS} seconds"
        )));
    }
    let session = if query.after_seq.is_none() && query.wait.is_none() {
        state.registry.inspect(id, client.caller).await?
    } else {
        let after = query.after_seq.map(Seq);
        long_poll(&state, id, client.caller, after, Duration::from_secs(wait)).await?
    };
    let etag = format!("\"{}\"", session.seq);
    // A 304 carries the headers the 200 would (RFC 9110 §15.4.5): without `no-cache` a
    // cache could serve the stale status without asking again.
    if none_match(&req, &etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(StatusView::from(&session)))
}

/// Waits up to `wait` for a change after `after` (or for shutdown), then answers with
/// the session.
///
/// If the session's actor dies while the poll is parked (its waiter is dropped
/// unanswered), the poll waits again through the registry, which starts a
/// replacement, from the seq it had: until the same deadline, and missing nothing
/// committed meanwhile.
async fn long_poll(
    state: &AppState,
    id: SessionId,
    caller: Caller,
    after: Option<Seq>,
    wait: Duration,
) -> Result<SessionRecord, ApiError> {
    let deadline = actix_web::rt::time::Instant::now() + wait;
    // Held while the poll may park: one unit of `--max-long-polls`.
    let _permit = if wait.is_zero() {
        None
    } else {
        Some(state.long_polls.try_acquire().ok_or_else(|| {
            ApiError::unavailable(
                "too many long-polls waiting; try again later",
                crate::limits::RETRY_AFTER_SECS,
            )
        })?)
    };
    let mut shutdown = state.shutdown.clone();
    let mut change = state
        .registry
        .wait_change(id, caller.clone(), after)
        .await?;
    let mut rewaits = 0;
    loop {
        let (current, next) = match change {
            Change::Now(session) => return Ok(session),
            Change::Later { current, next } => (current, Some(next)),
            Change::Never(current) => (current, None),
        };
        let _waiting = GaugeGuard::new(idv_actors::metrics::WAITING_LONG_POLLS);
        let changed = async {
            match next {
                Some(next) => next.await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = changed => match got {
                Some(session) => return Ok(session),
                None if rewaits == MAX_REWAITS => return Ok(current),
                None => {
                    rewaits += 1;
                    change = state
                        .registry
                        .wait_change(id, caller.clone(), Some(current.seq))
                        .await?;
                }
            },
            () = actix_web::rt::time::sleep_until(deadline) => return Ok(current),
            _ = shutdown.wait_for(|stopping| *stopping) => return Ok(current),
        }
    }
}

/// Side of the QR code's SVG canvas, in CSS pixels, quiet zone included. The SVG has a
/// `viewBox` and `crispEdges`, so it scales to any size without blur.
pub const QR_MIN_PIXELS: u32 = 256;

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/qr.svg",
    tag = "client",
    security(("session_token" = []), ("session_token_query" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
        ("token" = Option<String>, Query, description = "The session token, for an <img> that cannot send headers."),
    ),
    responses(
        (status = 200, description = "A QR code of the session url.", content_type = "image/svg+xml", body = String),
        (status = 400, description = "The id is not a UUID.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing session token, or not this session's.", body = crate::error::ErrorBody),
        (status = 403, description = "The token may not read this session.", body = crate::error::ErrorBody),
        (status = 404, description = "No such session.", body = crate::error::ErrorBody),
    )
)]
/// `GET /v1/sessions/{id}/qr.svg`: the session `url` as a QR code. Like `/ws` it takes
/// `?token=`, since an `<img>` cannot send headers.
pub async fn qr_svg(
    state: web::Data<AppState>,
    client: BrowserClient,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let session = state.registry.inspect(id, client.caller.clone()).await?;
    crate::shown_on::record(&state, &req, id, client.caller, &session).await;
    let svg = qr_code(&state.session_url(session.id))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "image/svg+xml"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(svg))
}

/// The SVG of a QR code for `text`, with the standard four-module quiet zone.
pub fn qr_code(text: &str) -> Result<String, ApiError> {
    use qrcode::render::svg;
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)
        .map_err(|e| ApiError::internal(format!("QR code of the session url: {e}")))?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(QR_MIN_PIXELS, QR_MIN_PIXELS)
        .quiet_zone(true)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build())
}

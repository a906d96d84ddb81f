//! The backend's session routes (`X-Api-Key`).

use actix_web::{web, HttpRequest, HttpResponse};
use idv_actors::ids::SessionToken;
use idv_actors::model::{SessionRecord, SessionRequest};
use idv_actors::session::messages::Cancel;
use idv_actors::store::IdempotencyClaim;
use sha2::{Digest, Sha256};

use super::{ok_no_store, session_id};
use crate::auth::Backend;
use crate::dto::{CreateSession, Created, DecisionView, SessionView};
use crate::error::ApiError;
use crate::json::Json;
use crate::state::AppState;

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

fn idempotency_claim(
    req: &HttpRequest,
    body: &CreateSession,
) -> Result<Option<IdempotencyClaim>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })?;
    Ok(Some(IdempotencyClaim {
        key: key.to_owned(),
        request_hash: Sha256::digest(canonical(body)?).into(),
    }))
}

/// The body as the idempotency hash sees it: parsed and re-serialized, so the same
/// request hashes the same whatever its whitespace. `registration` is kept verbatim
/// (a `RawValue`) for the device, so it is parsed here too: a `serde_json::Value`
/// object is a `BTreeMap` (the `preserve_order` feature is off; a unit test below
/// holds that), so its keys serialize sorted at every depth, without whitespace.
fn canonical(body: &CreateSession) -> Result<Vec<u8>, ApiError> {
    let registration = body
        .registration
        .as_deref()
        .map(|raw| {
            serde_json::from_str::<serde_json::Value>(raw.get())
                .and_then(|v| serde_json::value::to_raw_value(&v))
        })
        .transpose()
        .map_err(ApiError::internal)?;
    serde_json::to_vec(&CreateSession {
        registration,
        ..body.clone()
    })
    .map_err(ApiError::internal)
}

#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "backend",
    security(("api_key" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "The same key with the same body within 24 h returns the same session, with a fresh token."),
    ),
    request_body = CreateSession,
    responses(
        (status = 201, description = "The session, and its token (shown only here).", body = Created),
        (status = 200, description = "An Idempotency-Key replay: the same session, with a freshly issued token.", body = Created),
        (status = 400, description = "A bad value, an unknown field, or malformed JSON.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or unknown credential.", body = crate::error::ErrorBody),
        (status = 409, description = "idempotency_conflict: the Idempotency-Key was used with another body.", body = crate::error::ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB.", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not Content-Type: application/json.", body = crate::error::ErrorBody),
    )
)]
/// `POST /v1/sessions`.
pub async fn create(
    state: web::Data<AppState>,
    backend: Backend,
    req: HttpRequest,
    body: Json<CreateSession>,
) -> Result<HttpResponse, ApiError> {
    let claim = idempotency_claim(&req, &body)?;
    let (session, token, replayed) =
        open(&state, &backend.owner, body.into_inner(), claim, state.ttl).await?;
    Ok(if replayed {
        HttpResponse::Ok()
    } else {
        HttpResponse::Created()
    }
    .json(created(&state, &session, &token)))
}

/// Validates a create request and opens the session for `owner` (or replays it): the
/// one path by which sessions are made, for the backend route and the demo's own
/// (whose `ttl` bounds are tighter). Answers the session, its freshly issued token,
/// and whether it was a replay.
pub(crate) async fn open(
    state: &AppState,
    owner: &str,
    body: CreateSession,
    claim: Option<IdempotencyClaim>,
    ttl: crate::state::TtlBounds,
) -> Result<(SessionRecord, SessionToken, bool), ApiError> {
    let ttl = body.validate(ttl)?;
    if body.callback_url.is_some() && !state.webhooks_signed {
        return Err(ApiError::invalid(
            "callback_url needs a webhook secret, and this broker has none: it sends nothing unsigned",
        ));
    }
    if let Some(url) = &body.callback_url {
        state
            .callbacks
            .check(url)
            .await
            .map_err(|refused| ApiError::invalid(refused.to_string()))?;
    }
    let (record, token) = SessionRecord::open(
        owner,
        SessionRequest {
            scopes: body.scopes,
            vendor_data: body.vendor_data,
            external_reference_id: body.external_reference_id,
            registration: body.registration,
            redirect_url: body.redirect_url,
            callback_url: body.callback_url,
            binding: body.binding.map(Into::into).unwrap_or_default(),
        },
        state.registry.clock().now(),
        chrono::Duration::seconds(ttl),
    );
    Ok(state.registry.create(record, token, claim).await?)
}

/// The create response: the only time the session token is shown.
pub(crate) fn created<'a>(
    state: &AppState,
    session: &'a SessionRecord,
    token: &'a SessionToken,
) -> Created<'a> {
    Created {
        session_id: session.id.text(),
        session_token: token.expose(),
        url: state.session_url(session.id),
        status: session.status.as_str(),
        seq: session.seq.0,
        expires_at: idv_actors::clock::rfc3339(session.expires_at),
        scopes: &session.request.scopes,
        vendor_data: session.request.vendor_data.as_deref(),
        binding: session.request.binding.into(),
    }
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "backend",
    security(("api_key" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
    ),
    responses(
        (status = 200, description = "The session, without secrets or personal data.", body = SessionView,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "The id is not a UUID.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or unknown credential.", body = crate::error::ErrorBody),
        (status = 404, description = "The session does not exist, or belongs to another API key.", body = crate::error::ErrorBody),
    )
)]
/// `GET /v1/sessions/{id}`.
pub async fn get(
    state: web::Data<AppState>,
    backend: Backend,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let session = state.registry.inspect(id, backend.caller()).await?;
    with_webhooks(&state, &session).await
}

/// `200` with the session as GET shows it, webhook counts included.
async fn with_webhooks(
    state: &AppState,
    session: &SessionRecord,
) -> Result<HttpResponse, ApiError> {
    let webhooks = state.registry.webhook_counts(session.id).await?;
    Ok(ok_no_store().json(SessionView::from(session).with_webhooks(webhooks)))
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/decision",
    tag = "backend",
    security(("api_key" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
    ),
    responses(
        (status = 200, description = "The outcome of a terminal session.", body = DecisionView,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "The id is not a UUID.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or unknown credential.", body = crate::error::ErrorBody),
        (status = 404, description = "The session does not exist, or belongs to another API key.", body = crate::error::ErrorBody),
        (status = 409, description = "invalid_state: the session is not terminal yet.", body = crate::error::ErrorBody),
    )
)]
/// `GET /v1/sessions/{id}/decision`.
pub async fn decision(
    state: web::Data<AppState>,
    backend: Backend,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let decision = state.registry.decision(id, &backend.owner).await?;
    Ok(ok_no_store().json(DecisionView::from(&decision)))
}

#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "backend",
    security(("api_key" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
    ),
    responses(
        (status = 200, description = "The session, now cancelled.", body = SessionView,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "The id is not a UUID.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or unknown credential.", body = crate::error::ErrorBody),
        (status = 404, description = "The session does not exist, or belongs to another API key.", body = crate::error::ErrorBody),
        (status = 409, description = "invalid_state: the session is already terminal.", body = crate::error::ErrorBody),
    )
)]
/// `DELETE /v1/sessions/{id}`.
pub async fn cancel(
    state: web::Data<AppState>,
    backend: Backend,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let session = state
        .registry
        .call(
            id,
            Cancel {
                owner: backend.owner,
            },
        )
        .await?;
    // Read after the cancel committed: its own event is already in the counts.
    with_webhooks(&state, &session).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> CreateSession {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_registration_hashes_the_same_whatever_its_key_order_and_whitespace() {
        let a = canonical(&body(
            r#"{"scopes":["x"],"registration":{"b":1,"a":{"d":[1,2],"c":null}}}"#,
        ))
        .unwrap();
        let b = canonical(&body(
            "{ \"registration\" : { \"a\" : { \"c\" : null , \"d\" : [ 1 , 2 ] } , \"b\" : 1 } , \"scopes\" : [ \"x\" ] }",
        ))
        .unwrap();
        assert_eq!(a, b);
        // Sorted keys, no whitespace: serde_json's `preserve_order` is off. If a
        // dependency ever turns it on, this fails rather than the hash going wrong.
        assert!(String::from_utf8(a)
            .unwrap()
            .contains(r#""registration":{"a":{"c":null,"d":[1,2]},"b":1}"#),);
    }

    #[test]
    fn a_different_registration_hashes_differently() {
        let a = canonical(&body(r#"{"scopes":["x"],"registration":{"a":1}}"#)).unwrap();
        let b = canonical(&body(r#"{"scopes":["x"],"registration":{"a":2}}"#)).unwrap();
        assert_ne!(a, b);
    }
}

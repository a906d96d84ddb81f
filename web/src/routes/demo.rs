//! The demo's own app backend (only with `--demo`). A real integrator's server does
//! this with its API key: it creates the session that `onSessionIdResolver` hands the
//! browser, and reads the decision for `handleVerify`. Here the broker plays that
//! server, acting as the demo key's owner directly, so the key never reaches a page.

use actix_web::{web, HttpResponse};
use idv_actors::credentials::mint_device_jwt_for;
use serde::Deserialize;
use serde_json::json;

use super::session_id;
use super::sessions::{created, open};
use crate::auth::Client;
use crate::dto::{CreateSession, DecisionView};
use crate::error::ApiError;
use crate::json::Json;
use crate::middleware::ClientIp;
use crate::state::{AppState, DemoApp, TtlBounds};
use idv_actors::session::messages::Caller;

/// The scopes a demo session asks for unless the page names others, and the only ones
/// it may name: one file scope, so a demo session stages at most one upload.
pub const DEMO_SCOPES: [&str; 3] = ["full_name", "date_of_birth", "selfie"];

/// Lifetime of a demo device token: long enough to finish a verification.
pub const DEMO_DEVICE_TOKEN_SECS: u64 = 15 * 60;

/// Most live demo sessions at once (SPEC §6); past it a new one is `503 unavailable`
/// with `Retry-After`, like every limit of the broker that is reached (`429` is the
/// per-address rate, [`DEMO_SESSIONS_PER_MINUTE`]). Counted by the registry as the
/// demo key's own quota, so a session leaves it however it ends.
pub const DEMO_MAX_LIVE_SESSIONS: usize = 100;

/// Longest `ttl_seconds` of a demo session (SPEC §6); larger is `400`.
pub const DEMO_MAX_TTL_SECS: i64 = 600;

pub use crate::limits::DEMO_SESSIONS_PER_MINUTE;

/// Most bytes of uploads that demo devices hold in memory at once, all demo sessions
/// together: a share of `--max-staged-mib` (six 5 MiB photos), so the demo cannot
/// take the upload memory of real sessions; past it a demo upload is `503`.
pub const DEMO_MAX_STAGED_BYTES: usize = 32 * 1024 * 1024;

/// Most WebSocket subscribers one demo session holds: the demo page opens one, a
/// reload or a second tab one more.
pub const DEMO_MAX_SUBSCRIBERS_PER_SESSION: usize = 8;

/// `POST /demo/api/sessions`: what the page may choose about a demo session.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoSession {
    /// Scopes, among [`DEMO_SCOPES`]; default all of them.
    #[schema(value_type = Option<Vec<String>>, min_items = 1, max_items = 3)]
    pub scopes: Option<Vec<String>>,
    /// Lifetime in seconds; at most 600 for a demo session.
    #[schema(minimum = 30, maximum = 600)]
    pub ttl_seconds: Option<i64>,
}

/// `POST /demo/api/device-token`: the session the hosted page opened without a token.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoTokenRequest {
    /// A demo session's id; any other session is `404`.
    #[schema(format = Uuid)]
    pub session_id: String,
}

fn demo_app(state: &AppState) -> Result<&DemoApp, ApiError> {
    state
        .demo
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the demo is off (start the broker with --demo)"))
}

#[utoipa::path(
    post,
    path = "/demo/api/sessions",
    tag = "pages",
    request_body = DemoSession,
    responses(
        (status = 201, description = "A session opened by the demo app.", body = crate::dto::Created),
        (status = 400, description = "A bad value (a scope outside the demo's, a ttl_seconds above 600), an unknown field, or malformed JSON.", body = crate::error::ErrorBody),
        (status = 404, description = "The demo is off.", body = crate::error::ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB.", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not Content-Type: application/json.", body = crate::error::ErrorBody),
        (status = 429, description = "rate_limited: more than 10 new demo sessions a minute from this address.", body = crate::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "unavailable: 100 demo sessions are live already.", body = crate::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
/// `POST /demo/api/sessions`: opens a session as the demo app, for a person who filled
/// in nothing yet (the registration prefills the device page's name field). The demo
/// has limits of its own (SPEC §6): its scopes, a shorter lifetime, new sessions per
/// address (here) and live sessions at once (the registry's quota of the demo key).
pub async fn create_session(
    state: web::Data<AppState>,
    client: ClientIp,
    body: Json<DemoSession>,
) -> Result<HttpResponse, ApiError> {
    let demo = demo_app(&state)?;
    let body = body.into_inner();
    let scopes = body
        .scopes
        .unwrap_or_else(|| DEMO_SCOPES.map(String::from).to_vec());
    if let Some(other) = scopes.iter().find(|s| !DEMO_SCOPES.contains(&s.as_str())) {
        return Err(ApiError::invalid(format!(
            "scope {other:?} is not one the demo asks for ({})",
            DEMO_SCOPES.join(", ")
        )));
    }
    let ttl = TtlBounds {
        max: state.ttl.max.min(DEMO_MAX_TTL_SECS),
        default: state.ttl.default.min(DEMO_MAX_TTL_SECS),
        ..state.ttl
    };
    // Every attempt that gets this far counts, refused at the live cap or not.
    demo.new_sessions.check(client.0).map_err(|wait| {
        ApiError::rate_limited_because(
            format!(
                "at most {DEMO_SESSIONS_PER_MINUTE} new demo sessions a minute from one address; try again in {wait} s"
            ),
            wait,
        )
    })?;
    let request = CreateSession {
        scopes,
        vendor_data: Some("demo".into()),
        external_reference_id: None,
        registration: Some(
            serde_json::value::to_raw_value(&json!({"full_name": "Ada Lovelace"}))
                .map_err(ApiError::internal)?,
        ),
        redirect_url: None,
        callback_url: None,
        ttl_seconds: body.ttl_seconds,
        // The demo shows number matching, so that a newcomer sees it (SPEC §2).
        binding: Some(crate::dto::BindingName::Code),
    };
    let (session, token, _) = open(&state, &demo.owner, request, None, ttl).await?;
    Ok(HttpResponse::Created().json(created(&state, &session, &token)))
}

#[utoipa::path(
    get,
    path = "/demo/api/sessions/{id}/decision",
    tag = "pages",
    security(("session_token" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
    ),
    responses(
        (status = 200, description = "The decision, for the browser holding the session token.", body = DecisionView,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "The id is not a UUID.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing session token, or not this session's.", body = crate::error::ErrorBody),
        (status = 403, description = "The token may not read this session.", body = crate::error::ErrorBody),
        (status = 404, description = "The demo is off, or no such session.", body = crate::error::ErrorBody),
        (status = 409, description = "invalid_state: the session is not terminal yet.", body = crate::error::ErrorBody),
    )
)]
/// `GET /demo/api/sessions/{id}/decision`: the decision, for the browser that holds
/// the session's token (as an app backend would check its own user's session).
pub async fn decision(
    state: web::Data<AppState>,
    client: Client,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let demo = demo_app(&state)?;
    let id = session_id(&path)?;
    // The token must be this session's: a `403`/`401` here, as on `/status`.
    state.registry.inspect(id, client.caller).await?;
    let decision = state.registry.decision(id, &demo.owner).await?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(DecisionView::from(&decision)))
}

#[utoipa::path(
    post,
    path = "/demo/api/device-token",
    tag = "pages",
    request_body = DemoTokenRequest,
    responses(
        (status = 200, description = "A device token for a fresh demo user, for this demo session.", body = crate::dto::DemoDeviceToken,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "The session id is not a UUID, an unknown field, or malformed JSON.", body = crate::error::ErrorBody),
        (status = 404, description = "The demo is off, or the session is not one of the demo's (or does not exist).", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not Content-Type: application/json.", body = crate::error::ErrorBody),
    )
)]
/// `POST /demo/api/device-token`: a device token for a fresh demo user, for the hosted
/// page opened on a demo session without `#token=` (a real phone app brings its own).
/// Only for a demo session: any other is `404`, as the demo key sees it (SPEC §1:
/// another key's session does not exist for it), so the route tells nobody whether a
/// real session exists. The token itself works only on demo sessions anyway
/// ([`issuer_may_touch`](idv_actors::credentials::issuer_may_touch)).
pub async fn device_token(
    state: web::Data<AppState>,
    body: Json<DemoTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let demo = demo_app(&state)?;
    let id = session_id(&body.session_id)?;
    state
        .registry
        .inspect(
            id,
            Caller::Backend {
                owner: demo.owner.clone(),
            },
        )
        .await?;
    let sub = format!(
        "demo-user-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    // With `--audience`, the broker's own demo tokens must name it like any other.
    let token = mint_device_jwt_for(
        &demo.issuer,
        &demo.issuer_secret,
        &sub,
        DEMO_DEVICE_TOKEN_SECS,
        state.credentials.load().issuers.audience(),
    )
    .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({"token": token, "sub": sub, "issuer": demo.issuer})))
}

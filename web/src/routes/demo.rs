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
use crate::state::{AppState, DemoApp};

/// The scopes a demo session asks for unless the page names others.
pub const DEMO_SCOPES: [&str; 3] = ["full_name", "date_of_birth", "selfie"];

/// Lifetime of a demo device token: long enough to finish a verification.
pub const DEMO_DEVICE_TOKEN_SECS: u64 = 15 * 60;

/// `POST /demo/api/sessions`: what the page may choose about a demo session.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoSession {
    /// Scopes; default [`DEMO_SCOPES`].
    #[schema(value_type = Option<Vec<crate::schema::Scope>>, min_items = 1, max_items = 32)]
    pub scopes: Option<Vec<String>>,
    /// Lifetime in seconds (the usual bounds).
    #[schema(minimum = 30, maximum = 86400)]
    pub ttl_seconds: Option<i64>,
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
        (status = 400, description = "A bad value, an unknown field, or malformed JSON.", body = crate::error::ErrorBody),
        (status = 404, description = "The demo is off.", body = crate::error::ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB.", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not Content-Type: application/json.", body = crate::error::ErrorBody),
    )
)]
/// `POST /demo/api/sessions`: opens a session as the demo app, for a person who filled
/// in nothing yet (the registration prefills the device page's name field).
pub async fn create_session(
    state: web::Data<AppState>,
    body: Json<DemoSession>,
) -> Result<HttpResponse, ApiError> {
    let demo = demo_app(&state)?;
    let body = body.into_inner();
    let request = CreateSession {
        scopes: body
            .scopes
            .unwrap_or_else(|| DEMO_SCOPES.map(String::from).to_vec()),
        vendor_data: Some("demo".into()),
        external_reference_id: None,
        registration: Some(
            serde_json::value::to_raw_value(&json!({"full_name": "Ada Lovelace"}))
                .map_err(ApiError::internal)?,
        ),
        redirect_url: None,
        callback_url: None,
        ttl_seconds: body.ttl_seconds,
    };
    let (session, token, _) = open(&state, &demo.owner, request, None).await?;
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
    responses(
        (status = 200, description = "A device token for a fresh demo user.", body = crate::dto::DemoDeviceToken),
        (status = 404, description = "The demo is off.", body = crate::error::ErrorBody),
    )
)]
/// `POST /demo/api/device-token`: a device token for a fresh demo user, for the hosted
/// page opened without `#token=` (a real phone app brings its own).
pub async fn device_token(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let demo = demo_app(&state)?;
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
        state.issuers.audience(),
    )
    .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({"token": token, "sub": sub, "issuer": demo.issuer})))
}

//! Extractors for the three roles of SPEC §1. Each turns a request into an
//! authenticated [`Caller`] or a `401`; whether that caller may touch a given
//! session is the actors' decision.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use idv_actors::ids::{DeviceId, SessionToken};
use idv_actors::session::messages::Caller;

use crate::error::ApiError;
use crate::state::AppState;

fn state(req: &HttpRequest) -> Result<&AppState, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .map(|d| d.get_ref())
        .ok_or_else(|| ApiError::internal("AppState missing"))
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The enterprise backend, authenticated by `X-Api-Key`.
#[derive(Debug)]
pub struct Backend {
    /// The key's name (the session owner, and `requester.name` for devices).
    pub owner: String,
}

impl Backend {
    /// As a session caller.
    pub fn caller(&self) -> Caller {
        Caller::Backend {
            owner: self.owner.clone(),
        }
    }
}

impl FromRequest for Backend {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready((|| {
            let key = req
                .headers()
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| ApiError::unauthorized("missing X-Api-Key header"))?;
            // The set in use now: a key a reload removed is unknown from here on.
            let credentials = state(req)?.credentials.load();
            let owner = credentials
                .api_keys
                .authenticate(key)
                .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
            Ok(Backend {
                owner: owner.to_owned(),
            })
        })())
    }
}

fn client_caller(token: &str) -> Caller {
    let token = SessionToken::presented(token);
    Caller::Client {
        token: token.hash(),
        claims: token.claimed_session(),
    }
}

/// The client app, authenticated by the session token in `Authorization: Bearer`.
/// A `?token=` is not read here: tokens in URLs end up in proxy and access logs, so
/// SPEC §1 accepts them only where a browser has no other way ([`BrowserClient`]).
pub struct Client {
    /// The presented token's hash; the session decides whether it is its own.
    pub caller: Caller,
}

impl FromRequest for Client {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match bearer(req) {
            Some(t) => Ok(Client {
                caller: client_caller(t),
            }),
            None if query_token(req).is_some() => Err(ApiError::unauthorized(
                "?token= is accepted only on /ws and /qr.svg; send Authorization: Bearer <session token>",
            )),
            None => Err(ApiError::unauthorized(
                "missing session token (Authorization: Bearer <token>)",
            )),
        })
    }
}

/// `?token=` from the query string, if there is a non-empty one.
fn query_token(req: &HttpRequest) -> Option<String> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()?
        .0
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The client app on the two routes a browser cannot set headers on, a WebSocket
/// and an `<img>` (`/ws`, `/qr.svg`): the session token from `Authorization: Bearer`
/// or from `?token=`.
pub struct BrowserClient {
    /// The presented token's hash; the session decides whether it is its own.
    pub caller: Caller,
}

impl FromRequest for BrowserClient {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req).map(str::to_owned).or_else(|| query_token(req));
        ready(match token {
            Some(t) => Ok(BrowserClient {
                caller: client_caller(&t),
            }),
            None => Err(ApiError::unauthorized(
                "missing session token (Authorization: Bearer <token> or ?token=<token>)",
            )),
        })
    }
}

/// The phone, authenticated by a trusted issuer's JWT (HS256, or a public key).
#[derive(Debug)]
pub struct Device {
    /// The JWT's issuer and `sub`: sessions bind the pair.
    pub id: DeviceId,
}

impl FromRequest for Device {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let began = std::time::Instant::now();
        let found = bearer(req)
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::unauthorized("missing device token (Authorization: Bearer <jwt>)")
            })
            .and_then(|token| Ok((token, state(req)?.credentials.load())));
        Box::pin(async move {
            let (token, credentials) = found?;
            // An unknown `kid` of a JWKS issuer may wait briefly for a fetch (bounded,
            // rate-limited by the issuer's cell); everything else answers at once.
            let id = credentials
                .issuers
                .verify_fresh(&token)
                .await
                .map_err(|e| ApiError::unauthorized(e.to_string()))?;
            idv_actors::metrics::stage(idv_actors::metrics::Stage::Auth, began.elapsed());
            Ok(Device { id })
        })
    }
}

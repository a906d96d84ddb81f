//! Which web pages may use the client routes from a browser (SPEC §6,
//! `--allowed-origin`): CORS on `/status` and `/qr.svg`, and the `Origin` check of the
//! WebSocket handshake.
//!
//! A page is admitted when its origin is the broker's own (the origin of
//! `--public-url`, or the `Host` the request was sent to) or one of the listed ones.
//! Requests without an `Origin` (apps, servers, same-origin `GET`s) are not affected.
//! Backend and device routes never carry CORS headers: those are for servers and
//! phones, and a browser page on another origin has no business reading them.
//!
//! Why not `actix-cors`: it is the maintained crate, and it was tried first, but it
//! cannot express the rule as SPEC needs it.
//! - Its refusals (a preflight from another origin, or with another method) are `400`
//!   with a plain-text body; SPEC §5 wants every error as its JSON body, and a refused
//!   origin is a `403 forbidden` here, like the WebSocket handshake's.
//! - It has to sit outside the rate limiter, the connection limit and the drain gate,
//!   so that their `429` and `503` reach an admitted page with
//!   `Access-Control-Allow-Origin` (else the browser hides them and the SDK would take
//!   a throttled poll for a blocked one). At that level it answers the preflight of
//!   *every* route, backend and device routes included, which must stay without CORS
//!   (and answer `405`). Wrapped around the two client resources only, it never sees
//!   those `429`s and `503`s.
//!
//! The rule itself is a few lines ([`cors`]); its headers are the ones of the Fetch
//! standard's CORS protocol, checked by `tests/api/origins.rs` and by Chromium in
//! `tests/e2e/origins.test.mjs`.

use std::fmt;
use std::str::FromStr;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::error::{ApiError, ErrorCode};

/// How long a browser may keep an answered preflight (`Access-Control-Max-Age`), in
/// seconds. Chromium caps it at 7200; an hour spares a preflight per poll.
pub const PREFLIGHT_MAX_AGE_SECS: u32 = 3600;

/// The request headers an admitted page may send: the session token, and the
/// `If-None-Match` of a status poll.
const ALLOW_HEADERS: &str = "Authorization, If-None-Match";

/// The response headers an admitted page may read: the status's tag, and how long to
/// wait after a `429` or `503`.
const EXPOSE_HEADERS: &str = "ETag, Retry-After";

/// A web origin as browsers send it in `Origin`: `scheme://host[:port]`, lower case,
/// without the scheme's default port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin(String);

impl Origin {
    /// The origin as browsers serialize it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The origin of an `http`/`https` URL (the path, if any, is dropped).
    pub fn of_url(url: &str) -> Option<Self> {
        let url = url::Url::parse(url).ok()?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return None;
        }
        Some(Self(url.origin().ascii_serialization()))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Origin {
    type Err = String;

    /// An origin as `--allowed-origin` takes it: `https://www.bank.example`, with a
    /// port when not the default; a trailing `/` is tolerated, a path, query, user or
    /// wildcard is not (an origin is not a URL prefix).
    fn from_str(raw: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{raw:?} is not an origin ({why}); expected e.g. https://www.bank.example or http://127.0.0.1:3000")
        };
        if raw.contains('*') {
            return Err(bad("wildcards are not accepted: list each origin"));
        }
        let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("it has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("it carries a user"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it has a path, query or fragment"));
        }
        Ok(Self(url.origin().ascii_serialization()))
    }
}

/// The origins admitted to the client routes: the broker's own and the listed ones.
/// Shared by every worker as `web::Data<Origins>`.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    /// The origin of `--public-url` (behind a proxy, not the address the broker sees).
    own: Option<Origin>,
    /// `--allowed-origin`.
    allowed: Vec<Origin>,
}

impl Origins {
    /// The broker at `public_url`, admitting the `allowed` origins too.
    pub fn new(public_url: &str, allowed: &[Origin]) -> Self {
        Self {
            own: Origin::of_url(public_url),
            allowed: allowed.to_vec(),
        }
    }

    /// Whether a page at `origin` may use the client routes of a request sent to
    /// `host` (its `Host`): the broker's own origin, or a listed one. `null` (a
    /// sandboxed or local page) is never admitted.
    pub fn admits(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim();
        self.own.as_ref().is_some_and(|o| o.as_str() == origin)
            || self.allowed.iter().any(|o| o.as_str() == origin)
            || host.is_some_and(|h| same_host(origin, h))
    }

    /// The WebSocket handshake's check (SPEC §6): a browser's handshake whose
    /// `Origin` is neither the broker's own nor listed is `403`; one without `Origin`
    /// (an app, a server) passes. Browsers do not apply CORS to WebSockets, so
    /// this check is what keeps another site's page from following a session.
    pub fn check_handshake(&self, req: &HttpRequest) -> Result<(), ApiError> {
        match origin_of(req.headers()) {
            Some(origin) if !self.admits(origin, host_of(req.headers(), req.uri())) => {
                Err(refused(origin))
            }
            _ => Ok(()),
        }
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the `host` (`Host` header) the
/// request was sent to: a page of the broker's own address, reached directly.
fn same_host(origin: &str, host: &str) -> bool {
    origin.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(host)
    })
}

fn origin_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
}

fn host_of<'a>(headers: &'a HeaderMap, uri: &'a actix_web::http::Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

fn refused(origin: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "a page on {origin} may not use this broker's client routes; list it with --allowed-origin {origin}"
        ),
    )
}

/// The client routes (SPEC §3 "Client"), the only ones that answer CORS:
/// `/v1/sessions/{id}/status` and `/v1/sessions/{id}/qr.svg`. The WebSocket is
/// checked by [`Origins::check_handshake`] instead.
pub fn is_cors_route(path: &str) -> bool {
    let mut parts = path.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(""), Some("v1"), Some("sessions"), Some(id), Some("status" | "qr.svg"), None)
            if !id.is_empty()
    )
}

fn add_vary_origin(headers: &mut HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

fn allow(headers: &mut HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
}

/// The CORS middleware (`middleware::from_fn`), outside the limits so that their
/// answers reach an admitted page readable. On a client route ([`is_cors_route`]):
/// - a preflight (`OPTIONS` with `Access-Control-Request-Method`) from an admitted
///   origin is `204` with the allowed method (`GET`), headers and max-age; from any
///   other origin `403` (the browser then blocks the request it was asking about);
/// - a request from an admitted origin gets `Access-Control-Allow-Origin: <origin>`
///   and the exposed headers, whatever its answer (errors too);
/// - every answer carries `Vary: Origin`: it depends on it.
///
/// Every other route passes through untouched.
pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !is_cors_route(req.path()) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let origin = origin_of(req.headers()).map(str::to_owned);
    let admitted = origin.as_deref().filter(|o| {
        req.app_data::<web::Data<Origins>>()
            .is_some_and(|origins| origins.admits(o, host_of(req.headers(), req.uri())))
    });
    let admitted = admitted.map(str::to_owned);
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if let (true, Some(origin)) = (preflight, origin.as_deref()) {
        let mut res = match &admitted {
            Some(admitted) => {
                let mut res = HttpResponse::NoContent().finish();
                let headers = res.headers_mut();
                allow(headers, admitted);
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET"),
                );
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(ALLOW_HEADERS),
                );
                headers.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from(PREFLIGHT_MAX_AGE_SECS),
                );
                res
            }
            None => refused(origin).error_response(),
        };
        add_vary_origin(res.headers_mut());
        return Ok(req.into_response(res));
    }
    let mut res = match next.call(req).await {
        Ok(res) => res.map_into_boxed_body(),
        // An error of an inner layer (a `429`, a `503`, a refused token): its answer
        // gets the headers too, so that an admitted page can read it.
        Err(e) => {
            let mut res = e.error_response();
            let headers = res.headers_mut();
            if let Some(origin) = &admitted {
                allow(headers, origin);
            }
            add_vary_origin(headers);
            return Err(actix_web::error::InternalError::from_response(e, res).into());
        }
    };
    let headers = res.headers_mut();
    if let Some(origin) = &admitted {
        allow(headers, origin);
    }
    add_vary_origin(headers);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_scheme_host_and_port_as_browsers_send_it() {
        let table = [
            ("https://www.bank.example", "https://www.bank.example"),
            ("https://www.bank.example/", "https://www.bank.example"),
            ("HTTPS://WWW.Bank.Example", "https://www.bank.example"),
            ("https://www.bank.example:443", "https://www.bank.example"),
            ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
            ("http://[::1]:3000", "http://[::1]:3000"),
        ];
        for (raw, want) in table {
            assert_eq!(
                raw.parse::<Origin>().map(|o| o.0),
                Ok(want.to_owned()),
                "{raw}"
            );
        }
        for bad in [
            "www.bank.example",
            "https://*.bank.example",
            "*",
            "ftp://bank.example",
            "https://bank.example/idv",
            "https://bank.example/?a=1",
            "https://user@bank.example",
            "null",
            "",
        ] {
            assert!(bad.parse::<Origin>().is_err(), "{bad} is not an origin");
        }
    }

    #[test]
    fn own_listed_and_same_host_origins_are_admitted_and_nothing_else() {
        let allowed = ["https://www.bank.example".parse().unwrap()];
        let origins = Origins::new("https://idv.bank.example/idv", &allowed);
        let host = Some("127.0.0.1:8080");
        assert!(origins.admits("https://idv.bank.example", host));
        assert!(origins.admits("https://www.bank.example", host));
        assert!(origins.admits("http://127.0.0.1:8080", host));
        assert!(!origins.admits("https://evil.example", host));
        assert!(!origins.admits("https://www.bank.example.evil.example", host));
        assert!(!origins.admits("http://www.bank.example", host));
        assert!(!origins.admits("null", host));
        assert!(!origins.admits("http://127.0.0.1:8081", host));
        assert!(!origins.admits("https://evil.example", None));
    }

    #[test]
    fn only_status_and_qr_are_cors_routes() {
        let id = "6f1c2d9e-0000-4000-8000-000000000001";
        assert!(is_cors_route(&format!("/v1/sessions/{id}/status")));
        assert!(is_cors_route(&format!("/v1/sessions/{id}/qr.svg")));
        for path in [
            format!("/v1/sessions/{id}"),
            format!("/v1/sessions/{id}/ws"),
            format!("/v1/sessions/{id}/decision"),
            format!("/v1/sessions/{id}/information"),
            format!("/v1/sessions/{id}/update"),
            format!("/v1/sessions/{id}/files/selfie"),
            format!("/v1/sessions/{id}/status/x"),
            "/v1/sessions//status".to_owned(),
            "/v1/sessions".to_owned(),
            "/sdk.js".to_owned(),
        ] {
            assert!(!is_cors_route(&path), "{path}");
        }
    }
}

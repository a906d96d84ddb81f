//! Per-IP rate limiting (governor), the per-IP connection limit, and the access log.
//!
//! The client's address is the peer's, or, from a trusted proxy (`--trusted-proxy`),
//! the right-most untrusted `X-Forwarded-For` entry ([`client_ip`]); an IPv6 client is
//! limited by its /64 ([`limiter_key`]).
//!
//! The access log writes one line per request, at `info` under the target `access`
//! (`RUST_LOG=info,access=warn` silences it): the route *template*, never the raw
//! path (`/v1/users/{user_id}` would carry a user id) nor the query string (it may
//! carry `?token=`), the status, the latency and the session id when the route has one.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;
use crate::limits::{client_ip, limiter_key, Cidr, Connection, RETRY_AFTER_SECS};

/// Routes that are never rate limited (probes and scrapes).
const EXEMPT: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The per-IP limiter: `n` requests per second with bursts of `n`; `None` when off.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    trusted: Arc<[Cidr]>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests per second per IP (0 turns it off),
    /// believing `X-Forwarded-For` from the `trusted` proxies only.
    pub fn new(per_second: u32, trusted: &[Cidr]) -> Self {
        Self {
            trusted: trusted.into(),
            inner: NonZeroU32::new(per_second).map(|n| {
                Arc::new(governor::RateLimiter::keyed(
                    Quota::per_second(n).allow_burst(n),
                ))
            }),
        }
    }

    /// Drops the state of addresses that are back to a full bucket, so the map does not
    /// grow with every address ever seen. Call it periodically.
    pub fn shrink(&self) {
        if let Some(l) = &self.inner {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// The client of a request: the peer, or behind a trusted proxy the address it
    /// names ([`client_ip`]).
    fn client(&self, peer: IpAddr, headers: &actix_web::http::header::HeaderMap) -> IpAddr {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>();
        client_ip(peer, forwarded.into_iter(), &self.trusted)
    }

    /// `Err(seconds to wait)` if `ip` is over its quota.
    fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let Some(l) = &self.inner else { return Ok(()) };
        l.check_key(&limiter_key(ip)).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// The client's address as the per-IP limits see it (the same [`client_ip`] as the
/// rate limit, behind `--trusted-proxy`), for a handler with a per-IP limit of its own.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

impl actix_web::FromRequest for ClientIp {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let client = match (req.app_data::<web::Data<RateLimiter>>(), req.peer_addr()) {
            (Some(limiter), Some(peer)) => Ok(ClientIp(limiter.client(peer.ip(), req.headers()))),
            _ => Err(ApiError::internal("the client's address is unknown")),
        };
        std::future::ready(client)
    }
}

/// The rate-limit middleware (`middleware::from_fn`).
pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !EXEMPT.contains(&req.path()) {
        if let (Some(limiter), Some(peer)) =
            (req.app_data::<web::Data<RateLimiter>>(), req.peer_addr())
        {
            let client = limiter.client(peer.ip(), req.headers());
            if let Err(wait) = limiter.check(client) {
                metrics::counter!(idv_actors::metrics::RATE_LIMITED).increment(1);
                return Err(ApiError::rate_limited(wait.max(1)).into());
            }
        }
    }
    next.call(req).await
}

/// Refuses every request of a connection opened while its address already had
/// `--max-connections-per-ip` open (see [`crate::limits::ConnectionsPerIp`]), and
/// closes that connection after the answer. Counted by the peer address: behind a
/// proxy every client shares it, which is why the limit is off unless set.
pub async fn connection_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !EXEMPT.contains(&req.path()) && req.conn_data::<Connection>().is_some_and(|c| c.over) {
        return Err(ApiError::unavailable(
            "too many connections from this address; close some and try again",
            RETRY_AFTER_SECS,
        )
        .closing()
        .into());
    }
    next.call(req).await
}

/// While the broker is stopping ([`AppState::draining`](crate::state::AppState)),
/// refuses every new request but `/healthz` and `/metrics` with `503`, `Retry-After`
/// and `Connection: close`: its client goes to another node (or comes back after the
/// restart) instead of finding the listener closed under it. `/readyz` answers `503`
/// too, which is what takes the node out of a load balancer.
pub async fn drain_gate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let draining = req
        .app_data::<web::Data<crate::state::AppState>>()
        .is_some_and(|s| s.draining.load(std::sync::atomic::Ordering::Acquire));
    if draining && !matches!(req.path(), "/healthz" | "/metrics") {
        return Err(ApiError::unavailable(
            "this node is shutting down; try again (another node, or this one after its restart)",
            RETRY_AFTER_SECS,
        )
        .closing()
        .into());
    }
    next.call(req).await
}

/// The access log (see the module docs): one line per request.
pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().clone();
    let res = next.call(req).await;
    // Read after the call: routing happens inside. The template of the matched
    // resource, or a fixed word (the raw path is the caller's text, not ours); the
    // session id only when it parses as one.
    let (route, session, status) = match &res {
        Ok(r) => (
            r.request()
                .match_pattern()
                .unwrap_or_else(|| "(no route)".to_owned()),
            r.request()
                .match_info()
                .get("id")
                .and_then(idv_actors::ids::SessionId::parse),
            r.status().as_u16(),
        ),
        Err(e) => (
            "(refused before routing)".to_owned(),
            None,
            e.as_response_error().status_code().as_u16(),
        ),
    };
    let elapsed = start.elapsed();
    idv_actors::metrics::http_request(route.clone(), status, elapsed);
    let micros = elapsed.as_micros() as u64;
    match session {
        Some(session) => tracing::info!(
            target: "access", %method, %route, status, micros, session = %session, "request"
        ),
        None => tracing::info!(target: "access", %method, %route, status, micros, "request"),
    }
    res
}

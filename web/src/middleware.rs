//! Per-IP rate limiting (governor) and an access log that never prints query strings
//! (they may carry `?token=`).

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

/// Routes that are never rate limited (probes and scrapes).
const EXEMPT: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The per-IP limiter: `n` requests per second with bursts of `n`; `None` when off.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests per second per IP; 0 turns it off.
    pub fn new(per_second: u32) -> Self {
        Self {
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

    /// `Err(seconds to wait)` if `ip` is over its quota.
    fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let Some(l) = &self.inner else { return Ok(()) };
        l.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
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
            if let Err(wait) = limiter.check(peer.ip()) {
                return Err(ApiError::rate_limited(wait.max(1)).into());
            }
        }
    }
    next.call(req).await
}

/// The access log: method, path, status and latency at `debug`; no query string.
pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    tracing::debug!(%method, %path, status, micros = start.elapsed().as_micros() as u64, "request");
    res
}

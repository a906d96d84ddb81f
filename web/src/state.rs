//! What every handler shares.

use idv_actors::credentials::{ApiKeys, Issuers};
use idv_actors::registry::Registry;

/// Bounds on `ttl_seconds` (SPEC §3: default 600, allowed 30..=86400).
#[derive(Clone, Copy, Debug)]
pub struct TtlBounds {
    /// Smallest accepted.
    pub min: i64,
    /// Largest accepted.
    pub max: i64,
    /// Used when the request gives none.
    pub default: i64,
}

impl Default for TtlBounds {
    fn default() -> Self {
        Self {
            min: 30,
            max: 86_400,
            default: 600,
        }
    }
}

/// The state shared by every handler, wrapped in `web::Data`.
#[derive(Clone)]
pub struct AppState {
    /// Live session actors, and the store behind them.
    pub registry: Registry,
    /// Backend credentials.
    pub api_keys: ApiKeys,
    /// Trusted device-token issuers.
    pub issuers: Issuers,
    /// The base of session `url`s, without a trailing slash.
    pub public_url: String,
    /// Accepted `ttl_seconds`.
    pub ttl: TtlBounds,
    /// WebSocket timings and bounds.
    pub ws: crate::ws::WsConfig,
    /// How long an upload's body may take to arrive (SPEC §3: 30 s; tests shrink it).
    pub upload_timeout: std::time::Duration,
    /// Turns `true` when the broker starts shutting down: WebSockets close with 1001
    /// and long-polls answer at once.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Whether the broker has a webhook secret; without one it sends nothing unsigned,
    /// so a `callback_url` is refused (SPEC §4).
    pub webhooks_signed: bool,
}

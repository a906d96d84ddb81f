//! What every handler shares.

use idv_actors::credentials::SharedCredentials;
use idv_actors::ids::SessionId;
use idv_actors::registry::Registry;
use std::time::Duration;

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

/// WebSocket timings and bounds.
#[derive(Clone, Copy, Debug)]
pub struct WsConfig {
    /// How often the server pings (SPEC: 10 s).
    pub ping_interval: Duration,
    /// A peer silent this long is dropped (SPEC: 30 s).
    pub client_timeout: Duration,
    /// Largest frame accepted from a client; larger closes with a policy error.
    pub max_frame: usize,
    /// Pushes queued for one subscriber before the session drops it as too slow.
    pub mailbox: usize,
    /// After the server's close frame, how long it waits for the client's before it
    /// ends the connection anyway.
    pub close_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(10),
            client_timeout: Duration::from_secs(30),
            max_frame: 4 * 1024,
            mailbox: 16,
            close_timeout: Duration::from_secs(2),
        }
    }
}

/// The state shared by every handler, wrapped in `web::Data`.
#[derive(Clone)]
pub struct AppState {
    /// Live session actors, and the only way to the store behind them.
    pub registry: Registry,
    /// Backend API keys and trusted device-token issuers: read once per request, and
    /// replaced as a whole when the credentials file is reloaded (`SIGHUP`).
    pub credentials: SharedCredentials,
    /// The base of session `url`s, without a trailing slash.
    pub public_url: String,
    /// Accepted `ttl_seconds`.
    pub ttl: TtlBounds,
    /// WebSocket timings and bounds.
    pub ws: WsConfig,
    /// How long an upload's body may take to arrive (SPEC §3: 30 s; tests shrink it).
    pub upload_timeout: std::time::Duration,
    /// Turns `true` when the broker starts shutting down: WebSockets close with 1001
    /// and long-polls answer at once.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Set when a graceful stop begins, before the listener closes: every new request
    /// is answered `503` with `Retry-After` and `Connection: close` (see
    /// [`drain_gate`](crate::middleware::drain_gate)).
    pub draining: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether the broker has a webhook secret; without one it sends nothing unsigned,
    /// so a `callback_url` is refused (SPEC §4).
    pub webhooks_signed: bool,
    /// Refuses a `callback_url` that is or resolves to a non-public address, unless the
    /// broker runs with `--webhook-allow-private` (SPEC §3).
    pub callbacks: idv_actors::webhooks::CallbackGuard,
    /// Demo mode's own backend credential and device issuer; `None` without `--demo`,
    /// and then `/demo` and its routes answer `404`.
    pub demo: Option<DemoApp>,
    /// Open WebSockets, at most `--max-websockets`; each `/ws` subscriber holds one.
    pub websockets: crate::limits::Gauge,
    /// Waiting long-polls, at most `--max-long-polls`; each parked poll holds one.
    pub long_polls: crate::limits::Gauge,
}

impl AppState {
    /// The session's `url`: where the device opens it (the hosted page, `/verify/{id}`).
    pub fn session_url(&self, id: SessionId) -> String {
        // One allocation of the exact length (`format!` grows its buffer on the way).
        [self.public_url.as_str(), "/verify/", &id.text()].concat()
    }
}

/// What demo mode plays the app backend with. The API key itself never leaves the
/// server: the demo routes act as its `owner` directly.
#[derive(Clone)]
pub struct DemoApp {
    /// The demo API key's name: the owner of demo sessions, shown as `requester.name`.
    pub owner: String,
    /// The demo device issuer (`iss`), one of the broker's trusted issuers.
    pub issuer: String,
    /// That issuer's HS256 secret, to mint demo device tokens.
    pub issuer_secret: String,
    /// New demo sessions per client address: at most
    /// [`DEMO_SESSIONS_PER_MINUTE`](crate::limits::DEMO_SESSIONS_PER_MINUTE) a
    /// minute (SPEC §6). Shared by every worker (the buckets are behind an `Arc`).
    pub new_sessions: crate::limits::PerMinute,
}

impl DemoApp {
    /// The demo app of the demo key `owner` and the demo issuer `issuer` (signing with
    /// `issuer_secret`), with its own per-address limit on new sessions.
    pub fn new(owner: &str, issuer: &str, issuer_secret: String) -> Self {
        Self {
            owner: owner.to_owned(),
            issuer: issuer.to_owned(),
            issuer_secret,
            new_sessions: crate::limits::PerMinute::new(crate::limits::DEMO_SESSIONS_PER_MINUTE),
        }
    }
}

impl std::fmt::Debug for DemoApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoApp")
            .field("owner", &self.owner)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

//! The HTTP and WebSocket front of idv-broker: it only translates requests into
//! calls on the actors crate's registry, and their answers back. It never sees the
//! store: the registry is its one way to sessions, users and readiness.
//!
//! Layout:
//! - [`routes`]: handlers, one module per role (backend sessions, client, device, users, ops).
//! - [`auth`]: extractors for the three credentials of SPEC §1.
//! - [`dto`]: request and response bodies, with their validation.
//! - [`json`]: the JSON body extractor, with its bound on nesting.
//! - [`error`]: [`ApiError`](error::ApiError), the codes and body of SPEC §5.
//! - [`middleware`]: per-IP rate limiting, the per-IP connection limit, and the access log.
//! - [`limits`]: counted resources with a ceiling, and the client's address.
//! - [`origins`]: which browser pages may use the client routes (CORS, and the
//!   WebSocket handshake's `Origin` check; `--allowed-origin`).
//! - [`state`]: what handlers share.
//! - [`shown_on`]: where a session is shown, from its client's User-Agent.
//! - [`ws`]: WebSocket subscriptions (the only module that speaks WebSocket).
//! - [`openapi`]: `/openapi.json`, generated from the handlers' annotations and the
//!   [`dto`] types; [`schema`]: the schemas of the actors' wire names.

pub mod auth;
pub mod dto;
pub mod error;
pub mod json;
pub mod limits;
pub mod middleware;
pub mod openapi;
pub mod origins;
pub mod routes;
pub mod schema;
pub mod shown_on;
pub mod state;
pub mod ws;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{middleware::from_fn, web, App, HttpResponse, HttpServer, Resource};

use crate::error::{ApiError, ErrorCode};
use crate::middleware::RateLimiter;
use crate::routes::{client, demo, device, files, ops, pages, sessions, users};
pub use crate::state::{AppState, DemoApp, TtlBounds};

/// Largest JSON body accepted (SPEC §3).
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// How the HTTP server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Requests per second per client IP (bursts of as many); 0 is off.
    pub rate_limit: u32,
    /// Worker threads; `None` is one per core.
    pub workers: Option<usize>,
    /// How long a graceful stop waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// How long a connection answered before its request body was read (an upload
    /// refused early) keeps being read, so its client sees the answer before the close.
    /// A WebSocket is not lingered: it closes with its own handshake.
    pub linger: Duration,
    /// Most connections open at once from one client address (an IPv6 /64); `None`
    /// is off.
    pub max_connections_per_ip: Option<usize>,
    /// Proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<limits::Cidr>,
    /// Origins of pages that may use the client routes besides the broker's own
    /// (`--allowed-origin`).
    pub allowed_origins: Vec<origins::Origin>,
    /// Connections one worker thread holds at once before it stops accepting: every
    /// WebSocket and long-poll the broker allows, plus the rest. actix-server's default
    /// (25,600 per worker) would stop a two-worker node at 51,200 whatever
    /// `--max-websockets` says; the broker's own limits answer `503` first.
    pub max_connections: usize,
}

/// What [`serve`] asks the kernel for as the listener's backlog: connections waiting
/// to be accepted, as many as `net.core.somaxconn` allows (the kernel caps it). A
/// listener bound by `std` gets 128, too few for a burst of reconnecting subscribers.
pub const LISTEN_BACKLOG: i32 = 65_535;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            rate_limit: 100,
            workers: None,
            shutdown_timeout: Duration::from_secs(30),
            linger: Duration::from_secs(1),
            max_connections_per_ip: None,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            max_connections: limits::DEFAULT_MAX_WEBSOCKETS + limits::DEFAULT_MAX_LONG_POLLS + 1024,
        }
    }
}

async fn method_not_allowed(allow: &'static str) -> HttpResponse {
    use actix_web::ResponseError as _;
    let mut res = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("this path takes {allow}"),
    )
    .error_response();
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(allow) {
        res.headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    res
}

async fn not_found() -> HttpResponse {
    use actix_web::ResponseError as _;
    ApiError::not_found("no such route").error_response()
}

/// A resource whose unmatched methods answer `405` with the SPEC §5 body.
fn resource(path: &str, allow: &'static str) -> Resource {
    web::resource(path).default_service(web::to(move || method_not_allowed(allow)))
}

/// Every route of the API.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_JSON_BODY)
            .error_handler(error::json_error),
    )
    .app_data(web::QueryConfig::default().error_handler(error::query_error))
    .app_data(
        web::PathConfig::default().error_handler(|e, _| ApiError::invalid(e.to_string()).into()),
    )
    .service(resource("/v1/sessions", "POST").route(web::post().to(sessions::create)))
    .service(
        resource("/v1/sessions/{id}", "GET, DELETE")
            .route(web::get().to(sessions::get))
            .route(web::delete().to(sessions::cancel)),
    )
    .service(resource("/v1/sessions/{id}/decision", "GET").route(web::get().to(sessions::decision)))
    .service(resource("/v1/sessions/{id}/status", "GET").route(web::get().to(client::status)))
    .service(resource("/v1/sessions/{id}/ws", "GET").route(web::get().to(ws::subscribe)))
    .service(resource("/v1/sessions/{id}/qr.svg", "GET").route(web::get().to(client::qr_svg)))
    .service(
        resource("/v1/sessions/{id}/information", "GET").route(web::get().to(device::information)),
    )
    .service(resource("/v1/sessions/{id}/update", "POST").route(web::post().to(device::update)))
    .service(
        // One resource for both: `{kind}` on PUT and `{file_id}` on GET share the segment.
        resource("/v1/sessions/{id}/files/{file}", "GET, PUT")
            .route(web::put().to(files::upload))
            .route(web::get().to(files::download)),
    )
    .service(resource("/v1/users/{user_id}/status", "PUT").route(web::put().to(users::set_status)))
    .service(resource("/v1/users/{user_id}", "GET").route(web::get().to(users::get)))
    .service(resource("/healthz", "GET").route(web::get().to(ops::healthz)))
    .service(resource("/openapi.json", "GET").route(web::get().to(openapi::document)))
    .service(resource("/readyz", "GET").route(web::get().to(ops::readyz)))
    .service(resource("/metrics", "GET").route(web::get().to(ops::metrics)))
    .service(resource("/sdk.js", "GET").route(web::get().to(pages::sdk)))
    .service(resource("/assets/{name}", "GET").route(web::get().to(pages::asset)))
    .service(resource("/verify/{id}", "GET").route(web::get().to(pages::verify)))
    .service(resource("/demo", "GET").route(web::get().to(pages::demo)))
    .service(resource("/demo/api/sessions", "POST").route(web::post().to(demo::create_session)))
    .service(
        resource("/demo/api/sessions/{id}/decision", "GET").route(web::get().to(demo::decision)),
    )
    .service(resource("/demo/api/device-token", "POST").route(web::post().to(demo::device_token)));
}

/// Starts the HTTP server on an already-bound listener. Signals are not handled here:
/// the binary owns the shutdown order and calls `stop` on the returned server's handle.
pub fn serve(
    listener: TcpListener,
    state: AppState,
    config: &ServerConfig,
) -> std::io::Result<Server> {
    let origins = web::Data::new(origins::Origins::new(
        &state.public_url,
        &config.allowed_origins,
    ));
    let state = web::Data::new(state);
    let limiter = web::Data::new(RateLimiter::new(config.rate_limit, &config.trusted_proxies));
    {
        // Forget addresses idle long enough to be back at a full bucket.
        let limiter = limiter.clone();
        let demo = state.demo.as_ref().map(|d| d.new_sessions.clone());
        actix_web::rt::spawn(async move {
            let mut every = actix_web::rt::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                limiter.shrink();
                if let Some(demo) = &demo {
                    demo.shrink();
                }
            }
        });
    }
    let connections = limits::ConnectionsPerIp::new(config.max_connections_per_ip);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(limiter.clone())
            .app_data(origins.clone())
            .wrap(from_fn(middleware::rate_limit))
            .wrap(from_fn(middleware::connection_limit))
            .wrap(from_fn(middleware::drain_gate))
            // Outside the limits: their `429` and `503` reach an admitted page readable.
            .wrap(from_fn(origins::cors))
            .wrap(from_fn(middleware::access_log))
            .configure(configure)
            .default_service(web::to(not_found))
    })
    .on_connect(move |io, extensions| {
        // Counted per TCP connection, for as long as it is open (its extensions are
        // dropped with it); requests on a connection over the limit answer `503`.
        let peer = io
            .downcast_ref::<actix_web::rt::net::TcpStream>()
            .and_then(|s| s.peer_addr().ok());
        if let Some(guard) = peer.and_then(|p| connections.open(p.ip())) {
            extensions.insert(guard);
        }
    })
    .disable_signals()
    .max_connections(config.max_connections)
    .client_disconnect_timeout(config.linger)
    .shutdown_timeout(config.shutdown_timeout.as_secs());
    if let Some(n) = config.workers {
        server = server.workers(n);
    }
    // `listen` again on a listening socket sets its backlog anew (Linux, BSD).
    socket2::SockRef::from(&listener).listen(LISTEN_BACKLOG)?;
    Ok(server.listen(listener)?.run())
}

//! Wiring: store → registry (restored) → HTTP server, and the ordered shutdown.

use std::future::Future;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;

use actix_web::dev::Server;
use idv_actors::cluster::{Cluster, ClusterConfig};
use idv_actors::credentials::SharedCredentials;
use idv_actors::jwks::JwksFetcher;
use idv_actors::pg::{PgConfig, PgStore};
use idv_actors::registry::{KeyLimits, Registry, RegistryConfig};
use idv_actors::retention::{RetentionSweeper, SweeperConfig};
use idv_actors::session_store::{ClusterStore, SessionStore};
use idv_actors::store::{Store, StoreConfig, StoreError, WebhookRoute};
use idv_actors::supervise::Supervised;
use idv_actors::webhooks::dispatcher::DispatcherError;
use idv_actors::webhooks::{CallbackGuard, Dispatcher, Shutdown, Signer};
use idv_web::routes::demo;
use idv_web::{AppState, DemoApp, ServerConfig};

use crate::credentials_file::CredentialSources;
use crate::demo::demo_secrets;
use crate::reload::{build_credentials, read_sources, CredentialsReloader};
use crate::settings::{Settings, StoreUrl, DEMO_API_KEY_NAME, DEMO_ISSUER};

/// How often the registry looks for overdue sessions whose actor did not expire them.
const EXPIRY_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Threads of the `store-io` runtime that runs every PostgreSQL call.
const STORE_IO_THREADS: usize = 2;

/// The dedicated multi-threaded runtime the PostgreSQL store runs on: its connections'
/// I/O lives here, not on an actix worker (each a single-threaded runtime that may stop
/// before the store does). Shut down without blocking when dropped, so dropping it on
/// an async thread is safe; calls made after that fail as `StoreError::Closed`.
pub struct StoreRuntime(Option<tokio::runtime::Runtime>);

impl StoreRuntime {
    /// Starts the `store-io` threads.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(STORE_IO_THREADS)
                .thread_name("store-io")
                .enable_all()
                .build()?,
        )))
    }

    /// Where store calls are spawned.
    pub fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle().clone())
    }
}

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Why the broker could not start (all exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Weak or ambiguous credentials (SPEC §6).
    #[error("{0}")]
    Config(String),
    /// The database cannot be opened, reached or migrated.
    #[error("cannot use the database {path}: {source}")]
    Database {
        /// The file.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// The webhook dispatcher cannot be set up (its TLS client).
    #[error("cannot start webhooks: {0}")]
    Webhooks(#[from] DispatcherError),
    /// Several nodes: NATS cannot be reached, or the node cannot join.
    #[error("{0}")]
    Cluster(#[from] idv_actors::cluster::ClusterError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A built broker: bound, restored, not yet serving.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    registry: Registry,
    /// The store, whichever engine; everything in the broker holds it as this.
    store: Arc<dyn SessionStore>,
    /// The same store as the cluster layer sees it; PostgreSQL only.
    cluster: Option<Arc<dyn ClusterStore>>,
    /// This node in the cluster (several nodes only).
    node: Option<Cluster>,
    /// The runtime PostgreSQL calls run on; shut down after the store is closed.
    store_io: Option<StoreRuntime>,
    /// Tells WebSockets (close 1001) and long-polls (answer now) that the broker stops.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Turned on first in a graceful stop: new requests are refused with `503`.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// How long the refusing lasts before the listener stops accepting.
    shutdown_grace: std::time::Duration,
    sweeper: Supervised<RetentionSweeper>,
    /// The webhook dispatcher; `None` without a signing secret.
    dispatcher: Option<Supervised<Dispatcher>>,
    /// How long a stop waits for deliveries in flight.
    webhook_timeout: std::time::Duration,
    /// The demo page's address, in demo mode.
    demo_url: Option<String>,
    /// Puts the credentials file in use again (`SIGHUP`).
    reloader: CredentialsReloader,
}

impl Application {
    /// Opens the store, expires what became overdue while the broker was down,
    /// restores the live sessions' actors, then binds. Nothing listens before the
    /// store is consistent.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        // Checked here as well as when flags are parsed, so no embedder (or test) runs
        // a broker with credentials the binary would refuse; the file's are read now.
        let flag_sources = CredentialSources {
            api_keys: settings.api_keys.clone(),
            issuers: settings.issuers.clone(),
            issuer_jwks: settings.issuer_jwks.clone(),
            issuer_keys: settings.issuer_keys.clone(),
            webhook_secrets: settings.webhook_secrets.clone(),
        };
        let sources = read_sources(&flag_sources, settings.credentials_file.as_deref())
            .map_err(StartError::Config)?;
        if settings.webhook_url.is_some() && sources.webhook_secrets.is_empty() {
            return Err(StartError::Config(
                "--webhook-url needs --webhook-secret: the broker sends nothing unsigned".into(),
            ));
        }
        idv_actors::webhooks::install_crypto_provider();
        // Demo mode brings its own backend key and device issuer: on one node fresh
        // random secrets at every start (nothing to configure, nothing that outlives
        // the run); on several, derived from the cluster key, so a demo token minted
        // by one node works on every other (SPEC §7). The key is never shown; the demo
        // routes act as its owner on the server side. Its issuer's tokens touch only
        // its key's sessions (SPEC §1).
        let demo_keys = settings.demo.then(|| {
            let seed = settings
                .cluster_keys
                .first()
                .map(|key| key.derive("idv-broker demo secrets v1"));
            demo_secrets(seed.as_ref().map(|s| s.as_slice()))
        });
        // Key files are read and JWKS fetches started before anything else opens: a bad
        // key file stops the start here, with nothing to undo.
        let fetcher = JwksFetcher::new(settings.jwks)
            .map_err(|e| StartError::Config(format!("cannot start JWKS fetching: {e}")))?;
        let credentials = SharedCredentials::new(
            build_credentials(
                &sources,
                settings.audience.as_deref(),
                demo_keys.as_ref(),
                &fetcher,
                None,
            )
            .map_err(StartError::Config)?,
        );
        // Once per process (see idv_actors::metrics): before the store and the actors
        // record anything.
        idv_actors::metrics::install();
        idv_actors::supervise::register_metrics();
        let db_error = |source| StartError::Database {
            path: settings.store.display(),
            source,
        };
        // No secret, no webhooks at all: transitions enqueue nothing (SPEC §4).
        let signer = Signer::new(&sources.webhook_secrets);
        let webhooks = signer.as_ref().map(|_| WebhookRoute {
            default_url: settings.webhook_url.clone(),
        });
        let (store, cluster, store_io): (Arc<dyn SessionStore>, _, _) = match &settings.store {
            StoreUrl::Sqlite(path) => {
                let config = StoreConfig {
                    webhooks,
                    tasks: settings.tasks.clone(),
                    data_keys: settings.data_keys.clone(),
                    ..StoreConfig::new(path)
                };
                (
                    Arc::new(Store::open(&config).map_err(db_error)?),
                    None,
                    None,
                )
            }
            StoreUrl::Postgres(url) => {
                let io = StoreRuntime::new().map_err(|e| {
                    db_error(StoreError::Schema(format!("cannot start store-io: {e}")))
                })?;
                let handle = io.handle().ok_or_else(|| db_error(StoreError::Closed))?;
                let config = PgConfig {
                    url: url.clone(),
                    node_id: settings.node_id.clone(),
                    pool_size: settings.pg_pool_size,
                    webhooks,
                    tasks: settings.tasks.clone(),
                    data_keys: settings.data_keys.clone(),
                };
                let pg = PgStore::open(config, handle).await.map_err(db_error)?;
                let cluster: Arc<dyn ClusterStore> = pg.clone();
                (pg as Arc<dyn SessionStore>, Some(cluster), Some(io))
            }
        };
        check_data_keys(store.as_ref(), &settings.data_keys)
            .await
            .map_err(|e| match e {
                KeyCheck::Store(e) => db_error(e),
                KeyCheck::Missing(message) => StartError::Config(message),
            })?;
        let registry = Registry::new(
            store.clone(),
            settings.clock.clone(),
            RegistryConfig {
                max_live_sessions: settings.max_live_sessions,
                max_live_sessions_per_key: settings.max_live_sessions_per_key,
                max_subscribers_per_session: settings.max_subscribers_per_session,
                max_staged_bytes: settings.max_staged_bytes,
                // The demo's own limits (SPEC §6), kept by the registry like any key's
                // quota: a demo session stops counting however it ends.
                key_limits: if settings.demo {
                    std::collections::HashMap::from([(
                        DEMO_API_KEY_NAME.to_owned(),
                        KeyLimits {
                            max_live_sessions: demo::DEMO_MAX_LIVE_SESSIONS,
                            max_subscribers_per_session: demo::DEMO_MAX_SUBSCRIBERS_PER_SESSION,
                        },
                    )])
                } else {
                    Default::default()
                },
                issuer_staged_bytes: if settings.demo {
                    std::collections::HashMap::from([(
                        DEMO_ISSUER.to_owned(),
                        demo::DEMO_MAX_STAGED_BYTES.min(settings.max_staged_bytes),
                    )])
                } else {
                    Default::default()
                },
                tasks: settings.tasks.clone(),
            },
        );
        // Several nodes: this process takes its node id's lease before it reads or
        // expires any of its sessions, so a paused or second process with the same
        // node id commits nothing meanwhile (SPEC §7: fencing by process).
        let cluster_config = settings.nats.as_ref().map(|nats| ClusterConfig {
            keys: settings.cluster_keys.clone(),
            nats: settings.nats_options.clone(),
            ..ClusterConfig::new(nats.clone())
        });
        if let (Some(cluster), Some(config)) = (&cluster, &cluster_config) {
            idv_actors::cluster::take_lease(cluster.as_ref(), config.lease_ttl).await?;
        }
        let (expired, restored) = registry.restore().await.map_err(db_error)?;
        registry.start_expiry_sweep(EXPIRY_SWEEP_EVERY);
        // Several nodes (SPEC §7): join after the restore took this node's sessions back
        // (nothing of another node's may start here before), then take commands and
        // orphans. SQLite runs as one node.
        let node = match (&cluster, &store_io, cluster_config) {
            (Some(cluster), Some(io), Some(config)) => {
                let handle = io.handle().ok_or_else(|| db_error(StoreError::Closed))?;
                Some(Cluster::start(config, handle, cluster.clone(), registry.clone()).await?)
            }
            (Some(_), _, None) => {
                return Err(StartError::Config(
                    "a postgres store needs --nats: several nodes talk to each other over NATS"
                        .into(),
                ))
            }
            _ => None,
        };
        let sweeper = RetentionSweeper::new(
            store.clone(),
            settings.clock.clone(),
            SweeperConfig {
                retention: settings.retention,
                record_retention: settings.record_retention,
                every: settings.retention_sweep_every,
            },
        )
        .supervised(&settings.tasks);
        // After the restore, so the events of expiries at start are in the outbox; it
        // resumes whatever was pending.
        let dispatcher = match &signer {
            Some(signer) => Some(
                Dispatcher::new(
                    store.clone(),
                    settings.clock.clone(),
                    signer.clone(),
                    settings.webhooks.clone(),
                )?
                .supervised(&settings.tasks),
            ),
            None => None,
        };

        let bind_error = |source| StartError::Bind {
            addr: settings.bind.clone(),
            source,
        };
        let addr = settings
            .bind
            .to_socket_addrs()
            .map_err(bind_error)?
            .next()
            .ok_or_else(|| bind_error(std::io::Error::other("the address resolves to nothing")))?;
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        tracing::info!(expired, restored, "store restored");

        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reloader = CredentialsReloader {
            shared: credentials.clone(),
            flags: flag_sources,
            file: settings.credentials_file.clone(),
            audience: settings.audience.clone(),
            demo: demo_keys.clone(),
            signer,
            fetcher,
        };
        let demo = demo_keys.map(|secrets| {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    %addr,
                    "--demo on an address other than loopback: anyone who reaches {addr} can open demo sessions and get demo device tokens (demo sessions only, within the demo's limits)"
                );
            }
            DemoApp::new(DEMO_API_KEY_NAME, DEMO_ISSUER, secrets.issuer_secret)
        });
        let state = AppState {
            registry: registry.clone(),
            credentials,
            public_url: settings
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}")),
            ttl: settings.ttl,
            ws: settings.ws,
            upload_timeout: settings.upload_timeout,
            shutdown: shutdown_rx,
            draining: draining.clone(),
            webhooks_signed: dispatcher.is_some(),
            demo,
            callbacks: CallbackGuard::new(&settings.webhooks),
            websockets: idv_web::limits::Gauge::new(settings.max_websockets),
            long_polls: idv_web::limits::Gauge::new(settings.max_long_polls),
        };
        if settings.webhooks.allow_private {
            tracing::warn!(
                "--webhook-allow-private: callback_url may point at loopback and private addresses"
            );
        }
        let config = ServerConfig {
            rate_limit: settings.rate_limit,
            workers: settings.workers,
            shutdown_timeout: settings.shutdown_timeout,
            linger: settings.linger,
            max_connections_per_ip: settings.max_connections_per_ip,
            trusted_proxies: settings.trusted_proxies.clone(),
            allowed_origins: settings.allowed_origins.clone(),
            // Any one worker may end up holding them all.
            max_connections: settings
                .max_websockets
                .saturating_add(settings.max_long_polls)
                .saturating_add(1024),
        };
        let demo_url = state
            .demo
            .as_ref()
            .map(|_| format!("{}/demo", state.public_url));
        let server = idv_web::serve(listener, state, &config).map_err(bind_error)?;
        Ok(Self {
            addr,
            server,
            registry,
            store,
            cluster,
            node,
            store_io,
            shutdown: shutdown_tx,
            draining,
            shutdown_grace: settings.shutdown_grace,
            sweeper,
            dispatcher,
            webhook_timeout: settings.webhooks.timeout,
            demo_url,
            reloader,
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where a person opens the demo (`<public url>/demo`), in demo mode.
    pub fn demo_url(&self) -> Option<&str> {
        self.demo_url.as_deref()
    }

    /// What reloads the credentials file (on `SIGHUP`, see [`reload_on_sighup`]).
    pub fn credentials_reloader(&self) -> CredentialsReloader {
        self.reloader.clone()
    }

    /// The live-session registry (tests inject faults and move the clock through it).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// The store (tests count its reads; the web crate never sees it).
    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.store.clone()
    }

    /// The store as the cluster layer sees it: `Some` on PostgreSQL only.
    pub fn cluster_store(&self) -> Option<Arc<dyn ClusterStore>> {
        self.cluster.clone()
    }

    /// The retention sweeper (send it [`Sweep`](idv_actors::retention::Sweep) to sweep now).
    pub fn sweeper(&self) -> Supervised<RetentionSweeper> {
        self.sweeper.clone()
    }

    /// Serves until `shutdown` resolves, then stops in order: close WebSockets with 1001
    /// and answer long-polls, stop accepting and finish in-flight requests, let webhook
    /// deliveries in flight finish and be recorded, then flush the store (commit what
    /// is queued, checkpoint).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        let server = actix_web::rt::spawn(self.server);
        shutdown.await;
        if !self.shutdown_grace.is_zero() {
            // New requests are refused with 503 + Retry-After + Connection: close (and
            // /readyz 503) while the listener still accepts, so that nobody's request
            // meets a closing listener: load balancers and clients move on first.
            tracing::info!(grace = ?self.shutdown_grace, "shutting down: refusing new requests with 503");
            self.draining
                .store(true, std::sync::atomic::Ordering::Release);
            actix_web::rt::time::sleep(self.shutdown_grace).await;
        }
        // In this order (SPEC §6): stop accepting, then close WebSockets with 1001 and
        // answer waiting long-polls, which would otherwise hold the drain until its
        // timeout, then let in-flight requests finish, bounded by `--shutdown-timeout`.
        // `pause` resolves once the server has told its accept thread to take no more
        // connections; `stop` (sent when called, awaited below) then closes the
        // listener once the workers are done.
        tracing::info!("shutting down: no new connections; closing sockets, draining requests");
        handle.pause().await;
        let drained = handle.stop(true);
        let _ = self.shutdown.send(true);
        drained.await;
        let _ = server.await;
        if let Some(node) = &self.node {
            // Several nodes: this node's sessions go to the others (SPEC §7) before the
            // store closes.
            node.hand_over(std::time::Duration::from_secs(5)).await;
        }
        if let Some(dispatcher) = &self.dispatcher {
            // Bounded: a delivery takes at most its timeout, recording it a moment more.
            // What is cut short stays pending and goes out after the next start.
            let wait = self.webhook_timeout + std::time::Duration::from_secs(2);
            if actix_web::rt::time::timeout(wait, dispatcher.send(Shutdown))
                .await
                .is_err()
            {
                tracing::warn!("webhook deliveries still in flight at stop; they will be resent");
            }
        }
        let store = self.store.clone();
        let store_io = self.store_io;
        actix_web::rt::task::spawn_blocking(move || {
            store.close();
            // After the store: nothing runs on store-io any more.
            drop(store_io);
        })
        .await
        .map_err(std::io::Error::other)?;
        tracing::info!("store flushed; bye");
        Ok(())
    }
}

/// A future that resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are installed
/// when this is called, not when the future is first polled.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// Reloads the credentials on every `SIGHUP`, for as long as the process runs: each
/// success and each refusal is logged on one line (a refused reload keeps the set in
/// use). The handler is installed when this is called.
#[cfg(unix)]
pub fn reload_on_sighup(reloader: CredentialsReloader) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    actix_web::rt::spawn(async move {
        while hup.recv().await.is_some() {
            match reloader.reload() {
                Ok(summary) => tracing::info!("credentials reloaded: {summary}"),
                Err(e) => {
                    tracing::error!("credentials reload refused, the set in use is kept: {e}")
                }
            }
        }
    });
    Ok(())
}

/// No `SIGHUP` off Unix: the credentials file is read at start only.
#[cfg(not(unix))]
pub fn reload_on_sighup(_: CredentialsReloader) -> std::io::Result<()> {
    Ok(())
}

/// A future that resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Why the data keys do not fit the store.
enum KeyCheck {
    Store(StoreError),
    Missing(String),
}

/// Every operator key that seals stored data must be given (SPEC §2: otherwise exit 2,
/// naming its id, never its bytes); without any key, says once that the person's data
/// is stored unsealed. Before the restore, which would read sealed rows.
async fn check_data_keys(
    store: &dyn SessionStore,
    keys: &idv_actors::at_rest::DataKeys,
) -> Result<(), KeyCheck> {
    let ids = store.data_key_ids().await.map_err(KeyCheck::Store)?;
    if let Some(missing) = keys.first_missing(ids.iter().map(String::as_str)) {
        return Err(KeyCheck::Missing(format!(
            "the stored personal data is sealed by data key `{missing}`, which was not given: \
             start with --data-key {missing}=… (docs/custody.md)"
        )));
    }
    match keys.sealing_id() {
        Some(id) => tracing::info!(data_key = id, "personal data is sealed at rest"),
        None => tracing::warn!("no --data-key: personal data is stored unsealed (docs/custody.md)"),
    }
    Ok(())
}

/// `idv-broker rekey`: seals every session's data key again under the first
/// `--data-key` of `settings`, `batch` sessions per transaction, beside running
/// brokers; answers how many it sealed again. Keys that seal stored data must all be
/// given, as for the broker.
pub async fn rekey(settings: Settings, batch: usize) -> Result<usize, StartError> {
    let db_error = |source| StartError::Database {
        path: settings.store.display(),
        source,
    };
    if !settings.data_keys.seals() {
        return Err(StartError::Config(
            "rekey needs --data-key: the first given is the one every data key is sealed under"
                .into(),
        ));
    }
    match &settings.store {
        StoreUrl::Sqlite(path) => {
            let path = path.clone();
            let keys = settings.data_keys.clone();
            tokio::task::spawn_blocking(move || idv_actors::store::rekey(&path, &keys, batch))
                .await
                .map_err(|_| db_error(StoreError::Panicked))?
                .map_err(db_error)
        }
        StoreUrl::Postgres(url) => {
            let io = StoreRuntime::new()
                .map_err(|e| db_error(StoreError::Schema(format!("cannot start store-io: {e}"))))?;
            let handle = io.handle().ok_or_else(|| db_error(StoreError::Closed))?;
            let config = PgConfig {
                url: url.clone(),
                node_id: format!("rekey-{}", uuid::Uuid::new_v4().simple()),
                pool_size: 2,
                webhooks: None,
                data_keys: settings.data_keys.clone(),
                tasks: settings.tasks.clone(),
            };
            let pg = PgStore::open(config, handle).await.map_err(db_error)?;
            let done = pg.rekey(batch).await.map_err(db_error);
            SessionStore::close(pg.as_ref());
            done
        }
    }
}

//! Settings: the flags and environment variables of SPEC §6, and the knobs tests set.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use idv_actors::clock::{SharedClock, SystemClock};
use idv_actors::credentials::{parse_pair, MAX_TOKEN_LIFETIME_SECS};
use idv_actors::nats_link::{split_credentials, NatsOptions};
use idv_actors::webhooks::WebhookConfig;
use idv_web::TtlBounds;

/// Longest `--ttl` of the `token` subcommand: what the broker accepts.
const MAX_TOKEN_TTL: u64 = MAX_TOKEN_LIFETIME_SECS;

/// Shortest API key or issuer secret accepted (SPEC §6).
pub const MIN_SECRET_BYTES: usize = 16;

/// idv-broker: a real-time identity-verification session broker.
#[derive(Debug, Parser)]
#[command(
    name = "idv-broker",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands besides running the broker.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prints a device JWT signed for a trusted issuer (for trying the API by hand).
    Token {
        /// The issuer and its secret, as given to the broker's --issuer (HS256).
        #[arg(long, value_name = "ISS=SECRET", value_parser = parse_pair, required_unless_present = "key", conflicts_with = "key")]
        issuer: Option<(String, String)>,
        /// A PEM private key (RSA, EC P-256 or Ed25519) to sign with instead, for an
        /// issuer trusted by its public key (--issuer-key, --issuer-jwks); needs --iss.
        #[arg(long, value_name = "PATH", requires = "iss")]
        key: Option<PathBuf>,
        /// The issuer (`iss`) of a token signed with --key.
        #[arg(long, value_name = "ISS", requires = "key")]
        iss: Option<String>,
        /// The algorithm with --key: RS256 (default for RSA) or PS256, ES256, EdDSA.
        #[arg(long, value_name = "ALG", requires = "key", value_parser = ["RS256", "PS256", "ES256", "EdDSA"])]
        alg: Option<String>,
        /// The `kid` to put in the header with --key (the key's id in the JWKS).
        #[arg(long, value_name = "KID", requires = "key")]
        kid: Option<String>,
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// Lifetime in seconds; the broker refuses tokens valid for more than 24 h.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_TOKEN_TTL))]
        ttl: u64,
        /// The audience (`aud`), for a broker started with --audience.
        #[arg(long, value_name = "AUD")]
        audience: Option<String>,
    },
    /// Seals every session's data key again under the first --data-key, while brokers
    /// keep running, and prints how many it did; then the other keys can be dropped.
    /// Takes the broker's own flags (the store and the keys count).
    Rekey {
        /// Sessions per transaction.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        batch: u64,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
}

/// The broker's flags (SPEC §6).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "IDVB_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// SQLite database file (its folder is created).
    #[arg(long, env = "IDVB_DB", default_value = "./data/idv-broker.db")]
    pub db: PathBuf,
    /// Base of session URLs; default http://<bind address>.
    #[arg(long, env = "IDVB_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// A backend API key; NAME is shown to devices as requester.name. Repeatable
    /// [env: IDVB_API_KEYS, comma-separated].
    #[arg(long = "api-key", value_name = "NAME=KEY")]
    pub api_keys: Vec<String>,
    /// A trusted device-token issuer and its HS256 secret. Repeatable
    /// [env: IDVB_ISSUERS, comma-separated].
    #[arg(long = "issuer", value_name = "ISS=SECRET")]
    pub issuers: Vec<String>,
    /// A device-token issuer trusted by its JSON Web Key Set (https, or http on a
    /// loopback host). Repeatable [env: IDVB_ISSUER_JWKS, comma-separated].
    #[arg(long = "issuer-jwks", value_name = "ISS=URL")]
    pub issuer_jwks: Vec<String>,
    /// A device-token issuer trusted by a PEM public key file (RSA, EC P-256 or
    /// Ed25519); repeat for several keys of one issuer [env: IDVB_ISSUER_KEYS,
    /// comma-separated].
    #[arg(long = "issuer-key", value_name = "ISS=PATH")]
    pub issuer_keys: Vec<String>,
    /// A TOML file of API keys, issuers and webhook secrets, read at start and again
    /// on SIGHUP (docs/api.md); adds to the flags.
    #[arg(long, env = "IDVB_CREDENTIALS", value_name = "PATH")]
    pub credentials: Option<PathBuf>,
    /// Default webhook URL for sessions without a callback_url.
    #[arg(long, env = "IDVB_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Webhook signing secret; give it twice while rotating (the new one first)
    /// [env: IDVB_WEBHOOK_SECRET, comma-separated].
    #[arg(long = "webhook-secret", value_name = "SECRET")]
    pub webhook_secrets: Vec<String>,
    /// Requests per second per client IP (bursts of N); 0 turns it off.
    #[arg(long, env = "IDVB_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
    /// Serves /demo with a demo API key and device issuer of its own.
    #[arg(long, env = "IDVB_DEMO", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub demo: bool,
    /// Days a confirmed session keeps its shared data and files after the decision.
    #[arg(long, env = "IDVB_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub retention_days: u32,
    /// Most MiB of uploads held in memory across the broker before approve.
    #[arg(long, env = "IDVB_MAX_STAGED_MIB", default_value_t = 256, value_parser = clap::value_parser!(u32).range(5..=65536))]
    pub max_staged_mib: u32,
    /// Device JWTs must carry this in `aud`.
    #[arg(long, env = "IDVB_AUDIENCE", value_name = "AUD")]
    pub audience: Option<String>,
    /// Lets sessions' callback_url point at loopback, private and other non-public
    /// addresses (development, tests); off, they are refused at creation and at connect.
    #[arg(long, env = "IDVB_WEBHOOK_ALLOW_PRIVATE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub webhook_allow_private: bool,
    /// Seconds a graceful stop (SIGTERM, Ctrl-C) waits for in-flight requests to finish
    /// after it stops accepting and closes WebSockets.
    #[arg(long, env = "IDVB_SHUTDOWN_TIMEOUT", value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout: u64,
    /// Seconds a graceful stop first keeps accepting and answers every new request
    /// `503` with `Retry-After` and `Connection: close` (and `/readyz` `503`), so load
    /// balancers and clients move to other nodes before the listener closes. Default:
    /// 2 with a postgres store (several nodes), 0 with SQLite (one node).
    #[arg(long, env = "IDVB_SHUTDOWN_GRACE", value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=600))]
    pub shutdown_grace: Option<u64>,
    /// How log lines are written to stderr: `text` for people, `json` (one object per
    /// line) for log pipelines.
    #[arg(long, env = "IDVB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Most live (non-terminal) sessions at once; creating more is `503`.
    #[arg(long, env = "IDVB_MAX_LIVE_SESSIONS", default_value_t = idv_actors::registry::DEFAULT_MAX_LIVE_SESSIONS, value_parser = positive)]
    pub max_live_sessions: usize,
    /// Most live sessions one API key holds at once (a quota per tenant); off unless set.
    #[arg(long, env = "IDVB_MAX_LIVE_SESSIONS_PER_KEY", value_parser = positive)]
    pub max_live_sessions_per_key: Option<usize>,
    /// Most WebSocket connections open at once.
    #[arg(long, env = "IDVB_MAX_WEBSOCKETS", default_value_t = idv_web::limits::DEFAULT_MAX_WEBSOCKETS, value_parser = positive)]
    pub max_websockets: usize,
    /// Most connections open at once from one client address (an IPv6 /64); off unless
    /// set (behind a proxy every client shares one address).
    #[arg(long, env = "IDVB_MAX_CONNECTIONS_PER_IP", value_parser = positive)]
    pub max_connections_per_ip: Option<usize>,
    /// Most long-polls waiting at once.
    #[arg(long, env = "IDVB_MAX_LONG_POLLS", default_value_t = idv_web::limits::DEFAULT_MAX_LONG_POLLS, value_parser = positive)]
    pub max_long_polls: usize,
    /// Most WebSocket subscribers of one session.
    #[arg(long, env = "IDVB_MAX_SUBSCRIBERS_PER_SESSION", default_value_t = idv_actors::delivery::MAX_SUBSCRIBERS_PER_SESSION, value_parser = positive)]
    pub max_subscribers_per_session: usize,
    /// A proxy (address or CIDR block) whose X-Forwarded-For names the client, for the
    /// per-IP rate limit. Repeatable [env: IDVB_TRUSTED_PROXIES, comma-separated].
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<String>,
    /// The origin of a client-app page on another site that may use the client routes
    /// (`/status`, `/qr.svg`, `/ws`) from the browser, e.g. https://www.bank.example.
    /// Repeatable [env: IDVB_ALLOWED_ORIGINS, comma-separated].
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// The store: `sqlite:PATH` (default: `sqlite:<--db>`), or `postgres://USER@HOST/DB`
    /// for several nodes (needs --nats).
    #[arg(long, env = "IDVB_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// The NATS server that carries messages between nodes (with a postgres store).
    #[arg(long, env = "IDVB_NATS", value_name = "URL")]
    pub nats: Option<String>,
    /// This node's id among several; default: random at each start.
    #[arg(long = "node-id", env = "IDVB_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// 32 random bytes in base64, the same on every node: seals every message between
    /// nodes. Required with a postgres store; repeat while rotating (the first seals,
    /// all open) [env: IDVB_CLUSTER_KEYS, comma-separated].
    #[arg(long = "cluster-key", value_name = "KEY")]
    pub cluster_keys: Vec<String>,
    /// Seals the person's data at rest: ID=KEY, KEY 32 random bytes in base64. Repeat
    /// while rotating: the first seals, all open (docs/custody.md) [env: IDVB_DATA_KEYS,
    /// comma-separated].
    #[arg(long = "data-key", value_name = "ID=KEY")]
    pub data_keys: Vec<String>,
    /// Days after a session ended before its records (row, events, idempotency record)
    /// are deleted, once its webhooks are delivered or given up; 0: at the next sweep.
    #[arg(long, env = "IDVB_RECORD_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(0..=36500))]
    pub record_retention_days: u32,
    /// The CA (PEM) NATS's certificate must chain to, instead of the platform's roots;
    /// turns TLS on.
    #[arg(long = "nats-tls-ca", env = "IDVB_NATS_TLS_CA", value_name = "PATH")]
    pub nats_tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM) for mutual TLS with NATS; needs --nats-tls-key.
    #[arg(
        long = "nats-tls-cert",
        env = "IDVB_NATS_TLS_CERT",
        value_name = "PATH"
    )]
    pub nats_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --nats-tls-cert.
    #[arg(long = "nats-tls-key", env = "IDVB_NATS_TLS_KEY", value_name = "PATH")]
    pub nats_tls_key: Option<PathBuf>,
    /// A NATS credentials file (user JWT and nkey seed) to log in to NATS with.
    #[arg(long = "nats-creds", env = "IDVB_NATS_CREDS", value_name = "PATH")]
    pub nats_creds: Option<PathBuf>,
    /// HTTP worker threads (each runs its own event loop and the session actors it
    /// starts); default: one per CPU the process may run on.
    #[arg(long, env = "IDVB_WORKERS", value_name = "N", value_parser = workers)]
    pub workers: Option<usize>,
}

/// Which store the broker runs on (`--store`). Its `Debug` shows a URL redacted.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded default: one process, one SQLite file.
    Sqlite(PathBuf),
    /// PostgreSQL, for several nodes (SPEC §7): the `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StoreUrl::Postgres(_) => f.debug_tuple("Postgres").field(&self.display()).finish(),
        }
    }
}

impl StoreUrl {
    /// Parses `sqlite:PATH`, `postgres://…` or `postgresql://…`; any other scheme is
    /// refused. Errors never echo the URL (it may carry a password).
    pub fn parse(value: &str) -> Result<Self, String> {
        if let Some(path) = value.strip_prefix("sqlite:") {
            // `sqlite://PATH` is accepted as well as `sqlite:PATH`.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("--store sqlite: needs a file path (sqlite:PATH)".into());
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            // The TLS it asks for is checked now, so a bad sslmode is a flag error at
            // once; its messages name the parameter, never the URL.
            idv_actors::pg::tls::split_url(value).map_err(|e| format!("--store: {e}"))?;
            return Ok(StoreUrl::Postgres(value.to_owned()));
        }
        Err("--store: expected sqlite:PATH, postgres://… or postgresql://…".into())
    }

    /// A description for messages, without any password.
    pub fn display(&self) -> String {
        match self {
            StoreUrl::Sqlite(path) => path.display().to_string(),
            StoreUrl::Postgres(url) => idv_actors::pg::redacted(url),
        }
    }
}

/// A random node id: 12 hex digits of a fresh UUID, new at each start.
pub fn random_node_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_owned()
}

/// Refuses a node id that cannot name this node in a NATS subject (the cluster
/// layer's rule: 1 to 64 of `A-Z a-z 0-9 _ -`), at parse time, before anything opens.
fn check_node_id(id: &str) -> Result<(), String> {
    if idv_actors::cluster::valid_node_id(id) {
        Ok(())
    } else {
        Err(
            "--node-id: 1 to 64 characters of A-Z a-z 0-9 _ - (it names the node in NATS subjects)"
                .into(),
        )
    }
}

/// Most `--workers`: actix-server's own bound (it refuses more than 512).
pub const MAX_WORKERS: usize = 512;

/// A worker count: 1 to [`MAX_WORKERS`].
fn workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {MAX_WORKERS}")),
    }
}

/// A whole number of at least 1 (a limit).
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

/// The format of the log lines (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, its fields at the top level.
    Json,
}

/// The demo's own API key name and device issuer: reserved, whether `--demo` is on or
/// not (a demo token touches only the demo key's sessions, so no configured key or
/// issuer may take these names).
pub use idv_actors::credentials::{DEMO_API_KEY_NAME, DEMO_ISSUER};

/// Everything the application needs to start.
#[derive(Clone)]
pub struct Settings {
    /// Address to listen on.
    pub bind: String,
    /// SQLite database file (`--db`): what `store` is by default, and what messages
    /// about it name.
    pub db: PathBuf,
    /// The store the broker opens (`--store`).
    pub store: StoreUrl,
    /// The NATS server between nodes (`--nats`); required with a postgres store.
    pub nats: Option<String>,
    /// TLS files and a credentials file for NATS (`--nats-tls-*`, `--nats-creds`).
    pub nats_options: NatsOptions,
    /// This node's id (`--node-id`): the owner of the sessions it runs.
    pub node_id: String,
    /// The cluster keys (`--cluster-key`), the first sealing; required with a postgres
    /// store. Never printed (their `Debug` shows a key id only).
    pub cluster_keys: Vec<idv_actors::seal::ClusterKey>,
    /// Most PostgreSQL connections of this node.
    pub pg_pool_size: usize,
    /// Base of session URLs; `None`: `http://<bound address>`.
    pub public_url: Option<String>,
    /// (name, key) pairs.
    pub api_keys: Vec<(String, String)>,
    /// (issuer, secret) pairs.
    pub issuers: Vec<(String, String)>,
    /// (issuer, JWKS URL) pairs (`--issuer-jwks`).
    pub issuer_jwks: Vec<(String, String)>,
    /// (issuer, PEM public key file) pairs (`--issuer-key`); several per issuer.
    pub issuer_keys: Vec<(String, PathBuf)>,
    /// The credentials file (`--credentials`), read at start and on `SIGHUP`.
    pub credentials_file: Option<PathBuf>,
    /// JWKS fetching: period, rate limit, bounds (tests shrink the rate limit).
    pub jwks: idv_actors::jwks::JwksConfig,
    /// The audience device JWTs must name in `aud`; `None`: `aud` is not checked.
    pub audience: Option<String>,
    /// Default webhook URL.
    pub webhook_url: Option<String>,
    /// Signing secrets, newest first.
    pub webhook_secrets: Vec<String>,
    /// Webhook delivery: timeout, backoff, give-up (tests shrink them); whether
    /// callback URLs may reach private addresses (`--webhook-allow-private`), and the
    /// resolver (tests inject one).
    pub webhooks: WebhookConfig,
    /// Per-IP requests per second; 0 is off.
    pub rate_limit: u32,
    /// Demo mode.
    pub demo: bool,
    /// The clock (tests move it).
    pub clock: SharedClock,
    /// The broker's supervised tasks (tests arm panics in them through it).
    pub tasks: idv_actors::supervise::Tasks,
    /// Accepted `ttl_seconds`.
    pub ttl: TtlBounds,
    /// Most live sessions at once.
    pub max_live_sessions: usize,
    /// Most live sessions per API key; `None` is no quota.
    pub max_live_sessions_per_key: Option<usize>,
    /// Most WebSockets open at once.
    pub max_websockets: usize,
    /// Most connections open at once per client address; `None` is off.
    pub max_connections_per_ip: Option<usize>,
    /// Most long-polls waiting at once.
    pub max_long_polls: usize,
    /// Most subscribers per session.
    pub max_subscribers_per_session: usize,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<idv_web::limits::Cidr>,
    /// Origins of client-app pages on other sites (`--allowed-origin`).
    pub allowed_origins: Vec<idv_web::origins::Origin>,
    /// HTTP worker threads; `None`: one per core.
    pub workers: Option<usize>,
    /// How long a graceful stop waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// How long a graceful stop refuses new requests with `503` before it stops
    /// accepting (see `--shutdown-grace`).
    pub shutdown_grace: Duration,
    /// WebSocket heartbeat timings and bounds.
    pub ws: idv_web::state::WsConfig,
    /// How long an upload's body may take to arrive (SPEC §3: 30 s).
    pub upload_timeout: Duration,
    /// How long a connection whose request body was refused unread keeps being read
    /// (and discarded) so its client gets the answer before the connection closes.
    pub linger: Duration,
    /// Most bytes of uploads held in memory (staged until approve, or streaming in).
    pub max_staged_bytes: usize,
    /// How long a confirmed session keeps its shared data and files after the decision.
    pub retention: Duration,
    /// Time between retention sweeps.
    pub retention_sweep_every: Duration,
    /// How long an ended session's records are kept (`--record-retention-days`).
    pub record_retention: Duration,
    /// The operator's data keys (`--data-key`), the first sealing; none: the person's
    /// data is stored unsealed. Never printed (their `Debug` shows the id only).
    pub data_keys: std::sync::Arc<idv_actors::at_rest::DataKeys>,
}

impl Settings {
    /// Settings with every default of SPEC §6 and the given database.
    pub fn with_db(db: impl Into<PathBuf>) -> Self {
        let db = db.into();
        Self {
            bind: "127.0.0.1:8080".into(),
            store: StoreUrl::Sqlite(db.clone()),
            db,
            nats: None,
            nats_options: NatsOptions::default(),
            node_id: random_node_id(),
            cluster_keys: Vec::new(),
            pg_pool_size: idv_actors::pg::DEFAULT_POOL_SIZE,
            public_url: None,
            api_keys: Vec::new(),
            issuers: Vec::new(),
            issuer_jwks: Vec::new(),
            issuer_keys: Vec::new(),
            credentials_file: None,
            jwks: idv_actors::jwks::JwksConfig::default(),
            audience: None,
            webhook_url: None,
            webhook_secrets: Vec::new(),
            webhooks: WebhookConfig::default(),
            rate_limit: 100,
            demo: false,
            clock: std::sync::Arc::new(SystemClock),
            tasks: Default::default(),
            ttl: TtlBounds::default(),
            max_live_sessions: idv_actors::registry::DEFAULT_MAX_LIVE_SESSIONS,
            max_live_sessions_per_key: None,
            max_websockets: idv_web::limits::DEFAULT_MAX_WEBSOCKETS,
            max_connections_per_ip: None,
            max_long_polls: idv_web::limits::DEFAULT_MAX_LONG_POLLS,
            max_subscribers_per_session: idv_actors::delivery::MAX_SUBSCRIBERS_PER_SESSION,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            workers: None,
            shutdown_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::ZERO,
            ws: idv_web::state::WsConfig::default(),
            upload_timeout: idv_web::routes::files::UPLOAD_TIMEOUT,
            linger: idv_web::ServerConfig::default().linger,
            max_staged_bytes: idv_actors::staging::DEFAULT_MAX_STAGED_BYTES,
            retention: idv_actors::retention::DEFAULT_RETENTION,
            retention_sweep_every: idv_actors::retention::DEFAULT_SWEEP_EVERY,
            record_retention: idv_actors::retention::DEFAULT_RECORD_RETENTION,
            data_keys: std::sync::Arc::new(idv_actors::at_rest::DataKeys::none()),
        }
    }

    /// Settings from parsed flags and the process environment; checks what clap cannot.
    pub fn from_args(args: RunArgs) -> Result<Self, String> {
        Self::from_args_and_env(args, |name| std::env::var(name).ok())
    }

    /// Settings from parsed flags, with `env` for the variables whose values are lists.
    ///
    /// Lists are split on commas only when they come from the environment: a flag's
    /// value is taken whole, so a secret containing a comma stays one secret. Values are
    /// parsed here rather than by clap so that an error never echoes a secret.
    pub fn from_args_and_env(
        args: RunArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let list = |flag: Vec<String>, var: &str| -> Vec<String> {
            if !flag.is_empty() {
                return flag;
            }
            env(var)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let pairs = |values: Vec<String>, flag: &str| -> Result<Vec<(String, String)>, String> {
            values
                .iter()
                .map(|v| parse_pair(v).map_err(|e| format!("{flag}: {e}")))
                .collect()
        };
        let api_keys = pairs(list(args.api_keys, "IDVB_API_KEYS"), "--api-key")?;
        let issuers = pairs(list(args.issuers, "IDVB_ISSUERS"), "--issuer")?;
        let webhook_secrets = list(args.webhook_secrets, "IDVB_WEBHOOK_SECRET");
        let issuer_jwks = pairs(list(args.issuer_jwks, "IDVB_ISSUER_JWKS"), "--issuer-jwks")?;
        let issuer_keys: Vec<(String, PathBuf)> =
            pairs(list(args.issuer_keys, "IDVB_ISSUER_KEYS"), "--issuer-key")?
                .into_iter()
                .map(|(iss, path)| (iss, PathBuf::from(path)))
                .collect();
        check_credentials(Credential::ApiKey, &api_keys)?;
        check_credentials(Credential::Issuer, &issuers)?;
        for (_, url) in &issuer_jwks {
            idv_actors::jwks::check_url(url).map_err(|e| format!("--issuer-jwks {e}"))?;
        }
        if args
            .audience
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err("--audience must not be empty".into());
        }
        if args.webhook_url.is_some() && webhook_secrets.is_empty() && args.credentials.is_none() {
            return Err(
                "--webhook-url needs --webhook-secret: the broker sends nothing unsigned".into(),
            );
        }
        if webhook_secrets.iter().any(String::is_empty) {
            return Err("--webhook-secret must not be empty".into());
        }
        if webhook_secrets.len() > 2 {
            return Err(
                "--webhook-secret takes at most two secrets (the new one, then the old one)".into(),
            );
        }
        if let Some(u) = &args.webhook_url {
            idv_web::dto::check_url("--webhook-url", u).map_err(|e| e.message)?;
        }
        if let Some(u) = &args.public_url {
            idv_web::dto::check_url("--public-url", u).map_err(|e| e.message)?;
        }
        let trusted_proxies = list(args.trusted_proxies, "IDVB_TRUSTED_PROXIES")
            .iter()
            .map(|c| c.parse().map_err(|e| format!("--trusted-proxy {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        let allowed_origins = list(args.allowed_origins, "IDVB_ALLOWED_ORIGINS")
            .iter()
            .map(|o| o.parse().map_err(|e| format!("--allowed-origin {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        let store = match &args.store {
            Some(url) => StoreUrl::parse(url)?,
            None => StoreUrl::Sqlite(args.db.clone()),
        };
        let nats_options = NatsOptions {
            tls_ca: args.nats_tls_ca,
            tls_cert: args.nats_tls_cert,
            tls_key: args.nats_tls_key,
            creds: args.nats_creds,
        };
        if let Some(nats) = &args.nats {
            if !(nats.starts_with("nats://") || nats.starts_with("tls://")) {
                return Err("--nats: expected nats://HOST:PORT".into());
            }
            let (_, auth) = split_credentials(nats).map_err(|e| e.to_string())?;
            if auth.is_some() && nats_options.creds.is_some() {
                return Err("--nats-creds and credentials in the --nats URL: give one".into());
            }
        } else if nats_options != NatsOptions::default() {
            return Err(
                "--nats-tls-ca, --nats-tls-cert, --nats-tls-key and --nats-creds need --nats"
                    .into(),
            );
        }
        if nats_options.tls_cert.is_some() != nats_options.tls_key.is_some() {
            return Err(
                "--nats-tls-cert and --nats-tls-key go together (mutual TLS needs both)".into(),
            );
        }
        if matches!(store, StoreUrl::Postgres(_)) && args.nats.is_none() {
            return Err(
                "--store postgres://… needs --nats: several nodes talk to each other over NATS"
                    .into(),
            );
        }
        let data_keys = list(args.data_keys, "IDVB_DATA_KEYS")
            .iter()
            .map(|k| {
                idv_actors::at_rest::OperatorKey::parse(k).map_err(|e| format!("--data-key: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()
            .and_then(|keys| {
                idv_actors::at_rest::DataKeys::new(keys).map_err(|e| format!("--data-key: {e}"))
            })?;
        let cluster_keys = list(args.cluster_keys, "IDVB_CLUSTER_KEYS")
            .iter()
            .map(|k| {
                idv_actors::seal::ClusterKey::from_base64(k)
                    .map_err(|e| format!("--cluster-key: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if matches!(store, StoreUrl::Postgres(_)) && cluster_keys.is_empty() {
            return Err(
                "--store postgres://… needs --cluster-key: every message between nodes is sealed with it (32 random bytes in base64, the same on every node; e.g. `openssl rand -base64 32`)"
                    .into(),
            );
        }
        {
            let mut ids: Vec<_> = cluster_keys.iter().map(|k| k.id()).collect();
            ids.sort_unstable();
            if ids.windows(2).any(|w| w[0] == w[1]) {
                return Err("--cluster-key: the same key is given twice".into());
            }
        }
        let node_id = match args.node_id {
            Some(id) => {
                check_node_id(&id)?;
                id
            }
            None => random_node_id(),
        };
        match std::net::ToSocketAddrs::to_socket_addrs(args.bind.as_str()) {
            Ok(mut addrs) => {
                if addrs.next().is_none() {
                    return Err(format!(
                        "--bind {}: the address resolves to nothing",
                        args.bind
                    ));
                }
            }
            Err(e) => return Err(format!("--bind {}: {e}", args.bind)),
        }
        Ok(Self {
            bind: args.bind,
            public_url: args.public_url.map(|u| u.trim_end_matches('/').to_owned()),
            api_keys,
            issuers,
            issuer_jwks,
            issuer_keys,
            credentials_file: args.credentials,
            audience: args.audience,
            webhook_url: args.webhook_url,
            webhook_secrets,
            rate_limit: args.rate_limit,
            demo: args.demo,
            max_staged_bytes: args.max_staged_mib as usize * 1024 * 1024,
            webhooks: WebhookConfig {
                allow_private: args.webhook_allow_private,
                ..WebhookConfig::default()
            },
            retention: Duration::from_secs(u64::from(args.retention_days) * 24 * 60 * 60),
            record_retention: Duration::from_secs(
                u64::from(args.record_retention_days) * 24 * 60 * 60,
            ),
            data_keys: std::sync::Arc::new(data_keys),
            max_live_sessions: args.max_live_sessions,
            max_live_sessions_per_key: args.max_live_sessions_per_key,
            max_websockets: args.max_websockets,
            max_connections_per_ip: args.max_connections_per_ip,
            max_long_polls: args.max_long_polls,
            max_subscribers_per_session: args.max_subscribers_per_session,
            trusted_proxies,
            allowed_origins,
            workers: args.workers,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
            shutdown_grace: Duration::from_secs(args.shutdown_grace.unwrap_or(
                if matches!(store, StoreUrl::Postgres(_)) {
                    2
                } else {
                    0
                },
            )),
            store,
            nats: args.nats,
            nats_options,
            node_id,
            cluster_keys,
            ..Self::with_db(args.db)
        })
    }
}

/// The two kinds of credential configured at start.
#[derive(Clone, Copy, Debug)]
pub enum Credential {
    /// `--api-key NAME=KEY`: the key is who the backend is.
    ApiKey,
    /// `--issuer ISS=SECRET`: the secret that signs the issuer's device tokens.
    Issuer,
}

impl Credential {
    fn flag(self) -> &'static str {
        match self {
            Credential::ApiKey => "--api-key",
            Credential::Issuer => "--issuer",
        }
    }

    /// What the value is called in errors.
    fn value(self) -> &'static str {
        match self {
            Credential::ApiKey => "key",
            Credential::Issuer => "secret",
        }
    }
}

/// Refuses weak or ambiguous credentials (SPEC §6): a key or secret shorter than
/// [`MIN_SECRET_BYTES`], or two under the same name; and one API key under two names,
/// since a key is who the backend is and the request's tenant would be whichever name
/// was configured last (SPEC §6 does not list this case; nobody means it). Two issuers
/// may share a secret: a token's `iss` still names one of them. The demo's own names
/// ([`DEMO_API_KEY_NAME`], [`DEMO_ISSUER`]) are reserved. Errors name the flag and the
/// names, never the value.
pub fn check_credentials(kind: Credential, pairs: &[(String, String)]) -> Result<(), String> {
    let (flag, secret) = (kind.flag(), kind.value());
    let mut names = std::collections::HashSet::new();
    let mut values = std::collections::HashMap::new();
    let reserved = match kind {
        Credential::ApiKey => DEMO_API_KEY_NAME,
        Credential::Issuer => DEMO_ISSUER,
    };
    for (name, value) in pairs {
        if name == reserved {
            return Err(format!(
                "{flag}: the name {name:?} is reserved for the demo's own credentials (--demo)"
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(format!("{flag}: the name {name:?} is given twice"));
        }
        if value.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "{flag}: the {secret} of {name:?} is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                value.len()
            ));
        }
        if let (Credential::ApiKey, Some(other)) =
            (kind, values.insert(value.as_str(), name.as_str()))
        {
            return Err(format!(
                "{flag}: {other:?} and {name:?} have the same {secret}; each needs its own"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn settings(argv: &[&str], env: &[(&str, &str)]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("idv-broker").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        Settings::from_args_and_env(cli.run, |name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn environment_lists_are_split_on_commas_but_flag_values_are_not() {
        let s = settings(
            &[],
            &[
                ("IDVB_API_KEYS", "A=key-one-0123456789,B=key-two-0123456789"),
                ("IDVB_WEBHOOK_SECRET", "new,old"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.api_keys,
            vec![
                ("A".into(), "key-one-0123456789".into()),
                ("B".into(), "key-two-0123456789".into())
            ]
        );
        assert_eq!(s.webhook_secrets, vec!["new".to_owned(), "old".to_owned()]);
        let s = settings(&["--webhook-secret", "with,comma"], &[]).unwrap();
        assert_eq!(s.webhook_secrets, vec!["with,comma".to_owned()]);
        let s = settings(
            &[
                "--api-key",
                "A=key,one-0123456789",
                "--api-key",
                "B=key-two-0123456789",
            ],
            &[("IDVB_API_KEYS", "C=key-three-0123456789")],
        )
        .unwrap();
        assert_eq!(
            s.api_keys,
            vec![
                ("A".into(), "key,one-0123456789".into()),
                ("B".into(), "key-two-0123456789".into())
            ]
        );
    }

    #[test]
    fn public_key_issuers_come_from_flags_or_the_environment_and_jwks_urls_must_be_https() {
        let s = settings(
            &["--credentials", "/etc/idv/credentials.toml"],
            &[
                (
                    "IDVB_ISSUER_JWKS",
                    "sso=https://sso.example/certs,local=http://127.0.0.1:9/certs",
                ),
                ("IDVB_ISSUER_KEYS", "mobile=/etc/a.pem,mobile=/etc/b.pem"),
            ],
        )
        .unwrap();
        assert_eq!(s.issuer_jwks.len(), 2);
        assert_eq!(
            s.issuer_keys,
            vec![
                ("mobile".into(), PathBuf::from("/etc/a.pem")),
                ("mobile".into(), PathBuf::from("/etc/b.pem"))
            ]
        );
        assert_eq!(
            s.credentials_file,
            Some(PathBuf::from("/etc/idv/credentials.toml"))
        );
        for url in [
            "sso=http://sso.example/certs",
            "sso=http://192.168.1.2/certs",
        ] {
            let err = settings(&["--issuer-jwks", url], &[])
                .err()
                .expect("refused");
            assert!(err.contains("https"), "{err}");
        }
    }

    #[test]
    fn a_malformed_credential_is_refused_without_echoing_it() {
        let err = settings(&["--api-key", "s3cretvalue"], &[])
            .err()
            .expect("refused");
        assert!(!err.contains("s3cretvalue"), "{err}");
        let err = settings(&[], &[("IDVB_ISSUERS", "iss:topsecret")])
            .err()
            .expect("refused");
        assert!(!err.contains("topsecret"), "{err}");
    }

    #[test]
    fn a_bad_bind_address_is_refused_before_anything_starts() {
        assert!(settings(&["--bind", "nonsense"], &[])
            .err()
            .expect("refused")
            .contains("--bind"));
        assert!(settings(&["--bind", "127.0.0.1:0"], &[]).is_ok());
    }

    #[test]
    fn private_callback_addresses_are_refused_unless_the_flag_allows_them() {
        assert!(!settings(&[], &[]).unwrap().webhooks.allow_private);
        let s = settings(&["--webhook-allow-private"], &[]).unwrap();
        assert!(s.webhooks.allow_private);
        // Trusted configuration: the operator's own URL is not checked, even on loopback.
        let s = settings(
            &[
                "--webhook-url",
                "http://127.0.0.1:9000/hooks",
                "--webhook-secret",
                "a-webhook-secret-of-some-length",
            ],
            &[],
        )
        .unwrap();
        assert!(!s.webhooks.allow_private);
    }

    #[test]
    fn demo_mode_starts_alone_and_keeps_its_own_names() {
        assert!(settings(&["--demo"], &[]).unwrap().demo);
        assert!(!settings(&[], &[]).unwrap().demo);
        // Reserved with or without --demo: the demo issuer's tokens are confined to the
        // demo key's sessions, so neither name may be given to a real credential.
        for demo in [&["--demo"][..], &[]] {
            let issuer = [demo, &["--issuer", "idv-demo=a-secret-of-enough-length"]].concat();
            let err = settings(&issuer, &[]).err().expect("refused");
            assert!(
                err.contains("idv-demo") && err.contains("reserved"),
                "{err}"
            );
            let key = [
                demo,
                &["--api-key", "idv-broker demo=a-key-of-enough-length"],
            ]
            .concat();
            let err = settings(&key, &[]).err().expect("refused");
            assert!(
                err.contains("idv-broker demo") && err.contains("reserved"),
                "{err}"
            );
        }
    }

    #[test]
    fn keys_and_issuer_secrets_shorter_than_16_bytes_are_refused_without_echoing_them() {
        let err = settings(&["--api-key", "Acme=short-key"], &[])
            .err()
            .expect("refused");
        assert!(err.contains("--api-key") && err.contains("Acme"), "{err}");
        assert!(!err.contains("short-key"), "{err}");
        let err = settings(&[], &[("IDVB_ISSUERS", "phone-app=15-bytes-secret")])
            .err()
            .expect("refused");
        assert!(
            err.contains("--issuer") && err.contains("phone-app"),
            "{err}"
        );
        assert!(!err.contains("15-bytes-secret"), "{err}");
        // 16 bytes is enough; bytes are counted, not characters.
        assert!(settings(
            &[
                "--api-key",
                "Acme=0123456789abcdef",
                "--issuer",
                "phone-app=0123456789abcdef"
            ],
            &[]
        )
        .is_ok());
        assert!(settings(&["--api-key", "Acme=ééééééé-ab"], &[]).is_ok());
        assert!(settings(&["--api-key", "Acme=éééééé-ab"], &[]).is_err());
    }

    #[test]
    fn one_api_key_under_two_names_is_refused_without_echoing_it() {
        let err = settings(
            &[
                "--api-key",
                "Acme=shared-key-0123456789",
                "--api-key",
                "Globex=shared-key-0123456789",
            ],
            &[],
        )
        .err()
        .expect("refused");
        assert!(
            err.contains("--api-key") && err.contains("Acme") && err.contains("Globex"),
            "{err}"
        );
        assert!(!err.contains("shared-key"), "{err}");
        // Two issuers may share a secret (a token's `iss` still names one), and an API
        // key may equal an issuer secret: neither can be used as the other.
        assert!(settings(
            &[],
            &[(
                "IDVB_ISSUERS",
                "phone-app=shared-secret-0123,web-app=shared-secret-0123",
            )],
        )
        .is_ok());
        assert!(settings(
            &[
                "--api-key",
                "Acme=same-value-0123456789",
                "--issuer",
                "phone-app=same-value-0123456789",
            ],
            &[],
        )
        .is_ok());
    }

    #[test]
    fn two_api_keys_or_two_issuers_with_the_same_name_are_refused() {
        let err = settings(
            &[
                "--api-key",
                "Acme=first-key-0123456789",
                "--api-key",
                "Acme=second-key-0123456789",
            ],
            &[],
        )
        .err()
        .expect("refused");
        assert!(err.contains("--api-key") && err.contains("Acme"), "{err}");
        let err = settings(
            &[],
            &[(
                "IDVB_ISSUERS",
                "phone-app=first-secret-0123,phone-app=second-secret-0123",
            )],
        )
        .err()
        .expect("refused");
        assert!(
            err.contains("--issuer") && err.contains("phone-app"),
            "{err}"
        );
        // An API key and an issuer may share a name: they are different roles.
        assert!(settings(
            &[
                "--api-key",
                "Acme=first-key-0123456789",
                "--issuer",
                "Acme=first-secret-0123",
            ],
            &[],
        )
        .is_ok());
    }

    #[test]
    fn the_store_is_sqlite_by_default_and_postgres_needs_nats() {
        let s = settings(&["--db", "x/b.db"], &[]).unwrap();
        assert_eq!(s.store, StoreUrl::Sqlite("x/b.db".into()));
        assert_eq!(s.nats, None);
        let s = settings(&["--store", "sqlite:y.db"], &[]).unwrap();
        assert_eq!(s.store, StoreUrl::Sqlite("y.db".into()));
        let pg = "postgres://idv:secret-pw@db.internal/idv";
        let err = settings(&["--store", pg], &[]).err().expect("refused");
        assert!(
            err.contains("--nats") && !err.contains("secret-pw"),
            "{err}"
        );
        let s = settings(
            &[
                "--store",
                pg,
                "--nats",
                "nats://127.0.0.1:4222",
                "--node-id",
                "n-1",
                "--cluster-key",
                KEY_1,
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.store, StoreUrl::Postgres(pg.into()));
        assert_eq!(s.node_id, "n-1");
        assert!(!s.store.display().contains("secret-pw"));
        assert!(!format!("{:?}", s.store).contains("secret-pw"));
        let err = settings(&["--store", "mysql://h/db"], &[])
            .err()
            .expect("refused");
        assert!(err.contains("--store"), "{err}");
        assert!(settings(&["--node-id", "bad id"], &[]).is_err());
    }

    /// Two cluster keys in base64 (32 bytes each).
    const KEY_1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const KEY_2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    #[test]
    fn a_postgres_store_needs_cluster_keys_of_32_bytes_given_once_each() {
        let pg = ["--store", "postgres://h/db", "--nats", "nats://h:4222"];
        let err = settings(&pg, &[]).err().expect("refused");
        assert!(err.contains("--cluster-key"), "{err}");
        let with = |extra: &[&str], env: &[(&str, &str)]| {
            let argv: Vec<&str> = pg.iter().chain(extra).copied().collect();
            settings(&argv, env)
        };
        let s = with(&["--cluster-key", KEY_1, "--cluster-key", KEY_2], &[]).unwrap();
        assert_eq!(s.cluster_keys.len(), 2);
        let s = with(&[], &[("IDVB_CLUSTER_KEYS", &format!("{KEY_2},{KEY_1}"))]).unwrap();
        assert_eq!(
            s.cluster_keys[0].id(),
            idv_actors::seal::ClusterKey::from_base64(KEY_2)
                .unwrap()
                .id(),
            "the first given seals"
        );
        let err = with(&["--cluster-key", "c2hvcnQ="], &[])
            .err()
            .expect("refused");
        assert!(err.contains("--cluster-key") && err.contains("32"), "{err}");
        let err = with(&["--cluster-key", KEY_1, "--cluster-key", KEY_1], &[])
            .err()
            .expect("refused");
        assert!(err.contains("twice"), "{err}");
        // The key is never printed, not even by `Debug`.
        let s = with(&["--cluster-key", KEY_1], &[]).unwrap();
        assert!(!format!("{:?}", s.cluster_keys).contains(KEY_1));
    }

    #[test]
    fn nats_tls_and_credentials_flags_are_taken_checked_together_and_never_echo_a_secret() {
        let base = [
            "--cluster-key",
            KEY_1,
            "--store",
            "postgres://idv@db/idv",
            "--nats",
        ];
        let with = |nats: &str, more: &[&str]| {
            let argv: Vec<&str> = base
                .iter()
                .copied()
                .chain([nats])
                .chain(more.iter().copied())
                .collect();
            settings(&argv, &[])
        };
        let s = with(
            "tls://app:nats-pw-0123@127.0.0.1:4222",
            &[
                "--nats-tls-ca",
                "/etc/idv/ca.pem",
                "--nats-tls-cert",
                "/etc/idv/node.pem",
                "--nats-tls-key",
                "/etc/idv/node.key",
            ],
        )
        .unwrap();
        assert_eq!(
            s.nats_options,
            NatsOptions {
                tls_ca: Some("/etc/idv/ca.pem".into()),
                tls_cert: Some("/etc/idv/node.pem".into()),
                tls_key: Some("/etc/idv/node.key".into()),
                creds: None,
            }
        );
        let s = with(
            "nats://127.0.0.1:4222",
            &["--nats-creds", "/etc/idv/node.creds"],
        )
        .unwrap();
        assert_eq!(s.nats_options.creds, Some("/etc/idv/node.creds".into()));
        assert_eq!(
            settings(&[], &[]).unwrap().nats_options,
            NatsOptions::default()
        );
        // Refused, each with a message that names the flags and holds no password.
        for (nats, more, says) in [
            (
                "nats://h:4222",
                &["--nats-tls-cert", "c.pem"][..],
                "--nats-tls-key",
            ),
            (
                "nats://h:4222",
                &["--nats-tls-key", "k.pem"][..],
                "--nats-tls-cert",
            ),
            (
                "nats://app:nats-pw-0123@h:4222",
                &["--nats-creds", "n.creds"][..],
                "give one",
            ),
            ("nats://app:nats-pw-0123@[::1", &[][..], "--nats"),
        ] {
            let err = with(nats, more)
                .err()
                .unwrap_or_else(|| panic!("{nats} {more:?}"));
            assert!(err.contains(says) && !err.contains("nats-pw-0123"), "{err}");
        }
        let err = settings(&["--nats-tls-ca", "ca.pem"], &[])
            .err()
            .expect("refused");
        assert!(err.contains("need --nats"), "{err}");
        // The environment names of SPEC §7.
        let command = <Cli as clap::CommandFactory>::command();
        for (flag, var) in [
            ("nats-tls-ca", "IDVB_NATS_TLS_CA"),
            ("nats-tls-cert", "IDVB_NATS_TLS_CERT"),
            ("nats-tls-key", "IDVB_NATS_TLS_KEY"),
            ("nats-creds", "IDVB_NATS_CREDS"),
        ] {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("--{flag}"));
            assert_eq!(arg.get_env().and_then(|v| v.to_str()), Some(var));
        }
    }

    #[test]
    fn a_postgres_store_is_checked_for_the_tls_it_asks_without_echoing_the_url() {
        let nats = ["--nats", "nats://127.0.0.1:4222", "--cluster-key", KEY_1];
        for url in [
            "postgres://idv:pg-pw-0123@db/idv?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            "postgres://idv:pg-pw-0123@db/idv?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
            "postgres://idv:pg-pw-0123@db/idv?sslmode=require",
            "postgres://idv:pg-pw-0123@db/idv?sslmode=disable",
        ] {
            let s = settings(&[&["--store", url][..], &nats[..]].concat(), &[]).unwrap();
            assert_eq!(
                s.store.display(),
                url.replace("pg-pw-0123", "***"),
                "the redacted URL keeps its parameters"
            );
        }
        for (url, says) in [
            (
                "postgres://idv:pg-pw-0123@db/idv?sslmode=verify-full",
                "needs sslrootcert",
            ),
            (
                "postgres://idv:pg-pw-0123@db/idv?sslmode=allow",
                "sslmode=allow",
            ),
        ] {
            let err = settings(&[&["--store", url][..], &nats[..]].concat(), &[])
                .err()
                .expect("refused");
            assert!(err.starts_with("--store: ") && err.contains(says), "{err}");
            assert!(!err.contains("pg-pw-0123"), "{err}");
        }
    }

    #[test]
    fn a_node_id_is_random_at_each_start_unless_given() {
        let (a, b) = (
            settings(&[], &[]).unwrap().node_id,
            settings(&[], &[]).unwrap().node_id,
        );
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
    }

    #[test]
    fn an_audience_is_taken_from_its_flag_and_may_not_be_blank() {
        assert_eq!(settings(&[], &[]).unwrap().audience, None);
        let s = settings(&["--audience", "idv-broker"], &[]).unwrap();
        assert_eq!(s.audience.as_deref(), Some("idv-broker"));
        assert!(settings(&["--audience", " "], &[]).is_err());
    }

    #[test]
    fn limits_have_their_defaults_and_trusted_proxies_come_from_flags_or_the_environment() {
        let s = settings(&[], &[]).unwrap();
        assert_eq!(s.max_live_sessions, 1_000_000);
        assert_eq!(s.max_live_sessions_per_key, None);
        assert_eq!(s.max_websockets, 100_000);
        assert_eq!(s.max_connections_per_ip, None);
        assert_eq!(s.max_long_polls, 100_000);
        assert_eq!(s.max_subscribers_per_session, 10_000);
        assert!(s.trusted_proxies.is_empty());
        let s = settings(
            &[
                "--max-live-sessions-per-key",
                "50",
                "--max-connections-per-ip",
                "8",
                "--trusted-proxy",
                "10.0.0.0/8",
                "--trusted-proxy",
                "fd00::/8",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.max_live_sessions_per_key, Some(50));
        assert_eq!(s.max_connections_per_ip, Some(8));
        assert_eq!(s.trusted_proxies.len(), 2);
        let s = settings(&[], &[("IDVB_TRUSTED_PROXIES", "10.0.0.1, 192.168.0.0/16")]).unwrap();
        assert_eq!(s.trusted_proxies.len(), 2);
        let err = settings(&["--trusted-proxy", "10.0.0.0/40"], &[])
            .err()
            .expect("refused");
        assert!(err.contains("--trusted-proxy"), "{err}");
        assert!(settings(&["--max-websockets", "0"], &[]).is_err());
    }

    #[test]
    fn allowed_origins_come_from_flags_or_the_environment_and_must_be_origins() {
        assert!(settings(&[], &[]).unwrap().allowed_origins.is_empty());
        let s = settings(
            &[
                "--allowed-origin",
                "https://www.bank.example",
                "--allowed-origin",
                "http://127.0.0.1:3000/",
            ],
            &[],
        )
        .unwrap();
        let names: Vec<_> = s.allowed_origins.iter().map(|o| o.as_str()).collect();
        assert_eq!(names, ["https://www.bank.example", "http://127.0.0.1:3000"]);
        let s = settings(
            &[],
            &[(
                "IDVB_ALLOWED_ORIGINS",
                "https://a.example, https://b.example",
            )],
        )
        .unwrap();
        assert_eq!(s.allowed_origins.len(), 2);
        for bad in ["*", "https://bank.example/idv", "bank.example"] {
            let err = settings(&["--allowed-origin", bad], &[])
                .err()
                .expect("refused");
            assert!(err.starts_with("--allowed-origin"), "{err}");
        }
    }

    #[test]
    fn workers_default_to_one_per_core_and_take_a_bounded_count() {
        assert_eq!(settings(&[], &[]).unwrap().workers, None);
        assert_eq!(settings(&["--workers", "3"], &[]).unwrap().workers, Some(3));
        assert_eq!(
            settings(&["--workers", "512"], &[]).unwrap().workers,
            Some(512)
        );
        for bad in ["0", "513", "-1", "two"] {
            let err = settings(&[&format!("--workers={bad}")], &[])
                .err()
                .expect("refused");
            assert!(err.contains("--workers"), "{err}");
        }
    }
}

//! Settings: the flags and environment variables of SPEC §6, and the knobs tests set.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use idv_actors::clock::{SharedClock, SystemClock};
use idv_actors::credentials::parse_pair;
use idv_actors::webhooks::WebhookConfig;
use idv_web::TtlBounds;

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
        /// The issuer and its secret, as given to the broker's --issuer.
        #[arg(long, value_name = "ISS=SECRET", value_parser = parse_pair)]
        issuer: (String, String),
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
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
}

/// Everything the application needs to start.
#[derive(Clone)]
pub struct Settings {
    /// Address to listen on.
    pub bind: String,
    /// SQLite database file.
    pub db: PathBuf,
    /// Base of session URLs; `None`: `http://<bound address>`.
    pub public_url: Option<String>,
    /// (name, key) pairs.
    pub api_keys: Vec<(String, String)>,
    /// (issuer, secret) pairs.
    pub issuers: Vec<(String, String)>,
    /// Default webhook URL.
    pub webhook_url: Option<String>,
    /// Signing secrets, newest first.
    pub webhook_secrets: Vec<String>,
    /// Webhook delivery: timeout, backoff, give-up (tests shrink them).
    pub webhooks: WebhookConfig,
    /// Per-IP requests per second; 0 is off.
    pub rate_limit: u32,
    /// Demo mode.
    pub demo: bool,
    /// The clock (tests move it).
    pub clock: SharedClock,
    /// Accepted `ttl_seconds`.
    pub ttl: TtlBounds,
    /// Most live sessions at once.
    pub max_live_sessions: usize,
    /// HTTP worker threads; `None`: one per core.
    pub workers: Option<usize>,
    /// How long a graceful stop waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// WebSocket heartbeat timings and bounds.
    pub ws: idv_web::ws::WsConfig,
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
}

impl Settings {
    /// Settings with every default of SPEC §6 and the given database.
    pub fn with_db(db: impl Into<PathBuf>) -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            db: db.into(),
            public_url: None,
            api_keys: Vec::new(),
            issuers: Vec::new(),
            webhook_url: None,
            webhook_secrets: Vec::new(),
            webhooks: WebhookConfig::default(),
            rate_limit: 100,
            demo: false,
            clock: std::sync::Arc::new(SystemClock),
            ttl: TtlBounds::default(),
            max_live_sessions: idv_actors::registry::RegistryConfig::default().max_live_sessions,
            workers: None,
            shutdown_timeout: Duration::from_secs(30),
            ws: idv_web::ws::WsConfig::default(),
            upload_timeout: idv_web::routes::files::UPLOAD_TIMEOUT,
            linger: idv_web::ServerConfig::default().linger,
            max_staged_bytes: idv_actors::staging::DEFAULT_MAX_STAGED_BYTES,
            retention: idv_actors::retention::DEFAULT_RETENTION,
            retention_sweep_every: idv_actors::retention::DEFAULT_SWEEP_EVERY,
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
        if args.demo {
            return Err(
                "--demo: the demo pages (/demo, /verify) are not part of this version".into(),
            );
        }
        if args.webhook_url.is_some() && webhook_secrets.is_empty() {
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
            webhook_url: args.webhook_url,
            webhook_secrets,
            rate_limit: args.rate_limit,
            demo: args.demo,
            max_staged_bytes: args.max_staged_mib as usize * 1024 * 1024,
            retention: Duration::from_secs(u64::from(args.retention_days) * 24 * 60 * 60),
            ..Self::with_db(args.db)
        })
    }
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
                ("IDVB_API_KEYS", "A=1,B=2"),
                ("IDVB_WEBHOOK_SECRET", "new,old"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.api_keys,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(s.webhook_secrets, vec!["new".to_owned(), "old".to_owned()]);
        let s = settings(&["--webhook-secret", "with,comma"], &[]).unwrap();
        assert_eq!(s.webhook_secrets, vec!["with,comma".to_owned()]);
        let s = settings(
            &["--api-key", "A=k,ey", "--api-key", "B=2"],
            &[("IDVB_API_KEYS", "C=3")],
        )
        .unwrap();
        assert_eq!(
            s.api_keys,
            vec![("A".into(), "k,ey".into()), ("B".into(), "2".into())]
        );
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
    fn demo_mode_is_refused_until_its_pages_exist() {
        assert!(settings(&["--demo"], &[])
            .err()
            .expect("refused")
            .contains("--demo"));
        assert!(settings(&[], &[]).is_ok());
    }
}

//! `idv-broker`: runs the broker, prints a device token with `idv-broker token`, or
//! seals every data key again under the first `--data-key` with `idv-broker rekey`.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use idv_broker::settings::{Cli, Command, LogFormat};
use idv_broker::{startup, Application, Settings};

/// mimalloc rather than glibc's malloc: a request allocates and frees many small
/// objects across two worker threads, and glibc's allocator took 8 to 16 % of a
/// worker's CPU in the profiles of `benches/http_load.rs`. Measured side by side
/// (docs/benchmarks.md): `GET /status` 34.7 → 25.6 µs of broker CPU per request, a
/// create 63 → 59 µs, memory per idle session 2.00 → 1.87 KiB, per idle WebSocket
/// subscriber 7.9 → 8.0 KiB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a bad flag or an unusable database (SPEC §6).
const EXIT_USAGE: u8 = 2;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("idv-broker: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// Turns core dumps off for this process, soft and hard limit both, so nothing in it
/// can turn them on again: uploads are held in memory until approve, and a core dump
/// would write them to disk (docs/custody.md).
#[cfg(unix)]
fn disable_core_dumps() -> std::io::Result<()> {
    rlimit::setrlimit(rlimit::Resource::CORE, 0, 0)
}

#[cfg(not(unix))]
fn disable_core_dumps() -> std::io::Result<()> {
    Ok(())
}

/// Raises the soft open-file limit to the hard one: every connection, WebSocket and
/// long-poll holds a descriptor, and the soft default (often 1024) is far below the
/// broker's own limits. When descriptors still run out, actix-server does not spin:
/// on `EMFILE`/`ENFILE` from accept it logs the error, stops polling the listener for
/// 500 ms (new connections wait in the kernel backlog) and then accepts again,
/// while the connections already open are served (README, Configuration).
///
/// Raised before anything opens (the store, the listener); logged once the broker has
/// started, so a broker that cannot start still says only its one line.
fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Descriptors a broker holds besides its WebSockets: the listener, the store's files
/// and connections, the HTTP connections of backends, devices and long-polls, webhook
/// deliveries, and on a cluster its PostgreSQL pool and NATS link.
const OPEN_FILE_MARGIN: u64 = 1024;

/// The open-file limit `--max-websockets` needs (the WebSockets plus
/// [`OPEN_FILE_MARGIN`]) when `limit` is below it: past about `limit` − margin
/// WebSockets, new connections wait for descriptors instead of being served.
fn open_files_wanted(limit: u64, max_websockets: usize) -> Option<u64> {
    let wanted = u64::try_from(max_websockets)
        .unwrap_or(u64::MAX)
        .saturating_add(OPEN_FILE_MARGIN);
    (limit < wanted).then_some(wanted)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let first = e.to_string();
            let line = first
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad arguments");
            return fail(line.trim_start_matches("error: "));
        }
    };
    if let Some(Command::Token {
        issuer,
        key,
        iss,
        alg,
        kid,
        sub,
        ttl,
        audience,
    }) = cli.command
    {
        let minted = match (issuer, key, iss) {
            (Some((iss, secret)), _, _) => idv_actors::credentials::mint_device_jwt_for(
                &iss,
                &secret,
                &sub,
                ttl,
                audience.as_deref(),
            ),
            (None, Some(path), Some(iss)) => std::fs::read(&path)
                .map_err(|e| format!("--key {}: {e}", path.display()))
                .and_then(|pem| {
                    let alg = alg
                        .as_deref()
                        .map(str::parse::<jsonwebtoken::Algorithm>)
                        .transpose()
                        .map_err(|e| format!("--alg: {e}"))?;
                    idv_actors::credentials::mint_device_jwt_with_key(
                        &iss,
                        &pem,
                        alg,
                        kid.as_deref(),
                        &sub,
                        ttl,
                        audience.as_deref(),
                    )
                }),
            _ => Err("give --issuer ISS=SECRET, or --key PATH with --iss ISS".into()),
        };
        return match minted {
            Ok(jwt) => {
                println!("{jwt}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    if let Some(Command::Rekey { batch, run }) = cli.command {
        let settings = match Settings::from_args(*run) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let batch = usize::try_from(batch).unwrap_or(usize::MAX);
        return actix_web::rt::System::new().block_on(async move {
            match startup::rekey(settings, batch).await {
                Ok(n) => {
                    println!("rekey: {n} data keys sealed again under the first --data-key");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        });
    }
    let log_format = cli.run.log_format;
    let settings = match Settings::from_args(cli.run) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // tokio-postgres logs every statement with its parameters at debug level: the
    // person's data and token hashes. Capped at info whatever RUST_LOG says (a directive
    // added for the same target replaces the one given).
    if let Ok(cap) = "tokio_postgres=info".parse() {
        filter = filter.add_directive(cap);
    }
    // async-nats logs whole protocol operations at debug and trace: every message
    // between nodes (a forwarded command carries a person's data and tokens) and the
    // CONNECT with the NATS password. Capped the same way.
    if let Ok(cap) = "async_nats=info".parse() {
        filter = filter.add_directive(cap);
    }
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    if let Err(e) = disable_core_dumps() {
        tracing::warn!(error = %e, "cannot turn core dumps off; run with `ulimit -c 0`");
    }
    let open_files = raise_open_file_limit();
    let max_websockets = settings.max_websockets;

    actix_web::rt::System::new().block_on(async move {
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => return fail(e),
        };
        match open_files {
            Ok(n) => {
                tracing::info!(open_files = n, "open-file limit raised to its hard limit");
                if let Some(wanted) = open_files_wanted(n, max_websockets) {
                    tracing::warn!(
                        open_files = n,
                        max_websockets,
                        wanted,
                        "the open-file limit holds about {} WebSockets, fewer than \
                         --max-websockets: past them new connections wait for descriptors; \
                         raise the hard limit (systemd `LimitNOFILE`, `fs.nr_open`) to at \
                         least {wanted}, or lower --max-websockets",
                        n.saturating_sub(OPEN_FILE_MARGIN),
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
        // Handlers go in before the line is printed: a SIGTERM right after it must stop
        // the broker cleanly, not kill it.
        let shutdown = match startup::shutdown_signal() {
            Ok(signal) => signal,
            Err(e) => return fail(format!("cannot install signal handlers: {e}")),
        };
        if let Err(e) = startup::reload_on_sighup(app.credentials_reloader()) {
            return fail(format!("cannot install signal handlers: {e}"));
        }
        println!("listening on http://{}", app.addr());
        let _ = std::io::stdout().flush();
        if let Some(demo) = app.demo_url() {
            // Always said, whatever RUST_LOG filters; as a JSON line in JSON mode.
            match log_format {
                LogFormat::Text => eprintln!("idv-broker: demo mode: open {demo} in a browser"),
                LogFormat::Json => eprintln!(
                    "{}",
                    serde_json::json!({"level": "INFO", "message": format!("demo mode: open {demo} in a browser"), "demo_url": demo})
                ),
            }
        }
        match app.run_until_stopped(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("idv-broker: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_must_hold_the_websockets_and_a_margin() {
        assert_eq!(open_files_wanted(20_000, 100_000), Some(101_024));
        assert_eq!(open_files_wanted(20_000, 18_977), Some(20_001));
        assert_eq!(open_files_wanted(20_000, 18_976), None);
        assert_eq!(open_files_wanted(1 << 20, 100_000), None);
        // An unlimited hard limit (RLIM_INFINITY) is never short.
        assert_eq!(open_files_wanted(u64::MAX, usize::MAX), None);
    }
}

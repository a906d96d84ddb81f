//! One node at full size, and its memory over time (issue 28). Two modes:
//!
//! ```text
//! cargo build --release
//! cargo bench --bench scale -- million [--sessions 1000000] [--small 10000] [--ended 5000000]
//!                                      [--seconds 3] [--rounds 3] [--connections 32]
//! cargo bench --bench scale -- lookup [--large 1000000] [--small 10000] [--lookups 4000000] [--rounds 5]
//! cargo bench --bench scale -- soak [--minutes 30] [--rate 60] [--expiring-rate 10]
//!                                   [--ttl 30] [--sample-seconds 15] [--selfie-kib 48]
//! ```
//!
//! - `million` ([`million`]): a broker filled with `--sessions` live sessions through
//!   the API: its RSS, its restart time with all of them back (also once `--ended`
//!   ended sessions were added to its database in SQL), then, in interleaved rounds, the
//!   CPU of `GET …/status` on random sessions of it against a broker holding `--small`,
//!   and creates per second (with the store writer's CPU per create) on it against a
//!   broker on an empty database.
//! - `lookup` ([`lookup`]): the registry's map alone, in one process: a lookup at
//!   `--large` live sessions against `--small`, on one thread and on two at once.
//! - `soak` ([`soak`]): whole approve journeys at `--rate` per second, and sessions
//!   that expire on their own at `--expiring-rate`, for `--minutes`; the broker's RSS
//!   every `--sample-seconds`.
//!
//! The broker is the release binary (`IDVB_BENCH_BIN`, else `target/release/idv-broker`)
//! on `127.0.0.1:0` with a fresh database, rate limit off, logs at `warn`. The load
//! client is a minimal HTTP/1.1 client over raw sockets; every phase has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "broker/mod.rs"]
mod broker;
#[path = "scale/lookup.rs"]
mod lookup;
#[path = "scale/million.rs"]
mod million;
#[path = "scale/soak.rs"]
mod soak;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub use broker::*;

/// No phase runs longer than this, whatever the arguments.
pub const PHASE_DEADLINE: Duration = Duration::from_secs(900);

/// Live and ended sessions in the database (read-only, beside the running broker).
pub fn count_sessions(db: &Path) -> (i64, i64) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let live = idv_actors::status::Status::live_sql();
    conn.query_row(
        &format!(
            "SELECT count(*) FILTER (WHERE status IN {live}), \
             count(*) FILTER (WHERE status NOT IN {live}) FROM sessions"
        ),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// Flags after the mode, as `--name value` pairs; `--bench` (which `cargo bench`
/// passes to every target) is dropped.
pub fn flags(args: impl Iterator<Item = String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut it = args.filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .unwrap_or_else(|| panic!("unexpected argument {flag}"))
            .to_owned();
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        out.insert(name, value);
    }
    out
}

/// `--name`'s value parsed, else `default`; an unknown flag is refused by [`take`]'s
/// caller checking that nothing is left.
pub fn take<T: std::str::FromStr>(
    flags: &mut BTreeMap<String, String>,
    name: &str,
    default: T,
) -> T {
    match flags.remove(name) {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("--{name}: cannot parse {v:?}")),
        None => default,
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mode = args.next().unwrap_or_default();
    let flags = flags(args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    match mode.as_str() {
        "million" => rt.block_on(million::run(flags)),
        "soak" => rt.block_on(soak::run(flags)),
        "lookup" => lookup::run(flags),
        other => panic!("usage: scale million|lookup|soak [flags], not {other:?}"),
    }
}

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

#[path = "scale/lookup.rs"]
mod lookup;
#[path = "scale/million.rs"]
mod million;
#[path = "scale/soak.rs"]
mod soak;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const API_KEY: &str = "bench-key-0123456789";
pub const ISSUER: &str = "bench-issuer=bench-issuer-secret-0123";
/// No phase runs longer than this, whatever the arguments.
pub const PHASE_DEADLINE: Duration = Duration::from_secs(900);

/// The broker under test; killed when dropped.
pub struct Broker {
    pub child: Child,
    pub addr: String,
}

impl Broker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and waits for a clean exit (the database is whole and checkpointed).
    pub fn stop(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        assert!(
            self.child.wait().unwrap().success(),
            "the broker stops cleanly"
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin() -> String {
    let bin = std::env::var("IDVB_BENCH_BIN")
        .unwrap_or_else(|_| format!("{}/target/release/idv-broker", env!("CARGO_MANIFEST_DIR")));
    assert!(
        Path::new(&bin).exists(),
        "{bin} is missing: run `cargo build --release` first (or set IDVB_BENCH_BIN)"
    );
    bin
}

/// Starts the broker on `db` with `extra` flags; answers it and the time from spawn
/// until it printed `listening on` (every live session restored before it listens).
pub fn start_broker(db: &Path, extra: &[&str]) -> (Broker, Duration) {
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["--bind", "127.0.0.1:0", "--rate-limit", "0"])
        .args(extra)
        .arg("--db")
        .arg(db)
        .args(["--api-key", &format!("bench={API_KEY}")])
        .args(["--issuer", ISSUER])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the broker starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let listening = started.elapsed();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (Broker { child, addr }, listening)
}

/// VmRSS of `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// The broker's RSS once it holds still: read every 100 ms until two readings in a
/// row agree within 64 KiB, for at most 5 s.
pub async fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = rss(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss(pid);
        if now.abs_diff(last) <= 64 * 1024 || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One keep-alive HTTP/1.1 connection: writes a request, reads one response.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends `request` (complete bytes) and answers (status, body).
    pub async fn call(&mut self, request: &[u8]) -> (u16, Vec<u8>) {
        self.stream.write_all(request).await.unwrap();
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the broker closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).unwrap();
        let status: u16 = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while self.buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the broker closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        (status, self.buf[head_end..head_end + length].to_vec())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn get(path: &str, bearer: Option<&str>) -> Vec<u8> {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n").into_bytes()
}

/// `POST /v1/sessions` with `body`, by the API key.
pub fn create_request(body: &str) -> Vec<u8> {
    format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: bench\r\nX-Api-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// CPU time of a process so far, by thread group (`/proc/<pid>/task/*/stat`), in
/// clock ticks (1/100 s on Linux): the HTTP workers, the store writer, the rest.
pub fn cpu_by_thread(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let group = if comm.starts_with("actix-rt") {
            "http workers"
        } else if comm == "store-writer" {
            "store writer"
        } else {
            "other"
        };
        *out.entry(group.to_owned()).or_insert(0) += stat_ticks(&stat[close..]);
    }
    out
}

/// utime + stime, in clock ticks, of a `stat` line from the `)` that ends its comm on.
fn stat_ticks(after_comm: &str) -> u64 {
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
    let fields: Vec<&str> = after_comm[2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

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

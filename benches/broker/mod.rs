//! The broker under test and a bare HTTP/1.1 client, shared by the benches that drive
//! one broker over raw sockets (`http_load`, `scale`; `push_latency` and `ws_load` for
//! the load average and the first line): each includes this file with `#[path]`, and
//! each uses a part of it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const API_KEY: &str = "bench-key-0123456789";
pub const ISSUER: &str = "bench-issuer=bench-issuer-secret-0123";

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
    // Not `CARGO_BIN_EXE_idv-broker`: built beside the bench, the broker would carry the
    // dev-dependencies' features (idv-actors' fault hooks), which no shipped build has.
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
    let base = listening_on(&mut child);
    let listening = started.elapsed();
    let addr = base.trim_start_matches("http://").to_owned();
    (Broker { child, addr }, listening)
}

/// Reads a broker's first line, `listening on http://…`, from its piped stdout;
/// answers the base URL. A broker restores every live session before it prints it.
pub fn listening_on(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("the broker's stdout is piped"))
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the broker: {line:?}"))
        .to_owned()
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
pub fn stat_ticks(after_comm: &str) -> u64 {
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
    let fields: Vec<&str> = after_comm[2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Creates in flight at once while [`fill`]ing a broker.
const FILL_CONCURRENCY: usize = 64;

/// Creates `n` sessions with `body`, [`FILL_CONCURRENCY`] at a time, within
/// `deadline`; answers (id, token) of each.
pub async fn fill(addr: &str, body: &str, n: usize, deadline: Duration) -> Vec<(String, String)> {
    let per = n.div_ceil(FILL_CONCURRENCY);
    let mut tasks = Vec::new();
    for k in 0..FILL_CONCURRENCY {
        let addr = addr.to_owned();
        let count = per.min(n.saturating_sub(k * per));
        let req = create_request(body);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let (status, body) = conn.call(&req).await;
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                out.push((
                    v["session_id"].as_str().unwrap().to_owned(),
                    v["session_token"].as_str().unwrap().to_owned(),
                ));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(tokio::time::timeout(deadline, t).await.unwrap().unwrap());
    }
    all
}

/// Starts the broker on `db` again: time to `listening on`, time to the answer of
/// session `last` (its actor armed), and the settled RSS; stops it again.
pub async fn restart(
    db: &Path,
    extra: &[&str],
    last: &(String, String),
) -> (Duration, Duration, u64) {
    let t0 = Instant::now();
    let (broker, listening) = start_broker(db, extra);
    let mut conn = Conn::open(&broker.addr).await;
    let (code, _) = conn
        .call(&get(
            &format!("/v1/sessions/{}/status", last.0),
            Some(&last.1),
        ))
        .await;
    assert_eq!(code, 200);
    let answered = t0.elapsed();
    let rss = settled_rss(broker.pid()).await;
    drop(conn);
    broker.stop();
    (listening, answered, rss)
}

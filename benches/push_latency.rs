//! Push latency, one transition at a time (issue 28): how long from a device's
//! `information` request to the client's WebSocket frame, beside what the disk's own
//! `fdatasync` costs and beside Nchan, in one run.
//!
//! ```text
//! cargo build --release
//! cargo bench --bench push_latency -- --subscribers 2000 --pushes 500 --rounds 3
//! cargo bench --bench push_latency -- --bin parent=/tmp/parent --bin child=target/release/idv-broker
//! ```
//!
//! Layout of a round (every round runs each target once, in turn, so that side-by-side
//! figures share the machine's moment):
//! - **each broker** (`--bin LABEL=PATH`, repeatable; else `IDVB_BENCH_BIN`, else
//!   `target/release/idv-broker`; `PATH` may be followed by flags of that broker's own,
//!   split at spaces, and `RUST_LOG=…` among them its log filter:
//!   `--bin "w1=target/release/idv-broker --workers 1 RUST_LOG=warn"`): started on `127.0.0.1:0` with a fresh database in
//!   `--dir`; `--pushes` sessions, `--subscribers` WebSocket subscribers over them
//!   (subscriber `i` watches session `i % pushes`); then, closed loop, one
//!   `GET …/information` per session: the next is sent once every subscriber of the
//!   previous one has its frame and its answer came back. Timed per push: request sent →
//!   first frame seen, → last frame seen, → answer. The broker's `/metrics` are read
//!   before and after: the difference of `idv_transition_stage_seconds` gives each
//!   stage's p50/p99/mean over exactly these pushes;
//! - **fdatasync**: `--fsyncs` rounds of a 4 KiB `pwrite` at offset 0 and
//!   `fdatasync` (overwrite), then of a 4 KiB append and `fdatasync` (a growing file),
//!   on a file in the same directory as the databases;
//! - **Nchan** (nginx, one worker, `libnginx-mod-nchan`), if installed: the same
//!   subscribers over as many channels, one `POST /pub/{k}` at a time; request sent →
//!   frames seen. Skipped with a message when nginx or the module is missing.
//!
//! Everything goes to 127.0.0.1, every wait has a deadline, and every process the bench
//! starts is stopped when it ends (or panics).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[path = "broker/mod.rs"]
mod broker;
use broker::loadavg;

const API_KEY: &str = "bench-key-0123456789";
const ISSUER: &str = "bench-issuer";
const ISSUER_SECRET: &str = "bench-issuer-secret";
const CONNECT_CONCURRENCY: usize = 128;
/// How long one push may take before the run gives up on it.
const PUSH_DEADLINE: Duration = Duration::from_secs(10);
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
const NGINX: &str = "/usr/sbin/nginx";
/// The broker's stage histogram (actors/src/metrics.rs).
const STAGES: &str = "idv_transition_stage_seconds";

struct Args {
    subscribers: usize,
    pushes: usize,
    rounds: usize,
    fsyncs: usize,
    bins: Vec<(String, String)>,
    dir: Option<PathBuf>,
    nchan: bool,
    rust_log: Option<String>,
    /// Pause between two pushes (closed loop: after the previous one is complete).
    gap: Duration,
}

fn parse_args() -> Args {
    let mut a = Args {
        subscribers: 2000,
        pushes: 500,
        rounds: 3,
        fsyncs: 0,
        bins: Vec::new(),
        dir: None,
        nchan: true,
        rust_log: None,
        gap: Duration::from_micros(0),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--subscribers" | "-n" => a.subscribers = val().parse().expect("--subscribers"),
            "--pushes" | "-m" => a.pushes = val().parse().expect("--pushes"),
            "--rounds" => a.rounds = val().parse().expect("--rounds"),
            "--fsyncs" => a.fsyncs = val().parse().expect("--fsyncs"),
            "--bin" => {
                let v = val();
                let (label, path) = v.split_once('=').unwrap_or(("broker", v.as_str()));
                a.bins.push((label.to_owned(), path.to_owned()));
            }
            "--dir" => a.dir = Some(PathBuf::from(val())),
            "--no-nchan" => a.nchan = false,
            "--rust-log" => a.rust_log = Some(val()),
            "--gap-us" => a.gap = Duration::from_micros(val().parse().expect("--gap-us")),
            // `cargo bench` passes --bench to every bench binary.
            "--bench" => {}
            other => panic!(
                "unknown flag {other}; flags: --subscribers N --pushes M --rounds R \
                 --fsyncs K --bin LABEL=PATH (repeatable) --dir DIR --no-nchan \
                 --rust-log FILTER --gap-us US"
            ),
        }
    }
    assert!(
        a.pushes > 0 && a.subscribers >= a.pushes,
        "--subscribers ≥ --pushes > 0"
    );
    if a.fsyncs == 0 {
        a.fsyncs = a.pushes;
    }
    if a.bins.is_empty() {
        let bin = std::env::var("IDVB_BENCH_BIN").unwrap_or_else(|_| {
            format!("{}/target/release/idv-broker", env!("CARGO_MANIFEST_DIR"))
        });
        a.bins.push(("broker".to_owned(), bin));
    }
    for (_, bin) in &a.bins {
        let bin = bin.split_whitespace().next().unwrap_or_default();
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: run `cargo build --release` first (or set IDVB_BENCH_BIN)"
        );
    }
    a
}

/// A process this bench started; stopped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // nginx's master stops its worker on TERM; a KILL would orphan it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin` (a path, then any flags of its own, split at spaces) on `db`.
fn start_broker(bin: &str, db: &Path, rust_log: Option<&str>) -> (Proc, String) {
    let mut words = bin.split_whitespace();
    let bin = words.next().unwrap_or_default();
    // `RUST_LOG=…` among the words is that broker's log filter, not a flag.
    let (envs, flags): (Vec<&str>, Vec<&str>) = words.partition(|w| w.starts_with("RUST_LOG="));
    let rust_log = envs
        .last()
        .and_then(|w| w.strip_prefix("RUST_LOG="))
        .or(rust_log);
    let mut cmd = Command::new(bin);
    cmd.args(["--bind", "127.0.0.1:0", "--rate-limit", "0"])
        .args(flags)
        .arg("--db")
        .arg(db)
        .args(["--api-key", &format!("bench={API_KEY}")])
        .args(["--issuer", &format!("{ISSUER}={ISSUER_SECRET}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // The access log is written as it would be in production, but not kept.
        .stderr(Stdio::null());
    match rust_log {
        Some(filter) => cmd.env("RUST_LOG", filter),
        None => cmd.env_remove("RUST_LOG"),
    };
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let base = broker::listening_on(&mut child);
    (Proc(child), base)
}

/// Microseconds since the run's epoch.
#[derive(Clone, Copy)]
struct Clock(Instant);
impl Clock {
    fn us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// A frame seen: (channel or session index, at µs).
type Seen = (usize, u64);

/// One subscriber: connects, waits for the broker's snapshot if `snapshot`, reports
/// itself ready, then reports every text frame with its time until the task is aborted.
async fn subscriber(
    url: String,
    idx: usize,
    snapshot: bool,
    sem: Arc<Semaphore>,
    ready: Arc<AtomicUsize>,
    seen: mpsc::UnboundedSender<Seen>,
    clock: Clock,
) -> Result<(), String> {
    let permit = sem.acquire_owned().await.unwrap();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if snapshot {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"snapshot\"") => {}
            other => return Err(format!("first frame: {other:?}")),
        }
    }
    ready.fetch_add(1, Ordering::AcqRel);
    drop(permit);
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(_)) => {
                let _ = seen.send((idx, clock.us()));
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Opens `n` subscribers, subscriber `i` at `url_of(i % m)`; returns their tasks and the
/// channel of frames once all are ready.
async fn open_subscribers(
    n: usize,
    m: usize,
    url_of: impl Fn(usize) -> String,
    snapshot: bool,
    clock: Clock,
) -> (
    Vec<tokio::task::JoinHandle<Result<(), String>>>,
    mpsc::UnboundedReceiver<Seen>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sem = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % m;
        tasks.push(tokio::spawn(subscriber(
            url_of(k),
            k,
            snapshot,
            sem.clone(),
            ready.clone(),
            tx.clone(),
            clock,
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Acquire) < n {
        assert!(
            Instant::now() < deadline,
            "subscribers did not connect in 120 s"
        );
        if let Some(t) = tasks.iter_mut().find(|t| t.is_finished()) {
            let r = t.await.unwrap();
            panic!("a subscriber ended before any push: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (tasks, rx)
}

/// Per push: request sent → first frame, → last frame, → answer (µs).
#[derive(Default)]
struct Pushes {
    first: Vec<u64>,
    last: Vec<u64>,
    answer: Vec<u64>,
}

/// Drives one push per channel `k` in `0..m`, closed loop: `send(k)` is the request; the
/// next push starts once each of channel `k`'s `per(k)` subscribers has a frame and the
/// answer came back.
async fn closed_loop<F, Fut>(
    m: usize,
    per: impl Fn(usize) -> usize,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    clock: Clock,
    gap: Duration,
    send: F,
) -> Pushes
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut out = Pushes::default();
    for k in 0..m {
        let request = send(k);
        let sent = clock.us();
        let answer = tokio::spawn(async move {
            request.await;
            clock.us()
        });
        let (mut first, mut got) = (None, 0);
        let mut last = 0;
        let deadline = tokio::time::Instant::now() + PUSH_DEADLINE;
        while got < per(k) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((idx, at))) if idx == k => {
                    first.get_or_insert(at);
                    last = at;
                    got += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("every subscriber is gone"),
                Err(_) => panic!("push {k}: {got} of {} frames in {PUSH_DEADLINE:?}", per(k)),
            }
        }
        let answered = answer.await.unwrap();
        out.first.push(first.unwrap() - sent);
        out.last.push(last - sent);
        out.answer.push(answered - sent);
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    out
}

/// A sorted sample of microseconds.
struct Dist(Vec<u64>);
impl Dist {
    fn new(v: &[u64]) -> Self {
        let mut v = v.to_vec();
        v.sort_unstable();
        Dist(v)
    }
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[i] as f64 / 1000.0
    }
    fn mean(&self) -> f64 {
        self.0.iter().sum::<u64>() as f64 / self.0.len().max(1) as f64 / 1000.0
    }
}

/// One histogram from a Prometheus exposition: cumulative bucket counts by bound, sum
/// and count.
#[derive(Clone, Default, Debug)]
struct Histo {
    buckets: BTreeMap<u64, f64>,
    sum: f64,
    count: f64,
}

impl Histo {
    fn minus(&self, before: &Histo) -> Histo {
        Histo {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| (*le, c - before.buckets.get(le).copied().unwrap_or(0.0)))
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// The `p`th percentile in ms, interpolated linearly within its bucket.
    fn pct(&self, p: f64) -> f64 {
        if self.count <= 0.0 {
            return f64::NAN;
        }
        let rank = p / 100.0 * self.count;
        let (mut lo_le, mut lo_c) = (0.0, 0.0);
        for (&ns, &c) in &self.buckets {
            if c >= rank {
                if ns == u64::MAX {
                    // Beyond the last bound: the last bound is all that is known.
                    return lo_le * 1000.0;
                }
                let le = ns as f64 / 1e9;
                let frac = if c > lo_c {
                    (rank - lo_c) / (c - lo_c)
                } else {
                    1.0
                };
                return (lo_le + frac * (le - lo_le)) * 1000.0;
            }
            (lo_le, lo_c) = (ns as f64 / 1e9, c);
        }
        lo_le * 1000.0
    }

    fn mean(&self) -> f64 {
        if self.count <= 0.0 {
            f64::NAN
        } else {
            self.sum / self.count * 1000.0
        }
    }
}

/// The histograms named `name`, by their `stage` label (or `""` without one).
fn histograms(text: &str, name: &str) -> BTreeMap<String, Histo> {
    let mut out: BTreeMap<String, Histo> = BTreeMap::new();
    for line in text.lines() {
        if !line.starts_with(name) {
            continue;
        }
        // `name_kind{labels} value`, or `name_kind value` without labels.
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) => (&s[name.len()..], v),
            None => continue,
        };
        let (kind, labels) = match series.split_once('{') {
            Some((k, l)) => (k, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        let label = |key: &str| {
            labels.split(',').find_map(|kv| {
                kv.strip_prefix(&format!("{key}=\""))
                    .map(|v| v.trim_end_matches('"').to_owned())
            })
        };
        let h = out.entry(label("stage").unwrap_or_default()).or_default();
        match kind {
            "_bucket" => {
                let le = label("le").unwrap_or_default();
                let ns = if le == "+Inf" {
                    u64::MAX
                } else {
                    (le.parse::<f64>().unwrap_or(0.0) * 1e9).round() as u64
                };
                h.buckets.insert(ns, value);
            }
            "_sum" => h.sum = value,
            "_count" => h.count = value,
            _ => {}
        }
    }
    out
}

/// What one broker round measured.
struct BrokerRound {
    pushes: Pushes,
    /// Stage histograms over the pushes (the difference of two scrapes).
    stages: BTreeMap<String, Histo>,
    /// `idv_push_latency_seconds` over the pushes.
    push_written: Histo,
    /// `idv_store_commit_seconds` over the pushes.
    commit: Histo,
}

async fn scrape(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn broker_round(args: &Args, bin: &str, dir: &Path, round: usize) -> BrokerRound {
    let db = dir.join(format!("bench-{round}-{}.db", std::process::id()));
    let (proc_, base) = start_broker(bin, &db, args.rust_log.as_deref());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    // Sessions, one per push.
    let mut sessions = Vec::with_capacity(args.pushes);
    for _ in 0..args.pushes {
        let r = http
            .post(format!("{base}/v1/sessions"))
            .header("X-Api-Key", API_KEY)
            .json(&json!({"scopes": ["full_name"], "ttl_seconds": 3600}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "create: {}", r.status());
        let v: Value = r.json().await.unwrap();
        sessions.push((
            v["session_id"].as_str().unwrap().to_owned(),
            v["session_token"].as_str().unwrap().to_owned(),
        ));
    }
    let clock = Clock(Instant::now());
    let ws_base = base.replacen("http://", "ws://", 1);
    let (subs, mut rx) = open_subscribers(
        args.subscribers,
        args.pushes,
        |k| {
            format!(
                "{ws_base}/v1/sessions/{}/ws?token={}",
                sessions[k].0, sessions[k].1
            )
        },
        true,
        clock,
    )
    .await;
    let jwt = idv_actors::credentials::mint_device_jwt(ISSUER, ISSUER_SECRET, "bench-device", 3600)
        .unwrap();
    // Warm the connection the pushes use, and let the connects settle.
    scrape(&http, &base).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = scrape(&http, &base).await;
    let (n, m) = (args.subscribers, args.pushes);
    let ids: Arc<Vec<String>> = Arc::new(sessions.iter().map(|s| s.0.clone()).collect());
    let pushes = closed_loop(
        m,
        |k| n / m + usize::from(k < n % m),
        &mut rx,
        clock,
        args.gap,
        |k| {
            let req = http
                .get(format!("{base}/v1/sessions/{}/information", ids[k]))
                .bearer_auth(&jwt)
                .send();
            async move {
                let r = req.await.unwrap();
                assert_eq!(r.status().as_u16(), 200, "information: {}", r.status());
                let _ = r.bytes().await;
            }
        },
    )
    .await;
    let after = scrape(&http, &base).await;
    for t in &subs {
        t.abort();
    }
    drop(proc_);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let diff = |name: &str| {
        let (b, a) = (histograms(&before, name), histograms(&after, name));
        a.into_iter()
            .map(|(k, h)| {
                let d = h.minus(b.get(&k).unwrap_or(&Histo::default()));
                (k, d)
            })
            .collect::<BTreeMap<_, _>>()
    };
    BrokerRound {
        pushes,
        stages: diff(STAGES),
        push_written: diff("idv_push_latency_seconds")
            .remove("")
            .unwrap_or_default(),
        commit: diff("idv_store_commit_seconds")
            .remove("")
            .unwrap_or_default(),
    }
}

/// `k` rounds of a 4 KiB write and `fdatasync` on a file in `dir`: overwriting offset 0,
/// then appending. µs each.
fn fdatasync_loop(dir: &Path, k: usize) -> (Vec<u64>, Vec<u64>) {
    let path = dir.join(format!("fdatasync-probe-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let page = [0x5Au8; 4096];
    file.write_all_at(&page, 0).unwrap();
    file.sync_all().unwrap();
    let mut over = Vec::with_capacity(k);
    for _ in 0..k {
        let t = Instant::now();
        file.write_all_at(&page, 0).unwrap();
        file.sync_data().unwrap();
        over.push(t.elapsed().as_micros() as u64);
    }
    let mut append = Vec::with_capacity(k);
    for i in 0..k {
        let t = Instant::now();
        file.write_all_at(&page, 4096 * (i as u64 + 1)).unwrap();
        file.sync_data().unwrap();
        append.push(t.elapsed().as_micros() as u64);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    (over, append)
}

/// Why Nchan cannot run here, if it cannot.
fn nchan_missing() -> Option<String> {
    if !Path::new(NGINX).exists() {
        return Some(format!("{NGINX} is not installed"));
    }
    if !Path::new(NCHAN_MODULE).exists() {
        return Some(format!("{NCHAN_MODULE} is not installed"));
    }
    None
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// nginx with Nchan on loopback, one worker, in the foreground, under `dir`.
fn start_nchan(dir: &Path, subscribers: usize) -> (Proc, String) {
    let port = free_port();
    let prefix = dir.join(format!("nchan-{}", std::process::id()));
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = prefix.join("nginx.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    write!(
        f,
        "load_module {NCHAN_MODULE};
user root;
worker_processes 1;
worker_rlimit_nofile {files};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections {files}; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location ~ ^/pub/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; }}
    location ~ ^/sub/(\\w+)$ {{ nchan_subscriber websocket; nchan_channel_id $1; }}
  }}
}}
",
        files = subscribers + 1024,
        prefix = prefix.display(),
    )
    .unwrap();
    let child = Command::new(NGINX)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
    let proc_ = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen in 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (proc_, format!("127.0.0.1:{port}"))
}

async fn nchan_round(args: &Args, dir: &Path) -> Pushes {
    let (proc_, addr) = start_nchan(dir, args.subscribers);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let clock = Clock(Instant::now());
    let (subs, mut rx) = open_subscribers(
        args.subscribers,
        args.pushes,
        |k| format!("ws://{addr}/sub/c{k}"),
        false,
        clock,
    )
    .await;
    // Warm the publisher's connection on a channel nobody listens to.
    let _ = http
        .post(format!("http://{addr}/pub/warm"))
        .body("{}")
        .send()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (n, m) = (args.subscribers, args.pushes);
    let pushes = closed_loop(
        m,
        |k| n / m + usize::from(k < n % m),
        &mut rx,
        clock,
        args.gap,
        |k| {
            let req = http
                .post(format!("http://{addr}/pub/c{k}"))
                .body(r#"{"type":"status","status":"retrieved","seq":2}"#)
                .send();
            async move {
                let r = req.await.unwrap();
                assert!(r.status().is_success(), "publish: {}", r.status());
                let _ = r.bytes().await;
            }
        },
    )
    .await;
    for t in &subs {
        t.abort();
    }
    drop(proc_);
    pushes
}

/// 16,000 sockets need more descriptors than a default soft limit; see ws_load.
fn raise_fd_limit(needed: u64) {
    let ok = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={needed}:"))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("warning: could not raise the open-file limit to {needed}");
    }
}

fn main() {
    let args = parse_args();
    raise_fd_limit(args.subscribers as u64 + 1024);
    // The databases and the fdatasync probe share one directory, so one disk.
    let tmp = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir)).unwrap();
    let dir = tmp.path().to_owned();
    let nchan = if args.nchan {
        match nchan_missing() {
            Some(why) => {
                println!(
                    "Nchan: skipped ({why}; install with `apt-get install -y nginx libnginx-mod-nchan`)"
                );
                false
            }
            None => true,
        }
    } else {
        println!("Nchan: skipped (--no-nchan)");
        false
    };
    println!(
        "push_latency: {} subscribers over {} sessions, {} pushes one at a time, {} rounds, in {}",
        args.subscribers,
        args.pushes,
        args.pushes,
        args.rounds,
        dir.display()
    );
    idv_actors::webhooks::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Per target: every round's pushes; per broker: every round's stages.
    let mut all: BTreeMap<String, Vec<Pushes>> = BTreeMap::new();
    let mut stages: BTreeMap<String, Vec<BrokerRound>> = BTreeMap::new();
    let mut fsync: (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        println!("\n## round {} (load average {})", round + 1, loadavg());
        println!("| target | p50 sent→first frame | p99 | p50 sent→last frame | p99 | p50 sent→answer | mean first |");
        println!("|---|---|---|---|---|---|---|");
        // Alternate the order of the brokers from round to round.
        let mut order: Vec<usize> = (0..args.bins.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (label, bin) = &args.bins[i];
            let r = rt.block_on(broker_round(&args, bin, &dir, round));
            print_row(label, &r.pushes);
            stages.entry(label.clone()).or_default().push(r);
        }
        let (over, append) = fdatasync_loop(&dir, args.fsyncs);
        print_row(
            "fdatasync 4 KiB overwrite",
            &Pushes {
                first: over.clone(),
                last: over.clone(),
                answer: over.clone(),
            },
        );
        print_row(
            "fdatasync 4 KiB append",
            &Pushes {
                first: append.clone(),
                last: append.clone(),
                answer: append.clone(),
            },
        );
        fsync.0.extend(over);
        fsync.1.extend(append);
        if nchan {
            let p = rt.block_on(nchan_round(&args, &dir));
            print_row("Nchan", &p);
            all.entry("Nchan".into()).or_default().push(p);
        }
    }
    println!("\n## all rounds (load average now {})", loadavg());
    println!("| target | p50 sent→first frame | p99 | p50 sent→last frame | p99 | p50 sent→answer | mean first |");
    println!("|---|---|---|---|---|---|---|");
    for (label, _) in &args.bins {
        let rounds = &stages[label];
        let mut p = Pushes::default();
        for r in rounds {
            p.first.extend(&r.pushes.first);
            p.last.extend(&r.pushes.last);
            p.answer.extend(&r.pushes.answer);
        }
        print_row(label, &p);
    }
    let f = |v: &Vec<u64>| Pushes {
        first: v.clone(),
        last: v.clone(),
        answer: v.clone(),
    };
    print_row("fdatasync 4 KiB overwrite", &f(&fsync.0));
    print_row("fdatasync 4 KiB append", &f(&fsync.1));
    if let Some(rounds) = all.get("Nchan") {
        let mut p = Pushes::default();
        for r in rounds {
            p.first.extend(&r.first);
            p.last.extend(&r.last);
            p.answer.extend(&r.answer);
        }
        print_row("Nchan", &p);
    }
    for (label, _) in &args.bins {
        println!("\n### {label}: stages inside the broker, all rounds (from /metrics; bucket-interpolated p50/p99)");
        println!("| stage | p50 ms | p99 ms | mean ms | count |");
        println!("|---|---|---|---|---|");
        let mut sum: BTreeMap<String, Histo> = BTreeMap::new();
        let mut written = Histo::default();
        let mut commit = Histo::default();
        for r in &stages[label] {
            for (k, h) in &r.stages {
                add(sum.entry(k.clone()).or_default(), h);
            }
            add(&mut written, &r.push_written);
            add(&mut commit, &r.commit);
        }
        if sum.is_empty() {
            println!("| (this binary has no {STAGES}) | | | | |");
        }
        for (k, h) in &sum {
            println!(
                "| {k} | {:.3} | {:.3} | {:.3} | {} |",
                h.pct(50.0),
                h.pct(99.0),
                h.mean(),
                h.count
            );
        }
        println!(
            "| idv_push_latency_seconds | {:.3} | {:.3} | {:.3} | {} |",
            written.pct(50.0),
            written.pct(99.0),
            written.mean(),
            written.count
        );
        println!(
            "| idv_store_commit_seconds | {:.3} | {:.3} | {:.3} | {} |",
            commit.pct(50.0),
            commit.pct(99.0),
            commit.mean(),
            commit.count
        );
    }
    drop(tmp);
    rt.shutdown_timeout(Duration::from_secs(1));
}

fn add(into: &mut Histo, h: &Histo) {
    for (le, c) in &h.buckets {
        *into.buckets.entry(*le).or_default() += c;
    }
    into.sum += h.sum;
    into.count += h.count;
}

fn print_row(label: &str, p: &Pushes) {
    let (first, last, answer) = (
        Dist::new(&p.first),
        Dist::new(&p.last),
        Dist::new(&p.answer),
    );
    println!(
        "| {label} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
        first.pct(50.0),
        first.pct(99.0),
        last.pct(50.0),
        last.pct(99.0),
        answer.pct(50.0),
        first.mean()
    );
}

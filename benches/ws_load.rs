//! Load tester for real-time delivery (issue 3): WebSocket push against 1 s polling.
//!
//! ```text
//! cargo build --release && cargo bench --bench ws_load -- --subscribers 10000 --sessions 2000 --rate 1000
//! ```
//!
//! Layout of a run:
//! - start the release broker (`IDVB_BENCH_BIN`, else `target/release/idv-broker`) on
//!   `127.0.0.1:0` with a fresh database, or attach to `--url` (then `--pid` for RSS);
//! - **push**: create `M` sessions, open `N` WebSocket subscribers over them (subscriber
//!   `i` watches session `i % M`), read the broker's RSS before and after → bytes per
//!   idle subscriber; then drive both transitions of every session (`information`, then
//!   `update approve`) at `--rate` per second, open loop, and time each frame against
//!   the transition's request (sent and acknowledged);
//! - **poll**: the same `N` clients over `M` fresh sessions, each polling
//!   `GET /status` (with `If-None-Match`) once a second, no long-poll, while the same
//!   transitions run: requests per second the broker answered, detection latency;
//! - print a markdown table and the ratios.
//!
//! Everything goes to 127.0.0.1 and every phase has a deadline, so a run always ends.
//!
//! **Cluster mode** (`--cluster`, or `--nodes` for running nodes; issue 12, in
//! `ws_load/cluster.rs`): subscribers spread over the nodes, push latency when the
//! owner and the subscriber are on different nodes beside the same-node figure, and
//! what forwarding a request to the owner costs.
//!
//! **Retention mode** (`--retention-backlog N`; issue 25, in `ws_load/retention.rs`):
//! push latency while a record-retention sweep deletes `N` ended sessions, beside the
//! same push with the backlog kept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// Cluster mode lives beside the bench, out of cargo's bench discovery (a folder without main.rs).
#[path = "broker/mod.rs"]
mod broker;
#[path = "ws_load/clients.rs"]
mod clients;
#[path = "ws_load/cluster.rs"]
mod cluster;
#[path = "ws_load/retention.rs"]
mod retention;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use clients::{Clients, Clock, Seen};

const API_KEY: &str = "bench-key-0123456789";
const ISSUER: &str = "bench-issuer";
const ISSUER_SECRET: &str = "bench-issuer-secret";
/// Handshakes (and session creations) in flight at once: enough to keep both cores busy,
/// few enough that the listen backlog never overflows.
const CONNECT_CONCURRENCY: usize = 256;
/// How long the frames of the last transition may take before they count as lost.
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
struct Args {
    subscribers: usize,
    sessions: usize,
    rate: u64,
    poll_interval: Duration,
    skip_poll: bool,
    /// How long idle subscribers sit before the "after" RSS reading (lets the broker settle).
    idle: Duration,
    url: Option<String>,
    api_key: String,
    issuer: String,
    pid: Option<u32>,
    /// Cluster mode: running nodes to spread over (`--nodes`), each with its node id
    /// when given as `ID=URL`.
    nodes: Vec<(Option<String>, String)>,
    /// Cluster mode: start three nodes here (`--cluster`).
    cluster: bool,
    /// The nodes' PostgreSQL (`--store`): where the bench reads who owns each session.
    store: Option<String>,
    /// Cluster mode: requests per kind in the forwarding phase.
    requests: usize,
    /// Retention mode (`--retention-backlog N`): ended sessions a record-retention sweep
    /// deletes while the push phase runs.
    retention_backlog: usize,
    /// Retention mode: rounds of kept and swept, interleaved.
    rounds: usize,
    /// Subscribers per client process (`--clients-per-process`): each process stays
    /// under its open-file limit.
    clients_per_process: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        subscribers: 1000,
        sessions: 200,
        rate: 200,
        poll_interval: Duration::from_secs(1),
        skip_poll: false,
        idle: Duration::from_secs(2),
        url: None,
        api_key: API_KEY.into(),
        issuer: format!("{ISSUER}={ISSUER_SECRET}"),
        pid: None,
        nodes: Vec::new(),
        cluster: false,
        store: None,
        requests: 1000,
        retention_backlog: 0,
        rounds: 2,
        clients_per_process: clients::CLIENTS_PER_PROCESS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--subscribers" | "-n" => a.subscribers = val().parse().expect("--subscribers"),
            "--sessions" | "-m" => a.sessions = val().parse().expect("--sessions"),
            "--rate" => a.rate = val().parse().expect("--rate"),
            "--poll-interval-ms" => {
                a.poll_interval = Duration::from_millis(val().parse().expect("--poll-interval-ms"))
            }
            "--skip-poll" => a.skip_poll = true,
            "--idle-secs" => a.idle = Duration::from_secs(val().parse().expect("--idle-secs")),
            "--url" => a.url = Some(val()),
            "--api-key" => a.api_key = val(),
            "--issuer" => a.issuer = val(),
            "--pid" => a.pid = Some(val().parse().expect("--pid")),
            "--nodes" => {
                a.nodes = val()
                    .split(',')
                    .map(|n| match n.split_once('=') {
                        Some((id, url)) => (Some(id.to_owned()), url.to_owned()),
                        None => (None, n.to_owned()),
                    })
                    .collect()
            }
            "--cluster" => a.cluster = true,
            "--store" => a.store = Some(val()),
            "--requests" => a.requests = val().parse().expect("--requests"),
            "--retention-backlog" => {
                a.retention_backlog = val().parse().expect("--retention-backlog")
            }
            "--rounds" => a.rounds = val().parse().expect("--rounds"),
            "--clients-per-process" => {
                a.clients_per_process = val().parse().expect("--clients-per-process")
            }
            // `cargo bench` passes `--bench`; ignore it and anything a harness would take.
            "--bench" => {}
            "--help" | "-h" => {
                println!(
                    "ws_load [--subscribers N] [--sessions M] [--rate TRANSITIONS_PER_S] \
                     [--poll-interval-ms MS] [--skip-poll] [--idle-secs S] \
                     [--clients-per-process K] [--url http://127.0.0.1:PORT --api-key KEY --issuer ISS=SECRET [--pid PID]]\n\
                     cluster mode: ws_load --cluster | --nodes [ID=]URL,[ID=]URL,... \
                     [--store postgres://…] [--api-key KEY --issuer ISS=SECRET] \
                     [--subscribers N] [--sessions M] [--rate R] [--requests R]\n\
                     retention mode: ws_load --retention-backlog N [--rounds R] \
                     [--subscribers N] [--sessions M] [--rate R] [--idle-secs S]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown flag {other} (see --help)"),
        }
    }
    assert!(
        a.sessions > 0
            && a.subscribers > 0
            && a.rate > 0
            && a.rounds > 0
            && a.clients_per_process > 0,
        "all counts > 0"
    );
    for u in a.url.iter().chain(a.nodes.iter().map(|(_, u)| u)) {
        assert!(
            u.starts_with("http://127.0.0.1:") || u.starts_with("http://localhost:"),
            "load goes to 127.0.0.1 only"
        );
    }
    assert!(
        !a.cluster || a.nodes.is_empty(),
        "--cluster starts its own nodes; --nodes attaches to running ones: one of them"
    );
    a
}

/// The broker under test: one this bench started, or one it attached to.
struct Broker {
    base: String,
    pid: Option<u32>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_broker(args: &Args) -> Broker {
    if let Some(url) = &args.url {
        return Broker {
            base: url.trim_end_matches('/').to_owned(),
            pid: args.pid,
            child: None,
            _dir: None,
        };
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let mut broker = start_on(&db, &[], args);
    broker._dir = Some(dir);
    broker
}

/// A broker of this bench, the binary beside it, on `db` with `extra` flags; its base
/// URL read from its `listening on` line.
fn start_on(db: &std::path::Path, extra: &[&str], args: &Args) -> Broker {
    let bin = broker_bin();
    let mut child = Command::new(&bin)
        .args(["--bind", "127.0.0.1:0", "--rate-limit", "0"])
        .args(extra)
        .arg("--db")
        .arg(db)
        .args(["--api-key", &format!("bench={}", args.api_key)])
        .args(["--issuer", &args.issuer])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let base = broker::listening_on(&mut child);
    Broker {
        base,
        pid: Some(child.id()),
        child: Some(child),
        _dir: None,
    }
}

/// The release binary (`IDVB_BENCH_BIN`, else `target/release/idv-broker`).
fn broker_bin() -> String {
    let bin = std::env::var("IDVB_BENCH_BIN")
        .unwrap_or_else(|_| format!("{}/target/release/idv-broker", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} is missing: run `cargo build --release` first (or set IDVB_BENCH_BIN)"
    );
    bin
}

/// VmRSS of `pid`, in bytes.
fn rss(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A broker with 19,000 subscribers needs more descriptors than a default soft limit:
/// raise the soft limit to the hard one (20,000 on this machine; it cannot go higher).
/// The workspace forbids `unsafe`, so `setrlimit` goes through util-linux `prlimit`;
/// the brokers and the client workers this bench starts inherit the raised limit.
fn raise_fd_limit() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let field = |n: usize| {
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(n))
            .map(str::to_owned)
    };
    let (soft, hard) = (field(3).unwrap_or_default(), field(4).unwrap_or_default());
    if soft == hard {
        return;
    }
    let ok = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:"))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("warning: open-file limit {soft}, hard {hard}; raise `ulimit -n`");
    }
}

/// The kernel's slab memory (`Slab` of `/proc/meminfo`), in bytes: where a socket's
/// kernel structures live (on loopback both ends of each connection count; the rest
/// of the machine adds noise).
fn slab() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("Slab:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A session as the bench drives it.
struct BenchSession {
    id: String,
    token: String,
}

async fn create_sessions(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    m: usize,
) -> Vec<BenchSession> {
    let sem = Arc::new(Semaphore::new(CONNECT_CONCURRENCY.min(64)));
    let mut tasks = Vec::with_capacity(m);
    for _ in 0..m {
        let (http, url, key, sem) = (
            http.clone(),
            format!("{base}/v1/sessions"),
            key.to_owned(),
            sem.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let r = http
                .post(url)
                .header("X-Api-Key", key)
                .json(&json!({"scopes": ["full_name"], "ttl_seconds": 3600}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201, "create: {}", r.status());
            let v: Value = r.json().await.unwrap();
            BenchSession {
                id: v["session_id"].as_str().unwrap().to_owned(),
                token: v["session_token"].as_str().unwrap().to_owned(),
            }
        }));
    }
    let mut out = Vec::with_capacity(m);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// When each transition's request left and its answer came back, per (session, seq).
struct Marks {
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    /// Answered `200`: only these transitions' frames are expected (and timed).
    ok: Vec<std::sync::atomic::AtomicBool>,
    /// Transitions the broker did not answer `200` (counted, not fatal: at the machine's
    /// limits a run reports what failed instead of stopping), and the first answer.
    failed: AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
}
impl Marks {
    fn new(m: usize) -> Self {
        let v = || (0..2 * m).map(|_| AtomicU64::new(0)).collect();
        Marks {
            sent: v(),
            acked: v(),
            ok: (0..2 * m)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            failed: AtomicU64::new(0),
            first_failure: std::sync::Mutex::new(None),
        }
    }
    /// Prints the transitions that failed, the first answer, and how many frames of
    /// them were seen anyway (committed, then the answer was lost): not counted as
    /// expected, lost or timed.
    fn report_failures(&self, unanswered_seen: usize) {
        let failed = self.failed.load(Ordering::Acquire);
        if failed > 0 {
            println!(
                "transitions that failed: {failed}, their frames seen anyway: \
                 {unanswered_seen} (first failure: {})",
                self.first_failure.lock().unwrap().as_deref().unwrap_or("")
            );
        }
    }
    /// Slot of transition `seq` (2 or 3) of session `s`.
    fn slot(s: usize, seq: u64) -> usize {
        2 * s + (seq as usize - 2)
    }
    fn answered(&self, slot: usize) -> bool {
        self.ok[slot].load(Ordering::Acquire)
    }
    /// The frames a subscriber of session `s` is owed: one per transition answered `200`.
    fn owed(&self, s: usize) -> usize {
        (2..=3)
            .filter(|&seq| self.answered(Self::slot(s, seq)))
            .count()
    }
}

/// Drives `information` then `update approve` for every session, `rate` per second, open
/// loop: a transition starts at its scheduled time whether or not earlier ones finished.
/// Transition `t` (in the order sent; it is session `t % m`'s) goes to `base_of(t)`
/// (one broker: always the same).
async fn drive(
    http: &reqwest::Client,
    base_of: impl Fn(usize) -> String,
    sessions: &Arc<Vec<BenchSession>>,
    rate: u64,
    marks: &Arc<Marks>,
    clock: &Arc<Clock>,
) -> Duration {
    let jwt = idv_actors::credentials::mint_device_jwt(
        DEVICE_ISSUER.get().unwrap().0.as_str(),
        DEVICE_ISSUER.get().unwrap().1.as_str(),
        "bench-device",
        3600,
    )
    .unwrap();
    let jwt = Arc::new(jwt);
    let m = sessions.len();
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(2 * m);
    for k in 0..2 * m {
        ticker.tick().await;
        let (s, seq) = (k % m, 2 + (k / m) as u64);
        let (http, sessions, marks, clock, jwt) = (
            http.clone(),
            sessions.clone(),
            marks.clone(),
            clock.clone(),
            jwt.clone(),
        );
        let url = format!(
            "{}/v1/sessions/{}/{}",
            base_of(k),
            sessions[s].id,
            if seq == 2 { "information" } else { "update" }
        );
        tasks.push(tokio::spawn(async move {
            let req = if seq == 2 {
                http.get(url)
            } else {
                http.post(url)
                    .json(&json!({"decision": "approve", "shared_data": {"full_name": "Bench"}}))
            };
            let slot = Marks::slot(s, seq);
            marks.sent[slot].store(clock.us(), Ordering::Release);
            let failure = match req.bearer_auth(jwt.as_str()).send().await {
                Ok(r) if r.status().as_u16() == 200 => {
                    marks.ok[slot].store(true, Ordering::Release);
                    None
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    Some(format!("transition {seq}: {status} {body}"))
                }
                Err(e) => {
                    // reqwest's own text is generic ("error sending request"): the cause.
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(cause) = source {
                        why.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    Some(format!("transition {seq}: {why}"))
                }
            };
            marks.acked[slot].store(clock.us(), Ordering::Release);
            if let Some(f) = failure {
                marks.failed.fetch_add(1, Ordering::AcqRel);
                marks.first_failure.lock().unwrap().get_or_insert(f);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

/// The device issuer, parsed from `--issuer ISS=SECRET` once.
static DEVICE_ISSUER: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// A sorted sample of microseconds.
struct Dist(Vec<u64>);
impl Dist {
    fn new(mut v: Vec<u64>) -> Self {
        v.sort_unstable();
        Dist(v)
    }
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.0.len() as f64 - 1.0)).round() as usize;
        self.0[i] as f64 / 1000.0
    }
    fn max(&self) -> f64 {
        self.0.last().map_or(f64::NAN, |&x| x as f64 / 1000.0)
    }
}

struct PushResult {
    rss_before: Option<u64>,
    rss_idle: Option<u64>,
    slab_before: Option<u64>,
    slab_idle: Option<u64>,
    /// Client processes the subscribers ran in.
    processes: usize,
    connect_time: Duration,
    drive_time: Duration,
    from_ack: Dist,
    from_sent: Dist,
    /// Frames that reached the subscriber before the HTTP answer reached the driver.
    before_ack: usize,
    delivered: usize,
    expected: usize,
    deliver_span: Duration,
    errors: usize,
}

async fn push_phase(args: &Args, broker: &Broker, http: &reqwest::Client) -> PushResult {
    let (n, m) = (args.subscribers, args.sessions);
    let sessions = Arc::new(create_sessions(http, &broker.base, &args.api_key, m).await);
    // Let the allocator and the workers settle after the burst of creates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss(broker.pid);
    let slab_before = slab();

    let clock = Arc::new(Clock::new());
    let ws_base = broker.base.replacen("http://", "ws://", 1);
    let urls = (0..n)
        .map(|i| {
            let s = &sessions[i % m];
            format!("{ws_base}/v1/sessions/{}/ws?token={}", s.id, s.token)
        })
        .collect();
    let t0 = Instant::now();
    let subs = Clients::open(urls, &clock, args.clients_per_process, CONNECT_CONCURRENCY).await;
    if let Err(why) = subs.connected(Duration::from_secs(180)).await {
        panic!(
            "subscribers failed to connect ({} client processes): {why}\n{}",
            subs.processes(),
            clients::broker_fds(broker.pid)
        );
    }
    let connect_time = t0.elapsed();
    tokio::time::sleep(args.idle).await;
    let rss_idle = rss(broker.pid);
    let slab_idle = slab();
    let processes = subs.processes();

    let marks = Arc::new(Marks::new(m));
    let drive_time = drive(
        http,
        |_| broker.base.clone(),
        &sessions,
        args.rate,
        &marks,
        &clock,
    )
    .await;
    let seen_all = subs
        .finish(clock.us() + DRAIN_DEADLINE.as_micros() as u64)
        .await;

    let (mut from_ack, mut from_sent) = (Vec::with_capacity(2 * n), Vec::with_capacity(2 * n));
    let (mut first, mut last, mut errors, mut before_ack) = (u64::MAX, 0u64, 0usize, 0usize);
    let mut unanswered_seen = 0usize;
    for (i, r) in seen_all.into_iter().enumerate() {
        match r {
            Ok(seen) => {
                let mut prev = 1;
                for (seq, at) in seen {
                    // In order, each once: anything else counts as an error.
                    if seq != prev + 1 {
                        errors += 1;
                        continue;
                    }
                    prev = seq;
                    let slot = Marks::slot(i % m, seq);
                    if !marks.answered(slot) {
                        // Committed although its request failed (a timeout, say).
                        unanswered_seen += 1;
                        continue;
                    }
                    let (sent, acked) = (
                        marks.sent[slot].load(Ordering::Acquire),
                        marks.acked[slot].load(Ordering::Acquire),
                    );
                    from_sent.push(at.saturating_sub(sent));
                    // A frame can beat the HTTP answer to the client: that is 0 ms, not negative.
                    if at < acked {
                        before_ack += 1;
                    }
                    from_ack.push(at.saturating_sub(acked));
                    first = first.min(at);
                    last = last.max(at);
                }
            }
            Err(_) => errors += 1,
        }
    }
    marks.report_failures(unanswered_seen);
    PushResult {
        rss_before,
        rss_idle,
        slab_before,
        slab_idle,
        processes,
        connect_time,
        drive_time,
        delivered: from_ack.len(),
        from_ack: Dist::new(from_ack),
        from_sent: Dist::new(from_sent),
        before_ack,
        expected: (0..n).map(|i| marks.owed(i % m)).sum(),
        deliver_span: Duration::from_micros(last.saturating_sub(first)),
        errors,
    }
}

struct PollResult {
    /// Requests answered per second while all pollers poll and the transitions run.
    steady_rps: f64,
    /// Requests answered from the first transition until the last change was seen.
    requests: u64,
    from_ack: Dist,
    observed: usize,
    expected: usize,
    errors: u64,
}

async fn poll_phase(args: &Args, broker: &Broker, http: &reqwest::Client) -> PollResult {
    let (n, m) = (args.subscribers, args.sessions);
    let sessions = Arc::new(create_sessions(http, &broker.base, &args.api_key, m).await);
    let clock = Arc::new(Clock::new());
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop_at = Arc::new(AtomicU64::new(0));
    let interval = args.poll_interval;
    // One client per poller would be closer to browsers but costs the bench more than
    // the broker; a shared pool still keeps one connection per concurrent poller.
    let poll_http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .unwrap();
    let mut pollers = Vec::with_capacity(n);
    for i in 0..n {
        let s = i % m;
        let url = format!("{}/v1/sessions/{}/status", broker.base, sessions[s].id);
        let token = sessions[s].token.clone();
        let (http, clock, requests, errors, stop_at) = (
            poll_http.clone(),
            clock.clone(),
            requests.clone(),
            errors.clone(),
            stop_at.clone(),
        );
        // Spread the phases evenly over the interval, as independent browsers would be.
        let phase = interval.mul_f64(i as f64 / n as f64);
        pollers.push(tokio::spawn(async move {
            tokio::time::sleep(phase).await;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut seq, mut etag): (u64, Option<String>) = (1, None);
            let mut seen: Seen = Vec::with_capacity(2);
            loop {
                ticker.tick().await;
                let stop = stop_at.load(Ordering::Acquire);
                if seq >= 3 || (stop != 0 && clock.us() > stop) {
                    break;
                }
                let mut req = http.get(&url).bearer_auth(&token);
                if let Some(tag) = &etag {
                    req = req.header("If-None-Match", tag);
                }
                let r = match req.send().await {
                    Ok(r) => r,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                requests.fetch_add(1, Ordering::Relaxed);
                let at = clock.us();
                match r.status().as_u16() {
                    304 => {}
                    200 => {
                        etag = r
                            .headers()
                            .get("etag")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        let now = v["seq"].as_u64().unwrap_or(seq);
                        // A poll can jump two seqs at once: both are observed now.
                        for k in seq + 1..=now {
                            seen.push((k, at));
                        }
                        seq = seq.max(now);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            seen
        }));
    }
    // One full interval so every poller has its first (baseline) answer.
    tokio::time::sleep(interval + Duration::from_millis(200)).await;
    let req_start = requests.load(Ordering::Acquire);
    let marks = Arc::new(Marks::new(m));
    let drive_time = drive(
        http,
        |_| broker.base.clone(),
        &sessions,
        args.rate,
        &marks,
        &clock,
    )
    .await;
    // Steady state: every poller is still polling while the transitions run.
    let steady_rps =
        (requests.load(Ordering::Acquire) - req_start) as f64 / drive_time.as_secs_f64();
    // Polls see the last transition within one interval (plus queueing).
    stop_at.store(
        clock.us() + (interval * 3 + Duration::from_secs(5)).as_micros() as u64,
        Ordering::Release,
    );
    let mut from_ack = Vec::with_capacity(2 * n);
    for (i, t) in pollers.into_iter().enumerate() {
        for (seq, at) in t.await.unwrap() {
            let acked = marks.acked[Marks::slot(i % m, seq)].load(Ordering::Acquire);
            from_ack.push(at.saturating_sub(acked));
        }
    }
    PollResult {
        steady_rps,
        requests: requests.load(Ordering::Acquire) - req_start,
        observed: from_ack.len(),
        from_ack: Dist::new(from_ack),
        expected: 2 * n,
        errors: errors.load(Ordering::Acquire),
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn main() {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--ws-worker") {
        clients::worker(argv);
        return;
    }
    let args = parse_args();
    let (iss, secret) = args.issuer.split_once('=').expect("--issuer ISS=SECRET");
    DEVICE_ISSUER
        .set((iss.to_owned(), secret.to_owned()))
        .unwrap();
    // The brokers this bench starts inherit it: as many as a process may hold.
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if args.cluster || !args.nodes.is_empty() {
        // reqwest's rustls needs a crypto provider (see below).
        idv_actors::webhooks::install_crypto_provider();
        cluster::main(&args, &rt);
        rt.shutdown_timeout(Duration::from_secs(1));
        return;
    }
    if args.retention_backlog > 0 {
        idv_actors::webhooks::install_crypto_provider();
        retention::main(&args, &rt);
        rt.shutdown_timeout(Duration::from_secs(1));
        return;
    }
    let broker = start_broker(&args);
    println!(
        "ws_load: {} subscribers over {} sessions, {} transitions/s, broker {} (pid {:?})",
        args.subscribers, args.sessions, args.rate, broker.base, broker.pid
    );
    let total = Instant::now();
    // reqwest's rustls has no default crypto provider in this workspace (the broker
    // picks ring); a plain client needs one installed first.
    idv_actors::webhooks::install_crypto_provider();
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            // Under the broker's 5 s keep-alive: a connection it is closing is never
            // reused for a transition (lost as "connection closed before message
            // completed", which HTTP/1.1 gives no way to retry safely).
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let push = push_phase(&args, &broker, &http).await;
        let poll = if args.skip_poll {
            None
        } else {
            Some(poll_phase(&args, &broker, &http).await)
        };
        report(&args, &push, poll.as_ref());
    });
    println!("(run took {:.1} s)", total.elapsed().as_secs_f64());
    drop(broker);
    // Pollers' and sockets' tasks are done; do not wait on idle pool connections.
    rt.shutdown_timeout(Duration::from_secs(1));
}

fn report(args: &Args, push: &PushResult, poll: Option<&PollResult>) {
    let n = args.subscribers;
    let transitions = 2 * args.sessions;
    let per_sub = match (push.rss_before, push.rss_idle) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / n as f64),
        _ => None,
    };
    let lost = push.expected.saturating_sub(push.delivered);
    let achieved_rate = transitions as f64 / push.drive_time.as_secs_f64();
    let dps = push.delivered as f64 / push.deliver_span.as_secs_f64().max(1e-3);
    println!();
    println!(
        "connected {n} subscribers in {:.1} s from {} client processes; {transitions} transitions driven in {:.1} s ({achieved_rate:.0}/s)",
        push.connect_time.as_secs_f64(),
        push.processes,
        push.drive_time.as_secs_f64()
    );
    println!();
    println!("| {n} clients, {} sessions, {transitions} transitions at {}/s | WebSocket push | polling every {} ms |", args.sessions, args.rate, args.poll_interval.as_millis());
    println!("|---|---|---|");
    let (pp50, pp99, pmax, prps, pobs, perr) = match poll {
        Some(p) => (
            format!("{:.0} ms", p.from_ack.pct(50.0)),
            format!("{:.0} ms", p.from_ack.pct(99.0)),
            format!("{:.0} ms", p.from_ack.max()),
            format!("{:.0}", p.steady_rps),
            format!("{} of {}", p.observed, p.expected),
            p.errors.to_string(),
        ),
        None => Default::default(),
    };
    println!(
        "| latency p50 (ack → seen) | {:.2} ms | {pp50} |",
        push.from_ack.pct(50.0)
    );
    println!(
        "| latency p99 (ack → seen) | {:.2} ms | {pp99} |",
        push.from_ack.pct(99.0)
    );
    println!(
        "| latency max (ack → seen) | {:.2} ms | {pmax} |",
        push.from_ack.max()
    );
    println!(
        "| latency p50 / p99 (request sent → seen) | {:.2} / {:.2} ms | |",
        push.from_sent.pct(50.0),
        push.from_sent.pct(99.0)
    );
    println!(
        "| updates seen (expected {}) | {} | {pobs} |",
        push.expected, push.delivered
    );
    println!(
        "| frames lost / out of order | {lost} / {} | |",
        push.errors
    );
    println!("| deliveries/s | {dps:.0} | |");
    println!("| server requests/s while waiting (beyond the transitions) | 0 | {prps} |");
    println!("| poll errors | | {perr} |");
    println!(
        "| broker RSS: before → {n} idle subscribers | {} → {} | |",
        mib(push.rss_before),
        mib(push.rss_idle)
    );
    match per_sub {
        Some(b) => println!(
            "| broker memory per idle subscriber | {:.0} B ({:.2} KiB) | |",
            b,
            b / 1024.0
        ),
        None => println!("| broker memory per idle subscriber | n/a (no --pid) | |"),
    }
    if let (Some(b), Some(a)) = (push.slab_before, push.slab_idle) {
        println!(
            "| kernel slab per connection (both ends, loopback; machine-wide, noisy) | {:.2} KiB | |",
            a.saturating_sub(b) as f64 / n as f64 / 1024.0
        );
    }
    println!(
        "| frames that arrived before the transition's HTTP answer | {:.0} % | |",
        100.0 * push.before_ack as f64 / push.delivered.max(1) as f64
    );
    if let Some(p) = poll {
        println!();
        println!(
            "ratios: polling costs {:.1} server requests per delivered update (push: 0 requests, \
             1 frame) and {:.0} requests/s in steady state; latency ack → seen p50 {:.2} ms vs \
             {:.0} ms, p99 {:.2} ms vs {:.0} ms ({:.0}x)",
            p.requests as f64 / p.observed.max(1) as f64,
            p.steady_rps,
            push.from_ack.pct(50.0),
            p.from_ack.pct(50.0),
            push.from_ack.pct(99.0),
            p.from_ack.pct(99.0),
            p.from_ack.pct(99.0) / push.from_ack.pct(99.0).max(0.001),
        );
    }
}

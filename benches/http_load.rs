//! Throughput and footprint of the HTTP API, side by side in one run (issue 11):
//!
//! ```text
//! cargo build --profile dist && IDVB_BENCH_BIN=target/dist/idv-broker \
//!     cargo bench --bench http_load -- --seconds 3 --connections 32 --sessions 150000
//! ```
//!
//! (`dist` builds the broker as published binaries are built; `cargo build --release` and
//! no `IDVB_BENCH_BIN` measure the `release` profile, which builds faster.)
//!
//! Layout of a run:
//! - start the broker (`IDVB_BENCH_BIN`, else `target/release/idv-broker`) on
//!   `127.0.0.1:0` with a fresh database, rate limit off, logs at `warn`;
//! - **rates**, each for `--seconds` with `--connections` keep-alive connections, closed
//!   loop, in `--rounds` rounds (3 unless set) of: `GET /healthz` (the ceiling: routing
//!   and HTTP only), `POST /v1/sessions` (a durable create: token generation and
//!   hashing, the group commit, the actor spawn), `GET /v1/sessions/{id}/status` (a
//!   read served by the live actor). The create and status rates are reported as
//!   ratios to the `/healthz` rate of their own round, seconds apart on the same box,
//!   which cancels most of the machine's noise; the figure is the median over the
//!   rounds, with every round's ratio beside it; each round also prints the broker's
//!   CPU per create over its CPU per `/healthz` (issue 28's target: at most 2);
//! - **memory**, on a second broker with a fresh database: `--sessions` created, the
//!   first third to warm up (page cache, allocator arenas), the broker's RSS after the
//!   warm-up and after the rest → bytes per idle live session;
//! - **restart**: SIGTERM (waited for), then the same binary on the same database, with
//!   `--sessions` live: time from spawn to `listening on` (every live session restored
//!   and its actor started before it listens), and to the answer of the last session
//!   created (its actor armed).
//!
//! Beside each rate it reports the CPU time per request: the broker's, by thread group
//! (HTTP workers, the store writer, the rest; from `/proc/<pid>/task/*/stat`), and the
//! load client's own. On a shared two-core box a rate moves with whatever else runs;
//! the CPU a request costs moves much less, and tells where a change helped.
//! `--ab-data-key` runs, on a broker without and one with `--data-key`, rounds
//! interleaved, only creates and approves: a create, and an approve journey (create
//! with `registration`, `GET …/information`, a 48 KiB selfie `PUT`, then approve with
//! shared data: the transition that seals most, shared data and the file). It reports
//! each rate's ratio to `/healthz` of its own broker and round, the approve latency,
//! and the quotients sealed/plain (issue 25).
//! `--only healthz|create|status` runs one rate window alone (to profile one path, e.g.
//! with `perf record -p <broker>`).
//!
//! The load client is a minimal HTTP/1.1 client over raw sockets, so that it takes as
//! little of the two cores as it can. Everything goes to 127.0.0.1 and every phase has
//! a deadline, so a run always ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "broker/mod.rs"]
mod broker;
use broker::*;

/// Creates in flight at once while filling the broker with idle sessions.
/// No phase runs longer than this, whatever the arguments.
const PHASE_DEADLINE: Duration = Duration::from_secs(600);

struct Args {
    seconds: u64,
    connections: usize,
    sessions: usize,
    /// Run only this rate window, for as long as `--seconds` says (to profile one path).
    only: Option<String>,
    /// Rounds of the three rate windows; the ratios reported are their medians.
    rounds: usize,
    /// `--ab-data-key`: only creates, on two brokers side by side, one without and one
    /// with `--data-key` (issue 25), their rounds interleaved (A, B, then B, A …).
    ab_data_key: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        seconds: 5,
        connections: 32,
        sessions: 100_000,
        only: None,
        rounds: 3,
        ab_data_key: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = val().parse().expect("--seconds"),
            "--connections" | "-c" => a.connections = val().parse().expect("--connections"),
            "--sessions" => {
                a.sessions = val().parse().expect("--sessions");
                assert!(a.sessions >= 3, "--sessions must be at least 3");
            }
            "--only" => a.only = Some(val()),
            "--ab-data-key" => a.ab_data_key = true,
            "--rounds" => {
                a.rounds = val().parse().expect("--rounds");
                assert!(a.rounds > 0, "--rounds must be at least 1");
            }
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// A data key for the A/B run of sealing (`--ab-data-key`).
const BENCH_DATA_KEY: &str = "bench=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The body of every create.
const CREATE_BODY: &str = r#"{"scopes":["full_name","date_of_birth"],"vendor_data":"bench"}"#;

/// What one rate window measured.
struct Rate {
    per_second: f64,
    /// Broker CPU per request, in microseconds, by thread group, and in all.
    cpu_us: std::collections::BTreeMap<String, f64>,
    /// The load client's own CPU per request, in microseconds.
    client_us: f64,
}

impl Rate {
    fn broker_us(&self) -> f64 {
        self.cpu_us.values().sum()
    }

    fn cpu_note(&self) -> String {
        let parts: Vec<String> = self
            .cpu_us
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        format!(
            "{:.1} µs ({}); client {:.1} µs",
            self.broker_us(),
            parts.join(", "),
            self.client_us
        )
    }
}

/// CPU time of this process so far, in microseconds.
fn own_cpu_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let close = stat.rfind(')').unwrap();
    stat_ticks(&stat[close..]) as f64 * 10_000.0
}

/// One rate window: `healthz`, `create`, or `status` (on one session per connection,
/// opened first).
async fn window(which: &str, addr: &str, pid: u32, c: usize, seconds: u64) -> Rate {
    match which {
        "healthz" => rate(addr, pid, c, seconds, 200, |_| get("/healthz", None)).await,
        "create" => rate(addr, pid, c, seconds, 201, |_| create_request(CREATE_BODY)).await,
        "status" => {
            let watched = fill(addr, CREATE_BODY, c, PHASE_DEADLINE).await;
            rate(addr, pid, c, seconds, 200, |i| {
                let (id, token) = &watched[i];
                get(&format!("/v1/sessions/{id}/status"), Some(token))
            })
            .await
        }
        other => panic!("--only healthz|create|status, not {other}"),
    }
}

/// Requests per second over `seconds`, `connections` closed loops each sending what
/// `request(i)` makes for its connection `i` and expecting `want`; with the CPU the
/// broker (`pid`) and this client spent per request meanwhile.
async fn rate(
    addr: &str,
    pid: u32,
    connections: usize,
    seconds: u64,
    want: u16,
    request: impl Fn(usize) -> Vec<u8>,
) -> Rate {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (stop, done, req) = (stop.clone(), done.clone(), request(i));
        let addr = addr.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = conn.call(&req).await;
                assert_eq!(status, want, "{}", String::from_utf8_lossy(&body));
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let measured = measure(pid, seconds, &done).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(PHASE_DEADLINE, t)
            .await
            .unwrap()
            .unwrap();
    }
    measured
}

/// Counts what the closed loops running meanwhile add to `done` over `seconds`, after
/// half a second to warm up; with the CPU the broker (`pid`) and this client spent per
/// unit counted.
async fn measure(pid: u32, seconds: u64, done: &AtomicU64) -> Rate {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (from, t0) = (done.load(Ordering::Relaxed), Instant::now());
    let (cpu0, own0) = (cpu_by_thread(pid), own_cpu_us());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let n = done.load(Ordering::Relaxed) - from;
    let elapsed = t0.elapsed();
    let (cpu1, own1) = (cpu_by_thread(pid), own_cpu_us());
    let per_request = |ticks: u64| ticks as f64 * 10_000.0 / n.max(1) as f64;
    Rate {
        per_second: n as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu1
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    per_request(v - cpu0.get(k).copied().unwrap_or(0)),
                )
            })
            .collect(),
        client_us: (own1 - own0) / n.max(1) as f64,
    }
}

/// Bytes of the selfie each approve journey uploads (the size of SPEC §3's example).
const SELFIE_BYTES: usize = 48 * 1024;

/// Approve journeys per second over `seconds`, `connections` closed loops each: a
/// create with `registration`, `GET …/information` (the device binds: `retrieved`), a
/// selfie `PUT` (held in memory until consent), then approve with shared data (the
/// transition that writes, and with `--data-key` seals, the shared data and the file).
/// CPU is per journey; also answers the mean latency of the approve alone.
async fn approve_journeys(
    addr: &str,
    pid: u32,
    connections: usize,
    seconds: u64,
) -> (Rate, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let approve_ns = Arc::new(AtomicU64::new(0));
    let (issuer, secret) = ISSUER.split_once('=').unwrap();
    let create = {
        let body = r#"{"scopes":["full_name","date_of_birth","selfie"],"vendor_data":"bench-user","external_reference_id":"bench-ref","registration":{"first_name":"Bench","last_name":"Person"}}"#;
        format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: bench\r\nX-Api-Key: {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
    image.resize(SELFIE_BYTES, 0x5a);
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (stop, done, approve_ns) = (stop.clone(), done.clone(), approve_ns.clone());
        let (addr, create, image) = (addr.to_owned(), create.clone(), image.clone());
        let token =
            idv_actors::credentials::mint_device_jwt(issuer, secret, &format!("bench-{i}"), 600)
                .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            let expect = |(status, body): (u16, Vec<u8>), want: u16| {
                assert_eq!(status, want, "{}", String::from_utf8_lossy(&body));
                body
            };
            while !stop.load(Ordering::Relaxed) {
                let body = expect(conn.call(&create).await, 201);
                let v: Value = serde_json::from_slice(&body).unwrap();
                let id = v["session_id"].as_str().unwrap().to_owned();
                expect(
                    conn.call(&get(&format!("/v1/sessions/{id}/information"), Some(&token)))
                        .await,
                    200,
                );
                let mut put = format!(
                    "PUT /v1/sessions/{id}/files/selfie HTTP/1.1\r\nHost: bench\r\n\
                     Authorization: Bearer {token}\r\nContent-Type: image/png\r\n\
                     Content-Length: {}\r\n\r\n",
                    image.len()
                )
                .into_bytes();
                put.extend_from_slice(&image);
                expect(conn.call(&put).await, 201);
                let approve = r#"{"decision":"approve","shared_data":{"full_name":"Bench Person","date_of_birth":"1990-01-01"}}"#;
                let approve = format!(
                    "POST /v1/sessions/{id}/update HTTP/1.1\r\nHost: bench\r\n\
                     Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{approve}",
                    approve.len()
                )
                .into_bytes();
                let t0 = Instant::now();
                expect(conn.call(&approve).await, 200);
                approve_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let measured = measure(pid, seconds, &done).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(PHASE_DEADLINE, t)
            .await
            .unwrap()
            .unwrap();
    }
    // Over every approve of the loops, the half second of warm-up included.
    let mean = approve_ns.load(Ordering::Relaxed) / done.load(Ordering::Relaxed).max(1);
    (measured, Duration::from_nanos(mean))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let (broker, _) = start_broker(&db, &[]);
    let addr = broker.addr.clone();
    let c = args.connections;

    let pid = broker.child.id();
    if args.ab_data_key {
        let (sealed, _) = start_broker(
            &dir.path().join("sealed.db"),
            &["--data-key", BENCH_DATA_KEY],
        );
        let brokers = [("plain", &broker), ("sealed", &sealed)];
        // Per broker: create/healthz and approve/healthz ratios, and approve latencies.
        let mut creates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut approves: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut latencies: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..args.rounds {
            // Alternate who goes first, so a trend over the run favours neither.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (name, b) = brokers[i];
                let pid = b.child.id();
                let healthz = window("healthz", &b.addr, pid, c, args.seconds).await;
                let created = window("create", &b.addr, pid, c, args.seconds).await;
                let (approved, latency) = approve_journeys(&b.addr, pid, c, args.seconds).await;
                let (cr, ar) = (
                    created.per_second / healthz.per_second,
                    approved.per_second / healthz.per_second,
                );
                println!(
                    "round {round} {name}: healthz {:.0}/s; creates {:.0}/s (ratio {cr:.4}, \
                     CPU per create {}); approve journeys {:.0}/s (ratio {ar:.4}, approve \
                     mean {:.2} ms, CPU per journey {})",
                    healthz.per_second,
                    created.per_second,
                    created.cpu_note(),
                    approved.per_second,
                    latency.as_secs_f64() * 1000.0,
                    approved.cpu_note()
                );
                creates[i].push(cr);
                approves[i].push(ar);
                latencies[i].push(latency.as_secs_f64() * 1000.0);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        for (what, v) in [
            ("create/healthz", &mut creates),
            ("approve journey/healthz", &mut approves),
            ("approve mean latency (ms)", &mut latencies),
        ] {
            let (plain, sealed) = (median(&mut v[0]), median(&mut v[1]));
            println!(
                "median {what}: plain {plain:.4}, sealed {sealed:.4}: sealed/plain {:.3}",
                sealed / plain
            );
        }
        return;
    }
    if let Some(only) = &args.only {
        let r = window(only, &addr, pid, c, args.seconds).await;
        println!(
            "{only}: {:.0}/s, CPU per request {}",
            r.per_second,
            r.cpu_note()
        );
        return;
    }
    // Rounds of healthz → create → status: each ratio is taken within its round, and
    // the median over the rounds is the figure, so that one slow minute on a shared
    // box moves one round rather than the result.
    let mut rounds = Vec::with_capacity(args.rounds);
    for i in 0..args.rounds {
        let healthz = window("healthz", &addr, pid, c, args.seconds).await;
        let creates = window("create", &addr, pid, c, args.seconds).await;
        let status = window("status", &addr, pid, c, args.seconds).await;
        let round = Round {
            healthz,
            creates,
            status,
        };
        // Issue 28's target, round by round: broker CPU per create ≤ 2× per `/healthz`.
        println!(
            "round {i}: /healthz {:.0}/s at {:.1} µs of broker CPU; creates {:.0}/s at {:.1} µs \
             (rate ratio {:.2}); broker CPU per create / per /healthz {:.2} (target ≤ 2)",
            round.healthz.per_second,
            round.healthz.broker_us(),
            round.creates.per_second,
            round.creates.broker_us(),
            round.create_ratio(),
            round.create_cpu_ratio(),
        );
        rounds.push(round);
    }

    drop(broker);

    // Memory and restart on a broker of their own, so that they measure `--sessions`
    // whatever the rate windows created. The first third is a warm-up: the store's page
    // cache and the allocator's arenas reach their working size (fixed costs, not costs
    // per session); the RSS after it and after the rest gives the memory per session.
    let db = dir.path().join("footprint.db");
    let (broker, _) = start_broker(&db, &[]);
    let (addr, pid) = (broker.addr.clone(), broker.pid());
    let warm = args.sessions / 3;
    fill(&addr, CREATE_BODY, warm, PHASE_DEADLINE).await;
    let before = settled_rss(pid).await;
    let added = args.sessions - warm;
    let t0 = Instant::now();
    let created = fill(&addr, CREATE_BODY, added, PHASE_DEADLINE).await;
    let fill_secs = t0.elapsed().as_secs_f64();
    let after = settled_rss(pid).await;
    let live = count_live(&db);
    let per_session = after.saturating_sub(before) as f64 / added as f64;

    // Restart with every session still live, after a graceful stop.
    let last = created.last().cloned().unwrap();
    broker.stop();
    let (listening, answered, _) = restart(&db, &[], &last).await;

    println!(
        "## HTTP throughput and footprint ({c} connections, {} rounds of {}s windows)\n",
        args.rounds, args.seconds
    );
    let by_create = median_round(&rounds, Round::create_ratio);
    let by_status = median_round(&rounds, Round::status_ratio);
    let ratios = |f: fn(&Round) -> f64| {
        let all: Vec<String> = rounds.iter().map(|r| format!("{:.2}", f(r))).collect();
        all.join(", ")
    };
    println!(
        "| measure | per second (median round) | ratio to `/healthz` (median) | ratio by round |"
    );
    println!("|---|---|---|---|");
    println!(
        "| `GET /healthz` (in the round of the median create ratio) | {:.0} | 1.00 | |",
        by_create.healthz.per_second
    );
    println!(
        "| `POST /v1/sessions` (durable) | {:.0} | {:.2} | {} |",
        by_create.creates.per_second,
        by_create.create_ratio(),
        ratios(Round::create_ratio)
    );
    println!(
        "| `GET /v1/sessions/{{id}}/status` | {:.0} | {:.2} | {} |",
        by_status.status.per_second,
        by_status.status_ratio(),
        ratios(Round::status_ratio)
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| broker memory per idle live session ({live} live, {added} added in {fill_secs:.1} s after {warm} to warm up) | {:.2} KiB |",
        per_session / 1024.0
    );
    println!(
        "| restart with {live} live sessions: to `listening on` | {:.2} s |",
        listening.as_secs_f64()
    );
    println!(
        "| restart: to the last session's answer (its actor armed) | {:.2} s |",
        answered.as_secs_f64()
    );
    let by_cpu = median_round(&rounds, Round::create_cpu_ratio);
    println!(
        "\nBroker CPU per create / broker CPU per `/healthz` (target ≤ 2): median {:.2} \
         ({:.1} / {:.1} µs); by round {}",
        by_cpu.create_cpu_ratio(),
        by_cpu.creates.broker_us(),
        by_cpu.healthz.broker_us(),
        ratios(Round::create_cpu_ratio)
    );
    println!("\nCPU per request, broker (by thread group) and load client, in the round of the median create ratio:\n");
    println!("| window | CPU per request | ratio to `/healthz` (broker) |");
    println!("|---|---|---|");
    let r = by_create;
    for (name, w) in [
        ("`GET /healthz`", &r.healthz),
        ("`POST /v1/sessions`", &r.creates),
        ("`GET /v1/sessions/{id}/status`", &r.status),
    ] {
        println!(
            "| {name} | {} | {:.2} |",
            w.cpu_note(),
            w.broker_us() / r.healthz.broker_us()
        );
    }
}

/// The three rate windows of one round, run back to back.
struct Round {
    healthz: Rate,
    creates: Rate,
    status: Rate,
}

impl Round {
    fn create_ratio(&self) -> f64 {
        self.creates.per_second / self.healthz.per_second
    }

    fn status_ratio(&self) -> f64 {
        self.status.per_second / self.healthz.per_second
    }

    /// Broker CPU per create over broker CPU per `/healthz` (issue 28: ≤ 2).
    fn create_cpu_ratio(&self) -> f64 {
        self.creates.broker_us() / self.healthz.broker_us()
    }
}

/// The round whose `ratio` is the median (the upper one of an even count).
fn median_round(rounds: &[Round], ratio: impl Fn(&Round) -> f64) -> &Round {
    let mut order: Vec<&Round> = rounds.iter().collect();
    order.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    order[order.len() / 2]
}

/// Live sessions in the database (read-only, beside the running broker).
fn count_live(db: &std::path::Path) -> usize {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        &format!(
            "SELECT count(*) FROM sessions WHERE status IN {}",
            idv_actors::status::Status::live_sql()
        ),
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as usize
}

//! `scale million`: a million live sessions on one node (issue 28).
//!
//! 1. A broker on a fresh database is filled through the API with `--sessions`
//!    (1,000,000) live sessions (`ttl_seconds` 86400, so none expires during the run),
//!    64 creates in flight: its settled RSS after the first `--small` (10,000) and after
//!    all, and the bytes per live session between the two.
//! 2. SIGTERM (waited for), the same binary on the same database: time from spawn to
//!    `listening on` (every live session restored and its actor started first), to the
//!    answer of the last session created, and the settled RSS.
//! 3. Stopped again, `--ended` (5,000,000) ended sessions are added in SQL, copies of
//!    one cancelled through the API (row and events, new ids), and the file synced;
//!    restarted twice (the first start after the seed is reported apart): the same
//!    figures with 1M live and 5M ended.
//! 4. In `--rounds` (3) interleaved rounds, each window `--seconds` (3) with
//!    `--connections` (32) closed loops:
//!    - `GET …/status` on sessions drawn at random from all the big broker's live ones,
//!      against a second broker holding `--small` (every lookup a registry lookup and
//!      a token check): requests per second and broker CPU per request;
//!    - `POST /v1/sessions` on the big broker (1M live, 5M ended) against a broker
//!      started on an empty database for the round: creates per second, broker CPU
//!      per create and the store writer thread's share of it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    count_sessions, cpu_by_thread, create_request, fill, get, loadavg, mib, restart, settled_rss,
    start_broker, take, Broker, Conn, API_KEY, PHASE_DEADLINE,
};

/// The create of the fill and of the create windows: a day's TTL, so that nothing
/// expires (and no expiry work runs) while the bench does.
const CREATE_BODY: &str =
    r#"{"scopes":["full_name","date_of_birth"],"vendor_data":"bench","ttl_seconds":86400}"#;

/// What one rate window measured.
struct Rate {
    per_second: f64,
    /// Broker CPU per request, in microseconds, by thread group.
    cpu_us: BTreeMap<String, f64>,
}

impl Rate {
    fn broker_us(&self) -> f64 {
        self.cpu_us.values().sum()
    }

    fn writer_us(&self) -> f64 {
        self.cpu_us.get("store writer").copied().unwrap_or(0.0)
    }
}

pub async fn run(mut flags: BTreeMap<String, String>) {
    let sessions: usize = take(&mut flags, "sessions", 1_000_000);
    let small: usize = take(&mut flags, "small", 10_000);
    let ended: usize = take(&mut flags, "ended", 5_000_000);
    let seconds: u64 = take(&mut flags, "seconds", 3);
    let rounds: usize = take(&mut flags, "rounds", 3);
    let c: usize = take(&mut flags, "connections", 32);
    assert!(flags.is_empty(), "unknown flags {flags:?}");
    assert!(
        sessions > small && small > 0,
        "--sessions must exceed --small"
    );

    let dir = tempfile::tempdir().unwrap();
    let big_db = dir.path().join("big.db");
    // Room for the fill and for what the create windows add (about 20,000 a second
    // here; a cap of twice a small `--sessions` was reached within one window).
    let cap = (sessions + 1_000_000).to_string();
    let extra = ["--max-live-sessions", cap.as_str()];
    println!("load average at start: {}", loadavg());

    // 1. The fill.
    let (broker, _) = start_broker(&big_db, &extra);
    let (addr, pid) = (broker.addr.clone(), broker.pid());
    let empty_rss = settled_rss(pid).await;
    let mut tokens = fill(&addr, CREATE_BODY, small, PHASE_DEADLINE).await;
    let small_rss = settled_rss(pid).await;
    let t0 = Instant::now();
    tokens.extend(fill(&addr, CREATE_BODY, sessions - small, PHASE_DEADLINE).await);
    let fill_secs = t0.elapsed().as_secs_f64();
    let full_rss = settled_rss(pid).await;
    println!(
        "filled {sessions} in {fill_secs:.1} s after the first {small}; RSS {:.1} MiB empty, {:.1} MiB at {small}, {:.1} MiB at {sessions}; load average {}",
        mib(empty_rss),
        mib(small_rss),
        mib(full_rss),
        loadavg()
    );
    // The prototype of the ended sessions: one created and cancelled.
    let (proto, _) = fill(&addr, CREATE_BODY, 1, PHASE_DEADLINE)
        .await
        .pop()
        .unwrap();
    let mut conn = Conn::open(&addr).await;
    let cancel = format!(
        "DELETE /v1/sessions/{proto} HTTP/1.1\r\nHost: bench\r\nX-Api-Key: {API_KEY}\r\n\r\n"
    );
    let (code, body) = conn.call(cancel.as_bytes()).await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    drop(conn);
    broker.stop();

    // 2. Restart with the live sessions only.
    let last = tokens.last().cloned().unwrap();
    let (live_restart, live_answer, live_rss) = restart(&big_db, &extra, &last).await;
    let (live, _) = count_sessions(&big_db);
    println!(
        "restart with {live} live: listening after {:.2} s, last session answered after {:.2} s, RSS {:.1} MiB",
        live_restart.as_secs_f64(),
        live_answer.as_secs_f64(),
        mib(live_rss)
    );

    // 3. The ended sessions, then restart with both.
    let t0 = Instant::now();
    seed_ended(&big_db, &proto, ended);
    let seed_secs = t0.elapsed().as_secs_f64();
    let db_bytes = std::fs::metadata(&big_db).unwrap().len();
    // Twice: the first start after the seed pays once for what the seed left (the
    // second is a restart as an operator sees it).
    let (first_restart, _, _) = restart(&big_db, &extra, &last).await;
    let (all_restart, all_answer, all_rss) = restart(&big_db, &extra, &last).await;
    let (live, ended_now) = count_sessions(&big_db);
    println!(
        "{ended} ended added in SQL in {seed_secs:.1} s (database {:.0} MiB); restart with {live} live and {ended_now} ended: listening after {:.2} s (first start after the seed: {:.2} s), last answered after {:.2} s, RSS {:.1} MiB; load average {}",
        mib(db_bytes),
        all_restart.as_secs_f64(),
        first_restart.as_secs_f64(),
        all_answer.as_secs_f64(),
        mib(all_rss),
        loadavg()
    );

    // 4. Side by side, in interleaved rounds.
    let (big, _) = start_broker(&big_db, &extra);
    let (small_broker, _) = start_broker(&dir.path().join("small.db"), &[]);
    let small_tokens = Arc::new(fill(&small_broker.addr, CREATE_BODY, small, PHASE_DEADLINE).await);
    let tokens = Arc::new(tokens);
    let mut status: [Vec<Rate>; 2] = [Vec::new(), Vec::new()];
    let mut creates: [Vec<Rate>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (b, t) = if i == 0 {
                (&big, &tokens)
            } else {
                (&small_broker, &small_tokens)
            };
            status[i].push(status_window(b, t.clone(), c, seconds).await);
        }
        let empty_db = dir.path().join(format!("empty-{round}.db"));
        let (empty, _) = start_broker(&empty_db, &[]);
        for i in order {
            let b = if i == 0 { &big } else { &empty };
            creates[i].push(create_window(b, c, seconds).await);
        }
        drop(empty);
        let _ = std::fs::remove_file(&empty_db);
        println!(
            "round {round}: status {:.0}/s at {sessions}, {:.0}/s at {small}; creates {:.0}/s on the big database, {:.0}/s on an empty one; load average {}",
            status[0][round].per_second,
            status[1][round].per_second,
            creates[0][round].per_second,
            creates[1][round].per_second,
            loadavg()
        );
    }
    let (live_end, ended_end) = count_sessions(&big_db);
    drop(big);
    drop(small_broker);

    println!("\n## A million live sessions on one node\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| RSS with {sessions} live sessions (filled through the API in {fill_secs:.1} s) | {:.1} MiB |",
        mib(full_rss)
    );
    println!(
        "| RSS with {small} / empty | {:.1} MiB / {:.1} MiB |",
        mib(small_rss),
        mib(empty_rss)
    );
    println!(
        "| memory per live session, between {small} and {sessions} | {:.2} KiB |",
        (full_rss - small_rss) as f64 / (sessions - small) as f64 / 1024.0
    );
    println!(
        "| restart, {sessions} live: spawn → `listening on` / → last session's answer / RSS after | {:.2} s / {:.2} s / {:.1} MiB |",
        live_restart.as_secs_f64(),
        live_answer.as_secs_f64(),
        mib(live_rss)
    );
    println!(
        "| restart, {sessions} live + {ended} ended ({:.0} MiB database): spawn → `listening on` / → last session's answer / RSS after | {:.2} s / {:.2} s / {:.1} MiB |",
        mib(db_bytes),
        all_restart.as_secs_f64(),
        all_answer.as_secs_f64(),
        mib(all_rss)
    );
    println!(
        "| the first start after the seed (once; what the seed left is paid here) | {:.2} s |",
        first_restart.as_secs_f64()
    );
    println!("\nIn {rounds} interleaved rounds of {seconds} s windows, {c} connections (big broker at the end: {live_end} live, {ended_end} ended):\n");
    println!("| window | broker | per second, by round | broker CPU per request (µs), by round | of which the store writer (µs) | median ratio big/small in CPU per request |");
    println!("|---|---|---|---|---|---|");
    for (what, pair, names) in [
        (
            "`GET …/status`, random live session",
            &status,
            [format!("{sessions} live"), format!("{small} live")],
        ),
        (
            "`POST /v1/sessions`",
            &creates,
            [
                format!("{sessions} live + {ended} ended"),
                "empty database".to_owned(),
            ],
        ),
    ] {
        let ratio = median(
            pair[0]
                .iter()
                .zip(&pair[1])
                .map(|(a, b)| a.broker_us() / b.broker_us())
                .collect(),
        );
        for (i, name) in names.iter().enumerate() {
            let list = |f: &dyn Fn(&Rate) -> f64, p: usize| {
                pair[i]
                    .iter()
                    .map(|r| format!("{:.p$}", f(r)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "| {what} | {name} | {} | {} | {} | {} |",
                list(&|r| r.per_second, 0),
                list(&|r| r.broker_us(), 1),
                list(&|r| r.writer_us(), 1),
                if i == 0 {
                    format!("{ratio:.3}")
                } else {
                    String::new()
                }
            );
        }
    }
    println!("\nload average at the end: {}", loadavg());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Adds `n` copies of the ended session `proto` (its row with a new id and token hash,
/// and its events), in one transaction on the stopped broker's database.
fn seed_ended(db: &Path, proto: &str, n: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    // The broker is stopped: no journal needed for a bench's seed, and a large cache
    // keeps the B-trees' pages in memory. The broker turns WAL back on at its start.
    conn.execute_batch(
        "PRAGMA journal_mode = DELETE; PRAGMA synchronous = OFF; PRAGMA cache_size = -1048576;",
    )
    .unwrap();
    let columns = |table: &str| -> Vec<String> {
        let mut st = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let new_id = "printf('%08x-0000-4000-8000-%012x', n.i, n.i)";
    let copy = |table: &str, key: &str, replace: &[(&str, &str)]| {
        let cols = columns(table);
        let select: Vec<String> = cols
            .iter()
            .map(|c| {
                replace
                    .iter()
                    .find(|(name, _)| name == c)
                    .map_or_else(|| format!("p.{c}"), |(_, e)| (*e).to_owned())
            })
            .collect();
        let sql = format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1) \
             INSERT INTO {table} ({}) SELECT {} FROM n, {table} AS p WHERE p.{key} = ?2 ORDER BY n.i",
            cols.join(", "),
            select.join(", ")
        );
        let rows = conn
            .execute(&sql, rusqlite::params![n as i64, proto])
            .unwrap();
        assert!(rows >= n, "{table}: {rows} rows copied");
    };
    conn.execute_batch("BEGIN").unwrap();
    copy(
        "sessions",
        "id",
        &[("id", new_id), ("token_hash", "randomblob(32)")],
    );
    copy("session_events", "session_id", &[("session_id", new_id)]);
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    // Written with `synchronous = OFF`: without this, the broker's first fsync at its
    // start (the checkpoint at open) would write the whole seed back, seconds that
    // are the seed's and not the restart's.
    std::fs::File::open(db).unwrap().sync_all().unwrap();
}

/// A pseudo-random draw (splitmix64) from a connection's number and its request count.
pub fn draw(conn: usize, n: u64) -> u64 {
    let mut z = (conn as u64) << 40 ^ n;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `GET …/status` of a session drawn at random from `tokens` for every request.
async fn status_window(
    broker: &Broker,
    tokens: Arc<Vec<(String, String)>>,
    c: usize,
    seconds: u64,
) -> Rate {
    rate(broker, c, seconds, 200, move |conn, n| {
        let (id, token) = &tokens[(draw(conn, n) % tokens.len() as u64) as usize];
        get(&format!("/v1/sessions/{id}/status"), Some(token))
    })
    .await
}

async fn create_window(broker: &Broker, c: usize, seconds: u64) -> Rate {
    let req = create_request(CREATE_BODY);
    rate(broker, c, seconds, 201, move |_, _| req.clone()).await
}

/// Requests per second over `seconds` (after half a second to warm up), `c` closed
/// loops each sending `request(its number, its count)` and expecting `want`; with the
/// CPU the broker spent per request meanwhile.
async fn rate(
    broker: &Broker,
    c: usize,
    seconds: u64,
    want: u16,
    request: impl Fn(usize, u64) -> Vec<u8> + Send + Sync + 'static,
) -> Rate {
    let request = Arc::new(request);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..c {
        let (stop, done, request) = (stop.clone(), done.clone(), request.clone());
        let addr = broker.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = conn.call(&request(i, n)).await;
                assert_eq!(status, want, "{}", String::from_utf8_lossy(&body));
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let pid = broker.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (from, t0, cpu0) = (
        done.load(Ordering::Relaxed),
        Instant::now(),
        cpu_by_thread(pid),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let n = done.load(Ordering::Relaxed) - from;
    let (elapsed, cpu1) = (t0.elapsed(), cpu_by_thread(pid));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(PHASE_DEADLINE, t)
            .await
            .unwrap()
            .unwrap();
    }
    Rate {
        per_second: n as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu1
            .iter()
            .map(|(k, v)| {
                let ticks = v - cpu0.get(k).copied().unwrap_or(0);
                (k.clone(), ticks as f64 * 10_000.0 / n.max(1) as f64)
            })
            .collect(),
    }
}

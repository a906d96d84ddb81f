//! `scale soak`: does the broker's memory level off under steady traffic (issue 28)?
//!
//! For `--minutes` (30), open loop:
//! - `--rate` (60) whole journeys a second: a create with `registration`,
//!   `GET …/information` (the device binds), a `--selfie-kib` (48) KiB selfie `PUT`
//!   (staged in memory), approve with shared data (the data and the file are written:
//!   the database grows by a confirmed session each);
//! - `--expiring-rate` (10) sessions a second created with `ttl_seconds` `--ttl` (30),
//!   bound by the device and given a selfie, then left to expire on their own (their
//!   staged upload discarded, their data deleted);
//!
//! and every `--sample-seconds` (15) the broker's RSS, the journeys and expiring
//! sessions so far, the live and ended sessions in the database, and the database's
//! size. At the end: the series at the start, every 5 minutes and the end, and the
//! RSS's growth per minute over each third of the run (a level-off shows as the last
//! third's slope near zero).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    count_sessions, create_request, get, loadavg, mib, rss, start_broker, take, Conn, ISSUER,
};

/// Tasks that each start a share of the journeys (and of the expiring sessions): at
/// most this many are in flight at once.
const WORKERS: u64 = 8;

#[derive(Default)]
struct Counters {
    journeys: AtomicU64,
    expiring: AtomicU64,
    /// Answers other than the one expected, by any step.
    errors: AtomicU64,
    /// Ticks a worker started late because its previous journey had not finished.
    late: AtomicU64,
}

struct Sample {
    at: Duration,
    rss: u64,
    journeys: u64,
    expiring: u64,
    errors: u64,
    live: i64,
    ended: i64,
    db_bytes: u64,
}

pub async fn run(mut flags: BTreeMap<String, String>) {
    let minutes: f64 = take(&mut flags, "minutes", 30.0);
    let rate: f64 = take(&mut flags, "rate", 60.0);
    let expiring_rate: f64 = take(&mut flags, "expiring-rate", 10.0);
    let ttl: u64 = take(&mut flags, "ttl", 30);
    let sample_every: u64 = take(&mut flags, "sample-seconds", 15);
    let selfie_kib: usize = take(&mut flags, "selfie-kib", 48);
    assert!(flags.is_empty(), "unknown flags {flags:?}");

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("soak.db");
    let (broker, _) = start_broker(&db, &[]);
    let (addr, pid) = (broker.addr.clone(), broker.pid());
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = Duration::from_secs_f64(minutes * 60.0);
    let (issuer, secret) = ISSUER.split_once('=').unwrap();
    let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
    image.resize(selfie_kib * 1024, 0x5a);
    let image = Arc::new(image);

    println!(
        "soak: {minutes} min, {rate} journeys/s, {expiring_rate} expiring sessions/s (ttl {ttl} s), \
         selfie {selfie_kib} KiB, RSS every {sample_every} s; load average at start {}",
        loadavg()
    );
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (kind, per_second) in [("journey", rate), ("expiring", expiring_rate)] {
        if per_second <= 0.0 {
            continue;
        }
        let period = Duration::from_secs_f64(WORKERS as f64 / per_second);
        for w in 0..WORKERS {
            let (addr, counters, stop, image) =
                (addr.clone(), counters.clone(), stop.clone(), image.clone());
            let token = idv_actors::credentials::mint_device_jwt(
                issuer,
                secret,
                &format!("soak-{kind}-{w}"),
                (minutes * 60.0) as u64 + 3600,
            )
            .unwrap();
            tasks.push(tokio::spawn(async move {
                // Staggered, so that the workers' ticks spread evenly over the period.
                tokio::time::sleep(period.mul_f64(w as f64 / WORKERS as f64)).await;
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut conn = Conn::open(&addr).await;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let started = Instant::now();
                    if kind == "journey" {
                        if journey(&mut conn, &token, &image, &counters).await {
                            counters.journeys.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if expiring(&mut conn, &token, &image, ttl, &counters).await {
                        counters.expiring.fetch_add(1, Ordering::Relaxed);
                    }
                    if started.elapsed() > period {
                        counters.late.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }

    let sample = |at: Duration| {
        let (live, ended) = count_sessions(&db);
        let db_bytes = ["soak.db", "soak.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
            .map(|m| m.len())
            .sum();
        Sample {
            at,
            rss: rss(pid),
            journeys: counters.journeys.load(Ordering::Relaxed),
            expiring: counters.expiring.load(Ordering::Relaxed),
            errors: counters.errors.load(Ordering::Relaxed),
            live,
            ended,
            db_bytes,
        }
    };
    let print = |s: &Sample| {
        println!(
            "| {:.1} | {:.1} | {} | {} | {} | {} | {} | {:.0} | {} |",
            s.at.as_secs_f64() / 60.0,
            mib(s.rss),
            s.journeys,
            s.expiring,
            s.live,
            s.ended,
            s.errors,
            mib(s.db_bytes),
            loadavg()
        );
    };
    println!(
        "\n| minute | RSS (MiB) | journeys | expiring created | live | ended | errors | database + WAL (MiB) | load average |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut series = vec![sample(Duration::ZERO)];
    print(&series[0]);
    let every = Duration::from_secs(sample_every);
    while t0.elapsed() < run_for {
        let next = every * series.len() as u32;
        tokio::time::sleep(next.saturating_sub(t0.elapsed())).await;
        let s = sample(t0.elapsed());
        print(&s);
        series.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    // The last expiring sessions expire, and their staged selfies go.
    tokio::time::sleep(Duration::from_secs(ttl + 3)).await;
    let after = sample(t0.elapsed());
    let elapsed = series.last().unwrap().at.as_secs_f64();
    let last = series.last().unwrap();

    println!("\n## Soak: RSS over {minutes} min\n");
    println!(
        "{} journeys ({:.1}/s), {} expiring sessions ({:.1}/s), {} errors, {} ticks late; \
         load average at the end {}\n",
        last.journeys,
        last.journeys as f64 / elapsed,
        last.expiring,
        last.expiring as f64 / elapsed,
        last.errors,
        counters.late.load(Ordering::Relaxed),
        loadavg()
    );
    println!("| minute | RSS (MiB) | journeys | live | ended | database + WAL (MiB) |");
    println!("|---|---|---|---|---|---|");
    let mut mark = 0.0;
    for (i, s) in series.iter().enumerate() {
        let minute = s.at.as_secs_f64() / 60.0;
        if i == 0 || i + 1 == series.len() || minute >= mark {
            println!(
                "| {minute:.1} | {:.1} | {} | {} | {} | {:.0} |",
                mib(s.rss),
                s.journeys,
                s.live,
                s.ended,
                mib(s.db_bytes)
            );
            while mark <= minute {
                mark += 5.0;
            }
        }
    }
    println!(
        "| {:.1} (load stopped {} s before) | {:.1} | {} | {} | {} | {:.0} |",
        after.at.as_secs_f64() / 60.0,
        ttl + 3,
        mib(after.rss),
        after.journeys,
        after.live,
        after.ended,
        mib(after.db_bytes)
    );
    let peak = series.iter().map(|s| s.rss).max().unwrap();
    println!("\npeak RSS {:.1} MiB\n", mib(peak));
    println!("RSS growth by third of the run (least squares over its samples):\n");
    println!("| third | minutes | MiB per minute | RSS at its end (MiB) |");
    println!("|---|---|---|---|");
    let n = series.len();
    for k in 0..3 {
        let part = &series[k * n / 3..((k + 1) * n / 3).max(k * n / 3 + 1)];
        println!(
            "| {} | {:.1}–{:.1} | {:.3} | {:.1} |",
            k + 1,
            part[0].at.as_secs_f64() / 60.0,
            part.last().unwrap().at.as_secs_f64() / 60.0,
            slope(part),
            mib(part.last().unwrap().rss)
        );
    }
}

/// Least-squares slope of RSS against time, in MiB per minute.
fn slope(samples: &[Sample]) -> f64 {
    if samples.len() < 2 {
        return 0.0;
    }
    let n = samples.len() as f64;
    let xs: Vec<f64> = samples.iter().map(|s| s.at.as_secs_f64() / 60.0).collect();
    let ys: Vec<f64> = samples.iter().map(|s| mib(s.rss)).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let num: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    num / den
}

/// Answers whether `(status, body)` is `want`; counts an error otherwise.
fn ok(answer: &(u16, Vec<u8>), want: u16, counters: &Counters) -> bool {
    let good = answer.0 == want;
    if !good && counters.errors.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!(
            "soak: {} instead of {want}: {}",
            answer.0,
            String::from_utf8_lossy(&answer.1)
        );
    }
    good
}

/// Creates a session with `body`, binds the device and stages a selfie; answers the
/// session's id once all three succeeded.
async fn bind_and_upload(
    conn: &mut Conn,
    body: &str,
    token: &str,
    image: &[u8],
    counters: &Counters,
) -> Option<String> {
    let created = conn.call(&create_request(body)).await;
    if !ok(&created, 201, counters) {
        return None;
    }
    let v: Value = serde_json::from_slice(&created.1).unwrap();
    let id = v["session_id"].as_str().unwrap().to_owned();
    let info = conn
        .call(&get(&format!("/v1/sessions/{id}/information"), Some(token)))
        .await;
    if !ok(&info, 200, counters) {
        return None;
    }
    let mut put = format!(
        "PUT /v1/sessions/{id}/files/selfie HTTP/1.1\r\nHost: bench\r\n\
         Authorization: Bearer {token}\r\nContent-Type: image/png\r\n\
         Content-Length: {}\r\n\r\n",
        image.len()
    )
    .into_bytes();
    put.extend_from_slice(image);
    ok(&conn.call(&put).await, 201, counters).then_some(id)
}

/// One whole journey, approved; answers whether every step succeeded.
async fn journey(conn: &mut Conn, token: &str, image: &[u8], counters: &Counters) -> bool {
    let body = r#"{"scopes":["full_name","date_of_birth","selfie"],"vendor_data":"soak-user","external_reference_id":"soak-ref","registration":{"first_name":"Soak","last_name":"Person"}}"#;
    let Some(id) = bind_and_upload(conn, body, token, image, counters).await else {
        return false;
    };
    let approve = r#"{"decision":"approve","shared_data":{"full_name":"Soak Person","date_of_birth":"1990-01-01"}}"#;
    let approve = format!(
        "POST /v1/sessions/{id}/update HTTP/1.1\r\nHost: bench\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{approve}",
        approve.len()
    )
    .into_bytes();
    ok(&conn.call(&approve).await, 200, counters)
}

/// A session that will expire on its own, bound and holding a staged selfie.
async fn expiring(
    conn: &mut Conn,
    token: &str,
    image: &[u8],
    ttl: u64,
    counters: &Counters,
) -> bool {
    let body = format!(
        r#"{{"scopes":["full_name","selfie"],"vendor_data":"soak-expiring","registration":{{"first_name":"Soak","last_name":"Expiring"}},"ttl_seconds":{ttl}}}"#
    );
    bind_and_upload(conn, &body, token, image, counters)
        .await
        .is_some()
}

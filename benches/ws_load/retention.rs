//! Retention mode of `ws_load` (issue 25): push latency while a record-retention sweep
//! deletes a large backlog, beside the same push on the same backlog left alone.
//!
//! ```text
//! cargo build --release && cargo bench --bench ws_load -- --retention-backlog 200000 \
//!     --subscribers 1000 --sessions 500 --rate 500 [--rounds 2]
//! ```
//!
//! Layout of a run:
//! - **backlog**: a broker on a fresh SQLite database creates one session and cancels
//!   it (an ended session, nothing pending), and stops; the bench then copies that
//!   session's row and events `--retention-backlog` times under new ids, straight in
//!   the file. That file is the master each run starts from a copy of;
//! - **rounds**, interleaved (kept, swept, then swept, kept …): a broker on a fresh copy
//!   with the default `--record-retention-days` (the backlog is kept: nothing to do),
//!   or with `--record-retention-days 0` (its sweep starts with the broker and deletes
//!   the backlog in batches of `RECORD_BATCH` sessions, each its own write); then the
//!   push phase of `ws_load` at once (`--sessions`, `--subscribers`, `--rate`);
//! - after the push phase the bench counts what is left of the backlog: a swept round
//!   whose sweep had already finished measured nothing, and says so.
//!
//! The figure is push p99 (transition acknowledged → frame seen) with the sweep running
//! beside it without; both on the same box, rounds interleaved against its noise.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{push_phase, start_on, Args, Broker, PushResult};

/// Ended sessions copied into the master database.
fn make_backlog(master: &Path, args: &Args, rt: &tokio::runtime::Runtime) -> usize {
    let broker = start_on(master, &[], args);
    rt.block_on(async {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{}/v1/sessions", broker.base))
            .header("X-Api-Key", &args.api_key)
            .json(&serde_json::json!({"scopes": ["full_name"], "vendor_data": "backlog"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: serde_json::Value = r.json().await.unwrap();
        let id = v["session_id"].as_str().unwrap().to_owned();
        let r = http
            .delete(format!("{}/v1/sessions/{id}", broker.base))
            .header("X-Api-Key", &args.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        stop(broker);
        copy_session(master, &id, args.retention_backlog);
    });
    args.retention_backlog
}

/// Stops a broker with SIGTERM and waits: its database is whole and checkpointed.
fn stop(mut broker: Broker) {
    let pid = broker.pid.unwrap();
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    if let Some(child) = &mut broker.child {
        assert!(child.wait().unwrap().success(), "the broker stops cleanly");
    }
}

/// Copies session `id`'s row and events `n` times under new UUIDs (and fresh token
/// hashes), whatever the columns: through temporary tables that take every column.
fn copy_session(db: &Path, id: &str, n: usize) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute_batch(&format!(
        "CREATE TEMP TABLE proto AS SELECT * FROM sessions WHERE id = '{id}';
         CREATE TEMP TABLE proto_events AS SELECT * FROM session_events WHERE session_id = '{id}';"
    ))
    .unwrap();
    {
        let mut rename = tx
            .prepare("UPDATE proto SET id = ?1, token_hash = randomblob(32)")
            .unwrap();
        let mut rename_events = tx
            .prepare("UPDATE proto_events SET session_id = ?1")
            .unwrap();
        let mut insert = tx
            .prepare("INSERT INTO sessions SELECT * FROM proto")
            .unwrap();
        let mut insert_events = tx
            .prepare("INSERT INTO session_events SELECT * FROM proto_events")
            .unwrap();
        for i in 0..n {
            let new = format!("{:08x}-0000-4000-8000-{:012x}", i, i);
            rename.execute([&new]).unwrap();
            rename_events.execute([&new]).unwrap();
            insert.execute([]).unwrap();
            insert_events.execute([]).unwrap();
        }
    }
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

/// Sessions left of the backlog (read beside the running broker).
fn backlog_left(db: &Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT count(*) FROM sessions WHERE id LIKE '%-0000-4000-8000-%'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// One round: a broker on a fresh copy of the master, kept or swept, and the push phase.
fn round(
    master: &Path,
    swept: bool,
    args: &Args,
    rt: &tokio::runtime::Runtime,
) -> (PushResult, i64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    std::fs::copy(master, &db).unwrap();
    let extra: &[&str] = if swept {
        &["--record-retention-days", "0"]
    } else {
        &[]
    };
    let broker = start_on(&db, extra, args);
    let push = rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .unwrap();
        push_phase(args, &broker, &http).await
    });
    let left = backlog_left(&db);
    // How long the rest of the sweep takes (bounded): its rate, for the report.
    let t0 = Instant::now();
    while swept && backlog_left(&db) > 0 && t0.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rest_ms = t0.elapsed().as_millis() as i64;
    drop(broker);
    (push, left, rest_ms)
}

/// The retention mode's run and report.
pub fn main(args: &Args, rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.db");
    let t0 = Instant::now();
    let n = make_backlog(&master, args, rt);
    println!(
        "ws_load retention: backlog of {n} ended sessions made in {:.1} s; {} subscribers over \
         {} sessions, {} transitions/s, {} rounds",
        t0.elapsed().as_secs_f64(),
        args.subscribers,
        args.sessions,
        args.rate,
        args.rounds
    );
    let mut rows = Vec::new();
    for r in 0..args.rounds {
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for swept in order {
            let (push, left, rest_ms) = round(&master, swept, args, rt);
            let name = if swept { "swept" } else { "kept" };
            println!(
                "round {r} {name}: ack → seen p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
                 sent → seen p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} of {} frames, {} \
                 errors; backlog left after the push phase {left}{}",
                push.from_ack.pct(50.0),
                push.from_ack.pct(99.0),
                push.from_ack.max(),
                push.from_sent.pct(50.0),
                push.from_sent.pct(99.0),
                push.from_sent.max(),
                push.delivered,
                push.expected,
                push.errors,
                if swept {
                    format!(" (the rest deleted {rest_ms} ms later)")
                } else {
                    String::new()
                }
            );
            if swept && left == 0 {
                println!(
                    "  the sweep was over before the push phase ended: a larger \
                     --retention-backlog measures it"
                );
            }
            rows.push(Row {
                swept,
                ack_p99: push.from_ack.pct(99.0),
                sent_p50: push.from_sent.pct(50.0),
                sent_p99: push.from_sent.pct(99.0),
            });
        }
    }
    let median = |swept: bool, f: fn(&Row) -> f64| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.swept == swept).map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!();
    println!("| push (median of rounds) | backlog kept | swept meanwhile | ratio |");
    println!("|---|---|---|---|");
    for (what, f) in [
        (
            "p99, transition acknowledged → frame seen",
            (|r: &Row| r.ack_p99) as fn(&Row) -> f64,
        ),
        ("p50, transition sent → frame seen", |r| r.sent_p50),
        ("p99, transition sent → frame seen", |r| r.sent_p99),
    ] {
        let (kept, swept) = (median(false, f), median(true, f));
        println!(
            "| {what} | {kept:.2} ms | {swept:.2} ms | {:.2} |",
            swept / kept
        );
    }
}

/// What one round measured, for the medians.
struct Row {
    swept: bool,
    ack_p99: f64,
    sent_p50: f64,
    sent_p99: f64,
}

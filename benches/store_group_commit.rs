//! The store's group commit: transitions per second with 1, 16 and 256 sessions
//! committing concurrently, beside plain single-row commits on the same disk.
//!
//! Each concurrent case runs `n` tasks, one per session; each task commits
//! transitions one after the other through `Store::commit_transition`, awaiting each
//! (as a session actor does). One criterion iteration is one transition per session,
//! so the reported throughput is transitions per second. The baseline is a raw
//! rusqlite connection with the same pragmas (WAL, `synchronous=FULL`) doing one
//! INSERT per transaction: what the broker would get without group commit.
//!
//! Run: `cargo bench --bench store_group_commit` (add `-- --quick` for a fast pass).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use idv_actors::ids::{Seq, SessionId};
use idv_actors::model::{SessionRecord, SessionRequest};
use idv_actors::status::Status;
use idv_actors::store::{NewSession, Store, StoreConfig};
use idv_actors::write::TransitionWrite;

/// A fresh database on the same disk as `target/` (not a tmpfs, so fsync is real).
fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Creates `n` sessions; returns their ids with their current seq.
async fn create_sessions(store: &Store, n: usize) -> Vec<(SessionId, Seq)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let record = SessionRecord::open(
            "bench",
            SessionRequest {
                scopes: vec!["full_name".into()],
                ..SessionRequest::default()
            },
            chrono::Utc::now(),
            chrono::Duration::hours(1),
        )
        .0;
        out.push((record.id, record.seq));
        store
            .create_session(NewSession { record }, None)
            .await
            .unwrap();
    }
    out
}

/// One transition of `id` from `from`. The store checks only the seq, so a session can
/// be moved to `retrieved` again and again, each a real row update plus an event row.
fn transition(id: SessionId, from: Seq) -> TransitionWrite {
    TransitionWrite {
        id,
        from_seq: from,
        status: Status::Retrieved,
        at: chrono::Utc::now(),
        bind: None,
        consent: None,
        shared_data: None,
        files: Vec::new(),
        decided_at: None,
        purge: false,
        registers_user: false,
        binding_code: None,
        binding_misses: None,
        reason: None,
    }
}

fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("store_group_commit");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    for n in [1usize, 16, 256] {
        let dir = bench_dir();
        let store = Store::open(&StoreConfig::new(dir.path().join("bench.db"))).unwrap();
        let mut sessions = rt.block_on(create_sessions(&store, n));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("concurrent_sessions", n), |b| {
            b.iter_custom(|iters| {
                let tasks: Vec<_> = sessions
                    .iter()
                    .map(|&(id, seq)| {
                        let store = store.clone();
                        rt.spawn(async move {
                            let mut seq = seq;
                            for _ in 0..iters {
                                store.commit_transition(transition(id, seq)).await.unwrap();
                                seq = seq.next();
                            }
                            (id, seq)
                        })
                    })
                    .collect();
                let start = Instant::now();
                sessions = rt.block_on(async {
                    let mut done = Vec::with_capacity(tasks.len());
                    for t in tasks {
                        done.push(t.await.unwrap());
                    }
                    done
                });
                start.elapsed()
            })
        });
        store.close();
    }

    let dir = bench_dir();
    let conn = raw_connection(&dir.path().join("plain.db"));
    let mut insert = conn
        .prepare(
            "INSERT INTO events (session_id, seq, status, at) VALUES (?1, ?2, 'retrieved', ?3)",
        )
        .unwrap();
    let mut seq = 0i64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_row_commits", |b| {
        b.iter(|| {
            // Autocommit: one transaction, one fsync, per row.
            seq += 1;
            insert
                .execute(rusqlite::params![
                    "s",
                    seq,
                    chrono::Utc::now().timestamp_millis()
                ])
                .unwrap();
        })
    });
    group.finish();
}

fn raw_connection(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE events (session_id TEXT NOT NULL, seq INTEGER NOT NULL,
             status TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (session_id, seq))
             WITHOUT ROWID;",
    )
    .unwrap();
    conn
}

criterion_group!(benches, group_commit);
criterion_main!(benches);

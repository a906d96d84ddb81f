//! `scale lookup`: what one registry lookup costs at `--large` (1,000,000) live sessions
//! against `--small` (10,000), in one process, side by side (issue 28).
//!
//! The registry's directory (actors/src/registry/directory.rs, crate-private) keeps
//! its live actors in a `DashMap<SessionId, Live<Addr<SessionActor>>>` with DashMap's
//! default hasher (SipHash-1-3), and [`Directory::find`] is a `get` that clones the
//! actor's address (an `Arc`) out of the entry under the shard's read lock. This mode
//! builds the same map (UUIDv7 keys, as `SessionId::new` makes them; an entry of the
//! same shape) at both sizes and times `--lookups` (4,000,000) finds of keys drawn at
//! random, on 1 thread and on 2 at once (the broker's two HTTP workers: shard-lock
//! contention, and cache misses once the map outgrows the caches), in `--rounds` (5)
//! rounds alternating which size goes first. Reported: nanoseconds per lookup, by
//! round, and the median ratio large/small.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use uuid::Uuid;

use crate::{loadavg, take};

/// The shape of the directory's `Live` entry: the actor's address (an `Arc` inside),
/// its generation, whether it watches, its ownership epoch.
#[derive(Clone)]
struct Live {
    addr: Arc<u64>,
    generation: u64,
    watching: bool,
    epoch: Option<i64>,
}

struct Map {
    live: DashMap<Uuid, Live>,
    /// The keys in the order lookups ask for them (random, with repeats).
    draws: Vec<Uuid>,
}

fn build(size: usize, lookups: usize) -> Map {
    let live = DashMap::new();
    let addr = Arc::new(0);
    let mut keys = Vec::with_capacity(size);
    for g in 0..size {
        let id = Uuid::now_v7();
        keys.push(id);
        live.insert(
            id,
            Live {
                addr: addr.clone(),
                generation: g as u64,
                watching: false,
                epoch: None,
            },
        );
    }
    let draws = (0..lookups as u64)
        .map(|n| keys[(crate::million::draw(0, n) % size as u64) as usize])
        .collect();
    Map { live, draws }
}

/// Nanoseconds per find over the map's draws, split over `threads` threads at once.
fn time(map: &Map, threads: usize) -> f64 {
    let per = map.draws.len() / threads;
    let t0 = Instant::now();
    let found: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let draws = &map.draws[t * per..(t + 1) * per];
                s.spawn(move || {
                    let mut found = 0;
                    for id in draws {
                        // What `Directory::find` does: the entry's address cloned out,
                        // its flags read, under the shard's read lock.
                        if let Some(l) = map.live.get(id) {
                            let live = l.value();
                            let addr = live.addr.clone();
                            found += usize::from(!live.watching && live.generation < u64::MAX)
                                + usize::from(live.epoch.is_some());
                            drop(addr);
                        }
                    }
                    found
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let elapsed = t0.elapsed();
    assert!(found >= per * threads, "every drawn key is in the map");
    // Wall time over the lookups each thread made: the cost of one lookup as a worker
    // sees it with the other thread busy beside it.
    elapsed.as_nanos() as f64 / per as f64
}

pub fn run(mut flags: BTreeMap<String, String>) {
    let large: usize = take(&mut flags, "large", 1_000_000);
    let small: usize = take(&mut flags, "small", 10_000);
    let lookups: usize = take(&mut flags, "lookups", 4_000_000);
    let rounds: usize = take(&mut flags, "rounds", 5);
    assert!(flags.is_empty(), "unknown flags {flags:?}");
    println!("load average at start: {}", loadavg());
    let maps = [build(large, lookups), build(small, lookups)];
    println!("\n## Registry lookup at {large} against {small} live sessions\n");
    println!("| threads | map | ns per lookup, by round | median ratio large/small |");
    println!("|---|---|---|---|");
    for threads in [1, 2] {
        let mut ns: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                ns[i].push(time(&maps[i], threads));
            }
        }
        let mut ratios: Vec<f64> = ns[0].iter().zip(&ns[1]).map(|(a, b)| a / b).collect();
        ratios.sort_by(|a, b| a.total_cmp(b));
        for (i, size) in [large, small].iter().enumerate() {
            let list: Vec<String> = ns[i].iter().map(|v| format!("{v:.0}")).collect();
            println!(
                "| {threads} | {size} | {} | {} |",
                list.join(", "),
                if i == 0 {
                    format!("{:.2}", ratios[ratios.len() / 2])
                } else {
                    String::new()
                }
            );
        }
    }
    println!("\nload average at the end: {}", loadavg());
}

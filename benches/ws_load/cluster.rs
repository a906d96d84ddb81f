//! Cluster mode of `ws_load` (issue 12): three nodes on PostgreSQL + NATS.
//!
//! ```text
//! eval "$(scripts/services.sh start)" && cargo build --release &&
//!   cargo bench --bench ws_load -- --cluster [--subscribers N --sessions M --rate R]
//! scripts/cluster.sh   # then, with what it prints:
//!   cargo bench --bench ws_load -- --nodes a=URL,b=URL,c=URL --api-key … --issuer … --store …
//! ```
//!
//! Layout of a run:
//! - `--cluster` starts three release nodes `a`, `b`, `c` on a fresh database of
//!   `IDVB_TEST_PG` and the NATS of `IDVB_TEST_NATS` (`--nodes` attaches instead);
//! - **who owns what**: `M` sessions, session `j` created through node `j % k`; the
//!   owner of each is read from PostgreSQL (`sessions.owner_node`) when the bench knows
//!   the store and the node ids, else taken to be the creating node (and said so);
//! - **push**: `N` subscribers (in client processes, `ws_load/clients.rs`), subscriber
//!   `i` on session `i % M` through the node `(owner + i / M) % k`, so each session has
//!   subscribers on its owner and on the others; each node's RSS before and with them
//!   idle → memory per subscriber per node; then both transitions of every session,
//!   `--rate` per second, each to any node (one in three to its owner, the rest
//!   forwarded). Each frame is timed against the transition's
//!   request (sent, and acknowledged): p50/p99/max for subscribers on the owner's node
//!   beside those on another node (the NATS hop), and the frames lost;
//! - **forwarding**: fresh sessions; `GET /status` and `information` (a transition),
//!   each sent `--requests` times alternately to the owner and to another node, 4 at a
//!   time: the difference is what a forwarded request costs.
//!
//! Three nodes, PostgreSQL, NATS and this client share one machine's cores: the
//! figures show what the hop costs relative to a local answer, not a cluster's speed.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clients::{broker_fds, Clients, Clock};
use super::{
    broker_bin, create_sessions, drive, mib, rss, Args, BenchSession, Dist, Marks,
    CONNECT_CONCURRENCY, DEVICE_ISSUER, DRAIN_DEADLINE,
};

/// Requests in flight at once in the forwarding phase.
const FORWARD_CONCURRENCY: usize = 4;

/// One node: started here or attached to.
struct Node {
    id: Option<String>,
    base: String,
    child: Option<Child>,
    /// For its RSS: known for the nodes this bench started.
    pid: Option<u32>,
}

/// The nodes, and the database this bench made (dropped at the end).
struct Cluster {
    nodes: Vec<Node>,
    store: Option<String>,
    made_db: Option<(String, String)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(c) = &mut n.child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some((admin, name)) = self.made_db.take() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        }
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("--cluster needs {name}: run `eval \"$(scripts/services.sh start)\"` first")
    })
}

fn start(args: &Args, rt: &tokio::runtime::Runtime) -> Cluster {
    if !args.cluster {
        return Cluster {
            nodes: args
                .nodes
                .iter()
                .map(|(id, url)| Node {
                    id: id.clone(),
                    base: url.trim_end_matches('/').to_owned(),
                    child: None,
                    pid: None,
                })
                .collect(),
            store: args.store.clone(),
            made_db: None,
        };
    }
    let (admin, nats) = (env("IDVB_TEST_PG"), env("IDVB_TEST_NATS"));
    let name = format!("idvb_bench_{}", std::process::id());
    let store = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin}: {e}"));
        tokio::spawn(conn);
        // Two statements: PostgreSQL runs a multi-statement batch in one transaction,
        // where DROP DATABASE is refused.
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        url.to_string()
    });
    let mut cluster = Cluster {
        nodes: Vec::new(),
        store: Some(store.clone()),
        made_db: Some((admin, name)),
    };
    let bin = broker_bin();
    // The same on every node, new at each run (SPEC §7: messages between nodes sealed).
    let cluster_key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(rand_key())
    };
    // Node ids are NATS subjects: suffixed, so no other cluster on this NATS answers.
    for name in ["a", "b", "c"] {
        let id = &format!("{name}-{}", std::process::id());
        let mut child = Command::new(&bin)
            .args(["--bind", "127.0.0.1:0", "--rate-limit", "0"])
            .args(["--store", &store, "--nats", &nats, "--node-id", id])
            // By the environment, not the flag: a build from before the flag (for a
            // side-by-side run) ignores it and still starts.
            .env("IDVB_CLUSTER_KEYS", &cluster_key)
            .args(["--api-key", &format!("bench={}", args.api_key)])
            .args(["--issuer", &args.issuer])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let base = crate::broker::listening_on(&mut child);
        cluster.nodes.push(Node {
            id: Some(id.clone()),
            base,
            pid: Some(child.id()),
            child: Some(child),
        });
    }
    cluster
}

/// Creates `m` sessions, session `j` through node `j % k`; answers them and their
/// owners (node indexes), and whether the owners were read from the store.
async fn spread_sessions(
    http: &reqwest::Client,
    cluster: &Cluster,
    key: &str,
    m: usize,
) -> (Vec<BenchSession>, Vec<usize>, bool) {
    let k = cluster.nodes.len();
    let mut per_node = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        let count = (m + k - 1 - n) / k;
        per_node.push(
            create_sessions(http, &node.base, key, count)
                .await
                .into_iter(),
        );
    }
    let mut sessions = Vec::with_capacity(m);
    let mut creators = Vec::with_capacity(m);
    for j in 0..m {
        sessions.push(per_node[j % k].next().unwrap());
        creators.push(j % k);
    }
    let ids: Option<Vec<String>> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
    let (Some(store), Some(ids)) = (&cluster.store, ids) else {
        return (sessions, creators, false);
    };
    let (client, conn) = tokio_postgres::connect(store, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("--store {store}: {e}"));
    tokio::spawn(conn);
    let wanted: Vec<String> = sessions.iter().map(|s| s.id.clone()).collect();
    let rows = client
        .query(
            "SELECT id::text, owner_node::text FROM sessions WHERE id::text = ANY($1)",
            &[&wanted],
        )
        .await
        .expect("read the owners");
    let owner_of: std::collections::HashMap<String, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let owners = sessions
        .iter()
        .map(|s| {
            let owner = &owner_of[&s.id];
            ids.iter().position(|id| id == owner).unwrap_or_else(|| {
                panic!("session {} is owned by {owner}, not one of {ids:?}", s.id)
            })
        })
        .collect();
    (sessions, owners, true)
}

struct PushSplit {
    /// Transition acknowledged → frame seen, subscriber on the owner's node / another.
    same: Dist,
    cross: Dist,
    /// Transition request sent → frame seen, likewise.
    same_sent: Dist,
    cross_sent: Dist,
    expected_same: usize,
    expected_cross: usize,
    errors: usize,
    /// Per node: subscribers on it, RSS before them and with them idle.
    per_node: Vec<(usize, Option<u64>, Option<u64>)>,
    connect_time: Duration,
    processes: usize,
    /// Transitions sent to the session's owner / to another node (forwarded).
    to_owner: usize,
    to_other: usize,
}

async fn push_phase(
    args: &Args,
    cluster: &Cluster,
    http: &reqwest::Client,
) -> (PushSplit, usize, usize) {
    let (n, m, k) = (args.subscribers, args.sessions, cluster.nodes.len());
    let (sessions, owners, read) = spread_sessions(http, cluster, &args.api_key, m).await;
    let sessions = Arc::new(sessions);
    let creators_own = (0..m).filter(|&j| owners[j] == j % k).count();
    println!(
        "owners: {creators_own} of {m} sessions owned by the node that created them ({})",
        if read {
            "read from PostgreSQL"
        } else {
            "assumed: no --store or no node ids"
        }
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before: Vec<Option<u64>> = cluster.nodes.iter().map(|n| rss(n.pid)).collect();

    let clock = Arc::new(Clock::new());
    let mut urls = Vec::with_capacity(n);
    let mut same_node = Vec::with_capacity(n);
    let mut on_node = vec![0usize; k];
    for i in 0..n {
        let s = &sessions[i % m];
        let node = (owners[i % m] + i / m) % k;
        same_node.push(node == owners[i % m]);
        on_node[node] += 1;
        urls.push(format!(
            "{}/v1/sessions/{}/ws?token={}",
            cluster.nodes[node].base.replacen("http://", "ws://", 1),
            s.id,
            s.token
        ));
    }
    let t0 = Instant::now();
    let subs = Clients::open(urls, &clock, args.clients_per_process, CONNECT_CONCURRENCY).await;
    if let Err(why) = subs.connected(Duration::from_secs(300)).await {
        let fds: Vec<String> = cluster.nodes.iter().map(|n| broker_fds(n.pid)).collect();
        panic!(
            "subscribers failed to connect ({} client processes): {why}\n{}",
            subs.processes(),
            fds.join("\n")
        );
    }
    let connect_time = t0.elapsed();
    let processes = subs.processes();
    // Let every node's NATS subscriptions settle before the first transition, and the
    // allocators after the burst of handshakes.
    tokio::time::sleep(args.idle.max(Duration::from_millis(500))).await;
    let rss_idle: Vec<Option<u64>> = cluster.nodes.iter().map(|n| rss(n.pid)).collect();

    // Transitions go to any node: transition `t` (session `t % m`'s) to the node
    // `(t % m / k + t / m) % k`, which does not follow the owner (sessions were created
    // round-robin, session `j` on node `j % k`): about a third reach their owner and
    // the rest are forwarded to it.
    let marks = Arc::new(Marks::new(m));
    let bases: Vec<String> = cluster.nodes.iter().map(|n| n.base.clone()).collect();
    let target = |t: usize| (t % m / k + t / m) % k;
    let to_owner = (0..2 * m).filter(|&t| target(t) == owners[t % m]).count();
    drive(
        http,
        |t| bases[target(t)].clone(),
        &sessions,
        args.rate,
        &marks,
        &clock,
    )
    .await;
    let seen_all = subs
        .finish(clock.us() + DRAIN_DEADLINE.as_micros() as u64)
        .await;
    let (mut same, mut cross, mut same_sent, mut cross_sent, mut errors) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
    let mut unanswered_seen = 0;
    for (i, r) in seen_all.into_iter().enumerate() {
        match r {
            Ok(seen) => {
                let mut prev = 1;
                for (seq, at) in seen {
                    if seq != prev + 1 {
                        errors += 1;
                        continue;
                    }
                    prev = seq;
                    let slot = Marks::slot(i % m, seq);
                    if !marks.answered(slot) {
                        unanswered_seen += 1;
                        continue;
                    }
                    let acked = marks.acked[slot].load(Ordering::Acquire);
                    let sent = marks.sent[slot].load(Ordering::Acquire);
                    if same_node[i] {
                        same.push(at.saturating_sub(acked));
                        same_sent.push(at.saturating_sub(sent));
                    } else {
                        cross.push(at.saturating_sub(acked));
                        cross_sent.push(at.saturating_sub(sent));
                    }
                }
            }
            Err(_) => errors += 1,
        }
    }
    marks.report_failures(unanswered_seen);
    let subs_same = same_node.iter().filter(|s| **s).count();
    let owed = |same: bool| -> usize {
        (0..n)
            .filter(|&i| same_node[i] == same)
            .map(|i| marks.owed(i % m))
            .sum()
    };
    (
        PushSplit {
            same: Dist::new(same),
            cross: Dist::new(cross),
            same_sent: Dist::new(same_sent),
            cross_sent: Dist::new(cross_sent),
            expected_same: owed(true),
            expected_cross: owed(false),
            errors,
            per_node: (0..k)
                .map(|j| (on_node[j], rss_before[j], rss_idle[j]))
                .collect(),
            connect_time,
            processes,
            to_owner,
            to_other: 2 * m - to_owner,
        },
        subs_same,
        n - subs_same,
    )
}

/// Latencies (µs) of requests to the owner and to another node, and the non-2xx count.
struct Forwarding {
    status_owner: Dist,
    status_other: Dist,
    command_owner: Dist,
    command_other: Dist,
    errors: usize,
}

/// Sends `jobs` (session index, via owner?, request) `FORWARD_CONCURRENCY` at a time;
/// answers the latencies of each kind in µs and the failures.
async fn timed(jobs: Vec<(bool, reqwest::RequestBuilder)>) -> (Vec<u64>, Vec<u64>, usize) {
    let jobs = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..FORWARD_CONCURRENCY {
        let jobs = jobs.clone();
        tasks.push(tokio::spawn(async move {
            let (mut own, mut other, mut errors) = (Vec::new(), Vec::new(), 0);
            loop {
                let Some((to_owner, req)) = jobs.lock().unwrap().next() else {
                    break;
                };
                let t = Instant::now();
                let ok = matches!(req.send().await, Ok(r) if r.status().is_success());
                let us = t.elapsed().as_micros() as u64;
                if !ok {
                    errors += 1;
                } else if to_owner {
                    own.push(us);
                } else {
                    other.push(us);
                }
            }
            (own, other, errors)
        }));
    }
    let (mut own, mut other, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (o, x, e) = t.await.unwrap();
        own.extend(o);
        other.extend(x);
        errors += e;
    }
    (own, other, errors)
}

async fn forwarding_phase(args: &Args, cluster: &Cluster, http: &reqwest::Client) -> Forwarding {
    let k = cluster.nodes.len();
    let r = args.requests;
    let base = |n: usize| cluster.nodes[n].base.clone();
    // Reads: a few live sessions, each read through its owner and through the others.
    let (reads, read_owners, _) =
        spread_sessions(http, cluster, &args.api_key, 60.min(r).max(k)).await;
    let mut jobs = Vec::with_capacity(2 * r);
    for i in 0..2 * r {
        let j = (i / 2) % reads.len();
        let owner = read_owners[j];
        let (to_owner, node) = if i % 2 == 0 {
            (true, owner)
        } else {
            (false, (owner + 1 + (i / 2) % (k - 1)) % k)
        };
        let req = http
            .get(format!("{}/v1/sessions/{}/status", base(node), reads[j].id))
            .bearer_auth(&reads[j].token);
        jobs.push((to_owner, req));
    }
    let (status_owner, status_other, e1) = timed(jobs).await;

    // Commands: `information` (initialized → retrieved) on fresh sessions, half of them
    // through their owner, half through another node.
    let (fresh, owners, _) = spread_sessions(http, cluster, &args.api_key, 2 * r).await;
    let (iss, secret) = DEVICE_ISSUER.get().unwrap();
    let jwt = idv_actors::credentials::mint_device_jwt(iss, secret, "bench-device", 3600).unwrap();
    let jobs = fresh
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let to_owner = j % 2 == 0;
            let node = if to_owner {
                owners[j]
            } else {
                (owners[j] + 1 + (j / 2) % (k - 1)) % k
            };
            let req = http
                .get(format!("{}/v1/sessions/{}/information", base(node), s.id))
                .bearer_auth(&jwt);
            (to_owner, req)
        })
        .collect();
    let (command_owner, command_other, e2) = timed(jobs).await;
    Forwarding {
        status_owner: Dist::new(status_owner),
        status_other: Dist::new(status_other),
        command_owner: Dist::new(command_owner),
        command_other: Dist::new(command_other),
        errors: e1 + e2,
    }
}

pub(crate) fn main(args: &Args, rt: &tokio::runtime::Runtime) {
    let cluster = start(args, rt);
    assert!(
        cluster.nodes.len() >= 2,
        "cluster mode needs at least two nodes"
    );
    println!(
        "ws_load cluster: {} nodes ({}), {} subscribers over {} sessions, {} transitions/s",
        cluster.nodes.len(),
        cluster
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id.as_deref().unwrap_or("?"), n.base))
            .collect::<Vec<_>>()
            .join(", "),
        args.subscribers,
        args.sessions,
        args.rate
    );
    let total = Instant::now();
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            // Under the broker's 5 s keep-alive: a connection it is closing is never
            // reused for a transition (lost as "connection closed before message
            // completed", which HTTP/1.1 gives no way to retry safely).
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let (push, subs_same, subs_cross) = push_phase(args, &cluster, &http).await;
        let fwd = forwarding_phase(args, &cluster, &http).await;
        println!();
        println!(
            "| {} subscribers ({subs_same} on the owner's node, {subs_cross} on another), {} transitions at {}/s | same node | other node |",
            args.subscribers,
            2 * args.sessions,
            args.rate
        );
        println!("|---|---|---|");
        for (what, same, cross) in [
            ("request sent → seen", &push.same_sent, &push.cross_sent),
            ("ack → seen", &push.same, &push.cross),
        ] {
            println!(
                "| push latency p50 / p99 / max ({what}) | {:.2} / {:.2} / {:.2} ms | {:.2} / {:.2} / {:.2} ms |",
                same.pct(50.0),
                same.pct(99.0),
                same.max(),
                cross.pct(50.0),
                cross.pct(99.0),
                cross.max()
            );
        }
        println!(
            "| frames seen (expected) | {} ({}) | {} ({}) |",
            push.same.0.len(),
            push.expected_same,
            push.cross.0.len(),
            push.expected_cross
        );
        println!(
            "| frames lost | {} | {} |",
            push.expected_same.saturating_sub(push.same.0.len()),
            push.expected_cross.saturating_sub(push.cross.0.len())
        );
        println!("| frames out of order or failed subscribers | {} | |", push.errors);
        println!();
        println!(
            "connected {} subscribers in {:.1} s from {} client processes; transitions: \
             {} sent to the owner, {} to another node (forwarded)",
            args.subscribers,
            push.connect_time.as_secs_f64(),
            push.processes,
            push.to_owner,
            push.to_other
        );
        println!();
        println!("| node | subscribers | RSS before → idle subscribers | memory per idle subscriber |");
        println!("|---|---|---|---|");
        for (j, (subs, before, idle)) in push.per_node.iter().enumerate() {
            let per = match (before, idle) {
                (Some(b), Some(a)) if *subs > 0 => format!(
                    "{:.2} KiB",
                    a.saturating_sub(*b) as f64 / *subs as f64 / 1024.0
                ),
                _ => "n/a".to_owned(),
            };
            println!(
                "| {} | {subs} | {} → {} | {per} |",
                cluster.nodes[j].id.as_deref().unwrap_or("?"),
                mib(*before),
                mib(*idle)
            );
        }
        println!();
        println!(
            "| {} requests each, {FORWARD_CONCURRENCY} at a time | via the owner | via another node (forwarded) | overhead p50 |",
            args.requests
        );
        println!("|---|---|---|---|");
        for (what, own, other) in [
            ("`GET /status` p50 / p99", &fwd.status_owner, &fwd.status_other),
            ("`information` (a transition) p50 / p99", &fwd.command_owner, &fwd.command_other),
        ] {
            println!(
                "| {what} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:+.2} ms |",
                own.pct(50.0),
                own.pct(99.0),
                other.pct(50.0),
                other.pct(99.0),
                other.pct(50.0) - own.pct(50.0)
            );
        }
        println!("| requests that failed | {} | | |", fwd.errors);
    });
    println!("(run took {:.1} s)", total.elapsed().as_secs_f64());
    drop(cluster);
}

/// 32 random bytes, from the kernel.
fn rand_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut key);
    }
    key
}

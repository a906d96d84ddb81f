//! Pauses (SPEC §7): an owner frozen past its lease (SIGSTOP, what a long stall or a
//! paused VM looks like) while the other nodes cached it as the route of its sessions,
//! then woken; and a second process started with a live node's `--node-id`. Under
//! load, then audited against PostgreSQL. One test, several checks: each cluster start
//! and each lease length waited costs seconds of the suite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;
use crate::load::{self, Load};

/// How long the owner stays frozen: more than twice its 5 s lease.
const PAUSE: Duration = Duration::from_secs(12);

/// An approve through node `via`, retried after each `503` + `Retry-After` (as a client
/// does) until it is answered otherwise; the answer, and when it came.
async fn approve_until_answered(cluster: &Cluster, via: usize, id: &str) -> (u16, Value, Instant) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = cluster.approve(via, id, "alice").await;
        let status = res.status().as_u16();
        let retry_after = res.headers().get("retry-after").is_some();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if status == 503 && retry_after && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        return (status, body, Instant::now());
    }
}

#[actix_web::test]
async fn an_owner_paused_past_its_lease_loses_its_sessions_in_time_and_once_woken_commits_and_serves_nothing_stale(
) {
    let cluster = Cluster::start(Options::default()).await;
    let load = Arc::new(Load::default());
    let clients = load::start(&load, cluster.addresses(), None);
    load::wait_confirmed(&load, 20, Duration::from_secs(60)).await;

    // Sessions node c runs, opened through a and b: both cache c as their route.
    let victim = 2;
    let mut owned = Vec::new();
    for k in 0..8 {
        let s = cluster
            .create(victim, &serde_json::json!({"scopes": ["full_name"]}))
            .await;
        let via = k % 2;
        assert_eq!(cluster.information(via, &s.id, "alice").await.status(), 200);
        owned.push((s, via));
    }
    assert_eq!(
        cluster.owner_of(&owned[0].0.id).await.as_deref(),
        Some(cluster.nodes[victim].id.as_str())
    );

    cluster.nodes[victim].pause();
    let paused_at = Instant::now();
    // A read sent to the frozen node: it waits whole in the kernel until the node wakes.
    let waiting = {
        // A connection of its own, opened while the node is frozen (the kernel accepts
        // it and keeps the request).
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(40))
            .build()
            .expect("client");
        let (http, url, token) = (
            fresh,
            cluster.nodes[victim].url(&format!("/v1/sessions/{}/status", owned[0].0.id)),
            owned[0].0.token.clone(),
        );
        tokio::spawn(async move { http.get(url).bearer_auth(token).send().await })
    };

    // Each session is decided through the survivor that remembers the frozen owner,
    // within SPEC's 10 s of the pause (503 + Retry-After meanwhile, nothing else).
    let decided = futures_util::future::join_all(
        owned
            .iter()
            .map(|(s, via)| approve_until_answered(&cluster, *via, &s.id)),
    )
    .await;
    for ((s, via), (status, body, at)) in owned.iter().zip(&decided) {
        assert_eq!(
            (*status, body["status"].as_str(), body["seq"].as_u64()),
            (200, Some("confirmed"), Some(3)),
            "{} approved through {}: {body}",
            s.id,
            cluster.nodes[*via].id
        );
        let after = at.duration_since(paused_at);
        assert!(
            after <= TAKEOVER,
            "{} decided {after:?} after its owner froze; SPEC §7: within {TAKEOVER:?}",
            s.id
        );
    }
    let slowest = decided.iter().map(|d| d.2.duration_since(paused_at)).max();
    eprintln!("the frozen owner's sessions were decided through survivors within {slowest:?}");

    tokio::time::sleep_until((paused_at + PAUSE).into()).await;
    cluster.nodes[victim].resume();

    // The woken node serves no read older than the approvals acknowledged meanwhile:
    // the read that waited, and fresh ones, answer `confirmed` (or `503`, with the
    // error body), never the `retrieved` it remembers.
    let check_read = |res: reqwest::Response, what: String| async move {
        let status = res.status().as_u16();
        let retry_after = res.headers().get("retry-after").is_some();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        match status {
            200 => assert_eq!(
                (body["status"].as_str(), body["seq"].as_u64()),
                (Some("confirmed"), Some(3)),
                "{what}: a read older than an acknowledged approve"
            ),
            503 => assert!(
                retry_after && body["error"]["code"] == "unavailable",
                "{what}: 503 {body}"
            ),
            other => panic!("{what}: {other} {body}"),
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the read that waited is answered")
        .expect("task")
        .expect("an answer, not a dropped connection");
    check_read(waited, "the read that waited through the pause".into()).await;
    for (s, _) in &owned {
        let res = cluster.status(victim, &s.id, &s.token, "").await;
        check_read(res, format!("{} read through the woken node", s.id)).await;
    }

    // The woken node works again, for sessions it runs and for others'.
    let fresh = cluster
        .create(victim, &serde_json::json!({"scopes": ["full_name"]}))
        .await;
    assert_eq!(cluster.information(0, &fresh.id, "bob").await.status(), 200);
    let (status, body, _) = approve_until_answered(&cluster, victim, &owned[1].0.id).await;
    assert_eq!(status, 409, "already confirmed: {body}");

    // A second process started with a live node's id: it waits for the lease to lapse
    // (a node restarted at once after a crash), and since the first keeps renewing it,
    // it gives up with exit 2. The first serves on.
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let second = try_start_node(
        &cluster.nodes[0].id,
        &cluster.db.url,
        &required_env("IDVB_TEST_NATS"),
        &Options::default(),
        dir.path(),
    )
    .await;
    match second {
        Ok(_) => panic!("a second process with a live node's id started"),
        Err(e) => {
            assert_eq!(e.code, Some(2), "{}", e.log);
            assert!(e.log.contains("in use"), "{}", e.log);
        }
    }
    eprintln!(
        "a second process with a live node id gave up after {:?}",
        started.elapsed()
    );
    let res = cluster.status(0, &fresh.id, &fresh.token, "").await;
    assert_eq!(res.status(), 200);

    load::stop(&load, clients).await;
    // Only 2xx and 503 + Retry-After, nothing acknowledged missing, no seq committed
    // twice (a late commit of the woken node under its old epoch would be one).
    load.audit(
        &cluster.db.sessions().await,
        &cluster.db.events().await,
        None,
    );
    for (s, _) in &owned {
        let stored = cluster.db.session(&s.id).await.expect("stored");
        assert_eq!((stored.seq, stored.status.as_str()), (3, "confirmed"));
    }
}

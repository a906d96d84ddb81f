//! `GET /readyz` is `200` only while a node reaches both PostgreSQL and NATS (SPEC §7),
//! and the cluster comes back by itself when NATS does: with NATS gone every node
//! says it is not ready and lets its lease lapse (it can serve no other node), nothing
//! is lost, and once NATS is back the nodes register again, sessions move on
//! through any node, and pushes reach subscribers on every node again; clients that
//! keep sessions moving all along get only 2xx and 503 + Retry-After, and lose nothing.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// A nats-server of this test's own, on a port it keeps across a restart.
struct Nats {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl Nats {
    async fn start(port: u16) -> Nats {
        Nats {
            port,
            child: Some(nats_server(port, &[], &[], None).await),
        }
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("nats-server stops");
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

#[actix_web::test]
async fn without_nats_no_node_is_ready_and_when_it_returns_sessions_move_on_through_any_node() {
    let port = free_port();
    let mut nats = Nats::start(port).await;
    let cluster = Cluster::start(Options {
        nats: Some(nats.url()),
        ..Options::default()
    })
    .await;
    let s = cluster.create(0, &json!({"scopes": ["full_name"]})).await;
    assert_eq!(cluster.information(1, &s.id, "alice").await.status(), 200);
    // Clients keep sessions moving through the whole outage.
    let load = std::sync::Arc::new(crate::load::Load::default());
    let clients = crate::load::start(&load, cluster.addresses(), None);
    crate::load::wait_confirmed(&load, 10, Duration::from_secs(60)).await;

    nats.stop().await;
    for n in 0..3 {
        eventually(
            Duration::from_secs(15),
            "a node cut off from NATS says it is not ready",
            || async { (cluster.readyz(n).await == 503).then_some(()) },
        )
        .await;
    }
    // Cut off from each other, the nodes stop renewing their leases.
    eventually(
        Duration::from_secs(15),
        "the leases lapse while NATS is gone",
        || async { (cluster.db.nodes_with_a_lease().await == 0).then_some(()) },
    )
    .await;
    // `/healthz` is liveness only: the process is fine.
    let health = cluster
        .http
        .get(cluster.nodes[2].url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let _nats = Nats::start(port).await;
    for n in 0..3 {
        eventually(
            Duration::from_secs(30),
            "a node is ready again once NATS is back",
            || async { (cluster.readyz(n).await == 200).then_some(()) },
        )
        .await;
    }
    eventually(
        Duration::from_secs(15),
        "every node holds a lease again",
        || async { (cluster.db.nodes_with_a_lease().await == 3).then_some(()) },
    )
    .await;
    // Cross-node push works again: a subscriber on every node, the approve through
    // node c, and the frame on each (at least two of them are not the owner).
    let mut subscribers = Vec::new();
    for node in &cluster.nodes {
        let mut ws = crate::watch::connect(&node.address, &s.id, &s.token, None).await;
        assert_eq!(crate::watch::frame(&mut ws).await["seq"], 2);
        subscribers.push(ws);
    }
    // Nothing was lost, and the session moves on through a node that may not own it
    // (ownership may have moved while the leases could not be renewed).
    let approved = eventually(
        Duration::from_secs(30),
        "the session is approved through another node",
        || async {
            let res = cluster.approve(2, &s.id, "alice").await;
            match res.status().as_u16() {
                200 => Some(res),
                503 => {
                    assert!(res.headers().contains_key("retry-after"));
                    None
                }
                other => panic!("approve through node c answered {other}"),
            }
        },
    )
    .await;
    let body: serde_json::Value = approved.json().await.unwrap();
    assert_eq!(
        (body["status"].as_str(), body["seq"].as_u64()),
        (Some("confirmed"), Some(3))
    );
    let stored = cluster.db.session(&s.id).await.expect("in the store");
    assert_eq!((stored.status.as_str(), stored.seq), ("confirmed", 3));
    for (n, ws) in subscribers.iter_mut().enumerate() {
        let f = crate::watch::frame(ws).await;
        assert_eq!(
            (f["status"].as_str(), f["seq"].as_u64()),
            (Some("confirmed"), Some(3)),
            "the push reached the subscriber on {}",
            cluster.nodes[n].id
        );
    }

    // The load through the outage: only 2xx and 503 + Retry-After, nothing
    // acknowledged lost, no seq committed twice.
    let confirmed = load.confirmed();
    crate::load::wait_confirmed(&load, confirmed + 5, Duration::from_secs(30)).await;
    crate::load::stop(&load, clients).await;
    load.audit(
        &cluster.db.sessions().await,
        &cluster.db.events().await,
        None,
    );
}

//! An owner's announcements travel at most once over NATS (core NATS, no JetStream),
//! so a watching node must not depend on them (SPEC §7: a WebSocket on any node gets
//! every transition, in order). Here one node never hears a single announcement: its
//! NATS user may not subscribe to `idv.events.>`. It still forwards, and its
//! subscribers still get every transition, in order, from the node's sweep of the
//! seqs of the sessions it watches (one statement for all of them,
//! docs/cluster.md); a node that does hear them gets the same frames.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::watch::{connect, frame, next_within, Read};

const PASSWORD: &str = "announcements-test-password";

#[actix_web::test]
async fn a_node_that_hears_no_announcement_still_pushes_every_transition_in_order_from_its_sweep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "authorization {{\n  users = [\n    {{ user: broker, password: \"{PASSWORD}\" }}\n    \
             {{ user: deaf, password: \"{PASSWORD}\", permissions: {{ subscribe: {{ deny: [\"idv.events.>\"] }} }} }}\n  ]\n}}\n"
        ),
    )
    .expect("the NATS config");
    let port = free_port();
    let _nats = nats_server(
        port,
        &["-c", config.to_str().expect("a UTF-8 path")],
        &[],
        Some(&dir.path().join("nats.log")),
    )
    .await;
    let url = |user: &str| format!("nats://{user}:{PASSWORD}@127.0.0.1:{port}");
    // Node c may not subscribe to announcements; a and b hear them.
    let cluster = Cluster::start(Options {
        nats: Some(url("broker")),
        nats_of_node: vec![url("broker"), url("broker"), url("deaf")],
        ..Options::default()
    })
    .await;

    // Owned by a (its creator); a subscriber on b (hears) and on c (deaf).
    let s = cluster.create(0, &json!({"scopes": ["full_name"]})).await;
    let mut hears = connect(&cluster.nodes[1].address, &s.id, &s.token, None).await;
    let mut deaf = connect(&cluster.nodes[2].address, &s.id, &s.token, None).await;
    for ws in [&mut hears, &mut deaf] {
        let snapshot = frame(ws).await;
        assert_eq!(
            (snapshot["type"].as_str(), snapshot["seq"].as_u64()),
            (Some("snapshot"), Some(1))
        );
    }

    // Two transitions, through the deaf node itself (forwarded to a) and through b.
    assert_eq!(cluster.information(2, &s.id, "alice").await.status(), 200);
    assert_eq!(cluster.approve(1, &s.id, "alice").await.status(), 200);
    for (node, ws) in [("b", &mut hears), ("c (deaf)", &mut deaf)] {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            // The sweep runs every 2 s: a frame comes within two, plus a read.
            match next_within(ws, Duration::from_secs(10)).await {
                Read::Frame(f) if f["type"] == "status" => {
                    seen.push((f["seq"].as_u64(), f["status"].as_str().map(str::to_owned)))
                }
                Read::Frame(_) => {}
                other => panic!("the subscriber on {node} lost its connection: {other:?}"),
            }
        }
        assert_eq!(
            seen,
            [
                (Some(2), Some("retrieved".to_owned())),
                (Some(3), Some("confirmed".to_owned()))
            ],
            "the subscriber on {node} got every transition, in order"
        );
    }
    // The deaf node was refused the subscriptions, so the frames did not come that way.
    let log = std::fs::read_to_string(dir.path().join("nats.log")).expect("the NATS log");
    assert!(
        log.contains("Subscription Violation - User \"deaf\", Subject \"idv.events."),
        "NATS refused node c its subscription to the announcements:\n{log}"
    );
}

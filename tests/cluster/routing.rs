//! Any node answers any request as one node would (SPEC §7): commands reach the
//! session's owner wherever they arrive, and pushes reach subscribers on every node.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::*;
use crate::watch::{self, Read};

#[actix_web::test]
async fn a_session_created_on_one_node_opened_on_a_second_and_watched_on_a_third_gets_every_push_in_order(
) {
    let cluster = Cluster::start(Options::default()).await;
    // Every node plays every part once.
    for (create, device, watcher) in [(0, 1, 2), (1, 2, 0), (2, 0, 1)] {
        let s = cluster
            .create(create, &json!({"scopes": ["full_name"]}))
            .await;
        let watch_node = &cluster.nodes[watcher];
        let mut ws = watch::connect(&watch_node.address, &s.id, &s.token, None).await;
        let snapshot = watch::frame(&mut ws).await;
        assert_eq!(
            (
                snapshot["type"].as_str(),
                snapshot["status"].as_str(),
                snapshot["seq"].as_u64()
            ),
            (Some("snapshot"), Some("initialized"), Some(1))
        );
        // A long-poll on the watching node too, waiting for the next change.
        let long_poll = {
            let (http, url, token) = (
                cluster.http.clone(),
                watch_node.url(&format!("/v1/sessions/{}/status?after_seq=1&wait=20", s.id)),
                s.token.clone(),
            );
            tokio::spawn(async move { http.get(url).bearer_auth(token).send().await })
        };

        let res = cluster.information(device, &s.id, "alice").await;
        assert_eq!(
            res.status(),
            200,
            "information through {}",
            cluster.nodes[device].id
        );
        let f = watch::frame(&mut ws).await;
        assert_eq!(
            (f["type"].as_str(), f["status"].as_str(), f["seq"].as_u64()),
            (Some("status"), Some("retrieved"), Some(2)),
            "created on {}, opened on {}, watched on {}",
            cluster.nodes[create].id,
            cluster.nodes[device].id,
            watch_node.id
        );
        let polled: Value = tokio::time::timeout(Duration::from_secs(10), long_poll)
            .await
            .expect("the long-poll answers on the change, not at its 20 s")
            .unwrap()
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (polled["status"].as_str(), polled["seq"].as_u64()),
            (Some("retrieved"), Some(2))
        );

        let res = cluster.approve(device, &s.id, "alice").await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            (body["status"].as_str(), body["seq"].as_u64()),
            (Some("confirmed"), Some(3))
        );
        let (frames, end) = watch::drain(&mut ws).await;
        let got: Vec<_> = frames
            .iter()
            .map(|f| {
                (
                    f["status"].as_str().unwrap().to_owned(),
                    f["seq"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, vec![("confirmed".to_owned(), 3)]);
        assert!(
            matches!(end, Read::Closed(Some(CloseCode::Normal))),
            "{end:?}"
        );

        // A late subscriber on yet another node resumes from seq 1: the replay, in order.
        let mut late =
            watch::connect(&cluster.nodes[create].address, &s.id, &s.token, Some(1)).await;
        let snapshot = watch::frame(&mut late).await;
        assert_eq!(
            (snapshot["status"].as_str(), snapshot["seq"].as_u64()),
            (Some("confirmed"), Some(3))
        );
        let (frames, end) = watch::drain(&mut late).await;
        let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert!(
            matches!(end, Read::Closed(Some(CloseCode::Normal))),
            "{end:?}"
        );

        // Every node reads the same session.
        for n in 0..3 {
            let view: Value = cluster
                .backend_get(n, &format!("/v1/sessions/{}", s.id))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(
                (view["status"].as_str(), view["seq"].as_u64()),
                (Some("confirmed"), Some(3))
            );
        }
    }
}

/// A JPEG of `len` bytes whose content says where each byte was.
fn jpeg(len: usize) -> Vec<u8> {
    let mut bytes = b"\xff\xd8\xff\xe0\0\x10JFIF\0".to_vec();
    bytes.extend((0..len - bytes.len()).map(|i| (i % 251) as u8));
    bytes
}

#[actix_web::test]
async fn an_upload_larger_than_a_nats_message_through_a_node_that_does_not_own_the_session_arrives_whole(
) {
    let cluster = Cluster::start(Options::default()).await;
    let s = cluster
        .create(0, &json!({"scopes": ["full_name", "selfie"]}))
        .await;
    let owner = cluster
        .owner_of(&s.id)
        .await
        .expect("a new session has an owner");
    let others: Vec<usize> = (0..3).filter(|&n| cluster.nodes[n].id != owner).collect();
    assert_eq!(others.len(), 2, "owner {owner:?} is one of the nodes");
    let (via, approve_via) = (others[0], others[1]);
    assert_eq!(cluster.information(via, &s.id, "alice").await.status(), 200);

    // 3 MiB: three times NATS's default max_payload (1 MiB).
    let image = jpeg(3 * 1024 * 1024);
    let res = cluster
        .http
        .put(cluster.nodes[via].url(&format!("/v1/sessions/{}/files/selfie", s.id)))
        .bearer_auth(device_token("alice"))
        .header("Content-Type", "image/jpeg")
        .body(image.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        201,
        "upload through non-owner {}",
        cluster.nodes[via].id
    );
    let uploaded: Value = res.json().await.unwrap();
    assert_eq!(uploaded["size"].as_u64(), Some(image.len() as u64));

    let res = cluster.approve(approve_via, &s.id, "alice").await;
    assert_eq!(res.status(), 200, "approve through the other non-owner");
    for n in 0..3 {
        let res = cluster
            .backend_get(
                n,
                &format!(
                    "/v1/sessions/{}/files/{}",
                    s.id,
                    uploaded["file_id"].as_str().unwrap()
                ),
            )
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "image/jpeg");
        let bytes = res.bytes().await.unwrap();
        assert!(
            bytes[..] == image[..],
            "node {}: the file comes back byte for byte",
            cluster.nodes[n].id
        );
    }
}

#[actix_web::test]
async fn idempotent_replays_and_conflicts_answer_the_same_whichever_node_answers() {
    let cluster = Cluster::start(Options::default()).await;
    let post = |n: usize, key: &'static str, body: Value| {
        let req = cluster
            .http
            .post(cluster.nodes[n].url("/v1/sessions"))
            .header("X-Api-Key", API_KEY)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let body = json!({"scopes": ["full_name"], "vendor_data": "order-1"});

    let res = post(0, "order-1", body.clone()).await;
    assert_eq!(res.status(), 201);
    let first = Created::from(res.json::<Value>().await.unwrap());
    let mut tokens = vec![first.token.clone()];
    for n in [1, 2, 0] {
        let res = post(n, "order-1", body.clone()).await;
        assert_eq!(
            res.status(),
            200,
            "a replay through {}",
            cluster.nodes[n].id
        );
        let replay: Value = res.json().await.unwrap();
        assert_eq!(replay["session_id"].as_str(), Some(first.id.as_str()));
        assert_eq!(replay["expires_at"], first.body["expires_at"]);
        tokens.push(replay["session_token"].as_str().unwrap().to_owned());
    }
    // Only the newest token works, on every node.
    let newest = tokens.pop().unwrap();
    for n in 0..3 {
        let res = cluster.status(n, &first.id, &newest, "").await;
        assert_eq!(
            res.status(),
            200,
            "the newest token through {}",
            cluster.nodes[n].id
        );
        for old in &tokens {
            let res = cluster.status(n, &first.id, old, "").await;
            assert_error(res, 401, "unauthorized").await;
        }
    }
    // Another body under the same key: 409 from every node.
    for n in 0..3 {
        let res = post(n, "order-1", json!({"scopes": ["date_of_birth"]})).await;
        assert_error(res, 409, "idempotency_conflict").await;
    }

    // The same new key through all three nodes at once: one session, one 201.
    let body = json!({"scopes": ["full_name"], "vendor_data": "order-2"});
    let (a, b, c) = tokio::join!(
        post(0, "order-2", body.clone()),
        post(1, "order-2", body.clone()),
        post(2, "order-2", body.clone())
    );
    let mut statuses = Vec::new();
    let mut ids = Vec::new();
    for res in [a, b, c] {
        statuses.push(res.status().as_u16());
        ids.push(res.json::<Value>().await.unwrap()["session_id"].clone());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 201]);
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one session: {ids:?}");
    let stored = cluster.db.sessions().await;
    assert_eq!(stored.len(), 2, "two keys, two sessions: {stored:?}");
}

#[actix_web::test]
async fn state_conflicts_and_device_binding_answer_the_same_whichever_node_answers() {
    let cluster = Cluster::start(Options::default()).await;
    let open = cluster.create(0, &json!({"scopes": ["full_name"]})).await;
    // Before anything happened: no decision, no update, from any node.
    for n in 0..3 {
        let res = cluster
            .backend_get(n, &format!("/v1/sessions/{}/decision", open.id))
            .await;
        assert_error(res, 409, "invalid_state").await;
        let res = cluster.approve(n, &open.id, "alice").await;
        assert_error(res, 409, "invalid_state").await;
    }
    // The first device binds, wherever it came in; another device is refused everywhere,
    // the bound one gets the same answer everywhere.
    assert_eq!(
        cluster.information(1, &open.id, "alice").await.status(),
        200
    );
    for n in 0..3 {
        let res = cluster.information(n, &open.id, "mallory").await;
        assert_error(res, 403, "forbidden").await;
        let res = cluster.approve(n, &open.id, "mallory").await;
        assert_error(res, 403, "forbidden").await;
        let res = cluster.information(n, &open.id, "alice").await;
        assert_eq!(res.status(), 200);
        let info: Value = res.json().await.unwrap();
        assert_eq!(info["status"], "retrieved");
    }
    let res = cluster
        .update(
            2,
            &open.id,
            "alice",
            &json!({"decision": "approve", "shared_data": {}}),
        )
        .await;
    assert_error(res, 422, "incomplete").await;
    assert_eq!(
        cluster.db.session(&open.id).await.unwrap().seq,
        2,
        "nothing moved"
    );

    // Cancelled through one node: terminal for all of them.
    let res = cluster.cancel(2, &open.id).await;
    assert_eq!(res.status(), 200);
    let cancelled: Value = res.json().await.unwrap();
    assert_eq!(
        (cancelled["status"].as_str(), cancelled["seq"].as_u64()),
        (Some("cancelled"), Some(3))
    );
    for n in 0..3 {
        assert_error(cluster.cancel(n, &open.id).await, 409, "invalid_state").await;
        assert_error(
            cluster.approve(n, &open.id, "alice").await,
            409,
            "invalid_state",
        )
        .await;
        assert_error(
            cluster.information(n, &open.id, "alice").await,
            409,
            "invalid_state",
        )
        .await;
        let decision: Value = cluster
            .backend_get(n, &format!("/v1/sessions/{}/decision", open.id))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (decision["status"].as_str(), decision["consent"].clone()),
            (Some("cancelled"), Value::Null)
        );
    }
    let stored = cluster.db.session(&open.id).await.unwrap();
    assert_eq!((stored.seq, stored.status.as_str()), (3, "cancelled"));
    let events = cluster.db.events().await;
    let seqs: Vec<u64> = events[&open.id].iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![1, 2, 3], "one event per transition, none twice");
}

/// Operators see forwarding in `/metrics`: the node that forwards counts each command
/// by outcome and times its round trip; the owner forwards nothing.
#[actix_web::test]
async fn forwarded_commands_are_counted_by_outcome_and_timed_on_the_node_that_forwards_them() {
    let cluster = Cluster::start(Options::default()).await;
    let s = cluster.create(0, &json!({"scopes": ["full_name"]})).await;
    assert_eq!(cluster.information(1, &s.id, "alice").await.status(), 200);
    // Refused by the owner: another device, on a session bound to alice.
    assert_eq!(cluster.information(1, &s.id, "mallory").await.status(), 403);
    let scrape = |n: usize| {
        let http = cluster.http.clone();
        let url = cluster.nodes[n].url("/metrics");
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0.0)
    };
    let b = scrape(1).await;
    assert!(
        value(&b, r#"idv_cluster_forwarded_commands_total{outcome="ok"}"#) >= 1.0,
        "{b}"
    );
    assert!(
        value(
            &b,
            r#"idv_cluster_forwarded_commands_total{outcome="refused"}"#
        ) >= 1.0
    );
    assert!(value(&b, "idv_cluster_forward_seconds_count") >= 2.0);
    let a = scrape(0).await;
    assert_eq!(
        value(&a, r#"idv_cluster_forwarded_commands_total{outcome="ok"}"#),
        0.0,
        "the owner forwards nothing"
    );
}

/// A node that watches a session for its clients stops watching once nobody there
/// listens any more (about 30 s later): it does not keep a NATS subscription and a
/// store read every 2 s for every session it ever served.
#[actix_web::test]
async fn a_node_stops_watching_a_session_once_its_last_subscriber_left() {
    let cluster = Cluster::start(Options::default()).await;
    let s = cluster.create(0, &json!({"scopes": ["full_name"]})).await;
    let live_on_c = || {
        let http = cluster.http.clone();
        let url = cluster.nodes[2].url("/metrics");
        async move {
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("idv_live_sessions "))
                .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
        }
    };
    let mut ws = watch::connect(&cluster.nodes[2].address, &s.id, &s.token, None).await;
    let first = watch::frame(&mut ws).await;
    assert_eq!(first["status"], "initialized");
    assert_eq!(live_on_c().await, 1.0, "node c watches the session");
    drop(ws);
    eventually(
        Duration::from_secs(45),
        "node c stops watching once its subscriber left",
        || async { (live_on_c().await == 0.0).then_some(()) },
    )
    .await;
    // A new subscriber there is served again (a new watcher), and sees what follows.
    let mut ws = watch::connect(&cluster.nodes[2].address, &s.id, &s.token, None).await;
    let _ = watch::frame(&mut ws).await;
    assert_eq!(cluster.information(1, &s.id, "alice").await.status(), 200);
    let f = watch::frame(&mut ws).await;
    assert_eq!(
        (f["status"].as_str(), f["seq"].as_u64()),
        (Some("retrieved"), Some(2))
    );
}

/// A replayed create rotates the session token through one node while another node
/// already watches the session with the old one: the new token works there at once
/// (the watcher reads the store rather than refuse a token it does not know yet), and
/// the old one stops working.
#[actix_web::test]
async fn a_token_rotated_by_a_replay_through_one_node_works_at_once_on_a_node_that_watches() {
    let cluster = Cluster::start(Options::default()).await;
    let post = |n: usize| {
        cluster
            .http
            .post(cluster.nodes[n].url("/v1/sessions"))
            .header("X-Api-Key", API_KEY)
            .header("Idempotency-Key", "order-rotate")
            .json(&json!({"scopes": ["full_name"]}))
            .send()
    };
    let first = Created::from(post(0).await.unwrap().json::<Value>().await.unwrap());
    // Node c watches the session for a subscriber with the first token.
    let mut old_ws = watch::connect(&cluster.nodes[2].address, &first.id, &first.token, None).await;
    let _ = watch::frame(&mut old_ws).await;

    let replay: Value = post(1).await.unwrap().json().await.unwrap();
    let newest = replay["session_token"].as_str().unwrap().to_owned();
    // At once, on the watching node: a long-poll and a WebSocket with the new token.
    let res = cluster
        .status(2, &first.id, &newest, "?after_seq=1&wait=1")
        .await;
    assert_eq!(res.status(), 200, "the rotated token on the watching node");
    let mut ws = watch::connect(&cluster.nodes[2].address, &first.id, &newest, None).await;
    let f = watch::frame(&mut ws).await;
    assert_eq!(f["status"], "initialized");
    let res = cluster
        .status(2, &first.id, &first.token, "?after_seq=1&wait=1")
        .await;
    assert_error(res, 401, "unauthorized").await;
}

//! The network between nodes is not trusted (SPEC §7, `--cluster-key`): whoever reads
//! NATS learns nothing of a person, a token or a file, and whoever writes to it commands
//! no node. One test captures every message of a journey that crosses all three nodes,
//! then replays, alters and forges messages at the nodes.

use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::helpers::*;
use crate::watch;

/// A message as NATS carried it.
struct Captured {
    subject: String,
    payload: Vec<u8>,
}

/// The sum over the nodes of `idv_cluster_messages_dropped_total{reason}`.
async fn dropped(cluster: &Cluster, reason: &str) -> u64 {
    let mut total = 0;
    let series = format!("idv_cluster_messages_dropped_total{{reason=\"{reason}\"}} ");
    for node in &cluster.nodes {
        let text = cluster
            .http
            .get(node.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        total += text
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse::<u64>().expect("a count"));
    }
    total
}

/// Every form a secret could travel in: raw, base64 (each alignment) and hex.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
    ];
    for skip in 0..3 {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&secret[skip..]);
        // The middle of the encoding does not depend on what came before it.
        let inner = &encoded.as_bytes()[4.min(encoded.len())..encoded.len().saturating_sub(4)];
        if inner.len() >= 6 {
            out.push(inner.to_vec());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[actix_web::test]
async fn a_journey_across_nodes_shows_nats_nothing_and_replayed_altered_or_forged_messages_change_nothing(
) {
    // With the demo on: its secrets derive from the cluster key, so one node's demo
    // token works on another (checked at the end).
    let cluster = Cluster::start(Options {
        extra: vec!["--demo".into()],
        ..Options::default()
    })
    .await;
    let nats = async_nats::connect(required_env("IDVB_TEST_NATS"))
        .await
        .expect("the test NATS");
    let mut everything = nats.subscribe(">").await.expect("subscribe");
    nats.flush().await.expect("flush");
    let (to_capture, mut captured_rx) = tokio::sync::mpsc::unbounded_channel();
    let capture = tokio::spawn(async move {
        while let Some(msg) = everything.next().await {
            let _ = to_capture.send(Captured {
                subject: msg.subject.to_string(),
                payload: msg.payload.to_vec(),
            });
        }
    });

    // Markers unique to this run, in every personal field and in the file's bytes.
    let marker = |what: &str| format!("{what}-{}", uuid::Uuid::new_v4().simple());
    let (registration, vendor, reference, shared) = (
        marker("prefill"),
        marker("vendor"),
        marker("reference"),
        marker("fullname"),
    );
    let mut file = b"\xff\xd8\xff\xe0 jpeg ".to_vec();
    let file_marker = marker("selfie-bytes");
    for _ in 0..40_000 {
        file.extend_from_slice(file_marker.as_bytes());
    }

    // Created on a, opened and decided through b, uploaded and watched through c.
    let s = cluster
        .create(
            0,
            &json!({
                "scopes": ["full_name", "selfie"],
                "registration": {"first_name": registration},
                "vendor_data": vendor,
                "external_reference_id": reference,
            }),
        )
        .await;
    let owner = cluster.owner_of(&s.id).await.expect("an owner");
    assert_eq!(
        owner, cluster.nodes[0].id,
        "the creating node runs the session"
    );
    let mut ws = watch::connect(&cluster.nodes[2].address, &s.id, &s.token, None).await;
    assert_eq!(watch::frame(&mut ws).await["type"], "snapshot");

    let info = cluster.information(1, &s.id, "alice").await;
    assert_eq!(info.status(), 200);
    let info: Value = info.json().await.expect("json");
    assert_eq!(info["registration"]["first_name"], registration.as_str());
    let upload = cluster
        .http
        .put(cluster.nodes[2].url(&format!("/v1/sessions/{}/files/selfie", s.id)))
        .bearer_auth(device_token("alice"))
        .header("Content-Type", "image/jpeg")
        .body(file.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(
        upload.status(),
        201,
        "an upload through a node that does not run it"
    );
    let status = cluster.status(2, &s.id, &s.token, "").await;
    assert_eq!(status.status(), 200);
    let res = cluster
        .update(
            1,
            &s.id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": shared}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    for expected in ["retrieved", "confirmed"] {
        assert_eq!(watch::frame(&mut ws).await["status"], expected);
    }
    let got = cluster
        .backend_get(1, &format!("/v1/sessions/{}", s.id))
        .await;
    assert_eq!(got.status(), 200);
    assert_eq!(
        got.json::<Value>().await.expect("json")["vendor_data"],
        vendor.as_str()
    );
    let decision: Value = cluster
        .backend_get(2, &format!("/v1/sessions/{}/decision", s.id))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(decision["shared_data"]["full_name"], shared.as_str());
    assert_eq!(decision["external_reference_id"], reference.as_str());
    let file_id = decision["files"][0]["file_id"].as_str().expect("a file");
    let bytes = cluster
        .backend_get(1, &format!("/v1/sessions/{}/files/{file_id}", s.id))
        .await
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(bytes.as_ref(), file.as_slice(), "the file comes back whole");

    // What NATS carried.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut messages = Vec::new();
    while let Ok(m) = captured_rx.try_recv() {
        messages.push(m);
    }
    let ours = |prefix: &str| {
        messages
            .iter()
            .filter(|m| m.subject.starts_with(prefix))
            .count()
    };
    let cmd_subject = format!("idv.node.{owner}.cmd");
    assert!(
        ours(&cmd_subject) >= 4,
        "commands were forwarded to {owner}"
    );
    assert!(
        ours(&format!("idv.node.{owner}.chunk")) >= 1,
        "the upload crossed NATS"
    );
    assert!(
        ours(&format!("idv.events.{}", s.id)) >= 2,
        "commits were announced"
    );
    assert!(ours("_INBOX.") >= 4, "answers came back");
    let token_hash: [u8; 32] = sha2::Sha256::digest(s.token.as_bytes()).into();
    let secrets: Vec<(&str, &[u8])> = vec![
        ("registration", registration.as_bytes()),
        ("vendor_data", vendor.as_bytes()),
        ("external_reference_id", reference.as_bytes()),
        ("shared data", shared.as_bytes()),
        ("the file's bytes", file_marker.as_bytes()),
        ("the session token", s.token.as_bytes()),
        ("the token's hash", &token_hash[..]),
        ("the device's sub", b"\"alice\""),
        ("the API key's name", API_KEY_NAME.as_bytes()),
    ];
    for m in &messages {
        for (what, secret) in &secrets {
            for form in forms(secret) {
                assert!(
                    !contains(&m.payload, &form),
                    "{what} crossed NATS readable on {}",
                    m.subject
                );
            }
        }
        // Sealed: version 1, key id, nonce, then ciphertext and its tag.
        assert!(
            m.payload.len() >= 1 + 4 + 24 + 16 && m.payload[0] == 1,
            "a message on {} is not sealed: {:?}",
            m.subject,
            String::from_utf8_lossy(&m.payload[..m.payload.len().min(80)])
        );
    }

    // Replayed: a captured command, sent again to its node within the window.
    let (replayed, unopened) = (
        dropped(&cluster, "replayed").await,
        dropped(&cluster, "unopened").await,
    );
    let command = messages
        .iter()
        .find(|m| m.subject == cmd_subject)
        .expect("a command");
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        nats.request(cmd_subject.clone(), command.payload.clone().into()),
    )
    .await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "a replayed command is not answered"
    );
    // Altered: one byte of it flipped.
    let mut altered = command.payload.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x20;
    nats.publish(cmd_subject.clone(), altered.into())
        .await
        .expect("publish");
    // Hand-written: what an attacker on NATS would send to cancel a live session, and
    // an announcement of a transition that never happened.
    let live = cluster.create(0, &json!({"scopes": ["full_name"]})).await;
    let forged = json!({"session": live.id, "cmd": {"Cancel": {"owner": API_KEY_NAME}}});
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        nats.request(cmd_subject.clone(), forged.to_string().into()),
    )
    .await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "a forged command is not answered"
    );
    let mut live_ws = watch::connect(&cluster.nodes[1].address, &live.id, &live.token, None).await;
    assert_eq!(watch::frame(&mut live_ws).await["seq"], 1);
    nats.publish(format!("idv.events.{}", live.id), "2".into())
        .await
        .expect("publish");
    nats.flush().await.expect("flush");

    let counted = eventually(Duration::from_secs(5), "the drops are counted", || async {
        let r = dropped(&cluster, "replayed").await - replayed;
        let u = dropped(&cluster, "unopened").await - unopened;
        (r >= 1 && u >= 3).then_some((r, u))
    })
    .await;
    assert!(counted.0 >= 1 && counted.1 >= 3, "{counted:?}");
    // Nothing changed: the live session is as it was, the decided one too.
    let stored = cluster.db.session(&live.id).await.expect("stored");
    assert_eq!((stored.seq, stored.status.as_str()), (1, "initialized"));
    let stored = cluster.db.session(&s.id).await.expect("stored");
    assert_eq!((stored.seq, stored.status.as_str()), (3, "confirmed"));
    let res = cluster.status(1, &live.id, &live.token, "").await;
    assert_eq!(
        res.json::<Value>().await.expect("json")["status"],
        "initialized"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watch::frame(&mut live_ws))
            .await
            .is_err(),
        "a forged announcement pushes nothing"
    );
    capture.abort();

    // The demo on several nodes: a session of the demo's opened through a, a token for
    // it from b, used through c; the same token on a real key's session is `403`.
    let demo: Value = cluster
        .http
        .post(cluster.nodes[0].url("/demo/api/sessions"))
        .json(&json!({}))
        .send()
        .await
        .expect("demo create")
        .json()
        .await
        .expect("json");
    let demo_id = demo["session_id"].as_str().expect("a demo session");
    let token: Value = cluster
        .http
        .post(cluster.nodes[1].url("/demo/api/device-token"))
        .json(&json!({"session_id": demo_id}))
        .send()
        .await
        .expect("demo token")
        .json()
        .await
        .expect("json");
    let token = token["token"].as_str().expect("a demo token");
    let opened = cluster
        .http
        .get(cluster.nodes[2].url(&format!("/v1/sessions/{demo_id}/information")))
        .bearer_auth(token)
        .send()
        .await
        .expect("information");
    assert_eq!(opened.status(), 200, "a demo token from another node works");
    let real = cluster
        .http
        .get(cluster.nodes[2].url(&format!("/v1/sessions/{}/information", live.id)))
        .bearer_auth(token)
        .send()
        .await
        .expect("information");
    assert_error(real, 403, "forbidden").await;
}

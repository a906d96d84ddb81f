//! NATS as docs/cluster.md tells an operator to run it: the brokers in an account of
//! their own, logged in with a password (SPEC §7). The test starts nats-server with the
//! very file the docs show (`docs/examples/nats-server.conf`), runs three nodes on it,
//! and checks that a service of another account on the same server sees nothing of a
//! journey across the nodes.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::json;

use crate::helpers::*;

const BROKER_PASSWORD: &str = "broker-password-for-the-accounts-test";
const APPS_PASSWORD: &str = "apps-password-for-the-accounts-test";

#[actix_web::test]
async fn brokers_in_their_own_nats_account_work_and_another_account_sees_none_of_their_messages() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/nats-server.conf");
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    // The address on the command line wins over the file's `listen`.
    let _nats = nats_server(
        port,
        &["-c", config.to_str().expect("a UTF-8 path")],
        &[
            ("IDVB_NATS_BROKER_PASSWORD", BROKER_PASSWORD),
            ("APPS_NATS_PASSWORD", APPS_PASSWORD),
        ],
        Some(&dir.path().join("nats.log")),
    )
    .await;

    let cluster = Cluster::start(Options {
        nats: Some(format!(
            "nats://idv-broker:{BROKER_PASSWORD}@127.0.0.1:{port}"
        )),
        ..Options::default()
    })
    .await;
    let other = async_nats::ConnectOptions::new()
        .user_and_password("other-service".into(), APPS_PASSWORD.into())
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .expect("another service logs in to its own account");
    let mut everything = other.subscribe(">").await.expect("subscribe");
    other.flush().await.expect("flush");

    // A journey across the nodes: created on a, opened through b, decided through c.
    let s = cluster.create(0, &json!({"scopes": ["full_name"]})).await;
    assert_eq!(cluster.information(1, &s.id, "alice").await.status(), 200);
    assert_eq!(cluster.approve(2, &s.id, "alice").await.status(), 200);
    let status = cluster.status(1, &s.id, &s.token, "").await;
    assert_eq!(status.status(), 200);
    let status: serde_json::Value = status.json().await.expect("json");
    assert_eq!(status["status"], "confirmed");

    // Another account on the same server saw none of it (not even a sealed message).
    let seen = tokio::time::timeout(Duration::from_millis(500), everything.next()).await;
    assert!(
        seen.is_err(),
        "a service of another account saw a message on {:?}",
        seen.ok().flatten().map(|m| m.subject)
    );
    for node in &cluster.nodes {
        assert!(
            !node.log().contains(BROKER_PASSWORD),
            "node {} printed the NATS password",
            node.id
        );
    }
}

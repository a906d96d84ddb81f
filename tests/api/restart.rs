//! Durability across a graceful restart, a SIGTERM and a `kill -9` of the real binary, and the
//! binary's refusal to start on a bad flag or an unusable database.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::helpers::*;

#[actix_web::test]
async fn a_graceful_restart_keeps_decisions_bindings_and_tokens() {
    let app = spawn_app().await;
    let (confirmed, confirmed_token) = app.retrieved_session(&["full_name"], "alice").await;
    let res = app
        .update(
            &confirmed,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "Alice A"}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let (retrieved, retrieved_token) = app.retrieved_session(&["full_name"], "bob").await;
    let fresh = app.create_session(&["full_name"]).await;
    let fresh_id = fresh["session_id"].as_str().unwrap().to_owned();

    let app = app.restart(chrono::Duration::zero()).await;

    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{confirmed}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["status"], "confirmed");
    assert_eq!(decision["seq"], 3);
    assert_eq!(decision["user_id"], "alice");
    assert_eq!(decision["shared_data"], json!({"full_name": "Alice A"}));
    assert_eq!(app.status(&confirmed, &confirmed_token).await.status(), 200);

    // The binding survived: another device is still refused, the bound one can finish.
    let res = app.information(&retrieved, "mallory").await;
    assert_error(res, 403, "forbidden").await;
    let status: Value = app
        .status(&retrieved, &retrieved_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "retrieved");
    assert_eq!(status["seq"], 2);
    let res = app
        .update(&retrieved, "bob", &json!({"decision": "deny"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["seq"], 3);

    let res = app.information(&fresh_id, "carol").await;
    assert_eq!(res.status(), 200);
}

/// An HTTP client for talking to the real binary. Installs the crypto provider that
/// reqwest needs (built with `rustls-no-provider`): in-process tests get it from
/// `Application::build`, but a test that only runs the binary never calls that, and
/// alone (`cargo test --test api kill_9`) it panicked building its client.
fn http_client() -> reqwest::Client {
    idv_actors::webhooks::install_crypto_provider();
    reqwest::Client::new()
}

/// The real binary, listening on a free port.
pub(crate) struct Broker {
    pub(crate) child: Child,
    pub(crate) address: String,
}

pub(crate) async fn start_broker(db: &Path) -> Broker {
    let db = db.to_str().expect("a UTF-8 path");
    let (child, address) = spawn_binary(
        &[
            "--db",
            db,
            "--api-key",
            &format!("{API_KEY_NAME}={API_KEY}"),
            "--issuer",
            &format!("{ISSUER}={ISSUER_SECRET}"),
            "--rate-limit",
            "0",
        ],
        &[],
        Stdio::null(),
    )
    .await;
    Broker { child, address }
}

#[actix_web::test]
async fn a_kill_9_right_after_an_acknowledged_approve_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broker.db");
    let client = http_client();
    let device =
        idv_actors::credentials::mint_device_jwt(ISSUER, ISSUER_SECRET, "alice", 600).unwrap();

    let mut broker = start_broker(&db).await;
    let created: Value = client
        .post(format!("{}/v1/sessions", broker.address))
        .header("X-Api-Key", API_KEY)
        .json(&json!({"scopes": ["full_name"], "registration": {"first_name": "K"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["session_id"].as_str().unwrap().to_owned();
    let token = created["session_token"].as_str().unwrap().to_owned();
    let res = client
        .get(format!("{}/v1/sessions/{id}/information", broker.address))
        .bearer_auth(&device)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = client
        .post(format!("{}/v1/sessions/{id}/update", broker.address))
        .bearer_auth(&device)
        .json(&json!({"decision": "approve", "shared_data": {"full_name": "Kay Kill"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // SIGKILL at once: no shutdown, no flush, no checkpoint.
    broker.child.kill().await.unwrap();

    let mut broker = start_broker(&db).await;
    let decision: Value = client
        .get(format!("{}/v1/sessions/{id}/decision", broker.address))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(decision["status"], "confirmed");
    assert_eq!(decision["seq"], 3);
    assert_eq!(decision["user_id"], "alice");
    assert_eq!(decision["consent"]["is_consented"], true);
    assert_eq!(decision["shared_data"], json!({"full_name": "Kay Kill"}));
    let res = client
        .get(format!("{}/v1/sessions/{id}/status", broker.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    broker.child.kill().await.unwrap();
}

#[actix_web::test]
async fn sigterm_closes_websockets_with_1001_exits_0_and_loses_nothing() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broker.db");
    let client = http_client();
    let device =
        idv_actors::credentials::mint_device_jwt(ISSUER, ISSUER_SECRET, "alice", 600).unwrap();

    let mut broker = start_broker(&db).await;
    let created: Value = client
        .post(format!("{}/v1/sessions", broker.address))
        .header("X-Api-Key", API_KEY)
        .json(&json!({"scopes": ["full_name"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["session_id"].as_str().unwrap().to_owned();
    let token = created["session_token"].as_str().unwrap().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "{}/v1/sessions/{id}/ws?token={token}",
        broker.address.replace("http://", "ws://")
    ))
    .await
    .expect("handshake");
    let res = client
        .get(format!("{}/v1/sessions/{id}/information", broker.address))
        .bearer_auth(&device)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // The snapshot, then the transition: the subscriber is live when the signal comes.
    let mut frames = Vec::new();
    while frames.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                frames.push(serde_json::from_str::<Value>(&t).unwrap())
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a frame, got {other:?}"),
        }
    }
    assert_eq!(frames[0]["type"], "snapshot");
    assert_eq!(frames[1]["status"], "retrieved");

    let pid = broker.child.id().expect("the broker runs");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());

    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a close frame in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Text(t))) => panic!("no frame expected after the signal: {t}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the socket broke without a close frame: {e}"),
            None => panic!("the socket ended without a close frame"),
        }
    };
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Away));

    let status = tokio::time::timeout(Duration::from_secs(30), broker.child.wait())
        .await
        .expect("the broker exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");

    // Nothing lost: the same database holds the session, its binding and its token.
    let mut broker = start_broker(&db).await;
    let got: Value = client
        .get(format!("{}/v1/sessions/{id}", broker.address))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "retrieved");
    assert_eq!(got["seq"], 2);
    let res = client
        .get(format!("{}/v1/sessions/{id}/status", broker.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mallory =
        idv_actors::credentials::mint_device_jwt(ISSUER, ISSUER_SECRET, "mallory", 600).unwrap();
    let res = client
        .get(format!("{}/v1/sessions/{id}/information", broker.address))
        .bearer_auth(&mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "the binding survived");
    broker.child.kill().await.unwrap();
}

/// Runs the binary to completion; returns (exit code, stdout, stderr).
async fn run_broker(args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_idv-broker"))
            .args(args)
            .env_remove("IDVB_WEBHOOK_URL")
            .env_remove("IDVB_DB")
            .env_remove("IDVB_STORE")
            .env_remove("IDVB_NATS")
            .env_remove("IDVB_NODE_ID")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the broker exits in time")
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr:?}");
}

#[actix_web::test]
async fn a_bad_flag_exits_2_with_one_line_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let db = db.to_str().unwrap();
    for args in [
        vec!["--no-such-flag"],
        vec!["--bind", "127.0.0.1:0", "--db", db, "--rate-limit", "lots"],
        vec![
            "--bind",
            "127.0.0.1:0",
            "--db",
            db,
            "--api-key",
            "no-equals-sign",
        ],
        vec![
            "--bind",
            "127.0.0.1:0",
            "--db",
            db,
            "--webhook-url",
            "https://hooks.example/x",
        ],
    ] {
        let (code, stdout, stderr) = run_broker(&args).await;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(!stdout.contains("listening on"), "{args:?}");
        assert_one_line(&stderr);
    }
}

#[actix_web::test]
async fn an_unusable_database_exits_2_with_one_line_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0xA5u8; 8192]).unwrap();
    for db in [dir.path().to_path_buf(), garbage] {
        let (code, stdout, stderr) = run_broker(&[
            "--bind",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
            "--api-key",
            &format!("{API_KEY_NAME}={API_KEY}"),
        ])
        .await;
        assert_eq!(code, Some(2), "{}: {stderr}", db.display());
        assert!(!stdout.contains("listening on"));
        assert_one_line(&stderr);
    }
}

#[actix_web::test]
async fn a_postgres_store_without_nats_an_unknown_store_or_an_unreachable_server_exit_2() {
    let key = format!("{API_KEY_NAME}={API_KEY}");
    // Nothing listens on port 1: the server cannot be reached.
    let unreachable = "postgres://idv:pw-not-shown@127.0.0.1:1/idv";
    for args in [
        vec!["--store", "postgres://idv@127.0.0.1/idv"],
        vec!["--store", "mysql://idv@127.0.0.1/idv"],
        // Without a cluster key: messages between nodes could not be sealed.
        vec!["--store", unreachable, "--nats", "nats://127.0.0.1:4222"],
        vec![
            "--store",
            unreachable,
            "--nats",
            "nats://127.0.0.1:4222",
            "--cluster-key",
            CLUSTER_KEY,
        ],
        vec!["--store", unreachable, "--nats", "http://127.0.0.1:4222"],
        // A dot would split the node's NATS subjects: refused before anything opens.
        vec![
            "--store",
            unreachable,
            "--nats",
            "nats://127.0.0.1:4222",
            "--cluster-key",
            CLUSTER_KEY,
            "--node-id",
            "a.b",
        ],
    ] {
        let mut argv = vec!["--bind", "127.0.0.1:0", "--api-key", &key];
        argv.extend(args.iter().copied());
        let (code, stdout, stderr) = run_broker(&argv).await;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(!stdout.contains("listening on"), "{args:?}");
        assert_one_line(&stderr);
        assert!(!stderr.contains("pw-not-shown"), "{stderr}");
        let named = [
            "--store",
            "--nats",
            "--node-id",
            "--cluster-key",
            "database",
        ];
        assert!(
            named.iter().any(|n| stderr.contains(n)),
            "{args:?}: {stderr}"
        );
        if args.contains(&"--node-id") {
            assert!(
                stderr.contains("--node-id"),
                "checked at parse time: {stderr}"
            );
        }
    }
}

#[actix_web::test]
async fn weak_or_ambiguous_credentials_exit_2_with_one_line_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("weak.db");
    let db = db.to_str().unwrap();
    let good_key = format!("{API_KEY_NAME}={API_KEY}");
    let good_issuer = format!("{ISSUER}={ISSUER_SECRET}");
    let cases: [(&str, Vec<&str>); 5] = [
        (
            "a 15-byte API key",
            vec!["--api-key", "Acme=fifteen-bytes", "--issuer", &good_issuer],
        ),
        (
            "a 15-byte issuer secret",
            vec![
                "--api-key",
                &good_key,
                "--issuer",
                "phone-app=fifteen-bytes",
            ],
        ),
        (
            "two API keys named alike",
            vec![
                "--api-key",
                &good_key,
                "--api-key",
                "Acme Bank=another-key-0123456789",
            ],
        ),
        (
            "two issuers named alike",
            vec![
                "--issuer",
                &good_issuer,
                "--issuer",
                "phone-app=another-secret-0123456789",
            ],
        ),
        (
            // Which tenant a request is would be a guess.
            "one API key under two names",
            vec![
                "--api-key",
                "Acme=shared-value-0123456789",
                "--api-key",
                "Globex=shared-value-0123456789",
            ],
        ),
    ];
    for (why, creds) in cases {
        let mut args = vec!["--bind", "127.0.0.1:0", "--db", db];
        args.extend(creds);
        let (code, stdout, stderr) = run_broker(&args).await;
        assert_eq!(code, Some(2), "{why}: {stderr}");
        assert!(!stdout.contains("listening on"), "{why}");
        assert_one_line(&stderr);
        assert!(!stderr.contains("fifteen-bytes"), "{why}: {stderr}");
        assert!(!stderr.contains("shared-value"), "{why}: {stderr}");
    }
    assert!(
        !Path::new(db).exists(),
        "refused before the database is touched"
    );
}

#[actix_web::test]
async fn a_purge_cut_short_by_kill_9_is_gone_from_every_file_before_the_restart_listens() {
    if skip_on_postgres("SQLite's WAL checkpoint at open; PostgreSQL keeps no store file here") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broker.db");
    let client = http_client();
    // The broker scrubs the WAL 500 ms after a purge; a kill -9 slower than that finds
    // nothing left to prove. Try until the kill lands while the marker is still on disk.
    let mut left_by_the_crash = None;
    for _ in 0..5 {
        let marker = format!("wal-marker-{}", uuid::Uuid::new_v4().simple());
        let mut broker = start_broker(&db).await;
        let res = client
            .post(format!("{}/v1/sessions", broker.address))
            .header("X-Api-Key", API_KEY)
            .json(&json!({"scopes": ["full_name"], "registration": {"first_name": marker}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let id = res.json::<Value>().await.unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let res = client
            .delete(format!("{}/v1/sessions/{id}", broker.address))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        broker.child.kill().await.unwrap();
        if !crate::custody::files_containing(dir.path(), &marker).is_empty() {
            left_by_the_crash = Some(marker);
            break;
        }
    }
    let marker =
        left_by_the_crash.expect("a kill -9 right after the cancel left the marker in the WAL");

    // Once the restarted broker listens, no file holds the marker: not the database,
    // not its -wal, not its -shm.
    let mut broker = start_broker(&db).await;
    let found = crate::custody::files_containing(dir.path(), &marker);
    assert!(
        found.is_empty(),
        "{marker} survived the restart in {found:?}"
    );
    let res = client
        .get(format!("{}/readyz", broker.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    broker.child.kill().await.unwrap();
}

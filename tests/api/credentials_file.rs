//! The credentials file (issue 26, SPEC §6 `--credentials`) against the real binary:
//! API keys and issuers added, removed and rotated by `SIGHUP` without a restart, and a
//! broken file keeping the set in use with one line saying why.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt as _;

use crate::helpers::spawn_binary;

const KEY_ONE: &str = "acme-key-one-0123456789";
const KEY_ROTATED: &str = "acme-key-rotated-0123456789";
const KEY_TWO: &str = "other-key-two-0123456789";
const ISSUER_SECRET: &str = "file-issuer-secret-0123456789";

fn write(path: &Path, api_keys: &[(&str, &str)], extra: &str) {
    let mut text = String::new();
    for (name, key) in api_keys {
        text.push_str(&format!("[[api_key]]\nname = {name:?}\nkey = {key:?}\n\n"));
    }
    text.push_str(&format!(
        "[[issuer]]\nname = \"file-app\"\nsecret = {ISSUER_SECRET:?}\n\n"
    ));
    text.push_str(extra);
    std::fs::write(path, text).unwrap();
}

fn hup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

struct Broker {
    address: String,
    client: reqwest::Client,
    /// stderr's lines so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    async fn create(&self, key: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/sessions", self.address))
            .header("X-Api-Key", key)
            .json(&json!({"scopes": ["full_name"]}))
            .send()
            .await
            .unwrap()
    }

    /// Waits until creating a session with `key` answers `want`.
    async fn create_becomes(&self, key: &str, want: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.create(key).await.status().as_u16();
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a create with the key stayed {got}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a log line containing `needle`; answers how many lines contain it.
    async fn logged(&self, needle: &str) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            if n > 0 {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {needle:?}: {:?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[actix_web::test]
async fn api_keys_are_added_removed_and_rotated_by_sighup_and_a_broken_file_keeps_the_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let db = dir.path().join("broker.db");
    write(&file, &[("Acme Bank", KEY_ONE)], "");
    let (mut child, address) = spawn_binary(
        &[
            "--db",
            db.to_str().unwrap(),
            "--credentials",
            file.to_str().unwrap(),
        ],
        &[("RUST_LOG", "info")],
        std::process::Stdio::piped(),
    )
    .await;
    let pid = child.id().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    idv_actors::webhooks::install_crypto_provider();
    let broker = Broker {
        address,
        client: reqwest::Client::new(),
        log,
    };

    // The file's key and issuer work from the start.
    let res = broker.create(KEY_ONE).await;
    assert_eq!(res.status(), 201);
    let session: Value = res.json().await.unwrap();
    let id = session["session_id"].as_str().unwrap().to_owned();
    let device =
        idv_actors::credentials::mint_device_jwt("file-app", ISSUER_SECRET, "alice", 600).unwrap();
    let info = broker
        .client
        .get(format!("{}/v1/sessions/{id}/information", broker.address))
        .bearer_auth(&device)
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    assert_eq!(broker.create(KEY_TWO).await.status(), 401);

    // Added, and "Acme Bank" rotated under the same name.
    write(
        &file,
        &[("Acme Bank", KEY_ROTATED), ("Other Corp", KEY_TWO)],
        "",
    );
    hup(pid);
    broker.create_becomes(KEY_TWO, 201).await;
    assert_eq!(broker.create(KEY_ONE).await.status(), 401, "the old key");
    // Sessions belong to the name: the rotated key keeps the old key's session.
    let res = broker
        .client
        .get(format!("{}/v1/sessions/{id}", broker.address))
        .header("X-Api-Key", KEY_ROTATED)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = broker
        .client
        .get(format!("{}/v1/sessions/{id}", broker.address))
        .header("X-Api-Key", KEY_TWO)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "another name's session");
    assert_eq!(broker.logged("credentials reloaded").await, 1);

    // Removed.
    write(&file, &[("Acme Bank", KEY_ROTATED)], "");
    hup(pid);
    broker.create_becomes(KEY_TWO, 401).await;
    assert_eq!(broker.create(KEY_ROTATED).await.status(), 201);

    // A file that does not parse, then one that breaks a rule (a short key, one key
    // under two names): each keeps the set in use and says why on one line.
    std::fs::write(&file, "[[api_key]\nname = \"Broken\"\n").unwrap();
    hup(pid);
    assert_eq!(broker.logged("reload refused").await, 1);
    let short = [("Acme Bank", KEY_ROTATED), ("Tiny", "short-key")];
    write(&file, &short, "");
    hup(pid);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.logged("reload refused").await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the second refusal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let twice = [("Acme Bank", KEY_ROTATED), ("Twin", KEY_ROTATED)];
    write(&file, &twice, "");
    hup(pid);
    while broker.logged("reload refused").await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the third refusal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.create(KEY_ROTATED).await.status(), 201, "kept");
    assert_eq!(broker.create("short-key").await.status(), 401);
    let refusals: Vec<String> = broker
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("reload refused"))
        .cloned()
        .collect();
    assert!(refusals[1].contains("at least 16"), "{refusals:?}");
    assert!(refusals[2].contains("same key"), "{refusals:?}");
    for line in &refusals {
        assert!(!line.contains(KEY_ROTATED), "a secret in the log: {line}");
    }

    // Still alive and serving; stops cleanly.
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the broker exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[actix_web::test]
async fn a_credentials_file_that_breaks_a_rule_at_start_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let db = dir.path().join("broker.db");
    write(&file, &[("Acme Bank", "short")], "");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_idv-broker"))
        .args(["--bind", "127.0.0.1:0", "--db", db.to_str().unwrap()])
        .arg("--credentials")
        .arg(&file)
        .env_clear()
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at least 16"), "{stderr}");
}

/// `v1=<hex HMAC-SHA256(secret, timestamp.body)>` (SPEC §4).
fn v1(secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[actix_web::test]
async fn webhook_secrets_rotate_by_sighup_new_first() {
    const NEW: &str = "new-webhook-secret-0123456789";
    const OLD: &str = "old-webhook-secret-0123456789";
    let receiver = crate::webhooks::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let db = dir.path().join("broker.db");
    let webhooks = |secrets: &[&str]| format!("[webhooks]\nsecrets = {secrets:?}\n");
    write(&file, &[("Acme Bank", KEY_ONE)], &webhooks(&[OLD]));
    let (mut child, address) = spawn_binary(
        &[
            "--db",
            db.to_str().unwrap(),
            "--credentials",
            file.to_str().unwrap(),
            "--webhook-allow-private",
        ],
        &[],
        std::process::Stdio::null(),
    )
    .await;
    let pid = child.id().unwrap();
    idv_actors::webhooks::install_crypto_provider();
    let client = reqwest::Client::new();
    let cancel_one = |n: usize| {
        let (client, address, url) = (client.clone(), address.clone(), receiver.url("/hook"));
        async move {
            let res = client
                .post(format!("{address}/v1/sessions"))
                .header("X-Api-Key", KEY_ONE)
                .json(&json!({"scopes": ["full_name"], "callback_url": url}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201, "create {n}");
            let id = res.json::<Value>().await.unwrap()["session_id"]
                .as_str()
                .unwrap()
                .to_owned();
            let res = client
                .delete(format!("{address}/v1/sessions/{id}"))
                .header("X-Api-Key", KEY_ONE)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "cancel {n}");
        }
    };
    cancel_one(1).await;
    let hits = receiver.wait_accepted(1).await;
    let hit = &hits[0];
    let ts = hit.header("x-idv-timestamp").to_owned();
    assert_eq!(hit.header("x-idv-signature"), v1(OLD, &ts, &hit.body));

    write(&file, &[("Acme Bank", KEY_ONE)], &webhooks(&[NEW, OLD]));
    hup(pid);
    // The reload is done once a delivery signs with both; each try is a new session.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 1;
    loop {
        n += 1;
        cancel_one(n).await;
        let hits = receiver.wait_accepted(n).await;
        let hit = hits.iter().rev().find(|h| h.answered == 200).unwrap();
        let ts = hit.header("x-idv-timestamp").to_owned();
        let both = format!("{},{}", v1(NEW, &ts, &hit.body), v1(OLD, &ts, &hit.body));
        if hit.header("x-idv-signature") == both {
            break;
        }
        assert_eq!(hit.header("x-idv-signature"), v1(OLD, &ts, &hit.body));
        assert!(
            tokio::time::Instant::now() < deadline,
            "never signed with the new secret"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.start_kill();
}

#[actix_web::test]
async fn an_issuer_by_jwks_added_to_the_file_works_after_sighup_without_a_restart() {
    let keys = tempfile::tempdir().unwrap();
    let key = crate::jwks::make_key(keys.path(), "ed", crate::jwks::Kind::Ed);
    let server = crate::jwks::JwksServer::start().await;
    server.publish(&[key.jwk("ed-1", jsonwebtoken::Algorithm::EdDSA)]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let db = dir.path().join("broker.db");
    write(&file, &[("Acme Bank", KEY_ONE)], "");
    let (mut child, address) = spawn_binary(
        &[
            "--db",
            db.to_str().unwrap(),
            "--credentials",
            file.to_str().unwrap(),
        ],
        &[],
        std::process::Stdio::null(),
    )
    .await;
    idv_actors::webhooks::install_crypto_provider();
    let client = reqwest::Client::new();
    let token = key.token("sso", "alice", jsonwebtoken::Algorithm::EdDSA, Some("ed-1"));
    let information = || {
        let (client, address, token) = (client.clone(), address.clone(), token.clone());
        async move {
            let res = client
                .post(format!("{address}/v1/sessions"))
                .header("X-Api-Key", KEY_ONE)
                .json(&json!({"scopes": ["full_name"]}))
                .send()
                .await
                .unwrap();
            let id = res.json::<Value>().await.unwrap()["session_id"]
                .as_str()
                .unwrap()
                .to_owned();
            client
                .get(format!("{address}/v1/sessions/{id}/information"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(information().await, 401, "not an issuer yet");
    write(
        &file,
        &[("Acme Bank", KEY_ONE)],
        &format!("[[issuer]]\nname = \"sso\"\njwks_url = {:?}\n", server.url),
    );
    hup(child.id().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while information().await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new JWKS issuer never worked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let _ = child.start_kill();
}

//! The log of a whole journey, as an operator's pipeline sees it (`--log-format json`,
//! `RUST_LOG=debug`): one line per request with the route template, status, latency
//! and session id, and never a token, a secret or the person's data.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::helpers::*;

const KEY: &str = "logs-api-key-0123456789abcdef";
const ISSUER_SECRET_HERE: &str = "logs-issuer-secret-0123456789";

#[actix_web::test]
async fn a_journeys_json_log_has_one_line_per_request_and_no_token_secret_or_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("logs.db");
    let (mut child, base) = spawn_binary(
        &[
            "--rate-limit",
            "0",
            "--log-format",
            "json",
            "--db",
            db.to_str().unwrap(),
            "--api-key",
            &format!("Log Corp={KEY}"),
            "--issuer",
            &format!("phone-app={ISSUER_SECRET_HERE}"),
        ],
        &[("RUST_LOG", "debug")],
        Stdio::piped(),
    )
    .await;
    idv_actors::webhooks::install_crypto_provider();
    let http = reqwest::Client::new();

    // The person's data, each a marker to look for in the log.
    let (name, shared, user, photo) = (
        "Zebulon Logmarker",
        "Quentin Sharedmarker",
        "alice-logmarker",
        "PhotoBytesMarker",
    );
    let created: Value = http
        .post(format!("{base}/v1/sessions"))
        .header("X-Api-Key", KEY)
        .json(&json!({"scopes": ["full_name", "selfie"], "registration": {"full_name": name}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["session_id"].as_str().unwrap().to_owned();
    let token = created["session_token"].as_str().unwrap().to_owned();
    let jwt = jwt("phone-app", ISSUER_SECRET_HERE, user, 600);
    let ok = |res: reqwest::Response| {
        assert!(res.status().is_success(), "{}", res.status());
    };
    ok(http
        .get(format!("{base}/v1/sessions/{id}/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap());
    ok(http
        .get(format!("{base}/v1/sessions/{id}/qr.svg?token={token}"))
        .send()
        .await
        .unwrap());
    ok(http
        .get(format!("{base}/v1/sessions/{id}/information"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap());
    ok(http
        .put(format!("{base}/v1/sessions/{id}/files/selfie"))
        .bearer_auth(&jwt)
        .header("Content-Type", "image/jpeg")
        .body([&b"\xff\xd8\xff\xe0\0\x10JFIF "[..], photo.as_bytes()].concat())
        .send()
        .await
        .unwrap());
    ok(http
        .post(format!("{base}/v1/sessions/{id}/update"))
        .bearer_auth(&jwt)
        .json(&json!({"decision": "approve", "shared_data": {"full_name": shared}}))
        .send()
        .await
        .unwrap());
    ok(http
        .get(format!("{base}/v1/sessions/{id}/decision"))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap());
    ok(http
        .put(format!("{base}/v1/users/{user}/status"))
        .header("X-Api-Key", KEY)
        .json(&json!({"status": "CREATED"}))
        .send()
        .await
        .unwrap());
    // Refused credentials are logged too, without what was presented.
    let res = http
        .get(format!("{base}/v1/sessions/{id}/status"))
        .bearer_auth("a-wrong-token-logmarker")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // SIGTERM, so every line is flushed, then read the whole log.
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("it stops")
        .unwrap();
    assert!(status.success());

    for needle in [
        KEY,
        ISSUER_SECRET_HERE,
        token.as_str(),
        jwt.as_str(),
        name,
        shared,
        user,
        photo,
        "a-wrong-token-logmarker",
    ] {
        assert!(!log.contains(needle), "the log holds {needle:?}:\n{log}");
    }
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "access" && l["message"] == "request")
        .collect();
    assert_eq!(requests.len(), 9, "one line per request: {requests:#?}");
    let routes: Vec<&str> = requests
        .iter()
        .filter_map(|r| r["route"].as_str())
        .collect();
    for route in [
        "/v1/sessions",
        "/v1/sessions/{id}/status",
        "/v1/sessions/{id}/qr.svg",
        "/v1/sessions/{id}/information",
        "/v1/sessions/{id}/files/{file}",
        "/v1/sessions/{id}/update",
        "/v1/sessions/{id}/decision",
        "/v1/users/{user_id}/status",
    ] {
        assert!(routes.contains(&route), "no line for {route}: {routes:?}");
    }
    for r in &requests {
        assert!(r["status"].is_u64() && r["micros"].is_u64(), "{r}");
        if r["route"]
            .as_str()
            .unwrap()
            .starts_with("/v1/sessions/{id}")
        {
            assert_eq!(r["session"], id.as_str(), "{r}");
        }
    }
    assert!(requests.iter().any(|r| r["status"] == 401));
}

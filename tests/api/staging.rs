//! Uploads held in memory (SPEC §3, issue 9 items 1 and 10): memory is taken as bytes
//! arrive, a body too slow to arrive is `408`, a retry of the same kind replaces a
//! stalled upload at once, and the binary turns core dumps off so they cannot carry
//! staged bytes to disk.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
const MIB: usize = 1024 * 1024;

/// How long a stalled upload's answer may take to come (it should come at once).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A PNG-looking body of `len` bytes.
fn png(len: usize) -> Vec<u8> {
    let mut body = vec![0u8; len];
    body[..PNG_MAGIC.len()].copy_from_slice(PNG_MAGIC);
    body
}

/// An upload written by hand: its head announces `Content-Length: announced`, then
/// only `sent` bytes follow, and the connection stays open.
struct Stalled {
    stream: TcpStream,
}

impl Stalled {
    async fn start(app: &TestApp, id: &str, kind: &str, announced: usize, sent: &[u8]) -> Self {
        let addr = app.address.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT /v1/sessions/{id}/files/{kind} HTTP/1.1\r\nHost: localhost\r\n\
             Authorization: Bearer {}\r\nContent-Type: image/png\r\n\
             Content-Length: {announced}\r\n\r\n",
            app.device_token("alice")
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(sent).await.unwrap();
        Stalled { stream }
    }

    /// The answer's status and JSON body, or `None` if the server closed the
    /// connection without one.
    async fn answer(mut self) -> Option<(u16, Value)> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        tokio::time::timeout(ANSWER_WITHIN, async {
            loop {
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                        let body = serde_json::from_slice(&got[end + 4..end + 4 + len]).unwrap();
                        return Some((status, body));
                    }
                }
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("the stalled upload was answered or ended in time")
    }
}

async fn upload(app: &TestApp, id: &str, kind: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/v1/sessions/{id}/files/{kind}")))
        .bearer_auth(app.device_token("alice"))
        .header("Content-Type", "image/png")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Polls the staging budget until `done(used)` holds; returns the last value seen.
async fn budget_until(app: &TestApp, done: impl Fn(usize) -> bool) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let used = app.registry.staging_budget().used();
        if done(used) || tokio::time::Instant::now() > deadline {
            return used;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn stalled_uploads_hold_only_what_they_sent_so_an_honest_upload_still_gets_201() {
    let app = spawn_app_with(|s| s.max_staged_bytes = 8 * MIB).await;
    let first = app.retrieved_session(&["selfie"], "alice").await.0;
    let second = app.retrieved_session(&["selfie"], "alice").await.0;
    let honest = app.retrieved_session(&["selfie"], "alice").await.0;
    // Together they announce 10 MiB, more than the 8 MiB budget.
    let sent = png(16);
    let a = Stalled::start(&app, &first, "selfie", 5 * MIB, &sent).await;
    let b = Stalled::start(&app, &second, "selfie", 5 * MIB, &sent).await;
    let used = budget_until(&app, |used| used >= 2 * sent.len()).await;
    assert!(
        (2 * sent.len()..=4 * sent.len()).contains(&used),
        "both stalled uploads stream in, holding about what they sent: {used} bytes"
    );

    let body = png(4 * MIB);
    let res = upload(&app, &honest, "selfie", body.clone()).await;
    assert_eq!(res.status(), 201);

    // Once the stalled ones give up, only the staged upload holds memory.
    drop((a, b));
    let used = budget_until(&app, |used| used == body.len()).await;
    assert_eq!(used, body.len());
}

#[actix_web::test]
async fn a_retry_of_the_same_kind_replaces_a_stalled_upload_at_once() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["selfie"], "alice").await;
    let stalled = Stalled::start(&app, &id, "selfie", 5 * MIB, &png(16)).await;
    budget_until(&app, |used| used >= 16).await;

    let retry = png(1000);
    let res = upload(&app, &id, "selfie", retry.clone()).await;
    assert_eq!(res.status(), 201);
    let file_id = res.json::<Value>().await.unwrap()["file_id"].clone();

    // The stalled one is ended: told so if it still listens, else cut off.
    if let Some((status, body)) = stalled.answer().await {
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "invalid_state");
    }
    assert_eq!(
        budget_until(&app, |used| used == retry.len()).await,
        retry.len(),
        "the stalled upload's bytes went back to the budget"
    );

    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        decision["files"],
        json!([{"file_id": file_id, "kind": "selfie", "content_type": "image/png", "size": 1000}])
    );
}

#[actix_web::test]
async fn an_upload_body_too_slow_to_arrive_is_408_timeout() {
    let app = spawn_app_with(|s| s.upload_timeout = Duration::from_millis(300)).await;
    let (id, _) = app.retrieved_session(&["selfie"], "alice").await;
    let stalled = Stalled::start(&app, &id, "selfie", 1000, &png(16)).await;
    let (status, body) = stalled.answer().await.expect("an answer");
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("did not arrive"));
    assert_eq!(budget_until(&app, |used| used == 0).await, 0);

    // A body that arrives in time is not affected.
    let res = upload(&app, &id, "selfie", png(1000)).await;
    assert_eq!(res.status(), 201);
}

#[actix_web::test]
async fn the_broker_binary_runs_with_core_dumps_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = crate::restart::start_broker(&dir.path().join("broker.db")).await;
    let pid = broker.child.id().expect("running");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core size line");
    let values: Vec<&str> = core
        .trim_start_matches("Max core file size")
        .split_whitespace()
        .collect();
    assert_eq!(values[..2], ["0", "0"], "soft and hard limit: {core}");
    broker.child.kill().await.unwrap();
}

//! SIGTERM while clients keep sessions moving (issue 11): the real binary stops
//! accepting, closes every WebSocket with 1001, lets what is in flight finish, flushes
//! the store and the webhook outbox, and exits 0; after a restart every acknowledged
//! transition is there and its webhook is delivered.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tokio::process::Child;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::webhooks::Receiver;

const SECRET: &str = "shutdown-webhook-secret";
/// Clients driving sessions at once.
const CLIENTS: usize = 8;

async fn start(db: &std::path::Path) -> (Child, String) {
    spawn_binary(
        &[
            "--rate-limit",
            "0",
            "--db",
            db.to_str().unwrap(),
            "--api-key",
            &format!("{API_KEY_NAME}={API_KEY}"),
            "--issuer",
            &format!("{ISSUER}={ISSUER_SECRET}"),
            "--webhook-secret",
            SECRET,
            "--webhook-allow-private",
            "--shutdown-timeout",
            "20",
        ],
        &[("RUST_LOG", "warn")],
        Stdio::null(),
    )
    .await
}

/// What the broker acknowledged: the highest seq per session.
type Acked = Arc<Mutex<BTreeMap<String, u64>>>;

/// Creates, opens and approves sessions until the broker stops answering.
async fn drive(base: String, callback: String, acked: Acked, client: usize) {
    let http = reqwest::Client::new();
    let device = jwt(ISSUER, ISSUER_SECRET, &format!("user-{client}"), 600);
    loop {
        let Ok(res) = http
            .post(format!("{base}/v1/sessions"))
            .header("X-Api-Key", API_KEY)
            .json(&json!({"scopes": ["full_name"], "callback_url": callback}))
            .send()
            .await
        else {
            return;
        };
        if res.status() != 201 {
            return;
        }
        let Ok(created) = res.json::<Value>().await else {
            return;
        };
        let id = created["session_id"].as_str().unwrap().to_owned();
        acked.lock().unwrap().insert(id.clone(), 1);
        for (seq, step) in [(2, "information"), (3, "update")] {
            let url = format!("{base}/v1/sessions/{id}/{step}");
            let req = if step == "information" {
                http.get(url)
            } else {
                http.post(url)
                    .json(&json!({"decision": "approve", "shared_data": {"full_name": "Ada"}}))
            };
            match req.bearer_auth(&device).send().await {
                Ok(res) if res.status() == 200 => {
                    acked.lock().unwrap().insert(id.clone(), seq);
                }
                // Refused while stopping (`503`) or cut off: nothing acknowledged.
                _ => return,
            }
        }
    }
}

#[actix_web::test]
async fn sigterm_under_load_stops_accepting_closes_sockets_drains_flushes_and_loses_nothing() {
    idv_actors::webhooks::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broker.db");
    let receiver = Receiver::start().await;
    let callback = receiver.url("/hooks");
    let (mut child, base) = start(&db).await;
    let http = reqwest::Client::new();

    // Watchers on sessions that stay open, so every one of them must get 1001.
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let created: Value = http
            .post(format!("{base}/v1/sessions"))
            .header("X-Api-Key", API_KEY)
            .json(&json!({"scopes": ["full_name"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (ws, _) = tokio_tungstenite::connect_async(format!(
            "{}/v1/sessions/{}/ws?token={}",
            base.replace("http://", "ws://"),
            created["session_id"].as_str().unwrap(),
            created["session_token"].as_str().unwrap()
        ))
        .await
        .expect("handshake");
        sockets.push(ws);
    }

    let acked: Acked = Arc::default();
    let drivers: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(drive(base.clone(), callback.clone(), acked.clone(), i)))
        .collect();
    // Let the load build up: wait for some acknowledged approvals (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().values().filter(|s| **s == 3).count() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the load never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());

    // Every watcher gets 1001.
    for ws in &mut sockets {
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .expect("a close frame in time")
            {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("the socket ended without a close frame: {other:?}"),
            }
        };
        assert_eq!(close.map(|c| c.code), Some(CloseCode::Away));
    }
    // Accepting stopped before the sockets were closed: a connection made now is
    // refused, or never served (it waits in the kernel's queue until the listener goes).
    let addr = base.trim_start_matches("http://");
    let served = async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.ok()?;
        Some(String::from_utf8_lossy(&answer).into_owned())
    };
    if let Ok(Some(answer)) = tokio::time::timeout(Duration::from_secs(10), served).await {
        panic!("a connection made after the WebSockets were closed was served: {answer}");
    }
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("the broker exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    for d in drivers {
        tokio::time::timeout(Duration::from_secs(30), d)
            .await
            .expect("the clients stop once the broker is gone")
            .unwrap();
    }

    // After a restart, every acknowledged transition is there.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20);
    let (mut child, base) = start(&db).await;
    for (id, seq) in &acked {
        let got: Value = http
            .get(format!("{base}/v1/sessions/{id}"))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            got["seq"].as_u64().unwrap() >= *seq,
            "{id}: acknowledged seq {seq}, stored {got}"
        );
    }
    // And every acknowledged transition's webhook arrives (at least once).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let delivered: std::collections::BTreeSet<(String, u64)> = receiver
            .hits()
            .iter()
            .filter(|h| h.answered == 200)
            .map(|h| {
                let b = h.json();
                (
                    b["session_id"].as_str().unwrap().to_owned(),
                    b["seq"].as_u64().unwrap(),
                )
            })
            .collect();
        let missing: Vec<_> = acked
            .iter()
            .flat_map(|(id, seq)| (2..=*seq).map(move |s| (id.clone(), s)))
            .filter(|e| !delivered.contains(e))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhooks never delivered: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
}

/// `--shutdown-grace`: a stopping node first keeps accepting and refuses every new
/// request with `503`, `Retry-After` and `Connection: close` (`/readyz` too, which takes
/// it out of a load balancer; `/healthz` still answers), so no client meets a listener
/// closing under it; then it stops as before and exits 0.
#[actix_web::test]
async fn a_stop_with_a_grace_first_refuses_new_requests_with_503_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("grace.db");
    let (mut child, base) = spawn_binary(
        &[
            "--db",
            db.to_str().unwrap(),
            "--api-key",
            &format!("{API_KEY_NAME}={API_KEY}"),
            "--shutdown-grace",
            "3",
        ],
        &[("RUST_LOG", "warn")],
        Stdio::null(),
    )
    .await;
    // reqwest's TLS needs a provider even for plain HTTP; the broker's is the one.
    idv_actors::webhooks::install_crypto_provider();
    let client = reqwest::Client::new();
    let create = || {
        client
            .post(format!("{base}/v1/sessions"))
            .header("X-Api-Key", API_KEY)
            .json(&json!({"scopes": ["full_name"]}))
            .send()
    };
    assert_eq!(create().await.unwrap().status(), 201);

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let ready = loop {
        let res = client.get(format!("{base}/readyz")).send().await.unwrap();
        if res.status() == 503 || tokio::time::Instant::now() >= deadline {
            break res;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(ready.status(), 503, "/readyz takes the node out at once");
    let refused = create().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the client is told to open its next connection elsewhere"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the process is alive while it drains"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("it exits after the grace")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

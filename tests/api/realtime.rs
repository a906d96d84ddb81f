//! WebSocket push, gap-free resume, long-poll.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long any single frame may take to arrive on a loaded machine.
const FRAME_DEADLINE: Duration = Duration::from_secs(10);

pub(crate) async fn connect(app: &TestApp, id: &str, token: &str, after: Option<u64>) -> Ws {
    let mut url = format!(
        "{}/v1/sessions/{id}/ws?token={token}",
        app.address.replace("http", "ws")
    );
    if let Some(n) = after {
        url.push_str(&format!("&after_seq={n}"));
    }
    let (ws, res) = tokio_tungstenite::connect_async(url)
        .await
        .expect("handshake");
    assert_eq!(res.status(), 101);
    ws
}

/// The next text frame as JSON; `None` when the server closed (with the close frame).
pub(crate) async fn next_frame(ws: &mut Ws) -> Result<Value, Option<(CloseCode, String)>> {
    loop {
        let msg = tokio::time::timeout(FRAME_DEADLINE, ws.next())
            .await
            .expect("a frame in time");
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).expect("JSON frame")),
            Some(Ok(Message::Close(c))) => {
                return Err(c.map(|c| (c.code, c.reason.to_string())));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Every frame until the server closes, and the close code.
async fn drain(ws: &mut Ws) -> (Vec<Value>, Option<CloseCode>) {
    let mut frames = Vec::new();
    loop {
        match next_frame(ws).await {
            Ok(f) => frames.push(f),
            Err(close) => return (frames, close.map(|c| c.0)),
        }
    }
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "status")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

async fn session(app: &TestApp) -> (String, String) {
    let created = app.create_session(&["full_name"]).await;
    (
        created["session_id"].as_str().unwrap().to_owned(),
        created["session_token"].as_str().unwrap().to_owned(),
    )
}

async fn approve(app: &TestApp, id: &str) {
    assert_eq!(app.information(id, "alice").await.status(), 200);
    let res = app
        .update(
            id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
        )
        .await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn a_subscriber_gets_the_snapshot_then_every_transition_then_close_1000() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let mut ws = connect(&app, &id, &token, None).await;
    let snap = next_frame(&mut ws).await.unwrap();
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["status"], "initialized");
    assert_eq!(snap["seq"], 1);
    assert_eq!(snap["session_id"], id.as_str());
    assert!(snap["expires_at"].is_string());

    app.information(&id, "alice").await;
    let f = next_frame(&mut ws).await.unwrap();
    assert_eq!(
        (f["type"].as_str(), f["status"].as_str(), f["seq"].as_u64()),
        (Some("status"), Some("retrieved"), Some(2))
    );
    assert!(f["at"].is_string());

    app.update(&id, "alice", &json!({"decision": "deny"})).await;
    let (frames, close) = drain(&mut ws).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["status"], "declined");
    assert_eq!(frames[0]["seq"], 3);
    assert_eq!(close, Some(CloseCode::Normal));
}

#[actix_web::test]
async fn a_subscriber_to_an_ended_session_gets_the_snapshot_the_replay_and_the_close() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    approve(&app, &id).await;
    let mut ws = connect(&app, &id, &token, Some(1)).await;
    let (frames, close) = drain(&mut ws).await;
    assert_eq!(frames[0]["type"], "snapshot");
    assert_eq!(frames[0]["status"], "confirmed");
    assert_eq!(seqs(&frames), vec![2, 3]);
    assert_eq!(close, Some(CloseCode::Normal));
}

#[actix_web::test]
async fn a_resumed_subscriber_gets_what_it_missed_exactly_once_in_order() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let mut ws = connect(&app, &id, &token, None).await;
    assert_eq!(next_frame(&mut ws).await.unwrap()["seq"], 1);
    drop(ws);
    app.information(&id, "alice").await;

    let mut ws = connect(&app, &id, &token, Some(1)).await;
    let snap = next_frame(&mut ws).await.unwrap();
    assert_eq!(
        (snap["type"].as_str(), snap["seq"].as_u64()),
        (Some("snapshot"), Some(2))
    );
    let replayed = next_frame(&mut ws).await.unwrap();
    assert_eq!(
        (replayed["status"].as_str(), replayed["seq"].as_u64()),
        (Some("retrieved"), Some(2))
    );
    app.update(
        &id,
        "alice",
        &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
    )
    .await;
    let (frames, close) = drain(&mut ws).await;
    assert_eq!(seqs(&frames), vec![3]);
    assert_eq!(close, Some(CloseCode::Normal));
}

#[actix_web::test]
async fn resuming_while_transitions_happen_misses_nothing_and_repeats_nothing() {
    let app = spawn_app().await;
    for round in 0..25 {
        let (id, token) = session(&app).await;
        let drive = async {
            // Stagger the race differently each round.
            tokio::time::sleep(Duration::from_millis(round % 5)).await;
            approve(&app, &id).await;
        };
        let watch = async {
            let mut ws = connect(&app, &id, &token, Some(1)).await;
            drain(&mut ws).await
        };
        let ((frames, close), ()) = tokio::join!(watch, drive);
        assert_eq!(frames[0]["type"], "snapshot", "round {round}");
        assert_eq!(seqs(&frames), vec![2, 3], "round {round}: {frames:?}");
        assert_eq!(close, Some(CloseCode::Normal));
    }
}

#[actix_web::test]
async fn a_thousand_subscribers_on_one_session_all_get_the_push() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let mut sockets = Vec::new();
    for chunk in 0..10 {
        let batch =
            futures_util::future::join_all((0..100).map(|_| connect(&app, &id, &token, None)))
                .await;
        for mut ws in batch {
            assert_eq!(
                next_frame(&mut ws).await.unwrap()["type"],
                "snapshot",
                "chunk {chunk}"
            );
            sockets.push(ws);
        }
    }
    assert_eq!(
        app.registry
            .subscriber_count(idv_actors::ids::SessionId::parse(&id).unwrap())
            .await
            .unwrap(),
        1000
    );
    app.information(&id, "alice").await;
    let got = futures_util::future::join_all(sockets.iter_mut().map(next_frame)).await;
    for f in got {
        let f = f.unwrap();
        assert_eq!(
            (f["status"].as_str(), f["seq"].as_u64()),
            (Some("retrieved"), Some(2))
        );
    }
}

#[actix_web::test]
async fn a_subscriber_that_never_reads_is_closed_while_the_others_keep_receiving() {
    let app = spawn_app_with(|s| {
        s.ws.ping_interval = Duration::from_millis(100);
        s.ws.client_timeout = Duration::from_millis(500);
    })
    .await;
    let (id, token) = session(&app).await;
    let sid = idv_actors::ids::SessionId::parse(&id).unwrap();
    // The silent one never reads, so it never answers a ping.
    let mut silent = connect(&app, &id, &token, None).await;
    let mut reader = connect(&app, &id, &token, None).await;
    assert_eq!(next_frame(&mut reader).await.unwrap()["type"], "snapshot");
    // The reader keeps reading (and so answers pings) while the silent one times out.
    let deadline = tokio::time::Instant::now() + FRAME_DEADLINE;
    while app.registry.subscriber_count(sid).await.unwrap() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent subscriber was not dropped"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), reader.next()).await;
    }
    app.information(&id, "alice").await;
    let f = next_frame(&mut reader).await.unwrap();
    assert_eq!(f["seq"], 2);
    // What the silent one finds when it finally reads: its snapshot, then the close.
    assert_eq!(next_frame(&mut silent).await.unwrap()["type"], "snapshot");
    let close = next_frame(&mut silent)
        .await
        .unwrap_err()
        .expect("a close frame");
    assert_eq!(close.0, CloseCode::Policy);
}

#[actix_web::test]
async fn binary_and_oversized_frames_close_the_connection_with_a_policy_error() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let mut ws = connect(&app, &id, &token, None).await;
    next_frame(&mut ws).await.unwrap();
    ws.send(Message::Text("hello, ignored".into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut ws).await.unwrap_err().map(|c| c.0),
        Some(CloseCode::Policy)
    );

    let mut ws = connect(&app, &id, &token, None).await;
    next_frame(&mut ws).await.unwrap();
    ws.send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut ws).await.unwrap_err().map(|c| c.0),
        Some(CloseCode::Policy)
    );
}

/// The handshake's HTTP status and SPEC §5 code when the upgrade is refused.
async fn refused(app: &TestApp, path_and_query: &str, auth: Option<&str>) -> (u16, String) {
    let mut req = app
        .client
        .get(app.url(path_and_query))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(t) = auth {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (status, body["error"]["code"].as_str().unwrap().to_owned())
}

#[actix_web::test]
async fn refused_handshakes_are_http_errors() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let (_, other_token) = session(&app).await;
    let path = format!("/v1/sessions/{id}/ws");
    assert_eq!(
        refused(&app, &path, None).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        refused(&app, &path, Some("not-a-token")).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        refused(&app, &path, Some(&other_token)).await,
        (403, "forbidden".into())
    );
    assert_eq!(
        refused(&app, &format!("{path}?after_seq=2"), Some(&token)).await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        refused(
            &app,
            &format!("/v1/sessions/{}/ws", uuid::Uuid::new_v4()),
            Some(&token)
        )
        .await,
        (404, "not_found".into())
    );
    // The query-string form of the token works for the same session.
    let mut ws = connect(&app, &id, &token, Some(0)).await;
    assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "snapshot");
}

#[actix_web::test]
async fn expiry_is_pushed_and_closes_the_socket() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let mut ws = connect(&app, &id, &token, None).await;
    next_frame(&mut ws).await.unwrap();
    app.clock.advance(chrono::Duration::seconds(601));
    app.registry.tick_all();
    let (frames, close) = drain(&mut ws).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0]["status"].as_str(), frames[0]["seq"].as_u64()),
        (Some("expired"), Some(2))
    );
    assert_eq!(close, Some(CloseCode::Normal));
}

async fn poll(app: &TestApp, id: &str, token: &str, query: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/v1/sessions/{id}/status?{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_long_poll_answers_at_once_when_behind() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let started = std::time::Instant::now();
    let res = poll(&app, &id, &token, "after_seq=0&wait=30").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "\"1\"");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["seq"], 1);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "it did not wait out the poll"
    );
}

/// Waits until the session's actor holds a parked long-poll (bounded).
async fn wait_until_polling(app: &TestApp, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.registry.waiter_count(session_id(id)).await.unwrap() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long-poll never parked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_web::test]
async fn a_long_poll_wakes_up_on_the_next_transition() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let waiting = poll(&app, &id, &token, "wait=30");
    let drive = async {
        wait_until_polling(&app, &id).await;
        app.information(&id, "alice").await;
    };
    // Bounded well below the poll's 30 s: it answers on the transition, not the timeout.
    let (res, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(waiting, drive)
    })
    .await
    .expect("the poll answered on the transition, not at its timeout");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["status"].as_str(), body["seq"].as_u64()),
        (Some("retrieved"), Some(2))
    );
}

#[actix_web::test]
async fn a_long_poll_times_out_with_the_unchanged_state() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let started = std::time::Instant::now();
    let res = poll(&app, &id, &token, "after_seq=1&wait=1").await;
    assert_eq!(res.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["seq"], 1);
    // The ETag still works with the long-poll form.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/status?after_seq=1&wait=0")))
        .bearer_auth(&token)
        .header("If-None-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
}

#[actix_web::test]
async fn a_long_poll_is_woken_by_expiry() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let waiting = poll(&app, &id, &token, "wait=30");
    let drive = async {
        wait_until_polling(&app, &id).await;
        app.clock.advance(chrono::Duration::seconds(601));
        app.registry.tick_all();
    };
    let (res, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(waiting, drive)
    })
    .await
    .expect("the poll answered on the expiry, not at its timeout");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "expired");
}

#[actix_web::test]
async fn long_poll_parameters_are_checked() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    assert_error(
        poll(&app, &id, &token, "wait=31").await,
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        poll(&app, &id, &token, "wait=-1").await,
        400,
        "invalid_request",
    )
    .await;
    let message = assert_error(
        poll(&app, &id, &token, "wait=abc").await,
        400,
        "invalid_request",
    )
    .await;
    assert!(message.contains("wait"), "names the parameter: {message}");
    assert_error(
        poll(&app, &id, &token, "after_seq=5&wait=1").await,
        400,
        "invalid_request",
    )
    .await;
}

#[actix_web::test]
async fn shutdown_closes_sockets_with_1001() {
    let mut app = spawn_app().await;
    let (id, token) = session(&app).await;
    let mut ws = connect(&app, &id, &token, None).await;
    next_frame(&mut ws).await.unwrap();
    let (close, ()) = tokio::join!(async { next_frame(&mut ws).await.unwrap_err() }, app.stop());
    assert_eq!(close.map(|c| c.0), Some(CloseCode::Away));
}

#[actix_web::test]
async fn a_subscriber_resumes_across_a_restart_with_exactly_what_it_missed() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let mut ws = connect(&app, &id, &token, None).await;
    next_frame(&mut ws).await.unwrap();
    app.information(&id, "alice").await;
    assert_eq!(next_frame(&mut ws).await.unwrap()["seq"], 2);
    drop(ws);

    let app = app.restart(chrono::Duration::zero()).await;
    app.update(
        &id,
        "alice",
        &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
    )
    .await;
    let mut ws = connect(&app, &id, &token, Some(2)).await;
    let (frames, close) = drain(&mut ws).await;
    assert_eq!(frames[0]["type"], "snapshot");
    assert_eq!(seqs(&frames), vec![3]);
    assert_eq!(close, Some(CloseCode::Normal));
}

#[actix_web::test]
async fn after_seq_zero_replays_transitions_only_never_the_creation() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    approve(&app, &id).await;
    let mut ws = connect(&app, &id, &token, Some(0)).await;
    let (frames, _) = drain(&mut ws).await;
    assert_eq!(frames[0]["type"], "snapshot");
    assert_eq!(
        seqs(&frames),
        vec![2, 3],
        "creation is not a transition: {frames:?}"
    );
}

#[actix_web::test]
async fn a_token_of_no_session_cannot_tell_whether_a_session_exists() {
    let app = spawn_app().await;
    let unknown = format!("/v1/sessions/{}/status", uuid::Uuid::new_v4());
    let res = app
        .client
        .get(app.url(&unknown))
        .bearer_auth("made-up-token")
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
    // A real token of another session is a valid credential: the unknown id is 404.
    let (_, token) = session(&app).await;
    let res = app
        .client
        .get(app.url(&unknown))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
}

//! Failure injection: a session actor that panics, and a store broken underneath the
//! broker. Callers see either a working session or a clean `500`, never a dead address;
//! subscribers and long-polls of an actor killed by a panic (at any point, see
//! [`FaultPoint`]) get the next transition or a reconnect instruction, never silence.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use idv_actors::registry::Lookup;
use idv_actors::session::messages::ArmFault;
use idv_actors::session::messages::FaultPoint;
use idv_actors::session::messages::{InjectFault, RotateToken, Tick};
use idv_actors::session::SessionActor;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A generous bound on "within a second", for a loaded machine.
const PROMPTLY: Duration = Duration::from_secs(5);

async fn connect(app: &TestApp, id: &str, token: &str) -> Ws {
    let url = format!(
        "{}/v1/sessions/{id}/ws?token={token}",
        app.address.replace("http", "ws")
    );
    let (mut ws, res) = tokio_tungstenite::connect_async(url)
        .await
        .expect("handshake");
    assert_eq!(res.status(), 101);
    let snapshot = next_frame(&mut ws).await.expect("a snapshot");
    assert_eq!(snapshot["type"], "snapshot");
    ws
}

/// The next text frame as JSON, or the server's close (code, reason); `PROMPTLY` or
/// the test fails.
async fn next_frame(ws: &mut Ws) -> Result<Value, Option<(CloseCode, String)>> {
    loop {
        let msg = tokio::time::timeout(PROMPTLY, ws.next())
            .await
            .expect("a frame or a close, promptly");
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).expect("JSON frame")),
            Some(Ok(Message::Close(c))) => return Err(c.map(|c| (c.code, c.reason.to_string()))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Waits until `done` holds, at most `PROMPTLY`.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn live_actor(app: &TestApp, id: &str) -> actix::Addr<SessionActor> {
    match app.registry.lookup(session_id(id)).await.unwrap() {
        Some(Lookup::Live(addr)) => addr,
        _ => panic!("the session is not live"),
    }
}

async fn approve(app: &TestApp, id: &str) -> reqwest::Response {
    app.update(
        id,
        "alice",
        &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
    )
    .await
}

/// Arms a panic at `at`, outside the actor's containment, while a WebSocket subscriber
/// and a long-poll wait on a retrieved session (seq 2); `trigger` makes the actor reach
/// it. Then the next transition (made by the trigger or, if it made none, an approve)
/// reaches both, or the subscriber is told to reconnect with after_seq=2.
async fn a_panic_at_strands_nobody(at: FaultPoint) {
    let app = spawn_app().await;
    let (id, token) = app.retrieved_session(&["full_name"], "alice").await;
    let sid = session_id(&id);
    let mut ws = connect(&app, &id, &token).await;
    let poll = {
        let request = app
            .client
            .get(app.url(&format!("/v1/sessions/{id}/status?after_seq=2&wait=30")))
            .bearer_auth(&token);
        tokio::spawn(async move { request.send().await.expect("the poll is answered") })
    };
    until("the subscriber and the poll wait", || async {
        app.registry.subscriber_count(sid).await.unwrap() == 1
            && app.registry.waiter_count(sid).await.unwrap() == 1
    })
    .await;
    let actor = live_actor(&app, &id).await;
    app.registry.call(sid, ArmFault { at }).await.unwrap();

    // Reach the fault; the transition the subscriber and the poll must see next.
    let expected = match at {
        FaultPoint::Apply | FaultPoint::Publish => {
            // Committed, but its actor died before answering: not a false 409, and not
            // re-run.
            let res = approve(&app, &id).await;
            assert_error(res, 503, "unavailable").await;
            "confirmed"
        }
        FaultPoint::Finish => {
            assert_error(app.cancel(&id).await, 503, "unavailable").await;
            "cancelled"
        }
        FaultPoint::CheckExpiry => {
            app.clock.advance(chrono::Duration::seconds(601));
            actor.do_send(Tick);
            "expired"
        }
        FaultPoint::Tick => {
            actor.do_send(Tick);
            "confirmed"
        }
        FaultPoint::RotateToken => {
            let rotated = app.registry.call(sid, RotateToken).await;
            assert!(rotated.is_err(), "the actor answered: {rotated:?}");
            "confirmed"
        }
        FaultPoint::Unsubscribe => {
            let mut other = connect(&app, &id, &token).await;
            other.send(Message::Close(None)).await.unwrap();
            while other.next().await.is_some() {}
            "confirmed"
        }
        FaultPoint::Load | FaultPoint::CatchUp => {
            // A contained panic restarts the actor, which reloads (and catches its
            // subscriber up) from the store.
            let contained = app.registry.call(sid, InjectFault { contained: true });
            contained.await.unwrap();
            "confirmed"
        }
    };
    until("the injected panic killed the actor", || {
        let dead = !actor.connected();
        async move { dead }
    })
    .await;
    if expected == "confirmed" && !matches!(at, FaultPoint::Apply | FaultPoint::Publish) {
        assert_eq!(approve(&app, &id).await.status(), 200);
    }

    match next_frame(&mut ws).await {
        Ok(frame) => {
            assert_eq!(frame["type"], "status", "{frame}");
            assert_eq!(frame["status"], expected, "{frame}");
            assert_eq!(frame["seq"], 3, "{frame}");
        }
        Err(Some((code, reason))) => {
            assert_eq!(code, CloseCode::Restart, "{reason}");
            assert!(reason.contains("after_seq=2"), "{reason}");
        }
        Err(None) => panic!("the subscriber was dropped without a word"),
    }
    let res = tokio::time::timeout(PROMPTLY, poll)
        .await
        .expect("the long-poll is answered promptly")
        .unwrap();
    assert_eq!(res.status(), 200);
    let status: Value = res.json().await.unwrap();
    assert_eq!(status["status"], expected);
    assert_eq!(status["seq"], 3);
}

#[actix_web::test]
async fn a_panic_in_apply_strands_no_subscriber_and_no_long_poll() {
    a_panic_at_strands_nobody(FaultPoint::Apply).await;
}

#[actix_web::test]
async fn a_panic_in_publish_strands_no_subscriber_and_no_long_poll() {
    a_panic_at_strands_nobody(FaultPoint::Publish).await;
}

#[actix_web::test]
async fn a_panic_in_finish_strands_no_subscriber_and_no_long_poll() {
    a_panic_at_strands_nobody(FaultPoint::Finish).await;
}

#[actix_web::test]
async fn a_panic_in_load_strands_no_subscriber_and_no_long_poll() {
    a_panic_at_strands_nobody(FaultPoint::Load).await;
}

#[actix_web::test]
async fn a_panic_in_catch_up_strands_no_subscriber_and_no_long_poll() {
    a_panic_at_strands_nobody(FaultPoint::CatchUp).await;
}

#[actix_web::test]
async fn a_panic_in_check_expiry_strands_no_subscriber_and_no_long_poll() {
    a_panic_at_strands_nobody(FaultPoint::CheckExpiry).await;
}

#[actix_web::test]
async fn a_panic_in_rotate_token_strands_no_subscriber_and_no_long_poll() {
    a_panic_at_strands_nobody(FaultPoint::RotateToken).await;
}

#[actix_web::test]
async fn a_panic_in_tick_strands_no_subscriber_and_no_long_poll() {
    a_panic_at_strands_nobody(FaultPoint::Tick).await;
}

#[actix_web::test]
async fn a_panic_in_unsubscribe_strands_no_subscriber_and_no_long_poll() {
    a_panic_at_strands_nobody(FaultPoint::Unsubscribe).await;
}

#[actix_web::test]
async fn a_subscriber_that_cannot_follow_a_dead_actor_is_told_to_reconnect_with_after_seq() {
    let app = spawn_app().await;
    let (id, token) = app.retrieved_session(&["full_name"], "alice").await;
    let sid = session_id(&id);
    let mut ws = connect(&app, &id, &token).await;
    let poll = {
        let request = app
            .client
            .get(app.url(&format!("/v1/sessions/{id}/status?after_seq=2&wait=30")))
            .bearer_auth(&token);
        tokio::spawn(async move { request.send().await.expect("the poll is answered") })
    };
    until("the subscriber and the poll wait", || async {
        app.registry.subscriber_count(sid).await.unwrap() == 1
            && app.registry.waiter_count(sid).await.unwrap() == 1
    })
    .await;
    let actor = live_actor(&app, &id).await;
    app.registry
        .call(
            sid,
            ArmFault {
                at: FaultPoint::Tick,
            },
        )
        .await
        .unwrap();

    // No replacement can load the session: the store lost its sessions table.
    {
        app.drop_table("sessions").await;
    }
    actor.do_send(Tick);

    match next_frame(&mut ws).await {
        Err(Some((code, reason))) => {
            assert_eq!(code, CloseCode::Restart, "{reason}");
            assert!(reason.contains("after_seq=2"), "{reason}");
        }
        other => panic!("expected a 1012 close, got {other:?}"),
    }
    let res = tokio::time::timeout(PROMPTLY, poll)
        .await
        .expect("the long-poll is answered promptly")
        .unwrap();
    assert_eq!(res.status(), 500, "the poll is told the store failed");
}

#[actix_web::test]
async fn a_call_whose_actor_dies_after_committing_is_not_answered_with_a_false_409() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["full_name"], "alice").await;
    app.registry
        .call(
            session_id(&id),
            ArmFault {
                at: FaultPoint::Apply,
            },
        )
        .await
        .unwrap();

    let res = approve(&app, &id).await;
    let message = assert_error(res, 503, "unavailable").await;
    assert!(message.contains("read it"), "{message}");

    // The approve committed once, and reading says so.
    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["status"], "confirmed");
    assert_eq!(decision["seq"], 3);
    let confirmed: i64 = app
        .sql_one(
            "SELECT COUNT(*) FROM session_events WHERE session_id = ?1 AND status = 'confirmed'",
            &[&id],
        )
        .await;
    assert_eq!(confirmed, 1);
}

#[actix_web::test]
async fn a_contained_panic_restarts_the_session_from_the_store() {
    let app = spawn_app().await;
    let (id, token) = app.retrieved_session(&["full_name"], "alice").await;

    app.registry
        .call(session_id(&id), InjectFault { contained: true })
        .await
        .expect("the fault is contained");

    // The restarted actor reloaded the binding and seq from the store.
    let status: Value = app.status(&id, &token).await.json().await.unwrap();
    assert_eq!(status["status"], "retrieved");
    assert_eq!(status["seq"], 2);
    let res = app.information(&id, "mallory").await;
    assert_error(res, 403, "forbidden").await;
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["seq"], 3);
}

#[actix_web::test]
async fn a_contained_panic_before_information_leaves_a_working_session() {
    let app = spawn_app().await;
    let id = app.create_session(&["full_name"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.registry
        .call(session_id(&id), InjectFault { contained: true })
        .await
        .unwrap();
    let res = app.information(&id, "alice").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "retrieved");
}

#[actix_web::test]
async fn an_actor_killed_by_a_panic_is_replaced_and_the_next_caller_sees_no_error() {
    let app = spawn_app().await;
    let (id, token) = app.retrieved_session(&["full_name"], "alice").await;

    // The injecting call is answered by no one: every actor it reached died.
    let injected = app
        .registry
        .call(session_id(&id), InjectFault { contained: false })
        .await;
    assert!(injected.is_err(), "the fault did not kill the actor");

    let status = app.status(&id, &token).await;
    assert_eq!(status.status(), 200);
    let status: Value = status.json().await.unwrap();
    assert_eq!(status["status"], "retrieved");
    assert_eq!(status["seq"], 2);
    let res = app.information(&id, "mallory").await;
    assert_error(res, 403, "forbidden").await;
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["status"], "confirmed");
    assert_eq!(decision["seq"], 3);
}

#[actix_web::test]
async fn a_killed_session_still_expires_on_time() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["full_name"], "alice").await;
    let _ = app
        .registry
        .call(session_id(&id), InjectFault { contained: false })
        .await;
    // A status read rehydrates the session, with its timer.
    app.backend_get(&format!("/v1/sessions/{id}")).await;
    app.clock.advance(chrono::Duration::seconds(601));
    app.registry.tick_all();
    let view = app
        .wait_for_status(&id, "expired", Duration::from_secs(5))
        .await;
    assert_eq!(view["status"], "expired");
}

#[actix_web::test]
async fn a_killed_session_expires_without_any_traffic() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["full_name"], "alice").await;
    let _ = app
        .registry
        .call(session_id(&id), InjectFault { contained: false })
        .await;
    // No request touches the session and nobody ticks: the broker's own expiry sweep
    // must find it. Watched through the database, which rehydrates nothing.
    app.clock.advance(chrono::Duration::seconds(601));
    let status = app
        .stored_status_becomes(&id, "expired", Duration::from_secs(10))
        .await;
    assert_eq!(status, "expired");
}

/// Asserts a `500 internal` whose message gives nothing of the store away.
async fn assert_clean_500(res: reqwest::Response) {
    let message = assert_error(res, 500, "internal").await;
    let lower = message.to_lowercase();
    for leak in [
        "sqlite",
        "session_events",
        "table",
        "sql",
        "rusqlite",
        "panicked",
    ] {
        assert!(!lower.contains(leak), "the 500 leaks {leak:?}: {message}");
    }
}

#[actix_web::test]
async fn a_broken_store_gives_a_clean_500_and_the_server_keeps_answering() {
    let app = spawn_app().await;
    let (id, token) = app.retrieved_session(&["full_name"], "alice").await;
    let waiting = app.create_session(&["full_name"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Break the store underneath the broker.
    {
        app.drop_table("session_events").await;
    }

    let res = app.post_session(&json!({"scopes": ["full_name"]})).await;
    assert_clean_500(res).await;
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
        )
        .await;
    assert_clean_500(res).await;
    let res = app.information(&waiting, "bob").await;
    assert_clean_500(res).await;
    let res = app.cancel(&waiting).await;
    assert_clean_500(res).await;

    // Nothing was half-done, and the server still answers.
    let status: Value = app.status(&id, &token).await.json().await.unwrap();
    assert_eq!(status["status"], "retrieved");
    assert_eq!(status["seq"], 2);
    let view: Value = app
        .backend_get(&format!("/v1/sessions/{waiting}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "initialized");
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = app.backend_get("/v1/users/nobody").await;
    assert_error(res, 404, "not_found").await;
}

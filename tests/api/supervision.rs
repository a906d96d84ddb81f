//! Failure injection: a session actor that panics, and a store broken underneath the
//! broker. Callers see either a working session or a clean `500`, never a dead address.

use std::time::Duration;

use idv_actors::commands::InjectFault;
use serde_json::{json, Value};

use crate::helpers::*;

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
        let conn = rusqlite::Connection::open(&app.db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch("DROP TABLE session_events").unwrap();
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

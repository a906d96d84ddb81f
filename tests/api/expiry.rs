//! SPEC §2: a session still open at `expires_at` becomes `expired` within a second,
//! with or without traffic, and also when the broker was down at that moment.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

#[actix_web::test]
async fn a_session_past_its_ttl_expires_without_traffic_and_its_data_goes() {
    let app = spawn_app().await;
    let res = app
        .post_session(&json!({
            "scopes": ["full_name"], "ttl_seconds": 60, "registration": {"first_name": "Exp"}
        }))
        .await;
    let created: Value = res.json().await.unwrap();
    let id = created["session_id"].as_str().unwrap();
    let token = created["session_token"].as_str().unwrap();
    let (retrieved, _) = app.retrieved_session(&["full_name"], "alice").await;

    // Past both: the first's 60 s and the second's default 600 s.
    app.clock.advance(chrono::Duration::seconds(601));
    app.registry.tick_all();

    for id in [id, retrieved.as_str()] {
        let view = app
            .wait_for_status(id, "expired", Duration::from_secs(5))
            .await;
        assert_eq!(view["status"], "expired");
        assert_eq!(view["consent"], Value::Null);
    }
    let status: Value = app.status(id, token).await.json().await.unwrap();
    assert_eq!(status["seq"], 2);
    // Expired sessions leave memory; reads come from the store.
    assert_eq!(app.registry.live_count(), 0);
    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{retrieved}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["status"], "expired");
    assert_eq!(decision["seq"], 3);
    assert_eq!(decision["consent"], Value::Null);
    assert_eq!(decision["shared_data"], Value::Null);
    assert_eq!(decision["files"], json!([]));
    let registration: Option<String> = app
        .sql_one("SELECT registration FROM sessions WHERE id = ?1", &[id])
        .await;
    assert_eq!(registration, None);

    let res = app.information(id, "bob").await;
    assert_error(res, 409, "invalid_state").await;
    let res = app
        .update(
            &retrieved,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
        )
        .await;
    assert_error(res, 409, "invalid_state").await;
}

#[actix_web::test]
async fn a_session_not_yet_at_its_ttl_stays_open_when_the_clock_moves() {
    let app = spawn_app().await;
    let id = app
        .post_session(&json!({"scopes": ["full_name"], "ttl_seconds": 120}))
        .await
        .json::<Value>()
        .await
        .unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.clock.advance(chrono::Duration::seconds(100));
    app.registry.tick_all();
    let res = app.information(&id, "alice").await;
    assert_eq!(res.status(), 200);
    let view: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "retrieved");
}

#[actix_web::test]
async fn a_device_call_past_expires_at_is_refused_even_before_the_timer_fires() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["full_name"], "alice").await;
    // The clock moves but no tick is sent: the timer may not have noticed yet.
    app.clock.advance(chrono::Duration::seconds(601));
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
        )
        .await;
    assert_error(res, 409, "invalid_state").await;
    let res = app.information(&id, "alice").await;
    assert_error(res, 409, "invalid_state").await;
    app.registry.tick_all();
    let view = app
        .wait_for_status(&id, "expired", Duration::from_secs(5))
        .await;
    assert_eq!(view["status"], "expired");
}

#[actix_web::test]
async fn a_short_ttl_expires_on_the_real_timer_with_no_traffic() {
    let app = spawn_app_with(|s| {
        s.ttl = idv_web::TtlBounds {
            min: 1,
            max: 86_400,
            default: 600,
        }
    })
    .await;
    let res = app
        .post_session(&json!({"scopes": ["full_name"], "ttl_seconds": 1}))
        .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Nothing touches the session: only its own timer can expire it. Looking through
    // the database, not the API, so no request rehydrates or nudges the actor.
    let status = app
        .stored_status_becomes(&id, "expired", Duration::from_secs(5))
        .await;
    assert_eq!(status, "expired");
}

#[actix_web::test]
async fn a_session_that_expired_while_the_broker_was_down_is_expired_before_it_listens() {
    let app = spawn_app().await;
    let overdue = app
        .post_session(&json!({"scopes": ["full_name"], "ttl_seconds": 30}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let overdue_id = overdue["session_id"].as_str().unwrap().to_owned();
    let (retrieved_overdue, _) = app.retrieved_session(&["full_name"], "alice").await;
    let fresh = app
        .post_session(&json!({"scopes": ["full_name"], "ttl_seconds": 3600}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let fresh_id = fresh["session_id"].as_str().unwrap().to_owned();

    let app = app.restart(chrono::Duration::seconds(601)).await;

    // Straight after start, with no request and no timer tick: the store already says so,
    // and only the session still within its TTL got an actor.
    let statuses: Vec<(String, String)> = app
        .sql("SELECT id, status FROM sessions ORDER BY created_at", &[])
        .await
        .iter()
        .map(|r| (String::from_cell(&r[0]), String::from_cell(&r[1])))
        .collect();
    let status_of = |id: &str| {
        statuses
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, s)| s.clone())
            .unwrap()
    };
    assert_eq!(status_of(&overdue_id), "expired");
    assert_eq!(status_of(&retrieved_overdue), "expired");
    assert_eq!(status_of(&fresh_id), "initialized");
    assert_eq!(app.registry.live_count(), 1);

    let view: Value = app
        .backend_get(&format!("/v1/sessions/{retrieved_overdue}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "expired");
    assert_eq!(view["seq"], 3);
    let res = app.information(&fresh_id, "bob").await;
    assert_eq!(res.status(), 200);
}

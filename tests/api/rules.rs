//! The session's rules as a caller meets them: the bound device, what approve needs,
//! and what a terminal session refuses.

use serde_json::{json, Value};

use crate::helpers::*;

async fn view(app: &TestApp, id: &str) -> Value {
    app.backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_second_device_is_refused_on_information_and_update() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["full_name"], "alice").await;
    let res = app.information(&id, "mallory").await;
    assert_error(res, 403, "forbidden").await;
    for body in [
        json!({"decision": "deny"}),
        json!({"decision": "approve", "shared_data": {"full_name": "M"}}),
    ] {
        let res = app.update(&id, "mallory", &body).await;
        assert_error(res, 403, "forbidden").await;
    }
    let v = view(&app, &id).await;
    assert_eq!(v["status"], "retrieved");
    assert_eq!(v["seq"], 2);
    // The bound device still can.
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "Alice"}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    // And once terminal, the other device is still refused as a stranger (SPEC §2:
    // "any other device gets 403 from then on"), not told the session's state.
    let res = app.information(&id, "mallory").await;
    assert_error(res, 403, "forbidden").await;
}

#[actix_web::test]
async fn a_second_device_gets_403_in_every_terminal_state_of_a_bound_session() {
    let app = spawn_app().await;
    let approve = json!({"decision": "approve", "shared_data": {"full_name": "A"}});
    let (confirmed, _) = app.retrieved_session(&["full_name"], "alice").await;
    assert_eq!(
        app.update(&confirmed, "alice", &approve).await.status(),
        200
    );
    let (declined, _) = app.retrieved_session(&["full_name"], "alice").await;
    let deny = json!({"decision": "deny"});
    assert_eq!(app.update(&declined, "alice", &deny).await.status(), 200);
    let (cancelled, _) = app.retrieved_session(&["full_name"], "alice").await;
    assert_eq!(app.cancel(&cancelled).await.status(), 200);
    let (expired, _) = app.retrieved_session(&["full_name"], "alice").await;
    app.clock.advance(chrono::Duration::seconds(601));
    app.registry.tick_all();
    let v = app
        .wait_for_status(&expired, "expired", std::time::Duration::from_secs(5))
        .await;
    assert_eq!(v["status"], "expired");

    for (id, status) in [
        (&confirmed, "confirmed"),
        (&declined, "declined"),
        (&cancelled, "cancelled"),
        (&expired, "expired"),
    ] {
        assert_eq!(view(&app, id).await["status"], status);
        let res = app.information(id, "mallory").await;
        assert_error(res, 403, "forbidden").await;
        for body in [&deny, &approve] {
            let res = app.update(id, "mallory", body).await;
            assert_error(res, 403, "forbidden").await;
        }
        // The bound device learns the state.
        let res = app.information(id, "alice").await;
        assert_error(res, 409, "invalid_state").await;
    }
}

#[actix_web::test]
async fn an_update_before_information_is_a_409() {
    let app = spawn_app().await;
    let id = app.create_session(&["full_name"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for body in [
        json!({"decision": "deny"}),
        json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
    ] {
        let res = app.update(&id, "alice", &body).await;
        assert_error(res, 409, "invalid_state").await;
    }
    let v = view(&app, &id).await;
    assert_eq!(v["status"], "initialized");
    assert_eq!(v["seq"], 1);
}

#[actix_web::test]
async fn approve_needs_every_scope_and_nothing_else() {
    let app = spawn_app().await;
    let (id, _) = app
        .retrieved_session(&["full_name", "date_of_birth"], "alice")
        .await;
    let approve = |shared: Value| json!({"decision": "approve", "shared_data": shared});

    let res = app
        .update(&id, "alice", &approve(json!({"full_name": "A"})))
        .await;
    let message = assert_error(res, 422, "incomplete").await;
    assert!(message.contains("date_of_birth"), "{message}");
    let res = app
        .update(&id, "alice", &json!({"decision": "approve"}))
        .await;
    assert_error(res, 422, "incomplete").await;

    let res = app
        .update(
            &id,
            "alice",
            &approve(json!({"full_name": "A", "date_of_birth": "1990-01-14", "ssn": "1"})),
        )
        .await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("ssn"), "{message}");

    let res = app
        .update(
            &id,
            "alice",
            &approve(json!({"full_name": "A", "date_of_birth": 19900114})),
        )
        .await;
    assert_error(res, 400, "invalid_request").await;
    let res = app
        .update(
            &id,
            "alice",
            &approve(json!({"full_name": {"first": "A"}, "date_of_birth": "1990-01-14"})),
        )
        .await;
    assert_error(res, 400, "invalid_request").await;
    let res = app
        .update(
            &id,
            "alice",
            &approve(json!({"full_name": "x".repeat(4097), "date_of_birth": "1990-01-14"})),
        )
        .await;
    assert_error(res, 400, "invalid_request").await;

    // Nothing moved; a complete approval still goes through.
    assert_eq!(view(&app, &id).await["status"], "retrieved");
    let res = app
        .update(
            &id,
            "alice",
            &approve(json!({"full_name": "x".repeat(4096), "date_of_birth": "1990-01-14"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["status"], "confirmed");
    // The session was created without a redirect_url.
    assert_eq!(updated["redirect_url"], Value::Null);
}

#[actix_web::test]
async fn a_file_scope_cannot_be_satisfied_by_a_shared_value() {
    let app = spawn_app().await;
    let (id, _) = app
        .retrieved_session(&["full_name", "selfie"], "alice")
        .await;
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
        )
        .await;
    let message = assert_error(res, 422, "incomplete").await;
    assert!(message.contains("selfie"), "{message}");
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "A", "selfie": "jpeg"}}),
        )
        .await;
    assert_error(res, 400, "invalid_request").await;
    // Deny needs nothing.
    let res = app.update(&id, "alice", &json!({"decision": "deny"})).await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn the_decision_is_a_409_until_the_session_is_terminal() {
    let app = spawn_app().await;
    let id = app.create_session(&["full_name"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await;
    assert_error(res, 409, "invalid_state").await;
    app.information(&id, "alice").await;
    let res = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await;
    assert_error(res, 409, "invalid_state").await;
    app.update(&id, "alice", &json!({"decision": "deny"})).await;
    let res = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn a_second_cancel_is_a_409_and_the_first_stands() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["full_name"], "alice").await;
    let res = app.cancel(&id).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["seq"], 3);
    let res = app.cancel(&id).await;
    assert_error(res, 409, "invalid_state").await;
    let v = view(&app, &id).await;
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["seq"], 3);
}

#[actix_web::test]
async fn a_terminal_session_refuses_information_update_and_cancel() {
    let app = spawn_app().await;
    let (confirmed, _) = app.retrieved_session(&["full_name"], "alice").await;
    app.update(
        &confirmed,
        "alice",
        &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
    )
    .await;
    let (declined, _) = app.retrieved_session(&["full_name"], "alice").await;
    app.update(&declined, "alice", &json!({"decision": "deny"}))
        .await;
    let cancelled = app.create_session(&["full_name"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.cancel(&cancelled).await;

    for id in [&confirmed, &declined, &cancelled] {
        let before = view(&app, id).await;
        let res = app.information(id, "alice").await;
        assert_error(res, 409, "invalid_state").await;
        for body in [
            json!({"decision": "deny"}),
            json!({"decision": "approve", "shared_data": {"full_name": "B"}}),
        ] {
            let res = app.update(id, "alice", &body).await;
            assert_error(res, 409, "invalid_state").await;
        }
        let res = app.cancel(id).await;
        assert_error(res, 409, "invalid_state").await;
        let after = view(&app, id).await;
        assert_eq!(before, after, "a terminal session changed");
    }
    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{confirmed}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["shared_data"], json!({"full_name": "A"}));
}

#[actix_web::test]
async fn a_session_past_expires_at_cannot_be_cancelled_any_more() {
    let app = spawn_app().await;
    let created = app.create_session(&["full_name"]).await;
    let id = created["session_id"].as_str().unwrap();
    app.clock.advance(chrono::Duration::seconds(601));
    // Whether or not the expiry has committed yet, the session is expired, not cancelled.
    assert_error(app.cancel(id).await, 409, "invalid_state").await;
    let view = app
        .wait_for_status(id, "expired", std::time::Duration::from_secs(5))
        .await;
    assert_eq!(view["status"], "expired");
}

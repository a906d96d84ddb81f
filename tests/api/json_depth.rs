//! SPEC §3: a JSON body nested deeper than 32 levels is `400 invalid_request`, on
//! every route that reads one, and nothing of it is stored.

use serde_json::{json, Value};

use crate::helpers::*;

/// `{"a": {"a": … {}}}`: an object `levels` deep.
fn nested_object(levels: usize) -> Value {
    let mut v = json!({});
    for _ in 1..levels {
        v = json!({ "a": v });
    }
    v
}

/// `[[…]]`: an array `levels` deep.
fn nested_array(levels: usize) -> Value {
    let mut v = json!([]);
    for _ in 1..levels {
        v = json!([v]);
    }
    v
}

async fn sessions_stored(app: &TestApp) -> i64 {
    app.sql_one("SELECT count(*) FROM sessions", &[]).await
}

async fn assert_too_deep(res: reqwest::Response) {
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("nested deeper than 32"), "{message}");
}

#[actix_web::test]
async fn a_registration_nested_too_deeply_is_a_400_and_is_not_stored() {
    let app = spawn_app().await;
    // The body is level 1, so a registration 32 deep makes 33 levels.
    let body = json!({"scopes": ["full_name"], "registration": nested_object(32)});
    assert_too_deep(app.post_session(&body).await).await;
    assert_eq!(sessions_stored(&app).await, 0);

    // With an Idempotency-Key (it parses the registration again to hash it).
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("X-Api-Key", API_KEY)
        .header("Idempotency-Key", "deep-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_too_deep(res).await;
    assert_eq!(sessions_stored(&app).await, 0);

    // Deeper than serde_json's own limit is refused the same way.
    let body = json!({"scopes": ["full_name"], "registration": {"a": nested_array(200)}});
    assert_too_deep(app.post_session(&body).await).await;
    assert_eq!(sessions_stored(&app).await, 0);
}

#[actix_web::test]
async fn a_body_exactly_32_levels_deep_is_accepted_and_replays_with_its_key() {
    let app = spawn_app().await;
    let body = json!({"scopes": ["full_name"], "registration": nested_object(31)});
    let send = || {
        app.client
            .post(app.url("/v1/sessions"))
            .header("X-Api-Key", API_KEY)
            .header("Idempotency-Key", "deep-but-fine")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["session_id"], first["session_id"]);

    let id = first["session_id"].as_str().unwrap();
    let info: Value = app.information(id, "alice").await.json().await.unwrap();
    assert_eq!(info["registration"], nested_object(31));
}

#[actix_web::test]
async fn an_update_or_user_status_nested_too_deeply_is_a_400_that_changes_nothing() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["full_name"], "alice").await;
    let body = json!({"decision": "approve", "shared_data": {"full_name": nested_array(31)}});
    assert_too_deep(app.update(&id, "alice", &body).await).await;
    let body = json!({"decision": "deny", "extra": nested_array(200)});
    assert_too_deep(app.update(&id, "alice", &body).await).await;
    let view: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "retrieved");

    let res = app
        .client
        .put(app.url("/v1/users/alice/status"))
        .header("X-Api-Key", API_KEY)
        .json(&json!({"status": nested_array(40)}))
        .send()
        .await
        .unwrap();
    assert_too_deep(res).await;
    let res = app.backend_get("/v1/users/alice").await;
    assert_error(res, 404, "not_found").await;
}

//! `PUT /v1/users/{id}/status` and `GET /v1/users/{id}`, per API key.

use serde_json::{json, Value};

use crate::helpers::*;

async fn put_status(app: &TestApp, api_key: &str, user: &str, body: &Value) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/v1/users/{user}/status")))
        .header("X-Api-Key", api_key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_user_status_can_be_set_and_read_back() {
    let app = spawn_app().await;
    let res = app.backend_get("/v1/users/bob@example.com").await;
    assert_error(res, 404, "not_found").await;

    for status in ["CREATED", "BLOCKED", "PENDING"] {
        let res = put_status(
            &app,
            API_KEY,
            "bob@example.com",
            &json!({ "status": status }),
        )
        .await;
        assert_eq!(res.status(), 200);
        let set: Value = res.json().await.unwrap();
        assert_eq!(set["user_id"], "bob@example.com");
        assert_eq!(set["status"], status);
        assert!(set["updated_at"].is_string());
        let got: Value = app
            .backend_get("/v1/users/bob@example.com")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(got, set);
    }
}

#[actix_web::test]
async fn a_bad_user_status_body_is_a_400_and_changes_nothing() {
    let app = spawn_app().await;
    put_status(&app, API_KEY, "bob", &json!({"status": "CREATED"})).await;
    for body in [
        json!({"status": "ACTIVE"}),
        json!({"status": "created"}),
        json!({"status": 1}),
        json!({}),
        json!({"status": "BLOCKED", "reason": "x"}),
    ] {
        let res = put_status(&app, API_KEY, "bob", &body).await;
        assert_error(res, 400, "invalid_request").await;
    }
    let got: Value = app.backend_get("/v1/users/bob").await.json().await.unwrap();
    assert_eq!(got["status"], "CREATED");
}

#[actix_web::test]
async fn a_confirmed_session_makes_its_user_known_as_pending_to_its_api_key_only() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["full_name"], "carol").await;
    // Not before the session is confirmed.
    let res = app.backend_get("/v1/users/carol").await;
    assert_error(res, 404, "not_found").await;
    app.update(
        &id,
        "carol",
        &json!({"decision": "approve", "shared_data": {"full_name": "Carol"}}),
    )
    .await;
    let got: Value = app
        .backend_get("/v1/users/carol")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["user_id"], "carol");
    assert_eq!(got["status"], "PENDING");

    let res = app.other_backend_get("/v1/users/carol").await;
    assert_error(res, 404, "not_found").await;

    // A status set by the backend is not reset by a later confirmed session.
    put_status(&app, API_KEY, "carol", &json!({"status": "CREATED"})).await;
    let (id, _) = app.retrieved_session(&["full_name"], "carol").await;
    app.update(
        &id,
        "carol",
        &json!({"decision": "approve", "shared_data": {"full_name": "Carol"}}),
    )
    .await;
    let got: Value = app
        .backend_get("/v1/users/carol")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "CREATED");
}

#[actix_web::test]
async fn a_denied_session_does_not_make_its_user_known() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["full_name"], "dave").await;
    app.update(&id, "dave", &json!({"decision": "deny"})).await;
    let res = app.backend_get("/v1/users/dave").await;
    assert_error(res, 404, "not_found").await;
}

#[actix_web::test]
async fn users_set_by_one_api_key_are_invisible_to_another() {
    let app = spawn_app().await;
    put_status(&app, API_KEY, "erin", &json!({"status": "BLOCKED"})).await;
    let res = app.other_backend_get("/v1/users/erin").await;
    assert_error(res, 404, "not_found").await;
    let res = put_status(&app, OTHER_API_KEY, "erin", &json!({"status": "CREATED"})).await;
    assert_eq!(res.status(), 200);
    let mine: Value = app
        .backend_get("/v1/users/erin")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["status"], "BLOCKED");
}

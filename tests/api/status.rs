//! The client's `GET /v1/sessions/{id}/status`: its body, `ETag` and `If-None-Match`.

use serde_json::{json, Value};

use crate::helpers::*;

async fn status_if_none_match(
    app: &TestApp,
    id: &str,
    token: &str,
    tag: &str,
) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/v1/sessions/{id}/status")))
        .bearer_auth(token)
        .header("If-None-Match", tag)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn the_status_carries_the_seq_as_its_etag_and_a_matching_if_none_match_is_a_304() {
    let app = spawn_app().await;
    let created = app.create_session(&["full_name"]).await;
    let id = created["session_id"].as_str().unwrap();
    let token = created["session_token"].as_str().unwrap();

    let res = app.status(id, token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "\"1\"");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["session_id"], id);
    assert_eq!(body["status"], "initialized");
    assert_eq!(body["seq"], 1);
    assert_eq!(body["expires_at"], created["expires_at"]);
    assert!(body["updated_at"].is_string());

    let res = status_if_none_match(&app, id, token, "\"1\"").await;
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()["etag"], "\"1\"");
    assert!(res.bytes().await.unwrap().is_empty());

    app.information(id, "alice").await;
    let res = status_if_none_match(&app, id, token, "\"1\"").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "\"2\"");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "retrieved");
    assert_eq!(body["seq"], 2);

    let res = status_if_none_match(&app, id, token, "\"2\"").await;
    assert_eq!(res.status(), 304);

    app.update(
        id,
        "alice",
        &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
    )
    .await;
    // Terminal sessions answer from the store, with the same tags.
    let res = status_if_none_match(&app, id, token, "\"2\"").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "\"3\"");
    let res = status_if_none_match(&app, id, token, "\"3\"").await;
    assert_eq!(res.status(), 304);
}

#[actix_web::test]
async fn a_304_is_only_for_the_sessions_own_token() {
    let app = spawn_app().await;
    let created = app.create_session(&["full_name"]).await;
    let id = created["session_id"].as_str().unwrap();
    let res = status_if_none_match(&app, id, "wrong-token", "\"1\"").await;
    assert_error(res, 401, "unauthorized").await;
}

#[actix_web::test]
async fn a_304_tells_caches_to_revalidate_as_the_200_does() {
    let app = spawn_app().await;
    let created = app.create_session(&["full_name"]).await;
    let id = created["session_id"].as_str().unwrap();
    let token = created["session_token"].as_str().unwrap();

    let res = app.status(id, token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-cache");

    // RFC 9110 §15.4.5: a 304 carries the Cache-Control the 200 would have.
    let res = status_if_none_match(&app, id, token, "\"1\"").await;
    assert_eq!(res.status(), 304);
    assert_eq!(
        res.headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-cache")
    );
}

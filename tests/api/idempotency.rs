//! `Idempotency-Key` on `POST /v1/sessions` (SPEC §3).

use serde_json::{json, Value};

use crate::helpers::*;

async fn post_with_key(app: &TestApp, api_key: &str, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/sessions"))
        .header("X-Api-Key", api_key)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_replay_returns_the_same_session_with_a_new_token_and_the_old_one_stops_working() {
    let app = spawn_app().await;
    let body = json!({"scopes": ["full_name"], "vendor_data": "user-1"});
    let res = post_with_key(&app, API_KEY, "order-1", &body).await;
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await.unwrap();
    let id = first["session_id"].as_str().unwrap();
    let old_token = first["session_token"].as_str().unwrap();

    // The same body, whitespace aside.
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("X-Api-Key", API_KEY)
        .header("Idempotency-Key", "order-1")
        .header("Content-Type", "application/json")
        .body("{ \"scopes\" : [ \"full_name\" ] , \"vendor_data\" : \"user-1\" }")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let replay: Value = res.json().await.unwrap();
    assert_eq!(replay["session_id"], id);
    assert_eq!(replay["status"], "initialized");
    assert_eq!(replay["seq"], 1);
    assert_eq!(replay["expires_at"], first["expires_at"]);
    let new_token = replay["session_token"].as_str().unwrap();
    assert_ne!(new_token, old_token);

    let res = app.status(id, old_token).await;
    assert_error(res, 401, "unauthorized").await;
    let res = app.status(id, new_token).await;
    assert_eq!(res.status(), 200);

    // Still one session for this key.
    let count: i64 = app.sql_one("SELECT count(*) FROM sessions", &[]).await;
    assert_eq!(count, 1);
}

#[actix_web::test]
async fn a_replay_of_a_session_that_moved_on_returns_it_as_it_is_now() {
    let app = spawn_app().await;
    let body = json!({"scopes": ["full_name"]});
    let first: Value = post_with_key(&app, API_KEY, "k-moved", &body)
        .await
        .json()
        .await
        .unwrap();
    let id = first["session_id"].as_str().unwrap();
    app.information(id, "alice").await;
    let res = post_with_key(&app, API_KEY, "k-moved", &body).await;
    assert_eq!(res.status(), 200);
    let replay: Value = res.json().await.unwrap();
    assert_eq!(replay["session_id"], id);
    assert_eq!(replay["status"], "retrieved");
    assert_eq!(replay["seq"], 2);
    let token = replay["session_token"].as_str().unwrap();
    let status: Value = app.status(id, token).await.json().await.unwrap();
    assert_eq!(status["seq"], 2);
}

#[actix_web::test]
async fn the_same_key_with_another_body_is_an_idempotency_conflict() {
    let app = spawn_app().await;
    let res = post_with_key(&app, API_KEY, "order-2", &json!({"scopes": ["full_name"]})).await;
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await.unwrap();
    let res = post_with_key(&app, API_KEY, "order-2", &json!({"scopes": ["email"]})).await;
    assert_error(res, 409, "idempotency_conflict").await;
    // The conflict did not rotate the first session's token.
    let res = app
        .status(
            first["session_id"].as_str().unwrap(),
            first["session_token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn the_same_key_under_another_api_key_is_a_separate_session() {
    let app = spawn_app().await;
    let body = json!({"scopes": ["full_name"]});
    let res = post_with_key(&app, API_KEY, "shared-key", &body).await;
    assert_eq!(res.status(), 201);
    let mine: Value = res.json().await.unwrap();
    let res = post_with_key(&app, OTHER_API_KEY, "shared-key", &body).await;
    assert_eq!(res.status(), 201);
    let theirs: Value = res.json().await.unwrap();
    assert_ne!(mine["session_id"], theirs["session_id"]);
    // Neither rotated the other's token, and each sees only its own.
    let res = app
        .status(
            mine["session_id"].as_str().unwrap(),
            mine["session_token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .other_backend_get(&format!(
            "/v1/sessions/{}",
            mine["session_id"].as_str().unwrap()
        ))
        .await;
    assert_error(res, 404, "not_found").await;
}

#[actix_web::test]
async fn a_bad_idempotency_key_is_a_400() {
    let app = spawn_app().await;
    let body = json!({"scopes": ["full_name"]});
    for key in ["", &"k".repeat(256)] {
        let res = post_with_key(&app, API_KEY, key, &body).await;
        assert_error(res, 400, "invalid_request").await;
    }
}

#[actix_web::test]
async fn a_key_older_than_24_hours_starts_a_new_session() {
    let app = spawn_app().await;
    let body = json!({"scopes": ["full_name"]});
    let first: Value = post_with_key(&app, API_KEY, "old-key", &body)
        .await
        .json()
        .await
        .unwrap();
    app.clock.advance(chrono::Duration::hours(25));
    let res = post_with_key(&app, API_KEY, "old-key", &body).await;
    assert_eq!(res.status(), 201);
    let second: Value = res.json().await.unwrap();
    assert_ne!(second["session_id"], first["session_id"]);
    // And the key now names the new session.
    let res = post_with_key(&app, API_KEY, "old-key", &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["session_id"],
        second["session_id"]
    );
}

#[actix_web::test]
async fn concurrent_replays_leave_exactly_the_stored_token_working() {
    use sha2::Digest as _;
    let app = spawn_app().await;
    let body = json!({"scopes": ["full_name"]});
    let first: Value = post_with_key(&app, API_KEY, "burst", &body)
        .await
        .json()
        .await
        .unwrap();
    let id = first["session_id"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        let replays = futures_util::future::join_all(
            (0..16).map(|_| post_with_key(&app, API_KEY, "burst", &body)),
        )
        .await;
        let mut tokens = Vec::new();
        for res in replays {
            assert_eq!(res.status(), 200);
            let replay: Value = res.json().await.unwrap();
            assert_eq!(replay["session_id"], id);
            tokens.push(replay["session_token"].as_str().unwrap().to_owned());
        }
        let mut working = Vec::new();
        for token in &tokens {
            if app.status(&id, token).await.status() == 200 {
                working.push(token.clone());
            }
        }
        assert_eq!(working.len(), 1, "working tokens: {}", working.len());
        let stored: Vec<u8> = app
            .sql_one("SELECT token_hash FROM sessions WHERE id = ?1", &[&id])
            .await;
        assert_eq!(
            stored,
            sha2::Sha256::digest(working[0].as_bytes()).to_vec(),
            "the token that works is not the one the store keeps"
        );
    }
}

/// POSTs a raw JSON body with an idempotency key.
async fn post_raw_with_key(app: &TestApp, key: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/sessions"))
        .header("X-Api-Key", API_KEY)
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_replay_with_the_registration_reformatted_is_the_same_request() {
    let app = spawn_app().await;
    let res = post_raw_with_key(
        &app,
        "k-reg",
        r#"{"scopes":["full_name"],"registration":{"first_name":"John","address":{"city":"Oslo","zip":"0150"}}}"#,
    )
    .await;
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await.unwrap();

    // Other whitespace and another key order, at every depth of the registration.
    let res = post_raw_with_key(
        &app,
        "k-reg",
        "{\"registration\": {\n  \"address\": { \"zip\": \"0150\", \"city\": \"Oslo\" },\n  \
         \"first_name\": \"John\"\n}, \"scopes\": [\"full_name\"]}",
    )
    .await;
    assert_eq!(res.status(), 200);
    let replay: Value = res.json().await.unwrap();
    assert_eq!(replay["session_id"], first["session_id"]);

    // A registration that really differs is still a conflict.
    let res = post_raw_with_key(
        &app,
        "k-reg",
        r#"{"scopes":["full_name"],"registration":{"first_name":"Jon","address":{"city":"Oslo","zip":"0150"}}}"#,
    )
    .await;
    assert_error(res, 409, "idempotency_conflict").await;
}

async fn idempotency_keys(app: &TestApp) -> Vec<String> {
    app.sql("SELECT key FROM idempotency_keys ORDER BY key", &[])
        .await
        .iter()
        .map(|r| String::from_cell(&r[0]))
        .collect()
}

#[actix_web::test]
async fn the_sweeper_deletes_idempotency_keys_once_their_24_hours_are_over() {
    use idv_actors::retention::Sweep;

    let app = spawn_app().await;
    let body = json!({"scopes": ["full_name"]});
    let res = post_with_key(&app, API_KEY, "k-old", &body).await;
    assert_eq!(res.status(), 201);
    app.clock.advance(chrono::Duration::hours(23));
    let res = post_with_key(&app, API_KEY, "k-young", &body).await;
    assert_eq!(res.status(), 201);
    app.sweeper.send(Sweep).await.unwrap().unwrap();
    assert_eq!(
        idempotency_keys(&app).await,
        ["k-old", "k-young"],
        "both in their window"
    );

    // 25 h after the first, 2 h after the second.
    app.clock.advance(chrono::Duration::hours(2));
    app.sweeper.send(Sweep).await.unwrap().unwrap();
    assert_eq!(idempotency_keys(&app).await, ["k-young"]);
    // The young key still replays.
    let res = post_with_key(&app, API_KEY, "k-young", &body).await;
    assert_eq!(res.status(), 200);
}

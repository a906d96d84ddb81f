//! Bad input of SPEC §3 and §5: every one is refused with its code and the §5 body.

use serde_json::{json, Value};

use crate::helpers::*;

async fn refused_create(app: &TestApp, body: Value, why: &str) {
    let res = app.post_session(&body).await;
    assert_eq!(res.status(), 400, "{why}: {body}");
    assert_error(res, 400, "invalid_request").await;
}

async fn accepted_create(app: &TestApp, body: Value, why: &str) {
    let res = app.post_session(&body).await;
    assert_eq!(res.status(), 201, "{why}: {body}");
}

/// A raw `POST /v1/sessions` with the main key.
async fn post_raw(app: &TestApp, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url("/v1/sessions"))
        .header("X-Api-Key", API_KEY)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_create_with_an_unknown_field_or_malformed_json_is_a_400() {
    let app = spawn_app().await;
    refused_create(
        &app,
        json!({"scopes": ["email"], "colour": "red"}),
        "unknown field",
    )
    .await;
    refused_create(&app, json!({"vendor_data": "x"}), "scopes missing").await;
    refused_create(&app, json!({"scopes": "email"}), "scopes not a list").await;
    refused_create(&app, json!(["email"]), "not an object").await;
    let res = post_raw(
        &app,
        "application/json",
        b"{\"scopes\": [\"email\"".to_vec(),
    )
    .await;
    assert_error(res, 400, "invalid_request").await;
    let res = post_raw(&app, "application/json", b"".to_vec()).await;
    assert_error(res, 400, "invalid_request").await;
}

#[actix_web::test]
async fn a_json_body_with_another_content_type_is_a_415() {
    let app = spawn_app().await;
    let body = br#"{"scopes": ["email"]}"#.to_vec();
    let res = post_raw(&app, "text/plain", body.clone()).await;
    assert_error(res, 415, "unsupported_media_type").await;
    let res = post_raw(&app, "application/x-www-form-urlencoded", body.clone()).await;
    assert_error(res, 415, "unsupported_media_type").await;
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("X-Api-Key", API_KEY)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_error(res, 415, "unsupported_media_type").await;
    let res = post_raw(&app, "application/json; charset=utf-8", body).await;
    assert_eq!(res.status(), 201);
}

#[actix_web::test]
async fn a_body_over_64_kib_is_a_413_and_one_just_under_is_read() {
    let app = spawn_app().await;
    let big = json!({"scopes": ["email"], "vendor_data": "x".repeat(64 * 1024)});
    let res = app.post_session(&big).await;
    assert_error(res, 413, "payload_too_large").await;
    // Under the limit, the body is read (and then refused for its content, not its size).
    let under = json!({"scopes": ["email"], "vendor_data": "x".repeat(60 * 1024)});
    let res = app.post_session(&under).await;
    assert_error(res, 400, "invalid_request").await;
}

#[actix_web::test]
async fn scopes_must_be_1_to_32_distinct_names_of_the_spec_pattern() {
    let app = spawn_app().await;
    refused_create(&app, json!({"scopes": []}), "empty").await;
    let many: Vec<String> = (0..33).map(|i| format!("scope_{i}")).collect();
    refused_create(&app, json!({ "scopes": many }), "33 scopes").await;
    accepted_create(&app, json!({ "scopes": many[..32] }), "32 scopes").await;
    refused_create(&app, json!({"scopes": ["email", "email"]}), "duplicate").await;
    for bad in [
        "Email",
        "1email",
        "_email",
        "e-mail",
        "e mail",
        "",
        "émail",
        &format!("a{}", "b".repeat(64)),
    ] {
        refused_create(&app, json!({ "scopes": [bad] }), "bad pattern").await;
    }
    refused_create(&app, json!({"scopes": [1]}), "not a string").await;
    accepted_create(
        &app,
        json!({"scopes": [format!("a{}", "b".repeat(63)), "x", "a_1"]}),
        "edge names",
    )
    .await;
}

#[actix_web::test]
async fn urls_must_be_absolute_http_or_https() {
    let app = spawn_app().await;
    for field in ["redirect_url", "callback_url"] {
        for bad in [
            "/done",
            "done",
            "ftp://app.example/done",
            "javascript:alert(1)",
            "https://",
            "",
        ] {
            refused_create(&app, json!({"scopes": ["email"], field: bad}), field).await;
        }
        refused_create(&app, json!({"scopes": ["email"], field: 42}), field).await;
    }
    accepted_create(
        &app,
        json!({"scopes": ["email"], "redirect_url": "http://localhost:3000/done"}),
        "http redirect",
    )
    .await;
}

#[actix_web::test]
async fn references_over_1024_characters_are_refused() {
    let app = spawn_app().await;
    for field in ["vendor_data", "external_reference_id"] {
        refused_create(
            &app,
            json!({"scopes": ["email"], field: "x".repeat(1025)}),
            field,
        )
        .await;
        accepted_create(
            &app,
            json!({"scopes": ["email"], field: "x".repeat(1024)}),
            field,
        )
        .await;
        // Characters, not bytes: 1024 two-byte characters fit.
        accepted_create(
            &app,
            json!({"scopes": ["email"], field: "é".repeat(1024)}),
            field,
        )
        .await;
    }
}

#[actix_web::test]
async fn registration_must_be_an_object_of_at_most_16_kib() {
    let app = spawn_app().await;
    for bad in [json!("John"), json!(["John"]), json!(42), json!(true)] {
        refused_create(
            &app,
            json!({"scopes": ["email"], "registration": bad}),
            "not an object",
        )
        .await;
    }
    refused_create(
        &app,
        json!({"scopes": ["email"], "registration": {"notes": "x".repeat(17 * 1024)}}),
        "over 16 KiB",
    )
    .await;
    accepted_create(
        &app,
        json!({"scopes": ["email"], "registration": {"notes": "x".repeat(15 * 1024)}}),
        "under 16 KiB",
    )
    .await;
}

#[actix_web::test]
async fn ttl_seconds_must_be_within_30_and_86400() {
    let app = spawn_app().await;
    for bad in [
        json!(29),
        json!(0),
        json!(-1),
        json!(86_401),
        json!("600"),
        json!(60.5),
    ] {
        refused_create(
            &app,
            json!({"scopes": ["email"], "ttl_seconds": bad}),
            "ttl",
        )
        .await;
    }
    for good in [30, 86_400] {
        let res = app
            .post_session(&json!({"scopes": ["email"], "ttl_seconds": good}))
            .await;
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        let expires: chrono::DateTime<chrono::Utc> =
            body["expires_at"].as_str().unwrap().parse().unwrap();
        let left = expires - app.clock_now();
        assert!(
            (left.num_seconds() - good).abs() <= 5,
            "expires in {left} for ttl {good}"
        );
    }
    let body: Value = app.create_session(&["email"]).await;
    let expires: chrono::DateTime<chrono::Utc> =
        body["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(((expires - app.clock_now()).num_seconds() - 600).abs() <= 5);
}

#[actix_web::test]
async fn ids_that_are_not_uuids_are_a_400_on_every_route() {
    let app = spawn_app().await;
    let device = app.device_token("alice");
    for path in [
        "/v1/sessions/not-a-uuid",
        "/v1/sessions/not-a-uuid/decision",
        "/v1/sessions/1234",
    ] {
        let res = app.backend_get(path).await;
        assert_error(res, 400, "invalid_request").await;
    }
    let res = app.cancel("not-a-uuid").await;
    assert_error(res, 400, "invalid_request").await;
    let res = app.status("not-a-uuid", "some-token").await;
    assert_error(res, 400, "invalid_request").await;
    let res = app
        .client
        .get(app.url("/v1/sessions/not-a-uuid/information"))
        .bearer_auth(&device)
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    let res = app
        .update("not-a-uuid", "alice", &json!({"decision": "deny"}))
        .await;
    assert_error(res, 400, "invalid_request").await;
}

#[actix_web::test]
async fn bad_user_ids_and_user_statuses_are_a_400() {
    let app = spawn_app().await;
    for bad in ["a%20b".to_owned(), "x".repeat(129), "%C3%A9".to_owned()] {
        let res = app.backend_get(&format!("/v1/users/{bad}")).await;
        assert_error(res, 400, "invalid_request").await;
    }
    let ok = "A-z0.9_:@-".to_owned() + &"x".repeat(118);
    let res = app.backend_get(&format!("/v1/users/{ok}")).await;
    assert_error(res, 404, "not_found").await;
}

#[actix_web::test]
async fn an_unknown_session_is_a_404_and_an_unknown_route_a_404() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4();
    for path in [
        format!("/v1/sessions/{id}"),
        format!("/v1/sessions/{id}/decision"),
    ] {
        let res = app.backend_get(&path).await;
        assert_error(res, 404, "not_found").await;
    }
    let res = app.cancel(&id.to_string()).await;
    assert_error(res, 404, "not_found").await;
    let res = app.information(&id.to_string(), "alice").await;
    assert_error(res, 404, "not_found").await;
    for path in ["/v1/nope", "/v2/sessions", "/"] {
        let res = app.backend_get(path).await;
        assert_error(res, 404, "not_found").await;
    }
}

#[actix_web::test]
async fn a_wrong_method_on_a_known_path_is_a_405() {
    let app = spawn_app().await;
    let id = app.create_session(&["email"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases = [
        (reqwest::Method::GET, "/v1/sessions".to_owned()),
        (reqwest::Method::PUT, "/v1/sessions".to_owned()),
        (reqwest::Method::POST, format!("/v1/sessions/{id}")),
        (reqwest::Method::PUT, format!("/v1/sessions/{id}")),
        (
            reqwest::Method::DELETE,
            format!("/v1/sessions/{id}/decision"),
        ),
        (reqwest::Method::POST, format!("/v1/sessions/{id}/status")),
        (
            reqwest::Method::POST,
            format!("/v1/sessions/{id}/information"),
        ),
        (reqwest::Method::GET, format!("/v1/sessions/{id}/update")),
        (reqwest::Method::POST, "/v1/users/alice/status".to_owned()),
        (reqwest::Method::DELETE, "/v1/users/alice".to_owned()),
    ];
    for (method, path) in cases {
        let res = app
            .client
            .request(method.clone(), app.url(&path))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{method} {path}");
        assert_error(res, 405, "method_not_allowed").await;
    }
}

#[actix_web::test]
async fn an_update_with_a_bad_decision_or_unknown_field_is_a_400() {
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["full_name"], "alice").await;
    for body in [
        json!({"decision": "maybe"}),
        json!({"decision": "approve", "shared_data": {"full_name": "A"}, "extra": 1}),
        json!({"shared_data": {"full_name": "A"}}),
        json!({"decision": "deny", "shared_data": {"full_name": "A"}}),
        json!({"decision": "approve", "shared_data": ["A"]}),
    ] {
        let res = app.update(&id, "alice", &body).await;
        assert_error(res, 400, "invalid_request").await;
    }
    let res = app
        .client
        .post(app.url(&format!("/v1/sessions/{id}/update")))
        .bearer_auth(app.device_token("alice"))
        .header("Content-Type", "text/plain")
        .body(r#"{"decision": "deny"}"#)
        .send()
        .await
        .unwrap();
    assert_error(res, 415, "unsupported_media_type").await;
    // None of it moved the session.
    let view: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "retrieved");
}

#[actix_web::test]
async fn a_wrong_method_is_405_and_names_the_methods_the_path_takes() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4();
    let res = app
        .client
        .put(app.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["allow"], "GET, DELETE");
    assert_error(res, 405, "method_not_allowed").await;
}

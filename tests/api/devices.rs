//! Devices (SPEC §1, §2): a device is its issuer and `sub` together, and device JWTs
//! are held to `nbf`, a 24 h lifetime and, when configured, an audience.

use serde_json::{json, Value};

use crate::helpers::*;

/// A device JWT with exactly `claims`, signed with `secret`.
fn signed(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `GET /information` with a raw bearer token.
async fn information_with(app: &TestApp, id: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/v1/sessions/{id}/information")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// `POST /update` with a raw bearer token.
async fn update_with(app: &TestApp, id: &str, token: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v1/sessions/{id}/update")))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn new_session_id(created: &Value) -> String {
    created["session_id"].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn the_same_sub_from_another_issuer_is_another_device() {
    let app = spawn_app().await;
    let alice = jwt(ISSUER, ISSUER_SECRET, "alice", 600);
    let other_alice = jwt(OTHER_ISSUER, OTHER_ISSUER_SECRET, "alice", 600);
    let id = new_session_id(&app.create_session(&["full_name", "selfie"]).await);
    assert_eq!(information_with(&app, &id, &alice).await.status(), 200);

    // The binding is read back from the store too, not only held by the live actor.
    let app = app.restart(chrono::Duration::zero()).await;

    let res = information_with(&app, &id, &other_alice).await;
    assert_error(res, 403, "forbidden").await;
    let res = app
        .client
        .put(app.url(&format!("/v1/sessions/{id}/files/selfie")))
        .bearer_auth(&other_alice)
        .header("Content-Type", "image/png")
        .body(b"\x89PNG\r\n\x1a\n-not-yours".to_vec())
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
    let res = update_with(&app, &id, &other_alice, &json!({"decision": "deny"})).await;
    assert_error(res, 403, "forbidden").await;

    // The bound device, issuer and sub, still finishes; the decision names both.
    let res = app
        .client
        .put(app.url(&format!("/v1/sessions/{id}/files/selfie")))
        .bearer_auth(&alice)
        .header("Content-Type", "image/png")
        .body(b"\x89PNG\r\n\x1a\n-mine".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = update_with(
        &app,
        &id,
        &alice,
        &json!({"decision": "approve", "shared_data": {"full_name": "Alice A"}}),
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
    assert_eq!(decision["user_id"], "alice");
    assert_eq!(decision["issuer"], ISSUER);

    // The other issuer's alice binds a session of her own, and is named as hers.
    let id = new_session_id(&app.create_session(&["full_name"]).await);
    assert_eq!(
        information_with(&app, &id, &other_alice).await.status(),
        200
    );
    let res = information_with(&app, &id, &alice).await;
    assert_error(res, 403, "forbidden").await;
    let res = update_with(&app, &id, &other_alice, &json!({"decision": "deny"})).await;
    assert_eq!(res.status(), 200);
    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["user_id"], "alice");
    assert_eq!(decision["issuer"], OTHER_ISSUER);
}

#[actix_web::test]
async fn a_session_never_opened_has_no_user_id_and_no_issuer_in_its_decision() {
    let app = spawn_app().await;
    let id = new_session_id(&app.create_session(&["full_name"]).await);
    assert_eq!(app.cancel(&id).await.status(), 200);
    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["user_id"], Value::Null);
    assert_eq!(decision["issuer"], Value::Null);
    assert!(decision.as_object().unwrap().contains_key("issuer"));
}

#[actix_web::test]
async fn a_device_token_before_its_nbf_is_a_401_that_says_so() {
    let app = spawn_app().await;
    let id = new_session_id(&app.create_session(&["full_name"]).await);
    let early = signed(
        ISSUER_SECRET,
        &json!({"iss": ISSUER, "sub": "alice", "iat": now(), "nbf": now() + 300, "exp": now() + 900}),
    );
    let res = information_with(&app, &id, &early).await;
    let message = assert_error(res, 401, "unauthorized").await;
    assert!(message.contains("not valid yet"), "{message}");
    let res = update_with(&app, &id, &early, &json!({"decision": "deny"})).await;
    assert_error(res, 401, "unauthorized").await;

    // Within the 60 s leeway, and once `nbf` has passed, it is accepted.
    let skewed = signed(
        ISSUER_SECRET,
        &json!({"iss": ISSUER, "sub": "alice", "nbf": now() + 30, "exp": now() + 900}),
    );
    assert_eq!(information_with(&app, &id, &skewed).await.status(), 200);
    let past = signed(
        ISSUER_SECRET,
        &json!({"iss": ISSUER, "sub": "alice", "nbf": now() - 30, "exp": now() + 900}),
    );
    assert_eq!(information_with(&app, &id, &past).await.status(), 200);
}

#[actix_web::test]
async fn a_device_token_valid_for_more_than_24_hours_is_a_401_that_says_so() {
    let app = spawn_app().await;
    let id = new_session_id(&app.create_session(&["full_name"]).await);
    let day = 24 * 60 * 60;
    let too_long = [
        // `exp − iat`.
        json!({"iss": ISSUER, "sub": "alice", "iat": now() - 3600, "exp": now() - 3600 + day + 60}),
        // `exp − now`, without `iat`.
        json!({"iss": ISSUER, "sub": "alice", "exp": now() + day + 3600}),
        // A recent `iat` does not make a year-long token short.
        json!({"iss": ISSUER, "sub": "alice", "iat": now() + 365 * day - 60, "exp": now() + 365 * day}),
    ];
    for claims in too_long {
        let res = information_with(&app, &id, &signed(ISSUER_SECRET, &claims)).await;
        let message = assert_error(res, 401, "unauthorized").await;
        assert!(message.contains("24 hours"), "{claims}: {message}");
    }
    let view: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "initialized", "none of them bound a device");

    // Exactly a day is allowed, by either measure.
    let a_day = json!({"iss": ISSUER, "sub": "alice", "iat": now(), "exp": now() + day});
    let res = information_with(&app, &id, &signed(ISSUER_SECRET, &a_day)).await;
    assert_eq!(res.status(), 200);
    let a_day = json!({"iss": ISSUER, "sub": "alice", "exp": now() + day});
    let res = information_with(&app, &id, &signed(ISSUER_SECRET, &a_day)).await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn with_an_audience_device_tokens_must_carry_it_in_aud() {
    let app = spawn_app_with(|s| s.audience = Some("idv-broker-test".into())).await;
    let id = new_session_id(&app.create_session(&["full_name"]).await);
    let with_aud = |aud: Option<Value>| {
        let mut claims = json!({"iss": ISSUER, "sub": "alice", "iat": now(), "exp": now() + 600});
        if let Some(aud) = aud {
            claims["aud"] = aud;
        }
        signed(ISSUER_SECRET, &claims)
    };
    for aud in [
        None,
        Some(json!("someone-else")),
        Some(json!(["someone-else", "idv-broker"])),
        Some(json!([])),
    ] {
        let res = information_with(&app, &id, &with_aud(aud.clone())).await;
        let message = assert_error(res, 401, "unauthorized").await;
        assert!(message.contains("aud"), "{aud:?}: {message}");
    }
    let res = information_with(&app, &id, &with_aud(Some(json!("idv-broker-test")))).await;
    assert_eq!(res.status(), 200);
    let res = information_with(
        &app,
        &id,
        &with_aud(Some(json!(["someone-else", "idv-broker-test"]))),
    )
    .await;
    assert_eq!(res.status(), 200);

    // Without an audience configured, `aud` is neither required nor checked.
    let app = spawn_app().await;
    let id = new_session_id(&app.create_session(&["full_name"]).await);
    assert_eq!(
        information_with(&app, &id, &with_aud(None)).await.status(),
        200
    );
    let res = information_with(&app, &id, &with_aud(Some(json!("someone-else")))).await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn the_token_subcommand_mints_a_short_lived_token_for_the_audience() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_idv-broker"))
        .args(["token", "--issuer", &format!("{ISSUER}={ISSUER_SECRET}")])
        .args(["--sub", "alice", "--audience", "idv-broker-test"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
    assert_eq!(claims["aud"], "idv-broker-test");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(lifetime <= 24 * 60 * 60, "{claims}");

    let app = spawn_app_with(|s| s.audience = Some("idv-broker-test".into())).await;
    let id = new_session_id(&app.create_session(&["full_name"]).await);
    assert_eq!(information_with(&app, &id, &token).await.status(), 200);

    // More than a day is refused at once.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_idv-broker"))
        .args(["token", "--issuer", &format!("{ISSUER}={ISSUER_SECRET}")])
        .args(["--sub", "alice", "--ttl", "90000"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

//! SPEC §1: each role's credential, refused when missing or wrong, and never accepted
//! on another role's route.

use serde_json::{json, Value};

use crate::helpers::*;

#[actix_web::test]
async fn a_missing_or_unknown_api_key_is_a_401() {
    let app = spawn_app().await;
    let id = app.create_session(&["email"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .json(&json!({"scopes": ["email"]}))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
    for key in [
        "nope",
        "",
        &API_KEY.to_uppercase(),
        API_KEY_NAME,
        &format!("{OTHER_API_KEY}x"),
    ] {
        let res = app
            .client
            .post(app.url("/v1/sessions"))
            .header("X-Api-Key", key)
            .json(&json!({"scopes": ["email"]}))
            .send()
            .await
            .unwrap();
        assert_error(res, 401, "unauthorized").await;
    }
    for path in [
        format!("/v1/sessions/{id}"),
        format!("/v1/sessions/{id}/decision"),
    ] {
        let res = app.client.get(app.url(&path)).send().await.unwrap();
        assert_error(res, 401, "unauthorized").await;
        let res = app
            .client
            .get(app.url(&path))
            .header("X-Api-Key", "wrong")
            .send()
            .await
            .unwrap();
        assert_error(res, 401, "unauthorized").await;
    }
    let res = app
        .client
        .delete(app.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
    let res = app
        .client
        .get(app.url("/v1/users/alice"))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
    // Nothing was cancelled by the refused DELETE.
    let view: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "initialized");
}

#[actix_web::test]
async fn another_api_keys_session_does_not_exist_for_it() {
    let app = spawn_app().await;
    let id = app.create_session(&["email"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        format!("/v1/sessions/{id}"),
        format!("/v1/sessions/{id}/decision"),
    ] {
        let res = app.other_backend_get(&path).await;
        assert_error(res, 404, "not_found").await;
    }
    let res = app
        .client
        .delete(app.url(&format!("/v1/sessions/{id}")))
        .header("X-Api-Key", OTHER_API_KEY)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
    let view: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "initialized");

    // Terminal sessions (served from the store) are just as invisible.
    assert_eq!(app.cancel(&id).await.status(), 200);
    for path in [
        format!("/v1/sessions/{id}"),
        format!("/v1/sessions/{id}/decision"),
    ] {
        let res = app.other_backend_get(&path).await;
        assert_error(res, 404, "not_found").await;
    }
}

#[actix_web::test]
async fn a_token_tells_another_session_from_none_by_the_session_it_names() {
    let app = spawn_app().await;
    let a = app.create_session(&["email"]).await;
    let b = app.create_session(&["email"]).await;
    let (a_id, a_token) = (
        a["session_id"].as_str().unwrap(),
        a["session_token"].as_str().unwrap(),
    );
    let b_id = b["session_id"].as_str().unwrap();
    // `a` ends: its actor is gone, so its token is found by its row, which it names.
    assert_eq!(app.cancel(a_id).await.status(), 200);
    let res = app.status(b_id, a_token).await;
    assert_error(res, 403, "forbidden").await;
    // `a`'s id with another random part is nobody's token: 401, not 403.
    let forged =
        idv_actors::ids::SessionToken::generate(idv_actors::ids::SessionId::parse(a_id).unwrap());
    let res = app.status(b_id, forged.expose()).await;
    assert_error(res, 401, "unauthorized").await;
    let res = app.status(a_id, forged.expose()).await;
    assert_error(res, 401, "unauthorized").await;
}

#[actix_web::test]
async fn the_status_route_wants_this_sessions_token() {
    let app = spawn_app().await;
    let a = app.create_session(&["email"]).await;
    let b = app.create_session(&["email"]).await;
    let (id, token) = (
        a["session_id"].as_str().unwrap(),
        a["session_token"].as_str().unwrap(),
    );
    let other_token = b["session_token"].as_str().unwrap();

    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/status")))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
    let res = app.status(id, "not-the-token").await;
    assert_error(res, 401, "unauthorized").await;
    let res = app.status(id, other_token).await;
    assert_error(res, 403, "forbidden").await;
    let res = app.status(id, token).await;
    assert_eq!(res.status(), 200);
    // `?token=` is refused here, even the right one: a token in a URL ends up in
    // proxy logs, so SPEC §1 takes it only on `/ws` and `/qr.svg`.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/status?token={token}")))
        .send()
        .await
        .unwrap();
    let message = assert_error(res, 401, "unauthorized").await;
    assert!(message.contains("/ws"), "{message}");
    // With the header the query token is ignored.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/status?token=nope")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn device_tokens_with_a_bad_signature_an_unknown_issuer_or_past_exp_are_a_401() {
    let app = spawn_app().await;
    let id = app.create_session(&["email"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = [
        ("bad signature", jwt(ISSUER, "not-the-secret", "alice", 600)),
        (
            "unknown issuer",
            jwt("rogue-app", ISSUER_SECRET, "alice", 600),
        ),
        ("expired", jwt(ISSUER, ISSUER_SECRET, "alice", -120)),
        ("not a jwt", "abc.def.ghi".to_owned()),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(format!(
                    r#"{{"iss":"{ISSUER}","sub":"alice","exp":{}}}"#,
                    chrono::Utc::now().timestamp() + 600
                )
                .as_bytes())
            ),
        ),
    ];
    for (why, token) in refused {
        let res = app
            .client
            .get(app.url(&format!("/v1/sessions/{id}/information")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{why}");
        assert_error(res, 401, "unauthorized").await;
        let res = app
            .client
            .post(app.url(&format!("/v1/sessions/{id}/update")))
            .bearer_auth(&token)
            .json(&json!({"decision": "deny"}))
            .send()
            .await
            .unwrap();
        assert_error(res, 401, "unauthorized").await;
    }
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/information")))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;

    // None of them bound a device: the session is still waiting for its first.
    let view: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "initialized");

    // SPEC §5: up to 60 s of clock skew on `exp` is accepted.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/information")))
        .bearer_auth(jwt(ISSUER, ISSUER_SECRET, "alice", -20))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[actix_web::test]
async fn a_credential_of_one_role_never_works_on_another_roles_route() {
    let app = spawn_app().await;
    let created = app.create_session(&["email"]).await;
    let id = created["session_id"].as_str().unwrap();
    let token = created["session_token"].as_str().unwrap();
    let device = app.device_token("alice");

    // An API key on the device routes.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/information")))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
    let res = app
        .client
        .post(app.url(&format!("/v1/sessions/{id}/update")))
        .header("X-Api-Key", API_KEY)
        .json(&json!({"decision": "deny"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
    // The session token on the device route.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/information")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
    // A device JWT and an API key on the client status route.
    let res = app.status(id, &device).await;
    assert_error(res, 401, "unauthorized").await;
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/status")))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
    // A session token or a device JWT on the backend routes.
    for bearer in [token, device.as_str()] {
        let res = app
            .client
            .get(app.url(&format!("/v1/sessions/{id}")))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_error(res, 401, "unauthorized").await;
        let res = app
            .client
            .get(app.url(&format!("/v1/sessions/{id}")))
            .header("X-Api-Key", bearer)
            .send()
            .await
            .unwrap();
        assert_error(res, 401, "unauthorized").await;
    }
    let view: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "initialized");
}

//! Devices (SPEC §1, §2): a device is its issuer and `sub` together.

use serde_json::{json, Value};

use crate::helpers::*;

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

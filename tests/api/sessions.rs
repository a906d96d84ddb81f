//! The backend's view of a session: create, read, decide, cancel.

use serde_json::{json, Value};

use crate::helpers::*;

#[actix_web::test]
async fn the_approve_journey_ends_with_a_decision_that_holds_the_shared_data() {
    let app = spawn_app().await;
    let res = app
        .post_session(&json!({
            "scopes": ["full_name", "date_of_birth"],
            "vendor_data": "user-42",
            "external_reference_id": "ref-1",
            "registration": {"first_name": "John"},
            "redirect_url": "https://app.example/done"
        }))
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let id = created["session_id"].as_str().unwrap();
    let token = created["session_token"].as_str().unwrap();
    assert_eq!(created["status"], "initialized");
    assert_eq!(created["seq"], 1);
    assert_eq!(created["url"], format!("{}/verify/{id}", app.address));

    let info: Value = app.information(id, "alice").await.json().await.unwrap();
    assert_eq!(info["status"], "retrieved");
    assert_eq!(info["requester"]["name"], API_KEY_NAME);
    assert_eq!(info["registration"]["first_name"], "John");

    let res = app
        .update(
            id,
            "alice",
            &json!({"decision": "approve",
            "shared_data": {"full_name": "John Adam Johnson", "date_of_birth": "1990-01-14"}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["status"], "confirmed");
    assert_eq!(updated["seq"], 3);
    assert_eq!(
        updated["redirect_url"],
        format!("https://app.example/done?session_id={id}&status=confirmed")
    );

    let status: Value = app.status(id, token).await.json().await.unwrap();
    assert_eq!(status["status"], "confirmed");

    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["status"], "confirmed");
    assert_eq!(decision["user_id"], "alice");
    assert_eq!(decision["consent"]["is_consented"], true);
    assert_eq!(decision["shared_data"]["full_name"], "John Adam Johnson");
    assert_eq!(decision["files"], json!([]));
    assert_eq!(decision["vendor_data"], "user-42");
}

#[actix_web::test]
async fn a_cancel_answers_with_the_webhook_counts_as_get_does() {
    let app = spawn_app_with(|s| {
        s.webhook_secrets = vec!["whsec-test".into()];
        s.webhooks.allow_private = true;
    })
    .await;
    // A receiver nobody listens on: the cancel's event stays pending.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let res = app
        .post_session(&json!({"scopes": ["full_name"], "callback_url": hook}))
        .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let res = app.cancel(&id).await;
    assert_eq!(res.status(), 200);
    let cancelled: Value = res.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    // The transition's event is committed with it, so it is counted at once.
    assert_eq!(cancelled["webhooks"], json!({"pending": 1, "failed": 0}));

    let got: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["webhooks"], cancelled["webhooks"]);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&cancelled), keys(&got), "the same shape as GET");
}

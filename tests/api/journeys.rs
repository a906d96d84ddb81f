//! Whole journeys through the real server: deny and cancel, and what each leaves behind.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// The `registration` column of a session as the database holds it.
async fn stored_registration(app: &TestApp, id: &str) -> Option<String> {
    app.sql_one("SELECT registration FROM sessions WHERE id = ?1", &[id])
        .await
}

/// Where `needle` is still stored: the broker's files (SQLite) or rows (PostgreSQL).
async fn on_disk(app: &TestApp, needle: &[u8]) -> Vec<String> {
    app.stored_holders(needle).await
}

#[actix_web::test]
async fn the_deny_journey_ends_declined_with_no_shared_data_and_the_registration_deleted() {
    let app = spawn_app().await;
    let res = app
        .post_session(&json!({
            "scopes": ["full_name"],
            "vendor_data": "user-7",
            "external_reference_id": "ref-7",
            "registration": {"first_name": "Zebulon-Deny-Marker"},
            "redirect_url": "https://app.example/done?x=1"
        }))
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let id = created["session_id"].as_str().unwrap();
    let token = created["session_token"].as_str().unwrap();
    assert!(stored_registration(&app, id).await.is_some());

    let info: Value = app.information(id, "dora").await.json().await.unwrap();
    assert_eq!(info["registration"]["first_name"], "Zebulon-Deny-Marker");

    let res = app.update(id, "dora", &json!({"decision": "deny"})).await;
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["status"], "declined");
    assert_eq!(updated["seq"], 3);
    assert_eq!(
        updated["redirect_url"],
        format!("https://app.example/done?x=1&session_id={id}&status=declined")
    );

    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["status"], "declined");
    assert_eq!(decision["seq"], 3);
    assert_eq!(decision["user_id"], "dora");
    assert_eq!(decision["shared_data"], Value::Null);
    assert_eq!(decision["files"], json!([]));
    assert_eq!(decision["consent"]["is_consented"], false);
    assert_eq!(decision["vendor_data"], "user-7");
    assert_eq!(decision["external_reference_id"], "ref-7");
    assert!(decision["decided_at"].is_string());

    let status: Value = app.status(id, token).await.json().await.unwrap();
    assert_eq!(status["status"], "declined");

    // The registration is no longer served, and the row holds NULL, not a flag.
    let res = app.information(id, "dora").await;
    assert_error(res, 409, "invalid_state").await;
    assert_eq!(stored_registration(&app, id).await, None);

    // SPEC §2: within 5 s no byte of it remains in the database or its WAL.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut holders = on_disk(&app, b"Zebulon-Deny-Marker").await;
    while !holders.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        holders = on_disk(&app, b"Zebulon-Deny-Marker").await;
    }
    assert!(
        holders.is_empty(),
        "the registration is still in {holders:?}"
    );
}

#[actix_web::test]
async fn a_cancelled_session_has_a_decision_without_consent_and_its_registration_deleted() {
    let app = spawn_app().await;
    let created: Value = app
        .post_session(&json!({"scopes": ["email"], "registration": {"email": "c@example.com"}}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["session_id"].as_str().unwrap();

    let res = app.cancel(id).await;
    assert_eq!(res.status(), 200);
    let cancelled: Value = res.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["seq"], 2);
    assert_eq!(cancelled["consent"], Value::Null);
    assert!(cancelled.get("session_token").is_none());
    assert!(cancelled.get("registration").is_none());

    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["status"], "cancelled");
    assert_eq!(decision["consent"], Value::Null);
    assert_eq!(decision["shared_data"], Value::Null);
    assert_eq!(decision["files"], json!([]));
    assert_eq!(decision["user_id"], Value::Null);
    assert_eq!(stored_registration(&app, id).await, None);
}

#[actix_web::test]
async fn the_session_view_shows_no_secrets_and_every_field_of_the_spec() {
    let app = spawn_app().await;
    let created: Value = app
        .post_session(&json!({
            "scopes": ["full_name"],
            "vendor_data": "v",
            "external_reference_id": "e",
            "registration": {"first_name": "Secret"},
            "redirect_url": "https://app.example/done"
        }))
        .await
        .json()
        .await
        .unwrap();
    let id = created["session_id"].as_str().unwrap();
    assert!(created["expires_at"].is_string());
    assert_eq!(created["scopes"], json!(["full_name"]));
    assert_eq!(created["vendor_data"], "v");
    let token = created["session_token"].as_str().unwrap();
    assert!(token.len() >= 22, "a token of at least 128 bits");

    let view: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    for field in [
        "session_id",
        "status",
        "seq",
        "scopes",
        "vendor_data",
        "external_reference_id",
        "redirect_url",
        "created_at",
        "updated_at",
        "expires_at",
        "consent",
    ] {
        assert!(view.get(field).is_some(), "{field} missing from {view}");
    }
    assert_eq!(view["status"], "initialized");
    assert_eq!(view["seq"], 1);
    assert_eq!(view["consent"], Value::Null);
    let text = view.to_string();
    assert!(!text.contains(token));
    assert!(!text.contains("Secret"));

    // The token is stored only as a hash.
    let stored: Vec<u8> = app
        .sql_one("SELECT token_hash FROM sessions WHERE id = ?1", &[id])
        .await;
    use sha2::Digest as _;
    assert_eq!(stored, sha2::Sha256::digest(token.as_bytes()).to_vec());
}

#[actix_web::test]
async fn a_session_moves_one_seq_per_transition_and_the_event_log_records_each() {
    let app = spawn_app().await;
    let (id, token) = app.retrieved_session(&["full_name"], "erin").await;
    let status: Value = app.status(&id, &token).await.json().await.unwrap();
    assert_eq!(status["seq"], 2);
    assert_eq!(status["status"], "retrieved");

    // A second `information` from the bound device changes nothing.
    let again: Value = app.information(&id, "erin").await.json().await.unwrap();
    assert_eq!(again["status"], "retrieved");
    let status: Value = app.status(&id, &token).await.json().await.unwrap();
    assert_eq!(status["seq"], 2);

    let res = app
        .update(
            &id,
            "erin",
            &json!({"decision": "approve", "shared_data": {"full_name": "Erin E"}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let events: Vec<(i64, String)> = app
        .sql(
            "SELECT seq, status FROM session_events WHERE session_id = ?1 ORDER BY seq",
            &[&id],
        )
        .await
        .iter()
        .map(|r| (i64::from_cell(&r[0]), String::from_cell(&r[1])))
        .collect();
    assert_eq!(
        events,
        vec![
            (1, "initialized".to_owned()),
            (2, "retrieved".to_owned()),
            (3, "confirmed".to_owned())
        ]
    );
}

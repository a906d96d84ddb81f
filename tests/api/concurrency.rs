//! Many sessions at once: each is serialized on its own, all make progress together.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::*;

#[actix_web::test]
async fn fifty_sessions_approved_concurrently_all_end_confirmed_at_seq_3() {
    let app = spawn_app().await;
    let journeys = (0..50).map(|i| {
        let app = &app;
        async move {
            let created = app.create_session(&["full_name"]).await;
            let id = created["session_id"].as_str().unwrap().to_owned();
            let device = format!("device-{i}");
            let res = app.information(&id, &device).await;
            assert_eq!(res.status(), 200);
            let res = app
                .update(
                    &id,
                    &device,
                    &json!({"decision": "approve", "shared_data": {"full_name": format!("P {i}")}}),
                )
                .await;
            assert_eq!(res.status(), 200);
            (id, device, i)
        }
    });
    let done = join_all(journeys).await;
    assert_eq!(done.len(), 50);
    for (id, device, i) in done {
        let decision: Value = app
            .backend_get(&format!("/v1/sessions/{id}/decision"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(decision["status"], "confirmed");
        assert_eq!(decision["seq"], 3);
        assert_eq!(decision["user_id"], device);
        assert_eq!(decision["shared_data"]["full_name"], format!("P {i}"));
    }
    assert_eq!(app.registry.live_count(), 0);
}

#[actix_web::test]
async fn racing_devices_on_one_session_bind_exactly_one() {
    let app = spawn_app().await;
    let created = app.create_session(&["full_name"]).await;
    let id = created["session_id"].as_str().unwrap().to_owned();
    let answers = join_all((0..20).map(|i| {
        let (app, id) = (&app, &id);
        async move { app.information(id, &format!("racer-{i}")).await.status() }
    }))
    .await;
    let ok = answers.iter().filter(|s| s.as_u16() == 200).count();
    let forbidden = answers.iter().filter(|s| s.as_u16() == 403).count();
    assert_eq!((ok, forbidden), (1, 19), "{answers:?}");
    let status: Value = app
        .status(&id, created["session_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["seq"], 2);
}

#[actix_web::test]
async fn a_cancel_racing_an_approve_leaves_one_terminal_outcome() {
    let app = spawn_app().await;
    for _ in 0..10 {
        let (id, token) = app.retrieved_session(&["full_name"], "alice").await;
        let body = json!({"decision": "approve", "shared_data": {"full_name": "A"}});
        let approve = app.update(&id, "alice", &body);
        let cancel = app.cancel(&id);
        let (a, c) = futures_util::join!(approve, cancel);
        let (a, c) = (a.status().as_u16(), c.status().as_u16());
        // Exactly one of them wins; the loser sees 409.
        assert!(
            (a, c) == (200, 409) || (a, c) == (409, 200),
            "approve {a}, cancel {c}"
        );
        let status: Value = app.status(&id, &token).await.json().await.unwrap();
        assert_eq!(status["seq"], 3);
        let want = if a == 200 { "confirmed" } else { "cancelled" };
        assert_eq!(status["status"], want);
    }
}

//! Cheap probes (issue 9, item 12): a wrong session token for a live session is
//! checked in memory first and never costs a session load; a token no live session
//! has costs one indexed token lookup, which tells an ended session's token (a valid
//! credential: `403`, SPEC §1) from no session's (`401`).

use serde_json::Value;

use crate::helpers::*;

/// The status of a refused `/ws` handshake (an upgrade that succeeds is `101`).
async fn ws_handshake(app: &TestApp, id: &str, token: &str) -> u16 {
    app.client
        .get(app.url(&format!("/v1/sessions/{id}/ws")))
        .bearer_auth(token)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn random_token() -> String {
    idv_actors::ids::SessionToken::generate(idv_actors::ids::SessionId::new())
        .expose()
        .to_owned()
}

async fn session(app: &TestApp) -> (String, String) {
    let created: Value = app.create_session(&["full_name"]).await;
    (
        created["session_id"].as_str().unwrap().to_owned(),
        created["session_token"].as_str().unwrap().to_owned(),
    )
}

#[actix_web::test]
async fn wrong_tokens_for_a_live_session_cost_no_session_load_and_at_most_one_token_lookup() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    let (other, other_token) = session(&app).await;
    let (ended, ended_token) = session(&app).await;
    assert_eq!(app.cancel(&ended).await.status(), 200);
    let store = &app.store;
    let (loads, lookups) = (store.session_reads(), store.token_lookups());

    for _ in 0..20 {
        assert_error(app.status(&id, &random_token()).await, 401, "unauthorized").await;
        assert_eq!(ws_handshake(&app, &id, &random_token()).await, 401);
    }
    assert_eq!(
        store.token_lookups() - lookups,
        40,
        "one indexed token lookup per probe, nothing more"
    );
    // Another live session's token is told apart from memory.
    let lookups = store.token_lookups();
    assert_error(app.status(&id, &other_token).await, 403, "forbidden").await;
    assert_eq!(ws_handshake(&app, &id, &other_token).await, 403);
    assert_eq!(
        store.token_lookups(),
        lookups,
        "a live token is known in memory"
    );
    // An ended session's token is a valid credential that may not touch this one.
    assert_error(app.status(&id, &ended_token).await, 403, "forbidden").await;
    // The right token still works.
    assert_eq!(app.status(&id, &token).await.status(), 200);
    assert_eq!(ws_handshake(&app, &id, &token).await, 101);
    assert_eq!(
        store.session_reads(),
        loads,
        "probing a live session loaded no session from the store"
    );

    // Sessions that are not live answer as before (and may read the store).
    assert_eq!(app.cancel(&other).await.status(), 200);
    assert_error(
        app.status(&other, &random_token()).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(app.status(&other, &token).await, 403, "forbidden").await;
    assert_eq!(app.status(&other, &other_token).await.status(), 200);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_error(app.status(&unknown, &token).await, 404, "not_found").await;
    assert_error(
        app.status(&unknown, &random_token()).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(app.status(&unknown, &other_token).await, 404, "not_found").await;
}

#[actix_web::test]
async fn a_session_whose_actor_died_is_found_again_with_one_store_read() {
    let app = spawn_app().await;
    let (id, token) = session(&app).await;
    // Killed outside its containment, as a bug would: no actor runs the session now.
    let _ = app
        .registry
        .call(
            session_id(&id),
            idv_actors::session::messages::InjectFault { contained: false },
        )
        .await;
    let reads = app.store.session_reads();
    assert_eq!(app.status(&id, &token).await.status(), 200);
    assert_eq!(
        app.store.session_reads() - reads,
        1,
        "the lookup reads the session once and its new actor adopts what was read"
    );
    assert_eq!(app.status(&id, &token).await.status(), 200);
    assert_eq!(
        app.store.session_reads() - reads,
        1,
        "the next read is answered from memory"
    );
}

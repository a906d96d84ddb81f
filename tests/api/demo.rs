//! The demo in its lane (SPEC §1, §6 `--demo`): its device tokens touch only its own
//! sessions, its routes give tokens for its own sessions only, and it has limits of
//! its own (lifetime, scopes, new sessions per address, live sessions, WebSockets).
//! The demo's happy path is in `pages.rs`; in a browser, in `tests/e2e`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

/// The demo's own API key name (`requester.name` of its sessions).
const DEMO_OWNER: &str = "idv-broker demo";

/// A broker in demo mode beside the test's real keys and issuers, believing
/// `X-Forwarded-For` from loopback so one test can speak from many client addresses.
async fn demo_app() -> TestApp {
    spawn_app_with(|s| {
        s.demo = true;
        s.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await
}

/// `POST /demo/api/sessions` with `body`, from the client address `ip` (through the
/// trusted proxy, loopback).
async fn demo_create(app: &TestApp, ip: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/demo/api/sessions"))
        .header("X-Forwarded-For", ip)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A demo session (from `ip`): its id.
async fn demo_session(app: &TestApp, ip: &str) -> String {
    let res = demo_create(app, ip, &json!({})).await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    created["session_id"].as_str().unwrap().to_owned()
}

async fn ask_demo_token(app: &TestApp, session_id: &str) -> reqwest::Response {
    app.client
        .post(app.url("/demo/api/device-token"))
        .json(&json!({"session_id": session_id}))
        .send()
        .await
        .unwrap()
}

/// A demo device token, as the hosted page gets it for the demo session `id`.
async fn demo_token(app: &TestApp, id: &str) -> String {
    let res = ask_demo_token(app, id).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// The session as its backend sees it.
async fn backend_view(app: &TestApp, id: &str) -> Value {
    let res = app.backend_get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[actix_web::test]
async fn a_demo_device_token_gets_403_on_a_real_keys_session_and_changes_nothing() {
    let app = demo_app().await;
    let real = app
        .post_session(&json!({
            "scopes": ["full_name", "selfie"],
            "registration": {"first_name": "John", "iban": "DE00 1234"},
        }))
        .await;
    assert_eq!(real.status(), 201);
    let real: Value = real.json().await.unwrap();
    let real_id = real["session_id"].as_str().unwrap().to_owned();
    let jwt = demo_token(&app, &demo_session(&app, "203.0.113.1").await).await;

    let information = |id: String| {
        let app = &app;
        let jwt = jwt.clone();
        async move {
            app.client
                .get(app.url(&format!("/v1/sessions/{id}/information")))
                .bearer_auth(jwt)
                .send()
                .await
                .unwrap()
        }
    };
    let upload = || {
        app.client
            .put(app.url(&format!("/v1/sessions/{real_id}/files/selfie")))
            .bearer_auth(&jwt)
            .header("Content-Type", "image/jpeg")
            .body(vec![0xff, 0xd8, 0xff, 0xe0, 0, 0x10])
            .send()
    };
    let update = |body: Value| {
        app.client
            .post(app.url(&format!("/v1/sessions/{real_id}/update")))
            .bearer_auth(&jwt)
            .json(&body)
            .send()
    };
    let approve = json!({"decision": "approve", "shared_data": {"full_name": "Mallory"}});
    let deny = json!({"decision": "deny"});

    // Unopened: the demo token can neither read the person's registration nor bind.
    let res = information(real_id.clone()).await;
    let message = assert_error(res, 403, "forbidden").await;
    assert!(message.contains("demo"), "{message}");
    assert_error(upload().await.unwrap(), 403, "forbidden").await;
    assert_error(update(approve.clone()).await.unwrap(), 403, "forbidden").await;
    assert_error(update(deny.clone()).await.unwrap(), 403, "forbidden").await;
    let seen = backend_view(&app, &real_id).await;
    assert_eq!(
        (seen["status"].as_str(), seen["seq"].as_u64()),
        (Some("initialized"), Some(1))
    );

    // The real device opens it (nothing bound it before) and the demo token still
    // cannot touch it: not the files, not the decision.
    let res = app.information(&real_id, "alice").await;
    assert_eq!(res.status(), 200);
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["registration"]["iban"], "DE00 1234");
    assert_error(information(real_id.clone()).await, 403, "forbidden").await;
    assert_error(upload().await.unwrap(), 403, "forbidden").await;
    assert_error(update(approve).await.unwrap(), 403, "forbidden").await;
    assert_error(update(deny).await.unwrap(), 403, "forbidden").await;
    let seen = backend_view(&app, &real_id).await;
    assert_eq!(
        (seen["status"].as_str(), seen["seq"].as_u64()),
        (Some("retrieved"), Some(2))
    );

    // The person's own device still decides as usual.
    let res = app
        .update(&real_id, "alice", &json!({"decision": "deny"}))
        .await;
    assert_eq!(res.status(), 200);
    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{real_id}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["status"], "declined");
    assert_eq!(decision["user_id"], "alice");
    assert_eq!(decision["issuer"], ISSUER);
}

#[actix_web::test]
async fn the_demo_gives_device_tokens_for_its_own_sessions_only() {
    let app = demo_app().await;
    let real = app.create_session(&["full_name"]).await;
    let real_id = real["session_id"].as_str().unwrap();
    let res = ask_demo_token(&app, real_id).await;
    let refused = assert_error(res, 404, "not_found").await;
    // The same answer as for a session that does not exist: the route tells nobody
    // whether a real session is there.
    let res = ask_demo_token(&app, &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(assert_error(res, 404, "not_found").await, refused);
    let res = ask_demo_token(&app, "not-a-uuid").await;
    assert_error(res, 400, "invalid_request").await;
    let res = app
        .client
        .post(app.url("/demo/api/device-token"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;

    // A demo session gets one, and it works there.
    let demo_id = demo_session(&app, "203.0.113.1").await;
    let res = ask_demo_token(&app, &demo_id).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{demo_id}/information")))
        .bearer_auth(body["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["requester"]["name"], DEMO_OWNER);
}

#[actix_web::test]
async fn a_demo_session_lives_at_most_ten_minutes_and_asks_only_the_demos_scopes() {
    let app = demo_app().await;
    let res = demo_create(&app, "203.0.113.1", &json!({"ttl_seconds": 601})).await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("600"), "{message}");
    let res = demo_create(&app, "203.0.113.2", &json!({"ttl_seconds": 86400})).await;
    assert_error(res, 400, "invalid_request").await;
    let res = demo_create(&app, "203.0.113.3", &json!({"ttl_seconds": 600})).await;
    assert_eq!(res.status(), 201);
    let res = demo_create(&app, "203.0.113.4", &json!({"scopes": ["iban"]})).await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("iban"), "{message}");
    let many: Vec<String> = (0..32).map(|i| format!("s{i}")).collect();
    let res = demo_create(&app, "203.0.113.5", &json!({"scopes": many})).await;
    assert_error(res, 400, "invalid_request").await;
    let res = demo_create(
        &app,
        "203.0.113.6",
        &json!({"scopes": ["selfie", "full_name"]}),
    )
    .await;
    assert_eq!(res.status(), 201);
    // The demo's bounds are its own: a real key's session may still live a day.
    let res = app
        .post_session(&json!({"scopes": ["iban"], "ttl_seconds": 86400}))
        .await;
    assert_eq!(res.status(), 201);
}

#[actix_web::test]
async fn the_eleventh_demo_session_in_a_minute_from_one_address_is_429_with_retry_after() {
    let app = demo_app().await;
    for n in 1..=10 {
        let res = demo_create(&app, "198.51.100.7", &json!({})).await;
        assert_eq!(res.status(), 201, "demo session {n}");
    }
    let res = demo_create(&app, "198.51.100.7", &json!({})).await;
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_error(res, 429, "rate_limited").await;
    // Another address has its own ten; the real keys are not limited by the demo's.
    assert_eq!(
        demo_create(&app, "198.51.100.8", &json!({})).await.status(),
        201
    );
    assert_eq!(
        app.post_session(&json!({"scopes": ["x"]})).await.status(),
        201
    );
}

#[actix_web::test]
async fn without_a_trusted_proxy_a_forged_forwarded_for_does_not_buy_more_demo_sessions() {
    let app = spawn_app_with(|s| s.demo = true).await;
    for n in 1..=10 {
        let res = demo_create(&app, &format!("192.0.2.{n}"), &json!({})).await;
        assert_eq!(res.status(), 201, "demo session {n}");
    }
    let res = demo_create(&app, "192.0.2.99", &json!({})).await;
    assert_error(res, 429, "rate_limited").await;
}

#[actix_web::test]
async fn past_100_live_demo_sessions_a_new_one_is_503_until_one_ends() {
    let app = demo_app().await;
    let mut ids = Vec::new();
    // Ten addresses, ten each: the per-address rate is not what stops the 101st.
    for client in 0..10 {
        for _ in 0..10 {
            ids.push(demo_session(&app, &format!("198.51.100.{client}")).await);
        }
    }
    assert_eq!(app.registry.live_count_of(DEMO_OWNER), 100);
    let res = demo_create(&app, "203.0.113.200", &json!({})).await;
    assert!(res.headers().contains_key("retry-after"), "no Retry-After");
    assert_error(res, 503, "unavailable").await;
    // The demo's cap is its own: a real key still opens sessions.
    assert_eq!(
        app.post_session(&json!({"scopes": ["x"]})).await.status(),
        201
    );

    // A session decided leaves the count at once.
    let jwt = demo_token(&app, &ids[0]).await;
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{}/information", ids[0])))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .post(app.url(&format!("/v1/sessions/{}/update", ids[0])))
        .bearer_auth(&jwt)
        .json(&json!({"decision": "deny"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.registry.live_count_of(DEMO_OWNER) != 99 {
        assert!(tokio::time::Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        demo_create(&app, "203.0.113.201", &json!({}))
            .await
            .status(),
        201
    );
    let res = demo_create(&app, "203.0.113.202", &json!({})).await;
    assert_error(res, 503, "unavailable").await;

    // Expired sessions leave it too.
    app.clock.advance(chrono::Duration::seconds(601));
    app.registry.tick_all();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.registry.live_count_of(DEMO_OWNER) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired sessions still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        demo_create(&app, "203.0.113.203", &json!({}))
            .await
            .status(),
        201
    );
}

#[actix_web::test]
async fn a_demo_session_holds_at_most_eight_websockets() {
    let app = demo_app().await;
    let res = demo_create(&app, "203.0.113.1", &json!({})).await;
    let created: Value = res.json().await.unwrap();
    let id = created["session_id"].as_str().unwrap();
    let token = created["session_token"].as_str().unwrap();
    let url = format!(
        "{}/v1/sessions/{id}/ws?token={token}",
        app.address.replace("http", "ws")
    );
    let mut open = Vec::new();
    for n in 1..=8 {
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("websocket {n}: {e}"));
        open.push(ws);
    }
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 503);
            assert!(res.headers().contains_key("retry-after"));
        }
        Ok(_) => panic!("a ninth websocket on one demo session was accepted"),
        Err(e) => panic!("handshake: {e}"),
    }
    // A real key's session is not held to the demo's number.
    let real = app.create_session(&["x"]).await;
    let url = format!(
        "{}/v1/sessions/{}/ws?token={}",
        app.address.replace("http", "ws"),
        real["session_id"].as_str().unwrap(),
        real["session_token"].as_str().unwrap()
    );
    for n in 1..=9 {
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("websocket {n} of a real session: {e}"));
        open.push(ws);
    }
}

#[actix_web::test]
async fn the_device_page_asks_the_demo_for_a_token_only_in_demo_mode() {
    let page = |app: &TestApp, id: String| {
        let req = app.client.get(app.url(&format!("/verify/{id}")));
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let demo = demo_app().await;
    assert!(page(&demo, id.clone()).await.contains("data-demo"));
    let plain = spawn_app().await;
    let html = page(&plain, id).await;
    assert!(!html.contains("data-demo"), "{html}");

    // The script asks the demo only when the page is marked, and for its session.
    let js = plain
        .client
        .get(plain.url("/assets/verify.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fetches: Vec<_> = js.match_indices("/demo/api/device-token").collect();
    assert_eq!(fetches.len(), 1, "one call to the demo's route");
    let call = fetches[0].0;
    let guard = js
        .find("hasAttribute('data-demo')")
        .expect("the script checks for demo mode");
    assert!(guard < call, "the demo-mode check comes before the call");
    assert!(
        js[call..].contains("session_id: sessionId"),
        "the call names the page's session"
    );
}

/// Reads `stderr` until a line containing `until`; every line before it.
async fn stderr_until(child: &mut tokio::process::Child, until: &str) -> Vec<String> {
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            let done = line.contains(until);
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("stderr ended without {until:?}: {seen:#?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {until:?} on stderr in time"));
    seen
}

#[actix_web::test]
async fn the_binary_warns_when_the_demo_is_reachable_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_idv-broker"))
        .args([
            "--bind",
            "0.0.0.0:0",
            "--demo",
            "--db",
            db.to_str().unwrap(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = stderr_until(&mut child, "demo mode: open").await;
    let warning = lines
        .iter()
        .find(|l| l.contains("WARN") && l.contains("other than loopback"))
        .unwrap_or_else(|| panic!("no warning: {lines:#?}"));
    assert!(warning.contains("0.0.0.0:"), "{warning}");
    child.kill().await.unwrap();

    // On loopback, no warning.
    let db = dir.path().join("loopback.db");
    let (mut child, _) = spawn_binary(
        &["--demo", "--db", db.to_str().unwrap()],
        &[],
        Stdio::piped(),
    )
    .await;
    let lines = stderr_until(&mut child, "demo mode: open").await;
    assert!(!lines.iter().any(|l| l.contains("loopback")), "{lines:#?}");
    child.kill().await.unwrap();
}

#[actix_web::test]
async fn demo_uploads_take_at_most_32_mib_of_the_upload_memory_and_real_ones_still_fit() {
    let app = demo_app().await;
    let mut photo = vec![0u8; 5 * 1024 * 1024];
    photo[..4].copy_from_slice(&[0xff, 0xd8, 0xff, 0xe0]);
    let upload = |id: String, jwt: String| {
        let req = app
            .client
            .put(app.url(&format!("/v1/sessions/{id}/files/selfie")))
            .bearer_auth(jwt)
            .header("Content-Type", "image/jpeg")
            .body(photo.clone());
        async move { req.send().await.unwrap() }
    };
    // Six 5 MiB photos fit in the demo's 32 MiB; the seventh does not.
    for n in 1..=7 {
        let id = demo_session(&app, &format!("203.0.113.{n}")).await;
        let jwt = demo_token(&app, &id).await;
        let res = app
            .client
            .get(app.url(&format!("/v1/sessions/{id}/information")))
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let res = upload(id, jwt).await;
        if n <= 6 {
            assert_eq!(res.status(), 201, "demo upload {n}");
        } else {
            assert!(res.headers().contains_key("retry-after"));
            assert_error(res, 503, "unavailable").await;
        }
    }
    // The rest of the broker's 256 MiB is the real sessions'.
    let (real, _) = app.retrieved_session(&["selfie"], "alice").await;
    let res = upload(real, app.device_token("alice")).await;
    assert_eq!(res.status(), 201);
}

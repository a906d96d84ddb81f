//! What a person sees: the QR code, the hosted device page, the demo client app and
//! its app-backend routes, the SDK, and the headers every page carries. The pages'
//! behaviour in a real browser is tested by `tests/e2e` (Chromium).

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

/// Asserts the headers SPEC §3 and the hardening ask of every page.
fn assert_page_headers(res: &reqwest::Response, content_type: &str) {
    let h = res.headers();
    let ct = h["content-type"].to_str().unwrap();
    assert!(ct.starts_with(content_type), "content-type {ct}");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
}

#[actix_web::test]
async fn the_qr_code_encodes_the_session_url_and_takes_the_token_from_header_or_query() {
    let app = spawn_app().await;
    let created = app.create_session(&["full_name"]).await;
    let id = created["session_id"].as_str().unwrap();
    let token = created["session_token"].as_str().unwrap();
    let url = created["url"].as_str().unwrap();
    assert_eq!(url, format!("{}/verify/{id}", app.address));

    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/qr.svg")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/svg+xml");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let svg = res.text().await.unwrap();
    assert_eq!(svg, idv_web::routes::client::qr_code(url).unwrap());
    assert!(svg.contains("viewBox"), "scales without blur: {svg:.200}");
    assert!(svg.contains("crispEdges"));
    // A different URL gives a different code: the image really carries the URL.
    assert_ne!(
        svg,
        idv_web::routes::client::qr_code(&format!("{url}x")).unwrap()
    );

    // `?token=`, for an `<img>`, which cannot send headers.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/qr.svg?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), svg);
}

#[actix_web::test]
async fn the_qr_code_wants_this_sessions_token() {
    let app = spawn_app().await;
    let a = app.create_session(&["full_name"]).await;
    let b = app.create_session(&["full_name"]).await;
    let id = a["session_id"].as_str().unwrap();
    let qr = |query: &str| {
        app.client
            .get(app.url(&format!("/v1/sessions/{id}/qr.svg{query}")))
    };

    assert_error(qr("").send().await.unwrap(), 401, "unauthorized").await;
    assert_error(
        qr("?token=not-a-token").send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let other = b["session_token"].as_str().unwrap();
    assert_error(
        qr("").bearer_auth(other).send().await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    // The backend's key is another role's credential.
    assert_error(
        qr("").header("X-Api-Key", API_KEY).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let res = app
        .client
        .get(app.url("/v1/sessions/not-a-uuid/qr.svg?token=x"))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
}

#[actix_web::test]
async fn the_device_page_and_the_sdk_are_served_with_a_strict_policy() {
    let app = spawn_app().await;
    let created = app.create_session(&["full_name"]).await;
    // The session url leads to the hosted device page.
    let res = app
        .client
        .get(created["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_page_headers(&res, "text/html");
    let html = res.text().await.unwrap();
    assert_no_inline_code(&html);
    for testid in ["scopes", "approve", "deny", "status"] {
        assert!(
            html.contains(&format!("data-testid=\"{testid}\"")),
            "verify page lacks {testid}"
        );
    }

    let res = app.client.get(app.url("/sdk.js")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_page_headers(&res, "application/javascript");
    let sdk = res.text().await.unwrap();
    for hook in [
        "onSessionIdResolver",
        "handleVerify",
        "onSuccess",
        "onError",
        "onStatus",
    ] {
        assert!(sdk.contains(hook), "the SDK lacks {hook}");
    }
    for asset in ["style.css", "verify.js", "demo.js"] {
        let res = app
            .client
            .get(app.url(&format!("/assets/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{asset}");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    }
    let res = app
        .client
        .get(app.url("/assets/secrets.txt"))
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
    let res = app
        .client
        .get(app.url("/verify/not-a-session"))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
}

/// Every script of a page comes from a file and no element carries a style or an
/// event handler: the CSP (no `unsafe-inline`) would block them in the browser.
fn assert_no_inline_code(html: &str) {
    let lower = html.to_ascii_lowercase();
    for (at, _) in lower.match_indices("<script") {
        let tag = &lower[at..at + lower[at..].find('>').unwrap()];
        assert!(tag.contains(" src="), "inline script: {tag}");
    }
    assert!(!lower.contains("<style"), "inline <style>");
    assert!(!lower.contains(" style="), "inline style attribute");
    assert!(!lower.contains(" onclick="), "inline event handler");
}

#[actix_web::test]
async fn without_demo_mode_the_demo_and_its_routes_do_not_exist() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/demo")).send().await.unwrap();
    assert_error(res, 404, "not_found").await;
    let res = app
        .client
        .post(app.url("/demo/api/sessions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
    let res = app
        .client
        .post(app.url("/demo/api/device-token"))
        .json(&json!({"session_id": uuid::Uuid::new_v4().to_string()}))
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
}

#[actix_web::test]
async fn the_demo_plays_the_app_backend_without_its_key_reaching_the_browser() {
    let app = spawn_app_with(|s| s.demo = true).await;
    let res = app.client.get(app.url("/demo")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_page_headers(&res, "text/html");
    let html = res.text().await.unwrap();
    assert_no_inline_code(&html);
    for testid in ["start", "status"] {
        assert!(
            html.contains(&format!("data-testid=\"{testid}\"")),
            "{testid}"
        );
    }

    // onSessionIdResolver's backend: a session for the demo app.
    let res = app
        .client
        .post(app.url("/demo/api/sessions"))
        .json(&json!({"scopes": ["full_name"], "ttl_seconds": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let id = created["session_id"].as_str().unwrap();
    let token = created["session_token"].as_str().unwrap();
    assert_eq!(created["scopes"], json!(["full_name"]));
    assert_eq!(created["url"], format!("{}/verify/{id}", app.address));
    let res = app
        .client
        .post(app.url("/demo/api/sessions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let default: Value = res.json().await.unwrap();
    assert_eq!(
        default["scopes"],
        json!(["full_name", "date_of_birth", "selfie"])
    );
    let res = app
        .client
        .post(app.url("/demo/api/sessions"))
        .json(&json!({"ttl_seconds": 5}))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    let res = app
        .client
        .post(app.url("/demo/api/sessions"))
        .json(&json!({"api_key": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    // Like every body the broker reads: nested deeper than 32 levels is refused first.
    let deep = format!("{{\"scopes\":{}{}}}", "[".repeat(40), "]".repeat(40));
    let res = app
        .client
        .post(app.url("/demo/api/sessions"))
        .header("Content-Type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("32"), "{message}");

    // The hosted page without `#token=` gets a device token for a demo user.
    let res = app
        .client
        .post(app.url("/demo/api/device-token"))
        .json(&json!({"session_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let device: Value = res.json().await.unwrap();
    let jwt = device["token"].as_str().unwrap();
    let sub = device["sub"].as_str().unwrap();
    assert!(sub.starts_with("demo-user-"), "{sub}");
    let info: Value = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/information")))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["requester"]["name"], "idv-broker demo");
    assert_eq!(info["registration"]["full_name"], "Ada Lovelace");

    // handleVerify's backend: the decision, for the browser holding the session token.
    let decision_url = app.url(&format!("/demo/api/sessions/{id}/decision"));
    let res = app.client.get(&decision_url).send().await.unwrap();
    assert_error(res, 401, "unauthorized").await;
    let res = app
        .client
        .get(&decision_url)
        .bearer_auth(default["session_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
    let res = app
        .client
        .get(&decision_url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "invalid_state").await;
    // The demo's sessions have a binding: the page holding the token shows the number.
    let status: Value = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/status")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = status["binding_code"]
        .as_str()
        .expect("a demo session has a binding");
    let res = app
        .client
        .post(app.url(&format!("/v1/sessions/{id}/update")))
        .bearer_auth(jwt)
        .json(&json!({"decision": "approve", "shared_data": {"full_name": "Ada L"}, "binding_code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .get(&decision_url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let decision: Value = res.json().await.unwrap();
    assert_eq!(decision["status"], "confirmed");
    assert_eq!(decision["user_id"], sub);
    assert_eq!(decision["shared_data"], json!({"full_name": "Ada L"}));

    // The demo's sessions are its own: the test backend's key does not see them.
    let res = app.backend_get(&format!("/v1/sessions/{id}")).await;
    assert_error(res, 404, "not_found").await;
}

#[actix_web::test]
async fn demo_device_tokens_carry_the_brokers_audience_when_one_is_required() {
    let app = spawn_app_with(|s| {
        s.demo = true;
        s.audience = Some("idv-broker-test".into());
    })
    .await;
    let created: Value = app
        .client
        .post(app.url("/demo/api/sessions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device: Value = app
        .client
        .post(app.url("/demo/api/device-token"))
        .json(&json!({"session_id": created["session_id"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = app
        .client
        .get(app.url(&format!(
            "/v1/sessions/{}/information",
            created["session_id"].as_str().unwrap()
        )))
        .bearer_auth(device["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn the_binary_with_only_demo_starts_a_usable_broker_and_says_where_the_demo_is() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let (mut child, address) = spawn_binary(
        &["--demo", "--db", db.to_str().unwrap()],
        &[],
        Stdio::piped(),
    )
    .await;
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let within = Duration::from_secs(60);
    let demo = tokio::time::timeout(within, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if let Some(at) = line.find("open http") {
                return line[at + "open ".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_owned();
            }
        }
        panic!("stderr ended without the demo's address");
    })
    .await
    .expect("the demo address on stderr in time");
    assert_eq!(demo, format!("{address}/demo"));

    idv_actors::webhooks::install_crypto_provider();
    let client = reqwest::Client::new();
    let page = client.get(&demo).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let created: Value = client
        .post(format!("{address}/demo/api/sessions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device: Value = client
        .post(format!("{address}/demo/api/device-token"))
        .json(&json!({"session_id": created["session_id"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = client
        .get(format!(
            "{address}/v1/sessions/{}/information",
            created["session_id"].as_str().unwrap()
        ))
        .bearer_auth(device["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    child.kill().await.unwrap();
}

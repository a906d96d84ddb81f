//! Binding the phone to the screen (SPEC §2): the two-digit code that only the client
//! is given and the person carries to the phone, the tries and their end, `shown_on`,
//! and sessions without binding as before.

use serde_json::{json, Value};

use crate::helpers::*;
use crate::metrics::scrape;
use crate::realtime::{connect, next_frame};
use crate::webhooks::{accepted, with_webhooks, Receiver};

/// The User-Agent of the desktop browser in these tests.
const CHROME_ON_LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";

/// A session with `"binding": "code"`; its id and token.
async fn bound_session(app: &TestApp, extra: Value) -> (String, String) {
    let mut body = json!({"scopes": ["full_name"], "binding": "code"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let res = app.post_session(&body).await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    assert_eq!(
        created["binding"], "code",
        "the response echoes the binding"
    );
    (
        created["session_id"].as_str().unwrap().to_owned(),
        created["session_token"].as_str().unwrap().to_owned(),
    )
}

/// The code the client is shown, from `GET …/status`.
async fn code_on_screen(app: &TestApp, id: &str, token: &str) -> String {
    let status: Value = app.status(id, token).await.json().await.unwrap();
    let code = status["binding_code"]
        .as_str()
        .unwrap_or_else(|| panic!("no binding_code in {status}"))
        .to_owned();
    assert!(
        code.len() == 2 && ("10"..="99").contains(&code.as_str()),
        "two digits, 10 to 99: {code}"
    );
    code
}

/// A two-digit code that is not `code`.
fn another(code: &str) -> String {
    if code == "42" { "43" } else { "42" }.to_owned()
}

async fn approve_with(app: &TestApp, id: &str, code: Option<&str>) -> reqwest::Response {
    let mut body = json!({"decision": "approve", "shared_data": {"full_name": "Ada Lovelace"}});
    if let Some(code) = code {
        body["binding_code"] = json!(code);
    }
    app.update(id, "ada", &body).await
}

/// A `422 binding_mismatch`; its `tries_left`.
async fn mismatch(res: reqwest::Response) -> u64 {
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "binding_mismatch", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("number"));
    body["error"]["tries_left"].as_u64().expect("tries_left")
}

async fn decision(app: &TestApp, id: &str) -> Value {
    app.backend_get(&format!("/v1/sessions/{id}/decision"))
        .await
        .json()
        .await
        .unwrap()
}

#[actix_web::test]
async fn the_code_goes_to_the_client_and_never_to_the_device() {
    let app = spawn_app().await;
    let (id, token) = bound_session(&app, json!({})).await;

    // Before the phone opens it there is no code yet, and nobody has shown it.
    let status: Value = app.status(&id, &token).await.json().await.unwrap();
    assert!(status.get("binding_code").is_none(), "{status}");
    let mut ws = connect(&app, &id, &token, None).await;
    let snapshot = next_frame(&mut ws).await.unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    assert!(snapshot.get("binding_code").is_none(), "{snapshot}");

    // The QR fetched by a desktop Chrome: that is where the session is shown.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/qr.svg?token={token}")))
        .header("User-Agent", CHROME_ON_LINUX)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let res = app.information(&id, "ada").await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let info: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["binding"], "code");
    assert_eq!(info["shown_on"]["browser"], "Chrome");
    assert_eq!(info["shown_on"]["os"], "Linux");
    assert!(info["shown_on"]["since"].is_string());
    assert!(!text.contains("binding_code"), "{text}");

    // The client has it: in the `retrieved` frame, in `/status` and on long-poll.
    let frame = next_frame(&mut ws).await.unwrap();
    assert_eq!(
        (&frame["status"], &frame["seq"]),
        (&json!("retrieved"), &json!(2))
    );
    let code = code_on_screen(&app, &id, &token).await;
    assert_eq!(frame["binding_code"], code.as_str());
    let polled: Value = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/status?after_seq=1&wait=5")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(polled["binding_code"], code.as_str());
    // A client that connects late gets it in its snapshot and in the replay.
    let mut late = connect(&app, &id, &token, Some(1)).await;
    assert_eq!(
        next_frame(&mut late).await.unwrap()["binding_code"],
        code.as_str()
    );
    assert_eq!(
        next_frame(&mut late).await.unwrap()["binding_code"],
        code.as_str()
    );

    // The device never does: not again in `information`, not in the update's answer.
    let text = app.information(&id, "ada").await.text().await.unwrap();
    assert!(!text.contains("binding_code"), "{text}");
    let res = approve_with(&app, &id, Some(&code)).await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(!text.contains(&format!("\"{code}\"")), "{text}");
}

#[actix_web::test]
async fn a_wrong_or_missing_code_changes_nothing_and_the_right_one_confirms() {
    let app = spawn_app().await;
    let (id, token) = bound_session(&app, json!({})).await;
    // Approve before the phone opened the session is refused as before.
    let res = approve_with(&app, &id, Some("42")).await;
    assert_error(res, 409, "invalid_state").await;
    assert_eq!(app.information(&id, "ada").await.status(), 200);
    let code = code_on_screen(&app, &id, &token).await;

    let res = approve_with(&app, &id, None).await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("binding_code"), "{message}");
    for bad in ["7", "007", "ab", "09", " 42"] {
        let res = approve_with(&app, &id, Some(bad)).await;
        assert_error(res, 400, "invalid_request").await;
    }
    // Another device may not even try.
    let res = app
        .update(
            &id,
            "mallory",
            &json!({"decision": "approve", "shared_data": {"full_name": "M"}, "binding_code": code}),
        )
        .await;
    assert_error(res, 403, "forbidden").await;

    assert_eq!(
        mismatch(approve_with(&app, &id, Some(&another(&code))).await).await,
        2
    );
    // Nothing moved: the status, the seq and the code are as they were; only the
    // count is stored.
    let status: Value = app.status(&id, &token).await.json().await.unwrap();
    assert_eq!(
        (&status["status"], &status["seq"]),
        (&json!("retrieved"), &json!(2))
    );
    assert_eq!(status["binding_code"], code.as_str());
    let misses: i64 = app
        .sql_one("SELECT binding_misses FROM sessions WHERE id = ?1", &[&id])
        .await;
    assert_eq!(misses, 1);

    let res = approve_with(&app, &id, Some(&code)).await;
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(
        (&updated["status"], &updated["seq"]),
        (&json!("confirmed"), &json!(3))
    );
    let decision = decision(&app, &id).await;
    assert_eq!(decision["status"], "confirmed");
    assert_eq!(decision["reason"], Value::Null);
    assert_eq!(decision["shared_data"]["full_name"], "Ada Lovelace");
}

#[actix_web::test]
async fn the_third_wrong_code_ends_the_session_declined_pushed_webhooked_and_purged() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(with_webhooks).await;
    let before = scrape(&app).await;
    let (id, token) = bound_session(
        &app,
        json!({
            "registration": {"first_name": "Quentin-Binding-Marker"},
            "callback_url": receiver.url("/hooks"),
        }),
    )
    .await;
    let mut ws = connect(&app, &id, &token, None).await;
    assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "snapshot");
    assert_eq!(app.information(&id, "ada").await.status(), 200);
    assert_eq!(next_frame(&mut ws).await.unwrap()["status"], "retrieved");
    let wrong = another(&code_on_screen(&app, &id, &token).await);

    assert_eq!(
        mismatch(approve_with(&app, &id, Some(&wrong)).await).await,
        2
    );
    assert_eq!(
        mismatch(approve_with(&app, &id, Some(&wrong)).await).await,
        1
    );
    let res = approve_with(&app, &id, Some(&wrong)).await;
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "binding_mismatch");
    assert_eq!(body["error"]["tries_left"], 0);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ended for safety"),
        "{body}"
    );

    // Pushed like any deny, and the socket closes.
    let frame = next_frame(&mut ws).await.unwrap();
    assert_eq!(
        (&frame["status"], &frame["seq"]),
        (&json!("declined"), &json!(3))
    );
    assert!(next_frame(&mut ws).await.is_err(), "closed after the end");
    let decision = decision(&app, &id).await;
    assert_eq!(decision["status"], "declined");
    assert_eq!(decision["reason"], "binding_mismatch");
    assert_eq!(decision["consent"]["is_consented"], false);
    assert_eq!(decision["shared_data"], Value::Null);
    // Nothing more can be tried, not even the right code.
    let res = approve_with(&app, &id, Some(&wrong)).await;
    assert_error(res, 409, "invalid_state").await;

    // Webhooked: retrieved, then declined.
    let hits = accepted(&receiver.wait_accepted(2).await);
    let statuses: Vec<&str> = hits.iter().map(|h| h["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["retrieved", "declined"]);

    // Purged: the registration is gone from the row.
    let registration: Option<String> = app
        .sql_one("SELECT registration FROM sessions WHERE id = ?1", &[&id])
        .await;
    assert_eq!(registration, None);

    let after = scrape(&app).await;
    let grew = |name: &str| after.sum(name, &[]) - before.sum(name, &[]);
    assert!(grew("idv_binding_mismatches_total") >= 3.0);
    assert!(grew("idv_sessions_ended_by_binding_mismatch_total") >= 1.0);
}

#[actix_web::test]
async fn a_deny_needs_no_code() {
    let app = spawn_app().await;
    let (id, _) = bound_session(&app, json!({})).await;
    assert_eq!(app.information(&id, "ada").await.status(), 200);
    let res = app
        .update(
            &id,
            "ada",
            &json!({"decision": "deny", "binding_code": "42"}),
        )
        .await;
    assert_error(res, 400, "invalid_request").await;
    let res = app.update(&id, "ada", &json!({"decision": "deny"})).await;
    assert_eq!(res.status(), 200);
    let decision = decision(&app, &id).await;
    assert_eq!(decision["status"], "declined");
    assert_eq!(decision["reason"], "denied");
}

#[actix_web::test]
async fn wrong_codes_are_counted_across_a_restart() {
    let app = spawn_app().await;
    let (id, token) = bound_session(&app, json!({})).await;
    assert_eq!(app.information(&id, "ada").await.status(), 200);
    let code = code_on_screen(&app, &id, &token).await;
    let wrong = another(&code);
    assert_eq!(
        mismatch(approve_with(&app, &id, Some(&wrong)).await).await,
        2
    );

    let app = app.restart(chrono::Duration::zero()).await;

    // The same code, and the count went on from where it was.
    assert_eq!(code_on_screen(&app, &id, &token).await, code);
    assert_eq!(
        mismatch(approve_with(&app, &id, Some(&wrong)).await).await,
        1
    );
    let res = approve_with(&app, &id, Some(&code)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(decision(&app, &id).await["status"], "confirmed");
}

#[actix_web::test]
async fn a_session_without_binding_behaves_as_before() {
    let app = spawn_app().await;
    let created = app.create_session(&["full_name"]).await;
    assert_eq!(created["binding"], "none");
    let id = created["session_id"].as_str().unwrap();
    let token = created["session_token"].as_str().unwrap();
    let info: Value = app.information(id, "ada").await.json().await.unwrap();
    assert_eq!(info["binding"], "none");
    // Nobody subscribed nor fetched the QR: where it is shown is unknown.
    assert_eq!(info["shown_on"], Value::Null);
    let status: Value = app.status(id, token).await.json().await.unwrap();
    assert!(status.get("binding_code").is_none(), "{status}");

    let res = approve_with(&app, id, Some("42")).await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("no binding code"), "{message}");
    let res = approve_with(&app, id, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(decision(&app, id).await["reason"], Value::Null);

    // A cancel has no reason either, nor an unknown binding a place.
    let created = app.create_session(&["full_name"]).await;
    let other = created["session_id"].as_str().unwrap();
    assert_eq!(app.cancel(other).await.status(), 200);
    let decision = decision(&app, other).await;
    assert_eq!(decision["status"], "cancelled");
    assert_eq!(decision["reason"], Value::Null);
    let res = app
        .post_session(&json!({"scopes": ["full_name"], "binding": "pin"}))
        .await;
    assert_error(res, 400, "invalid_request").await;
}

#[actix_web::test]
async fn shown_on_is_the_first_client_that_subscribed() {
    let app = spawn_app().await;
    let (id, token) = bound_session(&app, json!({})).await;
    let url = format!(
        "{}/v1/sessions/{id}/ws?token={token}",
        app.address.replace("http", "ws")
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request.headers_mut().insert(
        "User-Agent",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0"
            .parse()
            .unwrap(),
    );
    let (_ws, res) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(res.status(), 101);
    // A later client does not replace the first.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/qr.svg?token={token}")))
        .header("User-Agent", CHROME_ON_LINUX)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let info: Value = app.information(&id, "ada").await.json().await.unwrap();
    assert_eq!(info["shown_on"]["browser"], "Firefox");
    assert_eq!(info["shown_on"]["os"], "Windows 10");
    let since = info["shown_on"]["since"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(since).is_ok(),
        "{since}"
    );
}

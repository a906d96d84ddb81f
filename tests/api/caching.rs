//! SPEC §3: responses that carry personal data say `Cache-Control: no-store`.

use serde_json::{json, Value};

use crate::helpers::*;

fn assert_no_store(res: &reqwest::Response, what: &str) {
    assert_eq!(res.status(), 200, "{what}");
    let value = res
        .headers()
        .get("cache-control")
        .unwrap_or_else(|| panic!("{what} has no Cache-Control"));
    assert_eq!(value, "no-store", "{what}");
}

#[actix_web::test]
async fn the_session_its_decision_its_files_and_the_information_are_never_cached() {
    let app = spawn_app().await;
    let res = app
        .post_session(&json!({
            "scopes": ["full_name", "selfie"],
            "registration": {"first_name": "Cached-Not"}
        }))
        .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let res = app.information(&id, "alice").await;
    assert_no_store(&res, "GET /information");
    // Asked again by the bound device (nothing changes, still personal data).
    let res = app.information(&id, "alice").await;
    assert_no_store(&res, "GET /information again");

    let res = app.backend_get(&format!("/v1/sessions/{id}")).await;
    assert_no_store(&res, "GET /v1/sessions/{id}");

    let res = app
        .client
        .put(app.url(&format!("/v1/sessions/{id}/files/selfie")))
        .bearer_auth(app.device_token("alice"))
        .header("Content-Type", "image/png")
        .body(b"\x89PNG\r\n\x1a\n-a-selfie".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let file_id = res.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "Alice A"}}),
        )
        .await;
    assert_eq!(res.status(), 200);

    let res = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await;
    assert_no_store(&res, "GET /decision");
    let res = app
        .backend_get(&format!("/v1/sessions/{id}/files/{file_id}"))
        .await;
    assert_no_store(&res, "GET /files/{file_id}");
    // Read from the store once the session ended, still not cacheable.
    let res = app.backend_get(&format!("/v1/sessions/{id}")).await;
    assert_no_store(&res, "GET /v1/sessions/{id} once confirmed");
}

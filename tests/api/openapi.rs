//! `GET /openapi.json` (issue 11): an OpenAPI 3 description of every route, generated
//! from the handlers. schemathesis (`.ci/schemathesis.sh`) checks the running broker
//! against it; these tests check the document itself.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::*;

/// Every route `configure` serves, as the document spells it. `/files/{file}` is one
/// path for both methods: `{file}` is the kind on PUT and the file id on GET (two
/// templates that differ only in a parameter's name are the same path to OpenAPI).
const ROUTES: [(&str, &str); 24] = [
    ("post", "/v1/sessions"),
    ("get", "/v1/sessions/{id}"),
    ("delete", "/v1/sessions/{id}"),
    ("get", "/v1/sessions/{id}/decision"),
    ("get", "/v1/sessions/{id}/files/{file}"),
    ("put", "/v1/sessions/{id}/files/{file}"),
    ("put", "/v1/users/{user_id}/status"),
    ("get", "/v1/users/{user_id}"),
    ("get", "/v1/sessions/{id}/status"),
    ("get", "/v1/sessions/{id}/ws"),
    ("get", "/v1/sessions/{id}/qr.svg"),
    ("get", "/v1/sessions/{id}/information"),
    ("post", "/v1/sessions/{id}/update"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/sdk.js"),
    ("get", "/assets/{name}"),
    ("get", "/verify/{id}"),
    ("get", "/demo"),
    ("post", "/demo/api/sessions"),
    ("get", "/demo/api/sessions/{id}/decision"),
    ("post", "/demo/api/device-token"),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

async fn document(app: &TestApp) -> Value {
    let res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    res.json().await.expect("the document is JSON")
}

/// Every (method, path, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                ops.push((method.to_owned(), path.clone(), op));
            }
        }
    }
    ops
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => value,
    }
}

/// The path with its parameters filled in, so the request reaches the route.
fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000-0000-4000-8000-000000000000")
        .replace("{file}", "selfie")
        .replace("{user_id}", "user-1")
        .replace("{name}", "style.css")
}

#[actix_web::test]
async fn the_openapi_document_parses_and_lists_every_route_the_app_serves() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "an OpenAPI 3 document"
    );
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, served);

    // And every documented operation reaches a handler: the app's fallback for a
    // path it does not serve is `404` "no such route", and for a method `405`.
    for (method, path, _) in operations(&doc) {
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let res = app
            .client
            .request(method.clone(), app.url(&concrete(&path)))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path} is not served: {body}");
        assert!(
            !(status == 404 && body.contains("no such route")),
            "{method} {path} is not served: {body}"
        );
    }
}

#[actix_web::test]
async fn the_openapi_document_names_a_security_scheme_per_credential() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-Api-Key");
    assert_eq!(schemes["session_token"]["type"], "http");
    assert_eq!(schemes["session_token"]["scheme"], "bearer");
    assert_eq!(schemes["device_jwt"]["type"], "http");
    assert_eq!(schemes["device_jwt"]["scheme"], "bearer");
    assert_eq!(schemes["device_jwt"]["bearerFormat"], "JWT");
    assert_eq!(schemes["session_token_query"]["type"], "apiKey");
    assert_eq!(schemes["session_token_query"]["in"], "query");
    assert_eq!(schemes["session_token_query"]["name"], "token");

    let security = |method: &str, path: &str| -> BTreeSet<String> {
        doc["paths"][path][method]["security"]
            .as_array()
            .map(|reqs| {
                reqs.iter()
                    .flat_map(|r| r.as_object().unwrap().keys().cloned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| (*n).to_owned()).collect() };
    assert_eq!(security("post", "/v1/sessions"), set(&["api_key"]));
    assert_eq!(
        security("get", "/v1/sessions/{id}/files/{file}"),
        set(&["api_key"])
    );
    assert_eq!(security("get", "/v1/users/{user_id}"), set(&["api_key"]));
    assert_eq!(
        security("get", "/v1/sessions/{id}/status"),
        set(&["session_token"])
    );
    for path in ["/v1/sessions/{id}/ws", "/v1/sessions/{id}/qr.svg"] {
        assert_eq!(
            security("get", path),
            set(&["session_token", "session_token_query"]),
            "{path}"
        );
    }
    assert_eq!(
        security("put", "/v1/sessions/{id}/files/{file}"),
        set(&["device_jwt"])
    );
    assert_eq!(
        security("post", "/v1/sessions/{id}/update"),
        set(&["device_jwt"])
    );
    assert_eq!(security("get", "/healthz"), set(&[]));
}

#[actix_web::test]
async fn every_documented_error_is_the_spec_error_body_and_limits_say_when_to_retry() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let codes: BTreeSet<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let spec: BTreeSet<&str> = [
        "invalid_request",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "timeout",
        "invalid_state",
        "idempotency_conflict",
        "payload_too_large",
        "unsupported_media_type",
        "incomplete",
        "binding_mismatch",
        "rate_limited",
        "internal",
        "unavailable",
    ]
    .into();
    assert_eq!(codes, spec);

    for (method, path, op) in operations(&doc) {
        let responses = op["responses"].as_object().unwrap();
        for status in ["429", "500", "503"] {
            assert!(responses.contains_key(status), "{method} {path}: {status}");
        }
        for (status, response) in responses {
            let response = resolve(&doc, response);
            if status.as_str() < "400" {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"];
            assert_eq!(
                schema["$ref"], "#/components/schemas/ErrorBody",
                "{method} {path} {status}"
            );
            let retry_after = response["headers"].get("Retry-After").is_some();
            assert_eq!(
                retry_after,
                status == "429" || status == "503",
                "{method} {path} {status}: Retry-After"
            );
        }
    }
}

#[actix_web::test]
async fn the_create_request_carries_the_field_constraints_of_the_spec() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let create = &doc["components"]["schemas"]["CreateSession"];
    assert_eq!(create["required"], serde_json::json!(["scopes"]));
    assert_eq!(create["additionalProperties"], false);
    let scopes = &create["properties"]["scopes"];
    assert_eq!(scopes["minItems"], 1);
    assert_eq!(scopes["maxItems"], 32);
    assert_eq!(scopes["uniqueItems"], true);
    let scope = resolve(&doc, &scopes["items"]);
    assert_eq!(scope["pattern"], "^[a-z][a-z0-9_]{0,63}$");
    let ttl = &create["properties"]["ttl_seconds"];
    assert_eq!(
        (ttl["minimum"].as_i64(), ttl["maximum"].as_i64()),
        (Some(30), Some(86400))
    );
    assert_eq!(create["properties"]["vendor_data"]["maxLength"], 1024);

    let statuses = &doc["components"]["schemas"]["SessionStatus"]["enum"];
    assert_eq!(
        statuses,
        &serde_json::json!([
            "initialized",
            "retrieved",
            "confirmed",
            "declined",
            "expired",
            "cancelled"
        ])
    );
    let user_statuses = &doc["components"]["schemas"]["UserStatusName"]["enum"];
    assert_eq!(
        user_statuses,
        &serde_json::json!(["PENDING", "CREATED", "BLOCKED"])
    );
    let upload = &doc["paths"]["/v1/sessions/{id}/files/{file}"]["put"]["requestBody"]["content"];
    let types: BTreeSet<&str> = upload
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(types, BTreeSet::from(["image/jpeg", "image/png"]));
}

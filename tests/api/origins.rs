//! Browser pages on other origins (SPEC §6, `--allowed-origin`): CORS on the client
//! routes only, and the `Origin` check of the WebSocket handshake.

use reqwest::Method;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

const BANK: &str = "https://www.bank.example";
const EVIL: &str = "https://evil.example";

async fn spawn_allowing_the_bank() -> TestApp {
    spawn_app_with(|s| s.allowed_origins = vec![BANK.parse().expect("an origin")]).await
}

/// The `Access-Control-*` headers of an answer, by name.
fn cors_headers(res: &reqwest::Response) -> Vec<String> {
    res.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .reduce(|a, b| format!("{a}, {b}"))
}

fn varies_on_origin(res: &reqwest::Response) -> bool {
    header(res, "vary").is_some_and(|v| {
        v.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("origin"))
    })
}

async fn preflight(app: &TestApp, path: &str, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .expect("request")
}

fn client_routes(id: &str) -> [String; 2] {
    [
        format!("/v1/sessions/{id}/status"),
        format!("/v1/sessions/{id}/qr.svg"),
    ]
}

#[actix_web::test]
async fn a_listed_origin_is_answered_its_preflight_and_gets_cors_headers_on_each_client_route() {
    let app = spawn_allowing_the_bank().await;
    let created = app.create_session(&["full_name"]).await;
    let (id, token) = (
        created["session_id"].as_str().unwrap(),
        created["session_token"].as_str().unwrap(),
    );
    for path in client_routes(id) {
        let res = preflight(&app, &path, BANK).await;
        assert_eq!(res.status(), 204, "{path}");
        assert_eq!(
            header(&res, "access-control-allow-origin").as_deref(),
            Some(BANK)
        );
        assert!(header(&res, "access-control-allow-methods")
            .unwrap()
            .contains("GET"));
        let allowed = header(&res, "access-control-allow-headers")
            .unwrap()
            .to_lowercase();
        assert!(allowed.contains("authorization"), "{allowed}");
        let max_age: u32 = header(&res, "access-control-max-age")
            .unwrap()
            .parse()
            .unwrap();
        assert!(max_age > 0);
        assert!(
            varies_on_origin(&res),
            "{path}: preflight without Vary: Origin"
        );

        let res = app
            .client
            .get(app.url(&path))
            .header("Origin", BANK)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(
            header(&res, "access-control-allow-origin").as_deref(),
            Some(BANK)
        );
        assert!(varies_on_origin(&res), "{path}: without Vary: Origin");
        // An error is readable by the page too: the SDK tells a refusal from a block.
        let res = app
            .client
            .get(app.url(&path))
            .header("Origin", BANK)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{path}");
        assert_eq!(
            header(&res, "access-control-allow-origin").as_deref(),
            Some(BANK)
        );
    }
    // The status's tag and Retry-After are readable by the page.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/status")))
        .header("Origin", BANK)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let exposed = header(&res, "access-control-expose-headers")
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("retry-after"),
        "{exposed}"
    );
}

#[actix_web::test]
async fn the_brokers_own_origin_is_admitted_without_being_listed() {
    let app = spawn_app().await;
    let created = app.create_session(&["full_name"]).await;
    let id = created["session_id"].as_str().unwrap();
    for path in client_routes(id) {
        let res = preflight(&app, &path, &app.address).await;
        assert_eq!(res.status(), 204, "{path}");
        assert_eq!(
            header(&res, "access-control-allow-origin").as_deref(),
            Some(app.address.as_str())
        );
    }
}

#[actix_web::test]
async fn an_origin_not_listed_is_refused_its_preflight_and_gets_no_cors_headers() {
    let app = spawn_allowing_the_bank().await;
    let created = app.create_session(&["full_name"]).await;
    let (id, token) = (
        created["session_id"].as_str().unwrap(),
        created["session_token"].as_str().unwrap(),
    );
    for path in client_routes(id) {
        let res = preflight(&app, &path, EVIL).await;
        assert!(
            cors_headers(&res).is_empty(),
            "{path}: {:?}",
            cors_headers(&res)
        );
        assert!(varies_on_origin(&res));
        let message = assert_error(res, 403, "forbidden").await;
        assert!(message.contains("--allowed-origin"), "{message}");

        // The request itself is answered (a server may send any Origin), but without
        // the header a browser needs to hand the answer to the page.
        let res = app
            .client
            .get(app.url(&path))
            .header("Origin", EVIL)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            cors_headers(&res).is_empty(),
            "{path}: {:?}",
            cors_headers(&res)
        );
        assert!(varies_on_origin(&res));

        // Without an Origin (an app, a server): no CORS headers, nothing refused.
        let res = app
            .client
            .get(app.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(cors_headers(&res).is_empty());
    }
}

/// A method, a path and the headers to send.
type Route = (Method, String, Vec<(&'static str, String)>);

#[actix_web::test]
async fn backend_and_device_routes_never_send_cors_headers_even_to_a_listed_origin() {
    let app = spawn_allowing_the_bank().await;
    let (id, _) = app.retrieved_session(&["full_name"], "user-1").await;
    let device = app.device_token("user-1");
    let file = uuid::Uuid::new_v4();
    let routes: Vec<Route> = vec![
        (
            Method::POST,
            "/v1/sessions".into(),
            vec![("X-Api-Key", API_KEY.into())],
        ),
        (
            Method::GET,
            format!("/v1/sessions/{id}"),
            vec![("X-Api-Key", API_KEY.into())],
        ),
        (Method::DELETE, format!("/v1/sessions/{id}"), vec![]),
        (
            Method::GET,
            format!("/v1/sessions/{id}/decision"),
            vec![("X-Api-Key", API_KEY.into())],
        ),
        (
            Method::GET,
            format!("/v1/sessions/{id}/files/{file}"),
            vec![("X-Api-Key", API_KEY.into())],
        ),
        (
            Method::GET,
            "/v1/users/user-1".into(),
            vec![("X-Api-Key", API_KEY.into())],
        ),
        (Method::PUT, "/v1/users/user-1/status".into(), vec![]),
        (
            Method::GET,
            format!("/v1/sessions/{id}/information"),
            vec![("Authorization", format!("Bearer {device}"))],
        ),
        (
            Method::PUT,
            format!("/v1/sessions/{id}/files/selfie"),
            vec![],
        ),
        (Method::POST, format!("/v1/sessions/{id}/update"), vec![]),
    ];
    for (method, path, headers) in routes {
        let mut req = app
            .client
            .request(method.clone(), app.url(&path))
            .header("Origin", BANK);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        if method == Method::POST && path == "/v1/sessions" {
            req = req.json(&json!({"scopes": ["full_name"]}));
        }
        let res = req.send().await.unwrap();
        assert!(
            cors_headers(&res).is_empty(),
            "{method} {path} ({}) sent {:?}",
            res.status(),
            cors_headers(&res)
        );

        let res = app
            .client
            .request(Method::OPTIONS, app.url(&path))
            .header("Origin", BANK)
            .header("Access-Control-Request-Method", method.as_str())
            .header("Access-Control-Request-Headers", "authorization, x-api-key")
            .send()
            .await
            .unwrap();
        assert!(
            cors_headers(&res).is_empty(),
            "preflight of {path}: {:?}",
            cors_headers(&res)
        );
        assert_error(res, 405, "method_not_allowed").await;
    }
}

/// Opens `/ws` with `origin` (or none); the HTTP status of the answer, and the error
/// code of a refusal.
async fn handshake(
    app: &TestApp,
    id: &str,
    token: &str,
    origin: Option<&str>,
) -> (u16, Option<String>) {
    let url = format!(
        "{}/v1/sessions/{id}/ws?token={token}",
        app.address.replace("http", "ws")
    );
    let mut req = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        req.headers_mut().insert("Origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, res)) => (res.status().as_u16(), None),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body: serde_json::Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or_default())
                    .expect("a JSON error body");
            (
                res.status().as_u16(),
                body["error"]["code"].as_str().map(str::to_owned),
            )
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

#[actix_web::test]
async fn the_websocket_handshake_admits_its_own_origin_a_listed_one_and_none_and_refuses_others() {
    let app = spawn_allowing_the_bank().await;
    let created = app.create_session(&["full_name"]).await;
    let (id, token) = (
        created["session_id"].as_str().unwrap(),
        created["session_token"].as_str().unwrap(),
    );
    assert_eq!(
        handshake(&app, id, token, Some(&app.address)).await,
        (101, None),
        "own"
    );
    assert_eq!(
        handshake(&app, id, token, Some(BANK)).await,
        (101, None),
        "listed"
    );
    assert_eq!(
        handshake(&app, id, token, None).await,
        (101, None),
        "no Origin"
    );
    assert_eq!(
        handshake(&app, id, token, Some(EVIL)).await,
        (403, Some("forbidden".into())),
        "another site"
    );
    assert_eq!(
        handshake(&app, id, token, Some("null")).await,
        (403, Some("forbidden".into())),
        "a sandboxed page"
    );
}

#[actix_web::test]
async fn behind_a_proxy_the_origin_of_the_public_url_is_the_brokers_own() {
    let app = spawn_app_with(|s| s.public_url = Some("https://www.bank.example/idv".into())).await;
    let created = app.create_session(&["full_name"]).await;
    let (id, token) = (
        created["session_id"].as_str().unwrap(),
        created["session_token"].as_str().unwrap(),
    );
    assert_eq!(handshake(&app, id, token, Some(BANK)).await, (101, None));
    assert_eq!(handshake(&app, id, token, Some(EVIL)).await.0, 403);
}

//! Device tokens by public keys (issue 26, SPEC §1 and §6): issuers trusted by a JSON
//! Web Key Set that a loopback server of the test serves and changes, and by PEM key
//! files. The keys are made for each test run by the `openssl` command.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{spawn_app_with, TestApp};

/// A private key made by `openssl genpkey` in `dir`, and its public half.
pub struct TestKey {
    pub private_pem: Vec<u8>,
    pub public_path: PathBuf,
    pub private_path: PathBuf,
}

/// The key types of SPEC §1.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Rsa,
    Ec,
    Ed,
}

pub fn make_key(dir: &Path, name: &str, kind: Kind) -> TestKey {
    let private_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    let args: &[&str] = match kind {
        Kind::Rsa => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        Kind::Ec => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        Kind::Ed => &["-algorithm", "ed25519"],
    };
    let ok = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&private_path)
        .output()
        .expect("openssl runs")
        .status
        .success();
    assert!(ok, "openssl genpkey {kind:?}");
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private_path)
        .arg("-out")
        .arg(&public_path)
        .output()
        .expect("openssl runs")
        .status
        .success();
    assert!(ok, "openssl pkey -pubout {kind:?}");
    TestKey {
        private_pem: std::fs::read(&private_path).unwrap(),
        public_path,
        private_path,
    }
}

impl TestKey {
    fn encoding_key(&self) -> EncodingKey {
        EncodingKey::from_rsa_pem(&self.private_pem)
            .or_else(|_| EncodingKey::from_ec_pem(&self.private_pem))
            .or_else(|_| EncodingKey::from_ed_pem(&self.private_pem))
            .expect("a private key")
    }

    /// The public key as a JWK under `kid`, without `alg` (any alg of its type).
    pub fn jwk(&self, kid: &str, alg: Algorithm) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding_key(), alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.key_algorithm = None;
        serde_json::to_value(jwk).unwrap()
    }

    /// A device token of `iss` for `sub`, signed with `alg` under `kid`.
    pub fn token(&self, iss: &str, sub: &str, alg: Algorithm, kid: Option<&str>) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        sign(&header, &claims(iss, sub, 600), &self.encoding_key())
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(iss: &str, sub: &str, expires_in: i64) -> Value {
    json!({"iss": iss, "sub": sub, "iat": now(), "exp": now() + expires_in})
}

fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

/// A JWKS server on a loopback port whose answer the test sets.
pub struct JwksServer {
    pub url: String,
    answer: Arc<Mutex<(u16, String)>>,
    /// Requests answered.
    pub hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/certs", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new((500, "{}".to_owned())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (a, h) = (a.clone(), h.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (status, body) = a.lock().unwrap().clone();
                    h.fetch_add(1, Ordering::SeqCst);
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { url, answer, hits }
    }

    /// Serves these keys with `200`.
    pub fn publish(&self, keys: &[Value]) {
        *self.answer.lock().unwrap() = (200, json!({ "keys": keys }).to_string());
    }

    /// Answers `500` from now on.
    pub fn fail(&self) {
        self.answer.lock().unwrap().0 = 500;
    }
}

/// A unique issuer name (metrics are per process and labelled by issuer).
fn issuer() -> String {
    format!(
        "https://sso-{}.test/realms/r",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A broker trusting `iss` by the JWKS at `url`, fetches asked for by unknown kids at
/// most once a second.
async fn broker(iss: &str, url: &str) -> TestApp {
    let (iss, url) = (iss.to_owned(), url.to_owned());
    spawn_app_with(move |s| {
        s.issuer_jwks = vec![(iss, url)];
        s.jwks.min_refresh_gap = Duration::from_secs(1);
    })
    .await
}

/// `GET /information` of a fresh session with `token`: the status.
/// Waits (bounded) until the device API takes `token`: the broker fetches the set again
/// when a token names a `kid` it lacks, at most once per gap, so the first tries may
/// still be refused.
async fn accepted_in_time(app: &TestApp, token: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while information(app, token).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn information(app: &TestApp, token: &str) -> u16 {
    let id = app.create_session(&["full_name"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.client
        .get(app.url(&format!("/v1/sessions/{id}/information")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn ready(app: &TestApp) -> u16 {
    app.client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until `/readyz` says `want`.
async fn ready_becomes(app: &TestApp, want: u16, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = ready(app).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Keys {
    _dir: tempfile::TempDir,
    rsa: TestKey,
    ec: TestKey,
    ed: TestKey,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    Keys {
        rsa: make_key(dir.path(), "rsa", Kind::Rsa),
        ec: make_key(dir.path(), "ec", Kind::Ec),
        ed: make_key(dir.path(), "ed", Kind::Ed),
        _dir: dir,
    }
}

impl Keys {
    fn published(&self) -> Vec<Value> {
        vec![
            self.rsa.jwk("rsa-1", Algorithm::RS256),
            self.ec.jwk("ec-1", Algorithm::ES256),
            self.ed.jwk("ed-1", Algorithm::EdDSA),
        ]
    }
}

#[actix_web::test]
async fn tokens_signed_with_rsa_ec_and_ed25519_keys_of_a_jwks_are_accepted() {
    let k = keys();
    let server = JwksServer::start().await;
    server.publish(&k.published());
    let iss = issuer();
    let app = broker(&iss, &server.url).await;
    ready_becomes(&app, 200, Duration::from_secs(10)).await;
    for (key, alg, kid) in [
        (&k.rsa, Algorithm::RS256, "rsa-1"),
        (&k.rsa, Algorithm::PS256, "rsa-1"),
        (&k.ec, Algorithm::ES256, "ec-1"),
        (&k.ed, Algorithm::EdDSA, "ed-1"),
    ] {
        let token = key.token(&iss, "alice", alg, Some(kid));
        assert_eq!(information(&app, &token).await, 200, "{alg:?}");
    }
    // The device is the pair (issuer, sub): its binding and decision name the issuer.
    let created = app.create_session(&["full_name"]).await;
    let id = created["session_id"].as_str().unwrap().to_owned();
    let token = k.ed.token(&iss, "bob", Algorithm::EdDSA, Some("ed-1"));
    let res = app
        .client
        .post(app.url(&format!("/v1/sessions/{id}/update")))
        .bearer_auth(&token)
        .json(&json!({"decision": "deny"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409, "update before information");
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/information")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Another issuer's device with the same sub is another device.
    let hs = app.device_token("bob");
    let res = app
        .client
        .post(app.url(&format!("/v1/sessions/{id}/update")))
        .bearer_auth(&hs)
        .json(&json!({"decision": "deny"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = app
        .client
        .post(app.url(&format!("/v1/sessions/{id}/update")))
        .bearer_auth(&token)
        .json(&json!({"decision": "deny"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let decision: Value = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decision["issuer"], iss.as_str());
    assert_eq!(decision["user_id"], "bob");

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fetched = format!("idv_jwks_fetches_total{{issuer=\"{iss}\",outcome=\"ok\"}}");
    let age = format!("idv_jwks_age_seconds{{issuer=\"{iss}\"}}");
    assert!(metrics.contains(&fetched), "{fetched} in\n{metrics}");
    assert!(metrics.contains(&age), "{age} in\n{metrics}");
}

#[actix_web::test]
async fn an_unknown_kid_is_refused_then_accepted_once_the_issuer_publishes_it() {
    let k = keys();
    let server = JwksServer::start().await;
    server.publish(&k.published()[..1]);
    let iss = issuer();
    let app = broker(&iss, &server.url).await;
    ready_becomes(&app, 200, Duration::from_secs(10)).await;
    let token = k.ed.token(&iss, "alice", Algorithm::EdDSA, Some("ed-new"));
    assert_eq!(information(&app, &token).await, 401);
    // Published now; the broker fetches again when a token names it, without a restart
    // (at most once per gap: 1 s here).
    server.publish(&k.published());
    let token = k.ed.token(&iss, "alice", Algorithm::EdDSA, Some("ed-1"));
    accepted_in_time(&app, &token).await;
    // Unknown kids do not hammer the issuer: a burst asks for one fetch at most.
    let before = server.hits.load(Ordering::SeqCst);
    let stranger = k.ed.token(&iss, "alice", Algorithm::EdDSA, Some("nobody"));
    for _ in 0..10 {
        assert_eq!(information(&app, &stranger).await, 401);
    }
    let asked = server.hits.load(Ordering::SeqCst) - before;
    assert!(asked <= 2, "{asked} fetches for a burst of unknown kids");
}

#[actix_web::test]
async fn confused_algorithms_none_a_wrong_key_a_mismatched_alg_and_an_expired_token_are_refused() {
    let k = keys();
    let server = JwksServer::start().await;
    server.publish(&k.published());
    let iss = issuer();
    let app = broker(&iss, &server.url).await;
    ready_becomes(&app, 200, Duration::from_secs(10)).await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    // Algorithm confusion: HS256 keyed with the public key's bytes (PEM and DER).
    let public_pem = std::fs::read_to_string(&k.rsa.public_path).unwrap();
    let public_der = base64::engine::general_purpose::STANDARD
        .decode(
            public_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    for secret in [public_pem.into_bytes(), public_der] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let token = sign(
            &header,
            &claims(&iss, "mallory", 600),
            &EncodingKey::from_secret(&secret),
        );
        assert_eq!(information(&app, &token).await, 401, "HS256 confusion");
    }
    // alg none, no signature.
    let body = b64.encode(claims(&iss, "mallory", 600).to_string());
    let none = format!(
        "{}.{body}.",
        b64.encode(r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#)
    );
    assert_eq!(information(&app, &none).await, 401, "alg none");
    // A key of the issuer's type under a known kid, but not the published one.
    let dir = tempfile::tempdir().unwrap();
    let stranger = make_key(dir.path(), "stranger", Kind::Ed);
    let token = stranger.token(&iss, "mallory", Algorithm::EdDSA, Some("ed-1"));
    assert_eq!(information(&app, &token).await, 401, "a wrong key");
    // An alg that does not fit the key under that kid (ES256 against the RSA key).
    let token = k.ec.token(&iss, "mallory", Algorithm::ES256, Some("rsa-1"));
    assert_eq!(information(&app, &token).await, 401, "a mismatched alg");
    // Expired beyond the 60 s leeway.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ed-1".into());
    let expired = sign(
        &header,
        &json!({"iss": iss, "sub": "alice", "iat": now() - 600, "exp": now() - 120}),
        &k.ed.encoding_key(),
    );
    assert_eq!(information(&app, &expired).await, 401, "expired");
    // The control: the same key and claims, in time.
    let fine = k.ed.token(&iss, "alice", Algorithm::EdDSA, Some("ed-1"));
    assert_eq!(information(&app, &fine).await, 200);
}

#[actix_web::test]
async fn while_the_jwks_url_fails_the_last_good_set_stays_in_use() {
    let k = keys();
    let server = JwksServer::start().await;
    server.publish(&k.published()[..1]);
    let iss = issuer();
    let app = broker(&iss, &server.url).await;
    ready_becomes(&app, 200, Duration::from_secs(10)).await;
    let rsa = k.rsa.token(&iss, "alice", Algorithm::RS256, Some("rsa-1"));
    assert_eq!(information(&app, &rsa).await, 200);

    server.fail();
    // An unknown kid makes the broker fetch (once the gap since the last fetch is
    // over): it gets a 500 ...
    let ed = k.ed.token(&iss, "alice", Algorithm::EdDSA, Some("ed-1"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let before = server.hits.load(Ordering::SeqCst);
        assert_eq!(information(&app, &ed).await, 401);
        if server.hits.load(Ordering::SeqCst) > before {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a fetch was tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and keeps the set it had: known keys still work, the broker stays ready.
    assert_eq!(information(&app, &rsa).await, 200);
    assert_eq!(ready(&app).await, 200);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed = format!("idv_jwks_fetches_total{{issuer=\"{iss}\",outcome=\"bad_status\"}}");
    assert!(metrics.contains(&failed), "{failed} in\n{metrics}");

    // Back, with the new key.
    server.publish(&k.published());
    accepted_in_time(&app, &ed).await;
}

#[actix_web::test]
async fn a_jwks_url_down_at_start_leaves_the_broker_alive_but_not_ready_until_a_set_arrives() {
    let k = keys();
    let server = JwksServer::start().await;
    // Down: 500 from the start.
    let iss = issuer();
    let app = broker(&iss, &server.url).await;
    ready_becomes(&app, 503, Duration::from_secs(5)).await;
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let token = k.ed.token(&iss, "alice", Algorithm::EdDSA, Some("ed-1"));
    assert_eq!(information(&app, &token).await, 401);
    // Backend and HS256 devices are served meanwhile.
    assert_eq!(information(&app, &app.device_token("alice")).await, 200);
    // The issuer comes up: the broker retries after the gap and becomes ready.
    server.publish(&k.published());
    ready_becomes(&app, 200, Duration::from_secs(10)).await;
    assert_eq!(information(&app, &token).await, 200);
}

#[actix_web::test]
async fn an_issuer_trusted_by_key_files_accepts_tokens_of_either_key_with_any_kid() {
    let k = keys();
    let iss = issuer();
    let files = vec![
        (iss.clone(), k.ec.public_path.clone()),
        (iss.clone(), k.ed.public_path.clone()),
    ];
    let app = spawn_app_with(move |s| s.issuer_keys = files).await;
    assert_eq!(ready(&app).await, 200);
    let ec = k.ec.token(&iss, "alice", Algorithm::ES256, None);
    assert_eq!(information(&app, &ec).await, 200);
    let ed = k.ed.token(&iss, "alice", Algorithm::EdDSA, Some("2026-01"));
    assert_eq!(information(&app, &ed).await, 200);
    // The RSA key is not one of them.
    let rsa = k.rsa.token(&iss, "alice", Algorithm::RS256, None);
    assert_eq!(information(&app, &rsa).await, 401);
    // HS256 keyed with one of the public files' bytes.
    let pem = std::fs::read(&k.ed.public_path).unwrap();
    let confused = sign(
        &Header::new(Algorithm::HS256),
        &claims(&iss, "mallory", 600),
        &EncodingKey::from_secret(&pem),
    );
    assert_eq!(information(&app, &confused).await, 401);
}

/// The real binary with `args`; its exit code and stderr (it must not start).
async fn run_broker(args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_idv-broker"))
            .args(args)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the broker exits in time")
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[actix_web::test]
async fn a_jwks_url_in_clear_text_to_another_host_or_a_bad_key_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let db = db.to_str().unwrap();
    for (flag, value, said) in [
        ("--issuer-jwks", "sso=http://sso.example/certs", "https"),
        ("--issuer-jwks", "sso=http://10.1.2.3/certs", "https"),
        ("--issuer-key", "mobile=/nonexistent/key.pem", "mobile"),
    ] {
        let (code, stderr) = run_broker(&["--bind", "127.0.0.1:0", "--db", db, flag, value]).await;
        assert_eq!(code, Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(said), "{stderr}");
        let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(lines, 1, "{stderr}");
    }
}

#[actix_web::test]
async fn the_token_command_signs_with_a_private_key_for_a_key_file_issuer() {
    let k = keys();
    let iss = issuer();
    let public = k.rsa.public_path.clone();
    let files = vec![(iss.clone(), public)];
    let app = spawn_app_with(move |s| s.issuer_keys = files).await;
    let key = k.rsa.private_path.to_str().unwrap().to_owned();
    for alg in [None, Some("PS256")] {
        let mut args = vec![
            "token", "--key", &key, "--iss", &iss, "--sub", "alice", "--kid", "k1",
        ];
        if let Some(alg) = alg {
            args.extend(["--alg", alg]);
        }
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_idv-broker"))
            .args(&args)
            .env_clear()
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap();
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], alg.unwrap_or("RS256"));
        assert_eq!(header["kid"], "k1");
        assert_eq!(information(&app, token.trim()).await, 200, "{alg:?}");
    }
}

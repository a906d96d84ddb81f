//! Starts the real broker on port 0 with a fresh SQLite file, and typed helpers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use idv_actors::clock::OffsetClock;
use idv_actors::registry::Registry;
/// The store's trait, so tests call its counters on `TestApp::store`.
pub use idv_actors::session_store::SessionStore;
use idv_broker::{Application, Settings};
use serde_json::{json, Value};

/// The backend key every test app accepts, and its name. Keys and secrets are at least
/// 16 bytes: the broker refuses shorter ones.
pub const API_KEY: &str = "test-key-1-acme-bank";
pub const API_KEY_NAME: &str = "Acme Bank";
/// A second backend, to prove isolation.
pub const OTHER_API_KEY: &str = "test-key-2-other-corp";
/// The trusted device issuer and its secret.
pub const ISSUER: &str = "phone-app";
pub const ISSUER_SECRET: &str = "issuer-secret-for-tests";
/// A second trusted issuer, whose users are other devices even with the same `sub`.
pub const OTHER_ISSUER: &str = "other-app";
pub const OTHER_ISSUER_SECRET: &str = "other-issuer-secret-for-tests";

/// A running in-process broker.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    pub client: reqwest::Client,
    pub registry: Registry,
    /// The broker's store, to count its reads.
    pub store: Arc<dyn SessionStore>,
    /// The retention sweeper; `send(Sweep)` sweeps now.
    pub sweeper: actix::Addr<idv_actors::retention::RetentionSweeper>,
    pub clock: Arc<OffsetClock>,
    pub db: PathBuf,
    /// Keeps the database folder alive for the test (and for restarts).
    pub dir: Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<actix_web::rt::task::JoinHandle<std::io::Result<()>>>,
}

/// Settings for a test broker over `db`: two API keys, two issuers, no rate limit.
pub fn test_settings(db: &Path, clock: Arc<OffsetClock>) -> Settings {
    let mut s = Settings::with_db(db);
    s.bind = "127.0.0.1:0".into();
    s.api_keys = vec![
        (API_KEY_NAME.into(), API_KEY.into()),
        ("Other Corp".into(), OTHER_API_KEY.into()),
    ];
    s.issuers = vec![
        (ISSUER.into(), ISSUER_SECRET.into()),
        (OTHER_ISSUER.into(), OTHER_ISSUER_SECRET.into()),
    ];
    s.rate_limit = 0;
    s.workers = Some(2);
    s.clock = clock;
    s.shutdown_timeout = Duration::from_secs(5);
    s
}

/// Starts a broker with a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a broker with a fresh database and adjusted settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let db = dir.path().join("broker.db");
    start(dir, db, OffsetClock::new(), adjust).await
}

async fn start(
    dir: Arc<tempfile::TempDir>,
    db: PathBuf,
    clock: Arc<OffsetClock>,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = test_settings(&db, clock.clone());
    adjust(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("the broker starts");
    let address = format!("http://{}", app.addr());
    let registry = app.registry();
    let sweeper = app.sweeper();
    let store = app.store();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = actix_web::rt::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        registry,
        store,
        sweeper,
        clock,
        db,
        dir,
        stop: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// Stops the broker gracefully (drain, flush the store).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    /// Stops this broker and starts a new one on the same database, with the clock
    /// moved forward by `advance` (to act out downtime).
    pub async fn restart(self, advance: chrono::Duration) -> TestApp {
        self.restart_with(advance, |_| {}).await
    }

    /// As [`restart`](Self::restart), with the new broker's settings adjusted the way
    /// `spawn_app_with` does (settings are not carried over by themselves).
    pub async fn restart_with(
        mut self,
        advance: chrono::Duration,
        adjust: impl FnOnce(&mut Settings),
    ) -> TestApp {
        self.stop().await;
        self.clock.advance(advance);
        let (dir, db, clock) = (self.dir.clone(), self.db.clone(), self.clock.clone());
        start(dir, db, clock, adjust).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A device JWT from the trusted issuer.
    pub fn device_token(&self, sub: &str) -> String {
        idv_actors::credentials::mint_device_jwt(ISSUER, ISSUER_SECRET, sub, 600).expect("jwt")
    }

    /// `POST /v1/sessions` with the main API key.
    pub async fn post_session(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/sessions"))
            .header("X-Api-Key", API_KEY)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Creates a session asking for `scopes`; returns the 201 body.
    pub async fn create_session(&self, scopes: &[&str]) -> Value {
        let res = self.post_session(&json!({ "scopes": scopes })).await;
        assert_eq!(res.status(), 201, "create failed");
        res.json().await.expect("json")
    }

    /// `GET` with the main API key.
    pub async fn backend_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .expect("request")
    }

    /// `GET /information` as device `sub`.
    pub async fn information(&self, id: &str, sub: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/v1/sessions/{id}/information")))
            .bearer_auth(self.device_token(sub))
            .send()
            .await
            .expect("request")
    }

    /// `POST /update` as device `sub`.
    pub async fn update(&self, id: &str, sub: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/sessions/{id}/update")))
            .bearer_auth(self.device_token(sub))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// `GET /status` with a session token.
    pub async fn status(&self, id: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/v1/sessions/{id}/status")))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// `DELETE /v1/sessions/{id}` with the main key.
    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/v1/sessions/{id}")))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .expect("request")
    }

    /// Polls `GET /v1/sessions/{id}` until its status is `want` or `within` passes.
    pub async fn wait_for_status(&self, id: &str, want: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let body: Value = self
                .backend_get(&format!("/v1/sessions/{id}"))
                .await
                .json()
                .await
                .expect("json");
            if body["status"] == want || tokio::time::Instant::now() > deadline {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Asserts a SPEC §5 error body with `code`, and returns its message.
pub async fn assert_error(res: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(res.status().as_u16(), status, "status");
    let body: Value = res.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "code in {body}");
    let message = body["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(!message.is_empty());
    message
}

/// Parses a session id as the registry takes it.
pub fn session_id(id: &str) -> idv_actors::ids::SessionId {
    idv_actors::ids::SessionId::parse(id).expect("a session id")
}

/// A device JWT with any issuer, secret and expiry (seconds from now, may be negative).
pub fn jwt(iss: &str, secret: &str, sub: &str, expires_in: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": iss, "sub": sub, "exp": now + expires_in}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("jwt")
}

impl TestApp {
    /// The broker's (injected) clock.
    pub fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use idv_actors::clock::Clock as _;
        self.clock.now()
    }

    /// A read-only connection to the broker's database, to check what it really stored.
    pub fn db_read(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the db read-only");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    /// The session's status as stored, polled until it is `want` or `within` has passed.
    /// Reads the database, not the API, so watching rehydrates or nudges no actor.
    pub async fn stored_status_becomes(&self, id: &str, want: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        let conn = self.db_read();
        loop {
            let status: String = conn
                .query_row("SELECT status FROM sessions WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap();
            if status == want || tokio::time::Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a session for `scopes` and opens it as device `sub`; returns (id, token).
    pub async fn retrieved_session(&self, scopes: &[&str], sub: &str) -> (String, String) {
        let created = self.create_session(scopes).await;
        let id = created["session_id"].as_str().unwrap().to_owned();
        let token = created["session_token"].as_str().unwrap().to_owned();
        let res = self.information(&id, sub).await;
        assert_eq!(res.status(), 200, "information failed");
        (id, token)
    }

    /// `GET` with the other API key.
    pub async fn other_backend_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("X-Api-Key", OTHER_API_KEY)
            .send()
            .await
            .expect("request")
    }
}

/// The real binary on `127.0.0.1:0` with `args` (the database and credentials are the
/// caller's), its environment cleared of the flags' variables and `env` added, and
/// `stderr` as given. Answers once it printed `listening on`: the child (killed when
/// dropped) and its `http://127.0.0.1:PORT`.
pub async fn spawn_binary(
    args: &[&str],
    env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt as _;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_idv-broker"));
    command.args(["--bind", "127.0.0.1:0"]).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("IDVB_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("the broker binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("the broker prints its address in time")
    .expect("stdout is readable");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(address.starts_with("http://127.0.0.1:"), "{address}");
    (child, address)
}

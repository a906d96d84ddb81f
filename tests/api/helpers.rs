//! Starts the real broker on port 0 with a fresh store, and typed helpers.
//!
//! The store is SQLite (a fresh file) unless `IDVB_TEST_STORE=postgres`: then every
//! broker gets a fresh database of its own on the server of `IDVB_TEST_PG`, and the
//! real binary (`spawn_binary`) is pointed at one database per `--db` path. The few
//! checks that are about SQLite's own files say so and skip on PostgreSQL
//! (`skip_on_postgres`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use idv_actors::clock::OffsetClock;
use idv_actors::registry::Registry;
/// The store's trait, so tests call its counters on `TestApp::store`.
pub use idv_actors::session_store::SessionStore;
use idv_broker::settings::StoreUrl;
use idv_broker::{Application, Settings};
use serde_json::{json, Value};

/// The backend key every test app accepts, and its name. Keys and secrets are at least
/// 16 bytes: the broker refuses shorter ones.
/// The cluster key of a broker on PostgreSQL (SPEC §7: required there).
pub const CLUSTER_KEY: &str = "dGVzdC1jbHVzdGVyLWtleS0zMi1ieXRlcy1sb25nISE=";
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
    pub sweeper: idv_actors::supervise::Supervised<idv_actors::retention::RetentionSweeper>,
    /// The broker's supervised tasks: `arm` one to make it panic at its next round.
    pub tasks: idv_actors::supervise::Tasks,
    pub clock: Arc<OffsetClock>,
    pub db: PathBuf,
    /// The PostgreSQL database and node id this broker runs on, under
    /// `IDVB_TEST_STORE=postgres`; kept across restarts.
    pub pg: Option<PgDb>,
    /// Keeps the database folder alive for the test (and for restarts).
    pub dir: Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<actix_web::rt::task::JoinHandle<std::io::Result<()>>>,
}

/// A PostgreSQL database of a test, and the node id its broker runs as.
#[derive(Clone, Debug)]
pub struct PgDb {
    pub url: String,
    pub node_id: String,
}

/// Whether this run tests the PostgreSQL store (`IDVB_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("IDVB_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// `true` (and a note naming `why`) when a check about SQLite's own files cannot run
/// because this run is on PostgreSQL.
pub fn skip_on_postgres(why: &str) -> bool {
    let skip = on_postgres();
    if skip {
        eprintln!("note: skipped on PostgreSQL: {why}");
    }
    skip
}

/// A fresh database on the `IDVB_TEST_PG` server, with a node id for its broker.
pub async fn fresh_pg() -> PgDb {
    let server = std::env::var("IDVB_TEST_PG")
        .expect("IDVB_TEST_STORE=postgres needs IDVB_TEST_PG (scripts/services.sh env)");
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let url = idv_actors::pg::create_database(&server, &name)
        .await
        .expect("a test database");
    PgDb {
        url,
        node_id: format!("node-{}", &name[2..14]),
    }
}

/// Connections per test broker: the test server allows 400 in all.
const PG_POOL_SIZE: usize = 4;

/// A value read back from the store by [`TestApp::sql`]: either engine's row, typed.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// What a [`Cell`] can be read as.
pub trait FromCell: Sized {
    fn from_cell(cell: &Cell) -> Self;
}

impl FromCell for i64 {
    fn from_cell(cell: &Cell) -> Self {
        match cell {
            Cell::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }
}

impl FromCell for String {
    fn from_cell(cell: &Cell) -> Self {
        match cell {
            Cell::Text(s) => s.clone(),
            other => panic!("not text: {other:?}"),
        }
    }
}

impl FromCell for Vec<u8> {
    fn from_cell(cell: &Cell) -> Self {
        match cell {
            Cell::Blob(b) => b.clone(),
            other => panic!("not bytes: {other:?}"),
        }
    }
}

impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(cell: &Cell) -> Self {
        match cell {
            Cell::Null => None,
            other => Some(T::from_cell(other)),
        }
    }
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
    let pg = if on_postgres() {
        Some(fresh_pg().await)
    } else {
        None
    };
    start(dir, db, pg, OffsetClock::new(), adjust).await
}

async fn start(
    dir: Arc<tempfile::TempDir>,
    db: PathBuf,
    pg: Option<PgDb>,
    clock: Arc<OffsetClock>,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = test_settings(&db, clock.clone());
    if let Some(pg) = &pg {
        settings.store = StoreUrl::Postgres(pg.url.clone());
        settings.node_id = pg.node_id.clone();
        settings.pg_pool_size = PG_POOL_SIZE;
        // Each test broker is a cluster of one node on a database of its own; node ids
        // are unique, so brokers sharing the NATS server never hear each other.
        settings.nats = Some(
            std::env::var("IDVB_TEST_NATS")
                .expect("IDVB_TEST_STORE=postgres needs IDVB_TEST_NATS (scripts/services.sh env)"),
        );
        settings.cluster_keys = vec![idv_actors::seal::ClusterKey::from_base64(CLUSTER_KEY)
            .expect("the test cluster key is 32 bytes")];
    }
    adjust(&mut settings);
    let tasks = settings.tasks.clone();
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
        tasks,
        clock,
        db,
        pg,
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
        start(dir, db, self.pg.clone(), clock, adjust).await
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
    let got = res.status().as_u16();
    let text = res.text().await.expect("an error body");
    assert_eq!(got, status, "status, with the body {text}");
    let body: Value = serde_json::from_str(&text).expect("error body is JSON");
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

    /// Runs `sql` on the broker's database (either engine), to check what it really
    /// stored: `?1`, `?2`… are the text `params` (written `$1`… for PostgreSQL).
    pub async fn sql(&self, sql: &str, params: &[&str]) -> Vec<Vec<Cell>> {
        match &self.pg {
            None => {
                let conn = rusqlite::Connection::open_with_flags(
                    &self.db,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
                )
                .expect("open the db");
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                let mut stmt = conn.prepare(sql).unwrap();
                let n = stmt.column_count();
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params), |r| {
                        (0..n)
                            .map(|i| {
                                use rusqlite::types::ValueRef;
                                Ok(match r.get_ref(i)? {
                                    ValueRef::Null => Cell::Null,
                                    ValueRef::Integer(n) => Cell::Int(n),
                                    ValueRef::Real(f) => Cell::Text(f.to_string()),
                                    ValueRef::Text(t) => {
                                        Cell::Text(String::from_utf8_lossy(t).into_owned())
                                    }
                                    ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
                                })
                            })
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .unwrap();
                rows.collect::<rusqlite::Result<_>>().unwrap()
            }
            Some(pg) => {
                let mut text = sql.to_owned();
                for i in (1..=params.len().max(9)).rev() {
                    text = text.replace(&format!("?{i}"), &format!("${i}"));
                }
                let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
                    .await
                    .expect("connect to the test database");
                let conn = tokio::spawn(conn);
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                let rows = client.query(&text, &params).await.unwrap();
                drop(client);
                let _ = conn.await;
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                use tokio_postgres::types::Type;
                                let t = r.columns()[i].type_().clone();
                                if t == Type::INT8 {
                                    r.get::<_, Option<i64>>(i).map_or(Cell::Null, Cell::Int)
                                } else if t == Type::INT4 {
                                    r.get::<_, Option<i32>>(i)
                                        .map_or(Cell::Null, |n| Cell::Int(n.into()))
                                } else if t == Type::BOOL {
                                    r.get::<_, Option<bool>>(i)
                                        .map_or(Cell::Null, |b| Cell::Int(b.into()))
                                } else if t == Type::BYTEA {
                                    r.get::<_, Option<Vec<u8>>>(i)
                                        .map_or(Cell::Null, Cell::Blob)
                                } else {
                                    r.get::<_, Option<String>>(i).map_or(Cell::Null, Cell::Text)
                                }
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// The first column of the one row `sql` answers.
    pub async fn sql_one<T: FromCell>(&self, sql: &str, params: &[&str]) -> T {
        let rows = self.sql(sql, params).await;
        assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
        T::from_cell(&rows[0][0])
    }

    /// Breaks the store under the broker: drops `table` (with what refers to it).
    pub async fn drop_table(&self, table: &str) {
        match &self.pg {
            None => {
                let conn = rusqlite::Connection::open(&self.db).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                conn.execute_batch(&format!("DROP TABLE {table}")).unwrap();
            }
            Some(pg) => {
                let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let conn = tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP TABLE {table} CASCADE"))
                    .await
                    .unwrap();
                drop(client);
                let _ = conn.await;
            }
        }
    }

    /// Where `needle` is still stored: on SQLite, every file of the broker's folder
    /// that holds it (database, WAL, anything); on PostgreSQL, every table with a row
    /// that holds it (sessions, files, the outbox, events, keys, users).
    pub async fn stored_holders(&self, needle: &[u8]) -> Vec<String> {
        if self.pg.is_none() {
            return files_holding(self.dir.path(), needle)
                .into_iter()
                .map(|p| p.display().to_string())
                .collect();
        }
        let Ok(needle) = std::str::from_utf8(needle) else {
            panic!("markers are text");
        };
        let mut found = Vec::new();
        for table in [
            "sessions",
            "files",
            "webhook_outbox",
            "session_events",
            "idempotency_keys",
            "users",
        ] {
            let sql = match table {
                "files" => "SELECT count(*) FROM files WHERE position(convert_to(?1, 'UTF8') in bytes) > 0".to_owned(),
                "webhook_outbox" => "SELECT count(*) FROM webhook_outbox WHERE position(convert_to(?1, 'UTF8') in body) > 0".to_owned(),
                _ => format!("SELECT count(*) FROM {table} t WHERE strpos(t::text, ?1) > 0"),
            };
            let n: i64 = self.sql_one(&sql, &[needle]).await;
            if n > 0 {
                found.push(format!("table {table}"));
            }
        }
        found
    }

    /// The session's status as stored, polled until it is `want` or `within` has passed.
    /// Reads the database, not the API, so watching rehydrates or nudges no actor.
    pub async fn stored_status_becomes(&self, id: &str, want: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status: String = self
                .sql_one("SELECT status FROM sessions WHERE id = ?1", &[id])
                .await;
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

/// Every file under `dir` holding `needle`.
pub fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            // A file may vanish between listing and reading (a WAL being reset).
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

/// The PostgreSQL database standing for each `--db` path given to the binary, so a
/// restart on the same path finds the same database (and runs as the same node).
static BINARY_DBS: std::sync::Mutex<Vec<(String, PgDb)>> = std::sync::Mutex::new(Vec::new());

pub async fn pg_for_path(path: &str) -> PgDb {
    if let Some((_, db)) = BINARY_DBS.lock().unwrap().iter().find(|(p, _)| p == path) {
        return db.clone();
    }
    let db = fresh_pg().await;
    BINARY_DBS
        .lock()
        .unwrap()
        .push((path.to_owned(), db.clone()));
    db
}

/// The real binary on `127.0.0.1:0` with `args` (the database and credentials are the
/// caller's), its environment cleared of the flags' variables and `env` added, and
/// `stderr` as given. Answers once it printed `listening on`: the child (killed when
/// dropped) and its `http://127.0.0.1:PORT`. On PostgreSQL, `--db PATH` is replaced by
/// the database standing for PATH.
pub async fn spawn_binary(
    args: &[&str],
    env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt as _;
    let mut command = binary_command(args).await;
    command.args(["--bind", "127.0.0.1:0"]);
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

/// The real binary with `args` (a subcommand first, if any), as [`spawn_binary`] runs
/// it: on PostgreSQL, `--db PATH` becomes the database standing for PATH; the
/// environment is cleared of the flags' variables.
pub async fn binary_command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_idv-broker"));
    let mut args = args.iter().copied();
    while let Some(arg) = args.next() {
        match args.clone().next() {
            Some(path) if arg == "--db" && on_postgres() => {
                args.next();
                let pg = pg_for_path(path).await;
                let nats = std::env::var("IDVB_TEST_NATS").expect(
                    "IDVB_TEST_STORE=postgres needs IDVB_TEST_NATS (scripts/services.sh env)",
                );
                command.args([
                    "--store",
                    &pg.url,
                    "--nats",
                    &nats,
                    "--node-id",
                    &pg.node_id,
                    "--cluster-key",
                    CLUSTER_KEY,
                ]);
            }
            _ => {
                command.arg(arg);
            }
        }
    }
    for (name, _) in std::env::vars() {
        if name.starts_with("IDVB_") {
            command.env_remove(name);
        }
    }
    command
}

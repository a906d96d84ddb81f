//! Three real `idv-broker` processes on a fresh PostgreSQL database and the test NATS,
//! and the typed helpers the tests drive them with. Everything is black-box: HTTP and
//! WebSocket to the nodes, SQL to read what they committed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::Child;

/// The backend key every node accepts, and its name.
pub const API_KEY: &str = "cluster-key-1-acme-bank";
pub const API_KEY_NAME: &str = "Acme Bank";
/// The trusted device issuer and its secret (the same on every node).
pub const ISSUER: &str = "phone-app";
pub const ISSUER_SECRET: &str = "cluster-issuer-secret-for-tests";
/// The cluster key of every node (32 bytes in base64; SPEC §7).
pub const CLUSTER_KEY: &str = "Y2x1c3Rlci10ZXN0LWtleS0zMi1ieXRlcy1sb25nISE=";
/// The webhook signing secret of every node.
pub const WEBHOOK_SECRET: &str = "cluster-webhook-secret";
/// The nodes' names, in the order of [`Cluster::nodes`]. Their `--node-id` adds the
/// cluster's own suffix: node ids are NATS subjects (`idv.node.<id>.cmd`), and another
/// cluster on the same NATS (another test binary, a bench) must not answer for ours.
pub const NODE_NAMES: [&str; 3] = ["a", "b", "c"];

/// SPEC §7: a dead node's sessions go to the others within this.
pub const TAKEOVER: Duration = Duration::from_secs(10);
/// SPEC §2: a session open at `expires_at` is `expired` within this.
pub const EXPIRY_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(1);
/// The shortest `ttl_seconds` the API accepts: expiry tests wait this long.
pub const MIN_TTL: u64 = 30;

/// The two engines' addresses, from the environment (`scripts/services.sh start`
/// prints them; the CI command starts the engines and exports them).
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: the cluster tests need PostgreSQL and NATS. Start both with \
             `eval \"$(scripts/services.sh start)\"` (it exports IDVB_TEST_PG and \
             IDVB_TEST_NATS), or run the whole suite with `bash .ci/test.sh`"
        ),
    }
}

/// One cluster at a time in this binary: each test runs three nodes and checks
/// timings (expiry within 1 s, takeover within 10 s) that two clusters sharing CI's two
/// cores at once would blur. A tokio mutex, so the tests' separate runtimes can share it.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This binary's turn to run nodes, for a test that starts nodes without [`Cluster`].
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME.lock().await
}

/// A fresh database on the test PostgreSQL, dropped when this is dropped.
pub struct Db {
    /// What the nodes get as `--store`.
    pub url: String,
    name: String,
    admin_url: String,
    /// For the audits; its connection task runs on the test's runtime.
    client: tokio_postgres::Client,
}

/// A session row as committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    pub seq: u64,
    pub status: String,
    /// The node that owns it (`sessions.owner_node`).
    pub owner: Option<String>,
}

async fn connect_pg(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

impl Db {
    /// Creates `idvb_cluster_<random>` through the admin connection of `IDVB_TEST_PG`.
    pub async fn fresh() -> Db {
        Db::create(None).await
    }

    /// Like [`Db::fresh`], the database owned by role `owner` (who may then migrate it).
    pub async fn fresh_owned_by(owner: &str) -> Db {
        Db::create(Some(owner)).await
    }

    async fn create(owner: Option<&str>) -> Db {
        let admin_url = required_env("IDVB_TEST_PG");
        let name = format!("idvb_cluster_{}", uuid::Uuid::new_v4().simple());
        let admin = connect_pg(&admin_url).await;
        let owner = owner.map(|o| format!(" OWNER {o}")).unwrap_or_default();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}{owner}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let mut url = url::Url::parse(&admin_url).expect("IDVB_TEST_PG is a URL");
        url.set_path(&format!("/{name}"));
        let url = url.to_string();
        let client = connect_pg(&url).await;
        Db {
            url,
            name,
            admin_url,
            client,
        }
    }

    /// The session as committed, `None` if there is no such row.
    ///
    /// Columns are cast to text and bigint so the audit does not depend on the
    /// schema's exact types (a UUID or TEXT id, an enum or TEXT status).
    pub async fn session(&self, id: &str) -> Option<StoredSession> {
        self.client
            .query_opt(
                "SELECT seq::bigint, status::text, owner_node::text FROM sessions \
                 WHERE id::text = $1",
                &[&id],
            )
            .await
            .expect("read a session")
            .map(|r| StoredSession {
                seq: r.get::<_, i64>(0) as u64,
                status: r.get(1),
                owner: r.get(2),
            })
    }

    /// How many nodes hold a valid lease, by the database's clock.
    pub async fn nodes_with_a_lease(&self) -> i64 {
        self.client
            .query_one(
                "SELECT count(*) FROM nodes \
                 WHERE lease_until > (extract(epoch from clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .await
            .expect("read the leases")
            .get(0)
    }

    /// Every committed session: id → row.
    pub async fn sessions(&self) -> std::collections::BTreeMap<String, StoredSession> {
        self.client
            .query(
                "SELECT id::text, seq::bigint, status::text, owner_node::text FROM sessions",
                &[],
            )
            .await
            .expect("read the sessions")
            .into_iter()
            .map(|r| {
                (
                    r.get(0),
                    StoredSession {
                        seq: r.get::<_, i64>(1) as u64,
                        status: r.get(2),
                        owner: r.get(3),
                    },
                )
            })
            .collect()
    }

    /// Every committed event: session id → [(seq, status)] in seq order.
    pub async fn events(&self) -> std::collections::BTreeMap<String, Vec<(u64, String)>> {
        let mut out: std::collections::BTreeMap<String, Vec<(u64, String)>> = Default::default();
        for r in self
            .client
            .query(
                "SELECT session_id::text, seq::bigint, status::text FROM session_events \
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .expect("read the events")
        {
            out.entry(r.get(0))
                .or_default()
                .push((r.get::<_, i64>(1) as u64, r.get(2)));
        }
        out
    }

    /// How many sessions that are still open (initialized or retrieved) `node` owns.
    pub async fn open_sessions_owned_by(&self, node: &str) -> i64 {
        self.client
            .query_one(
                "SELECT count(*) FROM sessions WHERE owner_node::text = $1 \
                 AND status::text IN ('initialized', 'retrieved')",
                &[&node],
            )
            .await
            .expect("count owned sessions")
            .get(0)
    }

    /// Whether the session's personal data (`registration`, `shared_data`) is gone.
    pub async fn personal_data_is_gone(&self, id: &str) -> bool {
        self.client
            .query_one(
                "SELECT registration IS NULL AND shared_data IS NULL FROM sessions \
                 WHERE id::text = $1",
                &[&id],
            )
            .await
            .expect("read the personal data")
            .get(0)
    }
}

impl Drop for Db {
    /// Drops the database (`WITH (FORCE)` ends what the nodes left connected). On its own
    /// thread and runtime: this may run inside the test's runtime, which must not block.
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                        .await
                        .ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: could not drop the test database {}", self.name);
        }
    }
}

/// One `idv-broker` process.
pub struct Node {
    /// Its `--node-id`.
    pub id: String,
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    child: Child,
    /// Its stderr (the logs), printed when a test fails.
    log: PathBuf,
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// SIGKILL: no shutdown, no hand-over, no flush.
    /// Freezes the process (SIGSTOP): what a long stall, a paused VM or a network cut
    /// without a reset look like from outside. [`Node::resume`] wakes it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Wakes a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the node runs").to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {signal} node {}", self.id);
    }

    pub async fn kill_9(&mut self) {
        self.child.kill().await.expect("SIGKILL the node");
    }

    /// SIGTERM, then waits (bounded by `within`) for the exit; answers its code.
    pub async fn sigterm(&mut self, within: Duration) -> Option<i32> {
        let pid = self.child.id().expect("the node runs").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("node {} did not exit within {within:?} of SIGTERM", self.id)
            })
            .expect("wait for the node");
        status.code()
    }

    /// Its whole log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// How the nodes of a cluster start.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Webhooks on: signed with [`WEBHOOK_SECRET`], callback URLs may be loopback.
    pub webhooks: bool,
    /// More flags for every node.
    pub extra: Vec<String>,
    /// A NATS of the test's own instead of `IDVB_TEST_NATS` (a test that stops it).
    pub nats: Option<String>,
    /// Node `n`'s own NATS URL, where given (another user, say), instead of `nats`.
    pub nats_of_node: Vec<String>,
    /// The nodes' `RUST_LOG`; `info` when `None`.
    pub rust_log: Option<String>,
    /// The port the nodes reach PostgreSQL on, instead of the test server's own (a
    /// proxy of the test's that cuts the database off).
    pub store_port: Option<u16>,
}

/// Three nodes on one fresh database and the test NATS.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub db: Db,
    /// Plain client (no redirects followed), for the tests' own requests.
    pub http: reqwest::Client,
    /// Holds the nodes' logs; kept (not deleted) when a test fails.
    dir: Option<tempfile::TempDir>,
    /// Released last, once the nodes are killed (fields drop in order).
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts nodes `a`, `b` and `c` and waits until each one is ready (`/readyz`).
    pub async fn start(options: Options) -> Cluster {
        let guard = ONE_CLUSTER_AT_A_TIME.lock().await;
        // Both checked before anything starts, so a missing one is the first message.
        let nats = match &options.nats {
            Some(url) => url.clone(),
            None => required_env("IDVB_TEST_NATS"),
        };
        let db = Db::fresh().await;
        // reqwest has rustls through the broker's webhook client, without a default
        // provider: the broker picks ring, and so do its tests.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            // Well under the nodes' 5 s keep-alive: a connection left idle (say, while
            // a test waits for a takeover) is never reused just as the node closes
            // it, which would lose a POST with "incomplete message" (HTTP/1.1 gives
            // the client no way to tell; the broker is not at fault).
            .pool_idle_timeout(Duration::from_secs(1))
            .build()
            .expect("client");
        let mut nodes = Vec::new();
        // One after the other: the first applies the schema.
        let suffix = &db.name[db.name.len() - 8..];
        for name in NODE_NAMES {
            let id = format!("{name}-{suffix}");
            let store = match options.store_port {
                Some(port) => {
                    let mut url = url::Url::parse(&db.url).expect("the database URL");
                    url.set_port(Some(port)).expect("a port");
                    url.to_string()
                }
                None => db.url.clone(),
            };
            let nats = options.nats_of_node.get(nodes.len()).unwrap_or(&nats);
            nodes.push(start_node(&id, &store, nats, &options, dir.path()).await);
        }
        let cluster = Cluster {
            nodes,
            db,
            http,
            dir: Some(dir),
            _one_at_a_time: guard,
        };
        for node in &cluster.nodes {
            cluster.wait_ready(node, Duration::from_secs(20)).await;
        }
        cluster
    }

    /// `GET /readyz` of node `n` (0 when it does not answer).
    pub async fn readyz(&self, n: usize) -> u16 {
        self.http
            .get(self.nodes[n].url("/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Polls `GET /readyz` until it is 200 (the node reaches PostgreSQL and NATS).
    pub async fn wait_ready(&self, node: &Node, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let res = self.http.get(node.url("/readyz")).send().await;
            if matches!(&res, Ok(r) if r.status() == 200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} is not ready within {within:?}: {res:?}\n{}",
                node.id,
                node.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node with `--node-id id`.
    pub fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The nodes' addresses, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    /// `POST /v1/sessions` through node `n`.
    pub async fn post_session(&self, n: usize, body: &Value) -> reqwest::Response {
        self.http
            .post(self.nodes[n].url("/v1/sessions"))
            .header("X-Api-Key", API_KEY)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Creates a session through node `n`; the 201 body.
    pub async fn create(&self, n: usize, body: &Value) -> Created {
        let res = self.post_session(n, body).await;
        assert_eq!(res.status(), 201, "create through {}", self.nodes[n].id);
        Created::from(res.json::<Value>().await.expect("json"))
    }

    /// `GET /information` through node `n` as device `sub`.
    pub async fn information(&self, n: usize, id: &str, sub: &str) -> reqwest::Response {
        self.http
            .get(self.nodes[n].url(&format!("/v1/sessions/{id}/information")))
            .bearer_auth(device_token(sub))
            .send()
            .await
            .expect("request")
    }

    /// `POST /update` through node `n` as device `sub`.
    pub async fn update(&self, n: usize, id: &str, sub: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.nodes[n].url(&format!("/v1/sessions/{id}/update")))
            .bearer_auth(device_token(sub))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Approves with a full name, through node `n` as device `sub`.
    pub async fn approve(&self, n: usize, id: &str, sub: &str) -> reqwest::Response {
        self.update(
            n,
            id,
            sub,
            &json!({"decision": "approve", "shared_data": {"full_name": "Ada Lovelace"}}),
        )
        .await
    }

    /// `DELETE /v1/sessions/{id}` through node `n`.
    pub async fn cancel(&self, n: usize, id: &str) -> reqwest::Response {
        self.http
            .delete(self.nodes[n].url(&format!("/v1/sessions/{id}")))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .expect("request")
    }

    /// A backend `GET` through node `n`.
    pub async fn backend_get(&self, n: usize, path: &str) -> reqwest::Response {
        self.http
            .get(self.nodes[n].url(path))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .expect("request")
    }

    /// `GET /status` through node `n` with the session token, and a query.
    pub async fn status(&self, n: usize, id: &str, token: &str, query: &str) -> reqwest::Response {
        self.http
            .get(self.nodes[n].url(&format!("/v1/sessions/{id}/status{query}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// The session's owner as committed (`None` while it has none).
    pub async fn owner_of(&self, id: &str) -> Option<String> {
        self.db
            .session(id)
            .await
            .unwrap_or_else(|| panic!("session {id} is not in the store"))
            .owner
    }
}

impl Drop for Cluster {
    /// On a failed test, the end of every node's log: the place to start reading.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "---- node {} ({}), last log lines:\n{}",
                    node.id,
                    node.address,
                    node.log_tail(40)
                );
            }
            if let Some(dir) = self.dir.take() {
                eprintln!("---- the nodes' logs are kept in {}", dir.keep().display());
            }
        }
    }
}

/// Starts one node and waits for its `listening on` line (SPEC §6).
async fn start_node(
    id: &str,
    store: &str,
    nats: &str,
    options: &Options,
    dir: &std::path::Path,
) -> Node {
    try_start_node(id, store, nats, options, dir)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "node {id} did not start ({:?}); its stderr:\n{}",
                e.code, e.log
            )
        })
}

/// A node that ended (or hung) before it listened.
#[derive(Debug)]
pub struct NotStarted {
    /// Its exit code; `None` when it hung for a minute and was killed, or died by a signal.
    pub code: Option<i32>,
    /// Its whole stderr.
    pub log: String,
}

/// Starts one node and waits for its `listening on` line (SPEC §6); a node that ends
/// before it, or says nothing for a minute, is answered as [`NotStarted`].
pub async fn try_start_node(
    id: &str,
    store: &str,
    nats: &str,
    options: &Options,
    dir: &std::path::Path,
) -> Result<Node, NotStarted> {
    let log = dir.join(format!("node-{id}.log"));
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_idv-broker"));
    command
        .args(["--bind", "127.0.0.1:0", "--rate-limit", "0"])
        .args(["--store", store, "--nats", nats, "--node-id", id])
        .args(["--cluster-key", CLUSTER_KEY])
        .args(["--api-key", &format!("{API_KEY_NAME}={API_KEY}")])
        .args(["--issuer", &format!("{ISSUER}={ISSUER_SECRET}")]);
    if options.webhooks {
        command.args([
            "--webhook-secret",
            WEBHOOK_SECRET,
            "--webhook-allow-private",
        ]);
    }
    command.args(&options.extra);
    // Only what the test says: no IDVB_ variable of the caller's (IDVB_TEST_* included).
    for (name, _) in std::env::vars() {
        if name.starts_with("IDVB_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .env("RUST_LOG", options.rust_log.as_deref().unwrap_or("info"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("the broker binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        // It ended (a bad flag, an unreachable engine) or hangs: say why, from its log.
        let _ = child.start_kill();
        let code = child.wait().await.ok().and_then(|s| s.code());
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(NotStarted { code, log });
    }
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("node {id}: unexpected first line {line:?}"))
        .to_owned();
    Ok(Node {
        id: id.to_owned(),
        address,
        child,
        log,
    })
}

/// What `POST /v1/sessions` answered.
#[derive(Clone, Debug)]
pub struct Created {
    pub id: String,
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub body: Value,
}

impl From<Value> for Created {
    fn from(body: Value) -> Self {
        Created {
            id: body["session_id"].as_str().expect("session_id").to_owned(),
            token: body["session_token"]
                .as_str()
                .expect("session_token")
                .to_owned(),
            expires_at: time(&body["expires_at"]),
            body,
        }
    }
}

/// An RFC 3339 time from a JSON string.
pub fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a time: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// A device JWT from the trusted issuer, valid for 10 minutes.
pub fn device_token(sub: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": ISSUER, "sub": sub, "iat": now, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(ISSUER_SECRET.as_bytes()),
    )
    .expect("jwt")
}

/// Asserts a SPEC §5 error with `status` and `code`; answers the body.
pub async fn assert_error(res: reqwest::Response, status: u16, code: &str) -> Value {
    let got = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    body
}

/// Polls `check` every 100 ms until it answers `Some`, or panics with `what` after
/// `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a nats-server of the test's own on loopback `port`, with more `args` (a
/// config file, say) and `envs`, its stderr into `log` if given; waits until it listens.
/// Killed when the handle is dropped.
pub async fn nats_server(
    port: u16,
    args: &[&str],
    envs: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> tokio::process::Child {
    let binary = if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    };
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("the nats-server log")),
        None => Stdio::null(),
    };
    let child = tokio::process::Command::new(binary)
        .args(args)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server starts (scripts/services.sh installs it)");
    eventually(Duration::from_secs(10), "nats-server listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    child
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Asserts that every session's events are seq 1 to its seq, once each: none missing,
/// none committed twice (a late commit under an old owner would be one).
pub fn assert_events_gap_free(
    sessions: &std::collections::BTreeMap<String, StoredSession>,
    events: &std::collections::BTreeMap<String, Vec<(u64, String)>>,
) {
    for (id, s) in sessions {
        let seqs: Vec<u64> = events
            .get(id)
            .map(|e| e.iter().map(|(q, _)| *q).collect())
            .unwrap_or_default();
        assert_eq!(
            seqs,
            (1..=s.seq).collect::<Vec<_>>(),
            "session {id}: one event per seq, none missing, none twice"
        );
    }
}

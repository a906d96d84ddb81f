//! The PostgreSQL store, for several nodes over one database (SPEC §7).
//!
//! Layout:
//! - [`schema`]: the migrations runner over `migrations/postgres/*.sql`, safe when
//!   several nodes start at once.
//! - [`sessions`]: sessions, their events, idempotency keys, users, and the commit
//!   guard on ownership.
//! - [`files`]: uploaded files and the retention purge.
//! - [`outbox`]: the webhook outbox, dispatched by the session's owner only.
//! - `keys`: a session's data key (read, opened, shredded).
//! - `records`: record retention (one node at a time) and `rekey`.
//! - [`cluster`]: leases, claims and orphan adoption ([`ClusterStore`]).
//! - [`tls`]: TLS as the URL's `sslmode` and `sslrootcert` ask, with libpq's meanings.
//!
//! Every call runs on the dedicated `store-io` runtime whose handle is given to
//! [`PgStore::open`]: the connections' I/O tasks live there, so a call's future never
//! depends on which actix worker (each a single-threaded runtime of its own) awaits it,
//! nor on that worker staying alive. Callers await the spawned task's `JoinHandle`.
//!
//! Semantics are SQLite's ([`crate::store`]), with ownership on top: each session row
//! names the node that runs it (`owner_node`) and an `owner_epoch` that grows at every
//! change of owner. This node remembers the epoch it holds for each session it runs
//! (`held`), and every transition is guarded by `owner_node = me AND owner_epoch =
//! held`, so a node that lost a session (its lease lapsed and another adopted it)
//! cannot commit to it any more ([`StoreError::NotOwner`]).
//!
//! Custody (SPEC §7): purges delete files and NULL `registration` and `shared_data` in
//! the transaction of the transition, as on SQLite. The old row versions that still
//! hold those bytes are removed by a `VACUUM sessions, files` that the store runs
//! itself about [`SCRUB_DELAY`] after a commit that purged (purges within that window
//! share one); the tables carry aggressive autovacuum settings as well, as a backstop
//! when that VACUUM fails. What PostgreSQL's WAL and backups still hold is the
//! operator's to bound (docs/cluster.md).

mod cluster;
mod files;
mod keys;
mod outbox;
mod records;
mod schema;
mod sessions;
pub mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::at_rest::DataKeys;
use crate::ids::{FileId, Seq, SessionId, TokenHash, UserId};
use crate::model::{Decision, SessionEvent, SessionRecord, UserRecord, UserStatus};
use crate::session_store::{Claim, ClusterStore, SessionStore, StoreFuture};
use crate::store_api::RecordsDeleted;
use crate::store_api::{
    CreateOutcome, DeliveryRecord, DueEvents, IdempotencyClaim, NewSession, StoreError, StoredFile,
    WebhookCounts, WebhookRoute,
};
use crate::write::{NoteWrite, TransitionWrite};

/// How soon after a purge the personal-data tables are vacuumed; purges within this
/// window share one VACUUM (SPEC §2 allows 5 s for SQLite's files).
pub const SCRUB_DELAY: Duration = Duration::from_millis(1000);

/// How long a connection may sit inside a transaction without a statement before the
/// server ends it (PostgreSQL's `idle_in_transaction_session_timeout`).
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a statement waits for a row lock (`lock_timeout`).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one statement may run (`statement_timeout`); the migrations and the
/// scrubber's `VACUUM` lift it for themselves.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(4);

/// How long a new connection may take (an unreachable server fails the start).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default connections per node.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How a [`PgStore`] connects and who it is. Its `Debug` shows the URL redacted.
#[derive(Clone)]
pub struct PgConfig {
    /// `postgres://user@host/db` (or `postgresql://`).
    pub url: String,
    /// This node's id: the `owner_node` of the sessions it runs.
    pub node_id: String,
    /// Most connections this node opens.
    pub pool_size: usize,
    /// Where transitions enqueue webhook events; `None` (no signing secret): none are.
    pub webhooks: Option<WebhookRoute>,
    /// The broker's supervised tasks: the `VACUUM` after purges is one.
    pub tasks: crate::supervise::Tasks,
    /// The operator's data keys (`--data-key`): the person's fields are sealed under
    /// them (none: stored in clear).
    pub data_keys: Arc<DataKeys>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redacted(&self.url))
            .field("node_id", &self.node_id)
            .field("pool_size", &self.pool_size)
            // Not the webhook URL: it may carry a credential in its query.
            .finish_non_exhaustive()
    }
}

impl PgConfig {
    /// A configuration for `url` as node `node_id`, with the default pool and no webhooks.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node_id: node_id.into(),
            pool_size: DEFAULT_POOL_SIZE,
            webhooks: None,
            tasks: crate::supervise::Tasks::default(),
            data_keys: Arc::new(DataKeys::none()),
        }
    }
}

/// The PostgreSQL store. Share it as `Arc<PgStore>`, which coerces to both
/// `Arc<dyn SessionStore>` and `Arc<dyn ClusterStore>`.
pub struct PgStore {
    /// What every spawned call needs; cloned into each.
    shared: Arc<Shared>,
    /// The `store-io` runtime every call runs on.
    handle: Handle,
}

/// What the spawned calls share.
pub(crate) struct Shared {
    /// The connections (at most `PgConfig::pool_size`); closed by `close`.
    pool: Pool,
    /// This node's id: `owner_node` of the sessions it runs, its row in `nodes`.
    node_id: String,
    /// This process's incarnation of the node, random at each start: the lease is
    /// held by one incarnation, and every commit checks that it is this one's
    /// (fencing by process, SPEC §7).
    incarnation: String,
    /// The epoch this node holds for each session whose actor it runs: what the commit
    /// guard compares with the row's `owner_epoch`. Removed when a committed transition
    /// is terminal, on hand-over and when the actor stops running here.
    held: DashMap<SessionId, i64>,
    /// Where transitions enqueue webhook events; `None`: none are.
    webhooks: Option<Arc<WebhookRoute>>,
    /// Seals and opens the person's fields (read-only).
    data_keys: Arc<DataKeys>,
    /// Woken after a commit that enqueued a webhook event (or an adoption that moved
    /// some to this node). Keeps one permit when nobody waits.
    webhook_wake: Arc<Notify>,
    /// Woken after a commit that purged personal data: the scrubber vacuums soon.
    scrub: Notify,
    /// Set by `close`: the scrubber stops.
    closed: AtomicBool,
    /// Session loads so far (tests read it). Relaxed: a counter.
    session_reads: AtomicU64,
    /// Token lookups so far. Relaxed: a counter.
    token_lookups: AtomicU64,
}

impl From<tokio_postgres::Error> for StoreError {
    /// A database that cannot be reached, or that gave up on a statement (a lock or
    /// statement timeout, a server shutting down) is [`StoreError::Unavailable`]: the
    /// request is answered `503` and may be tried again (SPEC §7). Anything else is a
    /// fault of this broker's SQL or data, a `500`.
    fn from(e: tokio_postgres::Error) -> Self {
        if transient(&e) {
            StoreError::Unavailable(Arc::new(e))
        } else {
            StoreError::Postgres(Arc::new(e))
        }
    }
}

/// Whether a PostgreSQL error says "not now" rather than "never".
fn transient(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 08: connection exception; 57P01-03: the server is shutting down or starting;
        // 57014: a statement timeout; 55P03: a lock timeout; 25P03: idle in a
        // transaction too long; 53: out of resources; 40001/40P01: retry the transaction.
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "57014" | "55P03" | "25P03" | "40001" | "40P01"
            );
    }
    if e.is_closed() {
        return true;
    }
    // The connection's own failures (refused, reset, TLS, a connect timeout) carry an
    // I/O error or say so; a row that does not decode does neither.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        source = s.source();
    }
    let text = e.to_string();
    text.contains("connect") || text.contains("timeout") || text.contains("timed out")
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::{PoolError, TimeoutType};
        match e {
            PoolError::Closed => StoreError::Closed,
            // Every connection is busy for longer than callers wait: refuse, not queue.
            PoolError::Timeout(TimeoutType::Wait) => StoreError::Busy,
            PoolError::Backend(e) => e.into(),
            // No new connection could be made in time, or a hook failed: the server is
            // not reachable now.
            e => StoreError::Unavailable(Arc::new(e)),
        }
    }
}

/// The database's clock in unix milliseconds, as SQL: leases are measured by it alone.
pub(crate) const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// SQL: node `$node` holds a valid lease in incarnation `$incarnation` (by the
/// database's clock). Every commit of a session's transition, every adoption and claim,
/// and every webhook outcome is guarded by it: a process whose lease lapsed, or that
/// another process with the same `--node-id` replaced, commits nothing.
pub(crate) fn lease_held(node: &str, incarnation: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM nodes WHERE node_id = {node} AND incarnation = {incarnation} \
         AND lease_until > {DB_NOW})"
    )
}

/// Runs `sql` (prepared once per connection) with `params`.
pub(crate) async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

/// Runs `sql` and answers its one row, if any.
pub(crate) async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

/// Runs `sql` and answers how many rows it touched.
pub(crate) async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

/// Unix milliseconds as stored.
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    crate::store_api::ms(t)
}

/// A stored time back.
pub(crate) fn time(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    crate::store_api::time(ms)
}

/// A count as `LIMIT` takes it.
pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Connects to `config.url`, applies the migrations (serialised across nodes by an
    /// advisory lock) and starts the scrubber, all on `handle` (the `store-io` runtime).
    /// Fails if the server cannot be reached or its schema is unusable.
    pub async fn open(config: PgConfig, handle: Handle) -> Result<Arc<PgStore>, StoreError> {
        // tokio-postgres's messages name the option, not the URL; redacted all the same,
        // since a URL that does not parse may put its password anywhere.
        let bad_url = |e: &dyn std::fmt::Display| {
            StoreError::Schema(format!(
                "bad PostgreSQL URL: {}",
                crate::redact::redact_url(&e.to_string())
            ))
        };
        let (url, tls) = tls::split_url(&config.url).map_err(|e| bad_url(&e))?;
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e| bad_url(&e))?;
        let tls = tls.apply(&mut pg).map_err(StoreError::Schema)?;
        pg.connect_timeout(CONNECT_TIMEOUT);
        // Shorter than a lease (5 s): a node frozen inside a transaction (SIGSTOP, a
        // stall) loses its connection, and with it its row locks, before its lease
        // lapses, so the node that adopts its sessions never waits behind it; a claim
        // stuck behind a lock gives up and is answered `503`, not held.
        let timeouts = format!(
            "-c idle_in_transaction_session_timeout={} -c lock_timeout={} -c statement_timeout={}",
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis(),
            LOCK_TIMEOUT.as_millis(),
            STATEMENT_TIMEOUT.as_millis(),
        );
        let options = match pg.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {timeouts}"),
            _ => timeouts,
        };
        pg.options(&options);
        if pg.get_application_name().is_none() {
            pg.application_name(format!("idv-broker {}", config.node_id));
        }
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Schema(format!("connection pool: {e}")))?;
        let shared = Arc::new(Shared {
            pool,
            node_id: config.node_id,
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            held: DashMap::new(),
            webhooks: config.webhooks.clone().map(Arc::new),
            data_keys: config.data_keys.clone(),
            webhook_wake: Arc::new(Notify::new()),
            scrub: Notify::new(),
            closed: AtomicBool::new(false),
            session_reads: AtomicU64::new(0),
            token_lookups: AtomicU64::new(0),
        });
        let migrating = shared.clone();
        handle
            .spawn(async move { schema::migrate(&migrating.pool).await })
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(with_causes)?;
        let scrubbing = shared.clone();
        handle.spawn(crate::supervise::run_loop(
            config.tasks.clone(),
            crate::supervise::Task::Vacuum,
            move |life| scrubber(scrubbing.clone(), life),
        ));
        Ok(Arc::new(PgStore { shared, handle }))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Runs `f` on the `store-io` runtime and answers its result.
    fn run<T, F, Fut>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let task = self.handle.spawn(f(self.shared.clone()));
        // A panicked call is a bug, told apart from a store that is closing (which the
        // loops read as a shutdown).
        Box::pin(async move {
            task.await.map_err(|e| {
                if e.is_panic() {
                    tracing::error!("a store call panicked (a bug); answered as an error");
                    StoreError::Panicked
                } else {
                    StoreError::Closed
                }
            })?
        })
    }
}

/// A failure to connect or migrate at start, with its causes on one line: tokio-postgres
/// says only "db error" or "error performing TLS handshake", and what the operator needs
/// ("password authentication failed", "invalid peer certificate: UnknownIssuer") is in
/// the sources. Only here: later errors can quote a row in their DETAIL, and those are
/// logged without it.
fn with_causes(e: StoreError) -> StoreError {
    match e {
        StoreError::Postgres(inner) => {
            let mut text = inner.to_string();
            let mut source = inner.source();
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            let line = crate::redact::redact_url(&text.replace('\n', "; "));
            StoreError::Postgres(Arc::new(std::io::Error::other(line)))
        }
        other => other,
    }
}

/// `url` without its password, for messages and logs.
pub fn redacted(url: &str) -> String {
    crate::redact::redact_url(url)
}

/// Creates a new, empty database `name` on the server of `server_url` (whose own
/// database is only used to connect) and answers the URL of the new one. For tests and
/// trial clusters: each gets a database of its own on one throw-away server.
pub async fn create_database(server_url: &str, name: &str) -> Result<String, StoreError> {
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(StoreError::Schema(format!("bad database name {name:?}")));
    }
    let mut url = url::Url::parse(server_url)
        .map_err(|e| StoreError::Schema(format!("bad PostgreSQL URL: {e}")))?;
    let (client, connection) = tokio_postgres::connect(server_url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let created = client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await;
    drop(client);
    let _ = connection.await;
    created?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

impl Shared {
    /// A pooled connection.
    pub(crate) async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Personal data was deleted or NULLed in a committed transaction: vacuum soon.
    pub(crate) fn purged(&self) {
        self.scrub.notify_one();
    }
}

/// Vacuums the tables that hold personal data [`SCRUB_DELAY`] after a purge, so the
/// dead row versions holding the purged bytes are removed (not left for autovacuum's
/// own schedule). Ends when the store is closed.
async fn scrubber(shared: Arc<Shared>, life: crate::supervise::Lifeline) {
    loop {
        shared.scrub.notified().await;
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        life.round();
        tokio::time::sleep(SCRUB_DELAY).await;
        let done = async {
            let conn = shared.conn().await?;
            // A VACUUM of a large table runs past the statement timeout every other
            // statement has: lifted for it, and put back on the pooled connection.
            conn.batch_execute("SET statement_timeout = 0").await?;
            let vacuumed = conn.batch_execute("VACUUM sessions, files").await;
            conn.batch_execute("RESET statement_timeout").await?;
            vacuumed?;
            Ok::<_, StoreError>(())
        }
        .await;
        match done {
            Ok(()) => {}
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::error!(error = %e, "VACUUM after a purge failed; retrying");
                shared.scrub.notify_one();
            }
        }
    }
}

impl SessionStore for PgStore {
    fn create_session(
        &self,
        new: NewSession,
        claim: Option<IdempotencyClaim>,
    ) -> StoreFuture<'_, CreateOutcome> {
        self.run(move |s| async move { s.create_session(new, claim).await })
    }

    fn commit_transition(&self, write: TransitionWrite) -> StoreFuture<'_, SessionRecord> {
        self.run(move |s| async move {
            let mut out = s.commit_transitions(vec![write]).await?;
            out.pop()
                .ok_or_else(|| StoreError::Corrupt("no committed row".into()))
        })
    }

    fn commit_note(&self, write: NoteWrite) -> StoreFuture<'_, SessionRecord> {
        self.run(move |s| async move { s.commit_note(write).await })
    }

    fn commit_transitions(
        &self,
        writes: Vec<TransitionWrite>,
    ) -> StoreFuture<'_, Vec<SessionRecord>> {
        self.run(move |s| async move { s.commit_transitions(writes).await })
    }

    fn overdue_live(&self, now: DateTime<Utc>, limit: usize) -> StoreFuture<'_, Vec<SessionId>> {
        self.run(move |s| async move { s.overdue_live(now, limit).await })
    }

    fn load_session(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>> {
        self.shared.session_reads.fetch_add(1, Ordering::Relaxed);
        self.run(move |s| async move {
            let conn = s.conn().await?;
            sessions::load_session(&conn, &s.data_keys, id).await
        })
    }

    fn load_live_sessions(&self) -> StoreFuture<'_, Vec<SessionRecord>> {
        self.run(move |s| async move { s.load_live_sessions().await })
    }

    fn load_decision(&self, id: SessionId) -> StoreFuture<'_, Option<Decision>> {
        self.run(move |s| async move { s.load_decision(id).await })
    }

    fn events_after(&self, id: SessionId, after: Seq) -> StoreFuture<'_, Vec<SessionEvent>> {
        self.run(move |s| async move { s.events_after(id, after).await })
    }

    fn token_in_use(&self, hash: TokenHash, claims: Option<SessionId>) -> StoreFuture<'_, bool> {
        self.shared.token_lookups.fetch_add(1, Ordering::Relaxed);
        self.run(move |s| async move { s.token_in_use(hash, claims).await })
    }

    fn load_file(&self, id: SessionId, file_id: FileId) -> StoreFuture<'_, Option<StoredFile>> {
        self.run(move |s| async move { s.load_file(id, file_id).await })
    }

    fn webhook_counts(&self, id: SessionId) -> StoreFuture<'_, WebhookCounts> {
        self.run(move |s| async move { s.webhook_counts(id).await })
    }

    fn user(&self, owner: String, user: UserId) -> StoreFuture<'_, Option<UserRecord>> {
        self.run(move |s| async move {
            let conn = s.conn().await?;
            sessions::read_user(&conn, &owner, &user).await
        })
    }

    fn set_user_status(
        &self,
        owner: String,
        user: UserId,
        status: UserStatus,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, UserRecord> {
        self.run(move |s| async move { s.set_user_status(owner, user, status, at).await })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.run(move |s| async move {
            let conn = s.conn().await?;
            query(&conn, "SELECT 1 FROM schema_migrations LIMIT 1", &[]).await?;
            Ok(())
        })
    }

    fn claim(&self, id: SessionId) -> StoreFuture<'_, Claim> {
        // A lookup's one read of the session.
        self.shared.session_reads.fetch_add(1, Ordering::Relaxed);
        self.run(move |s| async move { s.claim(id).await })
    }

    fn due_webhooks(&self, now: DateTime<Utc>, limit: usize) -> StoreFuture<'_, DueEvents> {
        self.run(move |s| async move { s.due_webhooks(now, limit).await })
    }

    fn record_delivery(
        &self,
        session_id: SessionId,
        seq: Seq,
        attempted_at: DateTime<Utc>,
        outcome: DeliveryRecord,
    ) -> StoreFuture<'_, ()> {
        self.run(move |s| async move {
            s.record_delivery(session_id, seq, attempted_at, outcome)
                .await
        })
    }

    fn pending_webhooks(&self) -> StoreFuture<'_, u64> {
        self.run(move |s| async move { s.pending_webhooks().await })
    }

    fn webhook_wake(&self) -> Arc<Notify> {
        self.shared.webhook_wake.clone()
    }

    fn purge_retained(&self, cutoff: DateTime<Utc>, now: DateTime<Utc>) -> StoreFuture<'_, usize> {
        self.run(move |s| async move { s.purge_retained(cutoff, now).await })
    }

    fn purge_idempotency_keys(&self, now: DateTime<Utc>, limit: usize) -> StoreFuture<'_, usize> {
        self.run(move |s| async move { s.purge_idempotency_keys(now, limit).await })
    }

    fn delete_ended_records(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> StoreFuture<'_, RecordsDeleted> {
        self.run(move |s| async move { s.delete_ended_records(cutoff, limit).await })
    }

    fn data_key_ids(&self) -> StoreFuture<'_, Vec<String>> {
        self.run(move |s| async move { s.data_key_ids().await })
    }

    fn session_reads(&self) -> u64 {
        self.shared.session_reads.load(Ordering::Relaxed)
    }

    fn token_lookups(&self) -> u64 {
        self.shared.token_lookups.load(Ordering::Relaxed)
    }

    fn close(&self) {
        // Every commit answered is already durable (synchronous_commit on): closing
        // only stops new work. The scrubber is told so it does not wait forever.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.scrub.notify_one();
        self.shared.pool.close();
    }
}

impl ClusterStore for PgStore {
    fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    fn register_node(&self, ttl: Duration) -> StoreFuture<'_, bool> {
        self.run(move |s| async move { s.register_node(ttl).await })
    }

    fn renew_lease(&self, ttl: Duration) -> StoreFuture<'_, bool> {
        self.run(move |s| async move { s.renew_lease(ttl).await })
    }

    fn adopt_orphans(&self, limit: usize) -> StoreFuture<'_, Vec<SessionRecord>> {
        self.run(move |s| async move { s.adopt_orphans(limit).await })
    }

    fn release_node(&self) -> StoreFuture<'_, ()> {
        self.run(move |s| async move { s.release_node().await })
    }

    fn live_nodes(&self) -> StoreFuture<'_, Vec<String>> {
        self.run(move |s| async move { s.live_nodes().await })
    }

    fn seqs(&self, ids: Vec<SessionId>) -> StoreFuture<'_, Vec<(SessionId, Seq)>> {
        self.run(move |s| async move { s.seqs(&ids).await })
    }

    fn held_epoch(&self, id: SessionId) -> Option<i64> {
        self.shared.held.get(&id).map(|e| *e)
    }

    fn forget_held(&self, id: SessionId, epoch: i64) {
        self.shared.held.remove_if(&id, |_, held| *held == epoch);
    }
}

#[cfg(test)]
mod tests;

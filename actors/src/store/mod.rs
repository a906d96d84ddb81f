//! The SQLite store: one group-committing writer thread, a pool of reader threads.
//!
//! Layout:
//! - [`writer`]: the writer thread and its group commit.
//! - [`readers`]: the reader threads.
//! - [`schema`]: the migrations runner over `migrations/*.sql`.
//! - [`sessions`]: the SQL for sessions, their events, idempotency keys and users.
//! - [`files`]: the SQL for uploaded files and the retention purge.
//! - [`outbox`]: the SQL for the webhook outbox.
//! - `keys`: the SQL of a session's data key (read, opened, shredded).
//! - `records`: the SQL of record retention and of `rekey` (sealed data keys).
//!
//! The rest of the broker sees only [`Store`]'s async methods, which are the
//! whole interface a second backend (Postgres) would have to provide.

mod files;
mod keys;
pub(crate) mod outbox;
mod readers;
pub(crate) mod records;
mod schema;
mod sessions;
pub(crate) mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

pub use records::rekey;
// The vocabulary both engines share, under the names the rest of the broker has used.
pub(crate) use crate::store_api::{ms, time};
pub use crate::store_api::{
    CreateOutcome, DeliveryRecord, DueEvents, IdempotencyClaim, NewSession, OutboxEvent,
    RecordsDeleted, StoreError, StoredFile, WebhookCounts, WebhookRoute, IDEMPOTENCY_WINDOW,
    PURGE_BATCH, STATUS_CHANGED,
};

use crate::supervise::{self, Task, Tasks};
use writer::{Effects, FnJob, Job, Reply};

use crate::at_rest::DataKeys;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}

/// Most jobs queued for the writer, and for the readers, before new ones are refused
/// with [`StoreError::Busy`] rather than queued without bound.
pub const QUEUE_BOUND: usize = 65_536;

fn queue_error<T>(e: crossbeam_channel::TrySendError<T>) -> StoreError {
    match e {
        crossbeam_channel::TrySendError::Full(_) => StoreError::Busy,
        crossbeam_channel::TrySendError::Disconnected(_) => StoreError::Closed,
    }
}

/// How long a connection waits on a lock held by another before SQLITE_BUSY.
pub(crate) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Tuning of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The database file; its folder is created.
    pub path: PathBuf,
    /// How many reader threads (each with its own connection).
    pub readers: usize,
    /// Where transitions enqueue webhook events; `None` (no signing secret): none are.
    pub webhooks: Option<WebhookRoute>,
    /// The broker's supervised tasks: the writer and reader threads are among them.
    pub tasks: Tasks,
    /// The operator's data keys (`--data-key`): the person's fields are sealed under
    /// them (none: stored in clear).
    pub data_keys: Arc<DataKeys>,
}

impl StoreConfig {
    /// A store at `path` with the default number of readers.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            readers: 2,
            webhooks: None,
            tasks: Tasks::default(),
            data_keys: Arc::new(DataKeys::none()),
        }
    }
}

/// A handle to the store; cheap to clone, shared by every actor and handler.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Jobs for the writer thread; `None` once closed. A `Mutex` only so that
    /// `close` can drop it; senders are cloned out, never held across a send.
    writer: Mutex<Option<Sender<Box<dyn Job>>>>,
    readers: Mutex<Option<Sender<readers::ReadJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Handed to every write job, so that `apply_transition` can enqueue webhooks.
    webhooks: Option<Arc<WebhookRoute>>,
    /// Seals and opens the person's fields (shared with every job; read-only).
    data_keys: Arc<DataKeys>,
    /// Woken after a commit that enqueued a webhook event. `Notify` keeps one permit
    /// when nobody waits, so a wake-up between two dispatcher scans is not lost.
    webhook_wake: Arc<tokio::sync::Notify>,
    /// Session loads so far: what a request for a session costs the store (tests check
    /// that probes of live sessions cost none). Relaxed: a counter.
    session_reads: AtomicU64,
    /// Token lookups so far (one indexed read each). Relaxed: a counter.
    token_lookups: AtomicU64,
}

/// Opens a connection with the pragmas every connection of the broker uses.
fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // secure_delete: freed pages and cells are zeroed, so deleted personal data
    // does not linger in the database file (SPEC §2).
    conn.execute_batch("PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON;")?;
    if !read_only {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Schema(format!(
                "could not enable WAL (got {mode})"
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL;")?;
        // The writer's page cache: 16 MiB rather than SQLite's 2 MB, so that a batch of
        // inserts finds the index pages it touches in memory instead of reading them
        // back from the file (the profile of a create run showed `readDbPage` under
        // every index lookup). Measured side by side: creates 16.1k/s → 21.2k/s; 64 MiB
        // did no better and costs the memory per idle session its 2 KiB budget.
        conn.execute_batch("PRAGMA cache_size = -16384;")?;
    }
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the database, applies migrations, empties the WAL
    /// (what a crash left there, deleted data included, goes into the database file
    /// or away) and starts the threads.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Schema(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn = open_connection(&config.path, false)?;
        schema::migrate(&mut conn)?;
        writer::checkpoint_at_open(&conn, BUSY_TIMEOUT)?;

        let (wtx, wrx) = crossbeam_channel::bounded::<Box<dyn Job>>(QUEUE_BOUND);
        let mut threads = Vec::new();
        threads.push(
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn({
                    let tasks = config.tasks.clone();
                    let mut conn = conn;
                    move || {
                        let mut runs = 0;
                        supervise::run_blocking(&tasks, Task::StoreWriter, |life| {
                            runs += 1;
                            writer::run(&mut conn, &wrx, &life, runs > 1)
                        })
                    }
                })
                .map_err(|e| StoreError::Schema(format!("cannot start the writer: {e}")))?,
        );
        let (rtx, rrx) = crossbeam_channel::bounded::<readers::ReadJob>(QUEUE_BOUND);
        for i in 0..config.readers.max(1) {
            let conn = open_connection(&config.path, true)?;
            let rrx = rrx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("store-reader-{i}"))
                    .spawn({
                        let tasks = config.tasks.clone();
                        move || {
                            supervise::run_blocking(&tasks, Task::StoreReader, |life| {
                                readers::run(&conn, &rrx, &life)
                            })
                        }
                    })
                    .map_err(|e| StoreError::Schema(format!("cannot start a reader: {e}")))?,
            );
        }
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Mutex::new(Some(wtx)),
                readers: Mutex::new(Some(rtx)),
                threads: Mutex::new(threads),
                webhooks: config.webhooks.clone().map(Arc::new),
                data_keys: config.data_keys.clone(),
                webhook_wake: Arc::new(tokio::sync::Notify::new()),
                session_reads: AtomicU64::new(0),
                token_lookups: AtomicU64::new(0),
            }),
        })
    }

    /// The operator's data keys this store seals and opens with.
    pub(crate) fn data_keys(&self) -> Arc<DataKeys> {
        self.inner.data_keys.clone()
    }

    /// How many session loads the store has been asked for.
    pub fn session_reads(&self) -> u64 {
        self.inner.session_reads.load(Ordering::Relaxed)
    }

    /// How many token lookups the store has been asked for.
    pub fn token_lookups(&self) -> u64 {
        self.inner.token_lookups.load(Ordering::Relaxed)
    }

    fn count_session_read(&self) {
        self.inner.session_reads.fetch_add(1, Ordering::Relaxed);
    }

    fn count_token_lookup(&self) {
        self.inner.token_lookups.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `f` in the next group-committed transaction and answers once it is durable.
    /// If `f` enqueued a webhook event, the dispatcher is woken after the commit.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection, &mut Effects) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(f, false).await
    }

    /// [`Store::write`], and if `stamped`, the time the write spent in each of the
    /// writer's stages recorded ([`crate::metrics::Stage`]: a transition's).
    pub(crate) async fn write_then<T, F>(&self, mut f: F, stamped: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection, &mut Effects) -> Result<T, StoreError> + Send + 'static,
    {
        let webhooks = self.inner.webhooks.clone();
        let job = move |conn: &Connection, fx: &mut Effects| {
            fx.webhooks = webhooks.clone();
            let out = f(conn, fx)?;
            Ok((out, fx.webhook_enqueued))
        };
        let (out, enqueued) = if stamped {
            let (tx, rx) = oneshot::channel();
            self.send_job(Box::new(FnJob::with_reply(job, Reply::Stamped(tx))))?;
            let (out, stamps) = rx.await.map_err(|_| StoreError::Panicked)?;
            stamps.record();
            out?
        } else {
            self.write_job(job).await?
        };
        if enqueued {
            crate::metrics::outbox_moved(1.0);
            self.inner.webhook_wake.notify_one();
        }
        Ok(out)
    }

    /// Notified after every committed write that enqueued a webhook event: the
    /// dispatcher's wake-up.
    pub fn webhook_wake(&self) -> Arc<tokio::sync::Notify> {
        self.inner.webhook_wake.clone()
    }

    async fn write_job<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection, &mut Effects) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send_job(Box::new(FnJob::new(f, tx)))?;
        // Jobs queued when the store closes are still run: a reply dropped unsent is a
        // writer that died with the job (and was restarted without it).
        rx.await.map_err(|_| StoreError::Panicked)?
    }

    fn send_job(&self, job: Box<dyn Job>) -> Result<(), StoreError> {
        let sender = self
            .inner
            .writer
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone();
        let sender = sender.ok_or(StoreError::Closed)?;
        sender.try_send(job).map_err(queue_error)
    }

    /// Runs `f` on a reader connection.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let sender = self
            .inner
            .readers
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone();
        let sender = sender.ok_or(StoreError::Closed)?;
        sender
            .try_send(Box::new(move |conn: &Connection| {
                // A panicking read is answered, not left to kill the reader thread.
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                    .unwrap_or_else(|_| {
                        tracing::error!("a store read panicked (a bug); answered as an error");
                        Err(StoreError::Panicked)
                    });
                let _ = tx.send(out);
            }))
            .map_err(queue_error)?;
        rx.await.map_err(|_| StoreError::Panicked)?
    }

    /// Whether the database answers a query on a reader and the writer commits
    /// (readiness): an empty job through the writer's own batch, so a writer that
    /// stopped answering makes the broker not ready. It writes nothing, so it costs
    /// no fsync.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| Ok(c.query_row("SELECT count(*) FROM schema_migrations", [], |_| Ok(()))?))
            .await?;
        self.write_job(|c, _| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    /// Stops taking work, lets the writer commit what is queued, checkpoints the WAL
    /// into the database file and joins the threads. Blocking: call it off the runtime.
    pub fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        if let Ok(mut r) = self.inner.readers.lock() {
            r.take();
        }
        let threads = match self.inner.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

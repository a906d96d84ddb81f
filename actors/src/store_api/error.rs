//! Why a store, whichever engine, could not do what was asked.

use std::sync::Arc;

/// Why the store could not do what was asked.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (disk, corruption, a broken schema…).
    #[error("sqlite: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    /// A transition was written against a seq that is no longer current: another
    /// writer moved the session first.
    #[error("the session changed underneath this write")]
    Stale,
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
    /// A job panicked (a bug): it was rolled back alone, and the store works on. Told
    /// apart from [`StoreError::Closed`], which the loops read as a shutdown.
    #[error("a store job panicked")]
    Panicked,
    /// More work is queued than the store takes (`QUEUE_BOUND`): refused, not queued.
    #[error("the store is overloaded")]
    Busy,
    /// The database's schema is not one this broker can use.
    #[error("schema: {0}")]
    Schema(String),
    /// A row held something this broker cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// PostgreSQL (or its connection pool) refused or could not be reached.
    #[error("postgres: {0}")]
    Postgres(Arc<dyn std::error::Error + Send + Sync>),
    /// This node no longer owns the session (another node took it over after this
    /// node's lease lapsed, or this node handed it over): the write is refused.
    #[error("the session is owned by another node")]
    NotOwner,
    /// This process holds no valid lease (it lapsed, or another process with this
    /// node id holds it): it takes and commits nothing until it holds one again.
    #[error("this node holds no valid lease")]
    NoLease,
    /// The database cannot be reached, or gave up on a statement (a lock or statement
    /// timeout): the request may be tried again (`503`).
    #[error("the database is unavailable: {0}")]
    Unavailable(Arc<dyn std::error::Error + Send + Sync>),
    /// The WAL could not be checkpointed at open (another process keeps it busy), so
    /// data deleted before a crash could still be in it.
    #[error("the write-ahead log could not be checkpointed: another connection keeps it busy")]
    Unscrubbed,
}

//! A small pool of reader threads, each with its own read-only connection.
//!
//! WAL lets readers run beside the writer; running them on their own threads
//! keeps SQLite's blocking calls off the async runtime.

use crossbeam_channel::Receiver;
use rusqlite::Connection;

/// A read to run on some reader's connection.
pub(crate) type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Runs reads until every sender is dropped.
pub(crate) fn run(conn: Connection, jobs: Receiver<ReadJob>) {
    while let Ok(job) = jobs.recv() {
        job(&conn);
    }
}

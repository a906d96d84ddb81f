//! A small pool of reader threads, each with its own read-only connection.
//!
//! WAL lets readers run beside the writer; running them on their own threads
//! keeps SQLite's blocking calls off the async runtime.

use crossbeam_channel::Receiver;
use rusqlite::Connection;

use crate::supervise::Lifeline;

/// A read to run on some reader's connection.
pub(crate) type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Runs reads until every sender is dropped. Each read contains its own panic
/// ([`Store::read`](super::Store::read)); this runs under supervision all the same.
pub(crate) fn run(conn: &Connection, jobs: &Receiver<ReadJob>, life: &Lifeline) {
    while let Ok(job) = jobs.recv() {
        job(conn);
        life.round();
    }
}

//! The one writer thread, which group-commits.
//!
//! Every write in the broker is a [`Job`] sent here. The thread blocks for the
//! first job, then drains whatever else is already queued (up to
//! [`MAX_BATCH`]) into the same transaction: one fsync for the whole batch,
//! then every caller is answered. Under load the batch grows by itself, so
//! throughput is bounded by fsyncs per second times batch size, not by one
//! fsync per transition. Each job runs inside its own savepoint, so one job's
//! error rolls back that job alone.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::StoreError;

/// Most jobs committed in one transaction; bounds the latency a batch adds.
pub(crate) const MAX_BATCH: usize = 1024;

/// How soon after personal data was deleted the WAL is checkpointed and truncated,
/// so that the old frames holding it leave the disk (SPEC §2 allows 5 s). Purges
/// within this window share one checkpoint.
const SCRUB_DELAY: Duration = Duration::from_millis(500);

/// What a job tells the writer besides its result, and the context it runs in.
#[derive(Default)]
pub(crate) struct Effects {
    /// Personal data was deleted: checkpoint the WAL soon.
    pub scrub: bool,
    /// Where transitions enqueue webhook events; `None`: the broker sends none. Set by
    /// [`Store::write`](super::Store::write) before the job runs.
    pub webhooks: Option<std::sync::Arc<super::outbox::WebhookRoute>>,
    /// The job enqueued a webhook event: wake the dispatcher once it is committed.
    pub webhook_enqueued: bool,
}

/// A unit of work for the writer thread.
pub(crate) trait Job: Send {
    /// Runs the job's statements inside the batch transaction.
    fn run(&mut self, conn: &Connection, fx: &mut Effects) -> bool;
    /// Answers the caller once the batch committed (or failed to).
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

/// A job built from a closure, answered over a oneshot channel.
pub(crate) struct FnJob<T, F> {
    f: Option<F>,
    out: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> FnJob<T, F> {
    pub(crate) fn new(f: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self {
            f: Some(f),
            out: None,
            reply,
        }
    }
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send,
    F: FnOnce(&Connection, &mut Effects) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, fx: &mut Effects) -> bool {
        let out = match self.f.take() {
            Some(f) => f(conn, fx),
            None => Err(StoreError::Closed),
        };
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let out = match (commit, self.out) {
            (Ok(()), Some(out)) => out,
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::Closed),
        };
        // The caller may have gone away (a dropped request); the write stands regardless.
        let _ = self.reply.send(out);
    }
}

/// Runs the writer loop until every sender is dropped, then checkpoints and returns.
pub(crate) fn run(mut conn: Connection, jobs: Receiver<Box<dyn Job>>) {
    let mut scrub_due: Option<Instant> = None;
    loop {
        let first = match scrub_due {
            Some(due) => match jobs.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            },
        };
        if let Some(first) = first {
            let mut batch = Vec::with_capacity(16);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut fx = Effects::default();
            let began = Instant::now();
            let commit = commit_batch(&mut conn, &mut batch, &mut fx);
            crate::metrics::store_commit(batch.len(), began.elapsed());
            if let Err(e) = &commit {
                tracing::error!(error = %e, jobs = batch.len(), "store batch failed to commit");
            }
            for job in batch {
                job.finish(commit.clone());
            }
            if fx.scrub && scrub_due.is_none() {
                scrub_due = Some(Instant::now() + SCRUB_DELAY);
            }
        }
        if scrub_due.is_some_and(|due| Instant::now() >= due) {
            scrub_due = match checkpoint(&conn) {
                Ok(true) => None,
                Ok(false) => Some(Instant::now() + SCRUB_DELAY),
                Err(e) => {
                    tracing::error!(error = %e, "WAL checkpoint failed");
                    Some(Instant::now() + SCRUB_DELAY)
                }
            };
        }
    }
    // Flush on close: everything lands in the main database file and the WAL is emptied.
    if let Err(e) = checkpoint(&conn) {
        tracing::error!(error = %e, "final WAL checkpoint failed");
    }
}

fn commit_batch(
    conn: &mut Connection,
    batch: &mut [Box<dyn Job>],
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Each job in a savepoint of its own, through cached statements: rusqlite's
    // `Savepoint` parses its SAVEPOINT and RELEASE anew for every job (`sqlite3Prepare`
    // under them was about 5% of the writer's time in the profile of a create run).
    for job in batch.iter_mut() {
        tx.prepare_cached("SAVEPOINT job")?.execute([])?;
        let mut job_fx = Effects::default();
        if job.run(&tx, &mut job_fx) {
            fx.scrub |= job_fx.scrub;
        } else {
            // A failed job rolls back alone; the other jobs stand.
            tx.prepare_cached("ROLLBACK TO job")?.execute([])?;
        }
        tx.prepare_cached("RELEASE job")?.execute([])?;
    }
    tx.commit()?;
    Ok(())
}

/// Copies the WAL into the database and truncates it to zero bytes, so frames that
/// held deleted data are gone from disk. Returns `false` if a reader kept it busy.
pub(crate) fn checkpoint(conn: &Connection) -> Result<bool, StoreError> {
    // Every write waits behind the checkpoint on this thread, so it must not sit out the
    // connection's 5 s busy timeout on a reader: give up quickly and try again later.
    conn.busy_timeout(CHECKPOINT_BUSY_TIMEOUT)?;
    let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    conn.busy_timeout(super::BUSY_TIMEOUT)?;
    Ok(result? == 0)
}

/// How long a checkpoint waits for readers before it is retried later.
const CHECKPOINT_BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// Checkpoints the WAL into the database and truncates it, before the broker serves
/// anything. A purge is scrubbed from the WAL by a checkpoint that the writer only
/// schedules in memory ([`SCRUB_DELAY`]): after a crash the old frames holding the
/// deleted data are still in the `-wal` file, so they are cleared here (SPEC §2).
/// Retries while another connection keeps the WAL busy, for up to `wait`; a checkpoint
/// that cannot complete is an error, and the broker does not start.
pub(crate) fn checkpoint_at_open(conn: &Connection, wait: Duration) -> Result<(), StoreError> {
    let deadline = Instant::now() + wait;
    loop {
        if checkpoint(conn)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Unscrubbed);
        }
        std::thread::sleep(CHECKPOINT_BUSY_TIMEOUT);
    }
}

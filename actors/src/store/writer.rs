//! The one writer thread, which group-commits.
//!
//! Every write in the broker is a [`Job`] sent here. The thread blocks for the
//! first job, then drains whatever else is already queued (up to
//! [`MAX_BATCH`]) into the same transaction: one fsync for the whole batch,
//! then every caller is answered. Under load the batch grows by itself, so
//! throughput is bounded by fsyncs per second times batch size, not by one
//! fsync per transition. One job's error rolls back that job alone: a batch first
//! runs its jobs back to back, and only if one fails is it rolled back and run again
//! with each job in a savepoint of its own ([`commit_batch`]).

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::StoreError;
use crate::supervise::Lifeline;

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
    pub webhooks: Option<std::sync::Arc<super::WebhookRoute>>,
    /// The job enqueued a webhook event: wake the dispatcher once it is committed.
    pub webhook_enqueued: bool,
    /// When the batch's statements were done, just before its `COMMIT` (set by
    /// [`commit_batch`]; the stages of a transition, [`Stamps`]).
    pub(crate) ran: Option<Instant>,
}

/// When a job passed each point of the writer: the stages of a transition
/// ([`crate::metrics::Stage`]). Plain instants, copied; nothing is allocated for them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamps {
    /// Sent to the writer's queue.
    pub queued: Instant,
    /// Its batch taken off the queue.
    pub picked: Instant,
    /// Its batch's statements done, before `COMMIT`.
    pub ran: Instant,
    /// Its batch's `COMMIT` returned (synced).
    pub committed: Instant,
    /// Its caller answered.
    pub answered: Instant,
}

impl Stamps {
    /// Records the writer's stages, and the wake-up from the answer to now.
    pub(crate) fn record(&self) {
        use crate::metrics::{stage, Stage};
        stage(
            Stage::Queue,
            self.picked.saturating_duration_since(self.queued),
        );
        stage(
            Stage::Statements,
            self.ran.saturating_duration_since(self.picked),
        );
        stage(
            Stage::Commit,
            self.committed.saturating_duration_since(self.ran),
        );
        stage(Stage::Wake, self.answered.elapsed());
    }
}

/// A unit of work for the writer thread.
pub(crate) trait Job: Send {
    /// Runs the job's statements inside the batch transaction; answers whether they
    /// succeeded. May run again, from the same database state, if the batch it ran in
    /// was rolled back for another job's failure: the last run's result is the answer.
    fn run(&mut self, conn: &Connection, fx: &mut Effects) -> bool;
    /// Answers the caller once the batch committed (or failed to).
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
    /// When its batch was taken, ran and committed; called before [`Job::finish`].
    fn stamp(&mut self, _picked: Instant, _ran: Instant, _committed: Instant) {}
}

/// A job built from a closure, answered over a oneshot channel.
pub(crate) struct FnJob<T, F> {
    f: F,
    out: Option<Result<T, StoreError>>,
    reply: Reply<T>,
    stamps: Stamps,
}

/// Where a [`FnJob`] answers: its result, or its result with its [`Stamps`].
pub(crate) enum Reply<T> {
    Plain(oneshot::Sender<Result<T, StoreError>>),
    Stamped(oneshot::Sender<(Result<T, StoreError>, Stamps)>),
}

impl<T, F> FnJob<T, F> {
    pub(crate) fn new(f: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self::with_reply(f, Reply::Plain(reply))
    }

    pub(crate) fn with_reply(f: F, reply: Reply<T>) -> Self {
        let now = Instant::now();
        Self {
            f,
            out: None,
            reply,
            stamps: Stamps {
                queued: now,
                picked: now,
                ran: now,
                committed: now,
                answered: now,
            },
        }
    }
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send,
    F: FnMut(&Connection, &mut Effects) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, fx: &mut Effects) -> bool {
        // A panicking job fails alone (its batch is run again without it, in
        // savepoints): the writer thread lives on, and every later write with it.
        let f = &mut self.f;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn, fx)))
            .unwrap_or_else(|_| {
                tracing::error!(
                    "a store job panicked (a bug); rolled back and answered as an error"
                );
                Err(StoreError::Panicked)
            });
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
        match self.reply {
            Reply::Plain(reply) => {
                let _ = reply.send(out);
            }
            Reply::Stamped(reply) => {
                let mut stamps = self.stamps;
                stamps.answered = Instant::now();
                let _ = reply.send((out, stamps));
            }
        }
    }

    fn stamp(&mut self, picked: Instant, ran: Instant, committed: Instant) {
        self.stamps.picked = picked;
        self.stamps.ran = ran;
        self.stamps.committed = committed;
    }
}

/// Runs the writer loop until every sender is dropped, then checkpoints and returns.
///
/// Under supervision ([`crate::supervise::run_blocking`]): after a panic outside a job
/// (a job's own is contained in [`FnJob::run`]) it runs again on the same connection
/// and queue, `restarted`: what the dead run left open is rolled back (its jobs were
/// answered `Panicked` when they were dropped), and the WAL is checkpointed at once,
/// since the dead run may have owed a scrub.
pub(crate) fn run(
    conn: &mut Connection,
    jobs: &Receiver<Box<dyn Job>>,
    life: &Lifeline,
    restarted: bool,
) {
    let mut scrub_due: Option<Instant> = None;
    if restarted {
        if !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "cannot roll back what the writer left open");
            }
        }
        scrub_due = Some(Instant::now());
    }
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
            let picked = Instant::now();
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
            let commit = commit_batch(conn, &mut batch, &mut fx);
            let committed = Instant::now();
            crate::metrics::store_commit(batch.len(), committed - began);
            if let Err(e) = &commit {
                tracing::error!(error = %e, jobs = batch.len(), "store batch failed to commit");
            }
            let ran = fx.ran.unwrap_or(committed);
            for mut job in batch {
                job.stamp(picked, ran, committed);
                job.finish(commit.clone());
            }
            life.round();
            if fx.scrub && scrub_due.is_none() {
                scrub_due = Some(Instant::now() + SCRUB_DELAY);
            }
        }
        if scrub_due.is_some_and(|due| Instant::now() >= due) {
            scrub_due = match checkpoint(conn) {
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
    if let Err(e) = checkpoint(conn) {
        tracing::error!(error = %e, "final WAL checkpoint failed");
    }
}

fn commit_batch(
    conn: &mut Connection,
    batch: &mut [Box<dyn Job>],
    fx: &mut Effects,
) -> Result<(), StoreError> {
    // Jobs seldom fail (a stale transition, a full disk), so the batch first runs them
    // back to back. A savepoint per job costs its SAVEPOINT and RELEASE, and a copy of
    // every page the job touches into the statement journal: 5 to 24% of the writer's
    // CPU per create, measured side by side (docs/benchmarks.md). A job must therefore
    // not consume what it captured: it may run twice.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut batch_fx = Effects::default();
    let mut failed = false;
    for job in batch.iter_mut() {
        let mut job_fx = Effects::default();
        if !job.run(&tx, &mut job_fx) {
            failed = true;
            break;
        }
        batch_fx.scrub |= job_fx.scrub;
    }
    if !failed {
        fx.ran = Some(Instant::now());
        tx.commit()?;
        fx.scrub |= batch_fx.scrub;
        return Ok(());
    }
    // A job failed, maybe after some of its statements: undo the batch and run it
    // again, each job in a savepoint of its own (through cached statements: rusqlite's
    // `Savepoint` parses its SAVEPOINT and RELEASE anew for every job), so the failed
    // job rolls back alone and the others stand.
    tx.rollback()?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in batch.iter_mut() {
        tx.prepare_cached("SAVEPOINT job")?.execute([])?;
        let mut job_fx = Effects::default();
        if job.run(&tx, &mut job_fx) {
            fx.scrub |= job_fx.scrub;
        } else {
            tx.prepare_cached("ROLLBACK TO job")?.execute([])?;
        }
        tx.prepare_cached("RELEASE job")?.execute([])?;
    }
    fx.ran = Some(Instant::now());
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use rusqlite::Connection;
    use tokio::sync::oneshot;

    use super::{commit_batch, Effects, FnJob, Job};
    use crate::store::StoreError;

    type Answer = oneshot::Receiver<Result<(), StoreError>>;

    /// A job that inserts `name`, then fails if `fails`, and sets `scrub`; counts its
    /// runs in `runs`.
    fn job(name: &'static str, fails: bool, runs: &Arc<AtomicUsize>) -> (Box<dyn Job>, Answer) {
        let (tx, rx) = oneshot::channel();
        let runs = runs.clone();
        let f = move |conn: &Connection, fx: &mut Effects| {
            runs.fetch_add(1, Ordering::Relaxed);
            conn.execute("INSERT INTO t (name) VALUES (?1)", [name])?;
            fx.scrub = true;
            if fails {
                return Err(StoreError::Stale);
            }
            Ok(())
        };
        (Box::new(FnJob::new(f, tx)), rx)
    }

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute("CREATE TABLE t (name TEXT NOT NULL)", [])
            .unwrap();
        conn
    }

    fn names(conn: &Connection) -> Vec<String> {
        let mut stmt = conn.prepare("SELECT name FROM t ORDER BY name").unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    /// Commits `jobs` as one batch and answers each caller, as the writer loop does.
    fn commit(conn: &mut Connection, jobs: Vec<(Box<dyn Job>, Answer)>) -> (Effects, Vec<Answer>) {
        let (mut batch, answers): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
        let mut fx = Effects::default();
        let commit = commit_batch(conn, &mut batch, &mut fx);
        assert!(commit.is_ok(), "{commit:?}");
        for job in batch {
            job.finish(commit.clone());
        }
        (fx, answers)
    }

    #[test]
    fn a_batch_whose_jobs_all_succeed_runs_each_once_and_commits_them_together() {
        let mut conn = table();
        let runs = Arc::new(AtomicUsize::new(0));
        let jobs = vec![job("a", false, &runs), job("b", false, &runs)];
        let (fx, answers) = commit(&mut conn, jobs);
        assert_eq!(names(&conn), ["a", "b"]);
        assert_eq!(runs.load(Ordering::Relaxed), 2);
        assert!(fx.scrub);
        for mut rx in answers {
            assert!(matches!(rx.try_recv(), Ok(Ok(()))));
        }
    }

    #[test]
    fn a_failed_job_rolls_back_alone_and_the_others_in_its_batch_stand() {
        let mut conn = table();
        let runs = Arc::new(AtomicUsize::new(0));
        // The middle job fails after its insert: that insert must not survive, and the
        // jobs before and after it must.
        let jobs = vec![
            job("a", false, &runs),
            job("b", true, &runs),
            job("c", false, &runs),
        ];
        let (fx, answers) = commit(&mut conn, jobs);
        assert_eq!(names(&conn), ["a", "c"]);
        // a and b ran back to back; then the batch ran again, in savepoints.
        assert_eq!(runs.load(Ordering::Relaxed), 5);
        let answers: Vec<_> = answers
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap())
            .collect();
        assert!(
            matches!(answers[..], [Ok(()), Err(StoreError::Stale), Ok(())]),
            "{answers:?}"
        );
        // The failed job's effects went with it; the others' stand.
        assert!(fx.scrub);
    }

    #[test]
    fn a_failed_job_alone_leaves_no_effect() {
        let mut conn = table();
        let runs = Arc::new(AtomicUsize::new(0));
        let (fx, answers) = commit(&mut conn, vec![job("b", true, &runs)]);
        assert!(names(&conn).is_empty());
        assert!(!fx.scrub);
        for mut rx in answers {
            assert!(matches!(rx.try_recv(), Ok(Err(StoreError::Stale))));
        }
    }

    #[actix_rt::test]
    async fn a_panicking_job_or_read_is_answered_and_the_store_works_on() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(&crate::store::StoreConfig::new(dir.path().join("t.db")))
                .unwrap();
        let panicked: Result<(), StoreError> = store.write(|_, _| panic!("a bug in a job")).await;
        assert!(
            matches!(panicked, Err(StoreError::Panicked)),
            "{panicked:?}"
        );
        let panicked: Result<(), StoreError> = store.read(|_| panic!("a bug in a read")).await;
        assert!(
            matches!(panicked, Err(StoreError::Panicked)),
            "{panicked:?}"
        );
        // The writer and the readers live on: a write, a read, and readiness.
        store
            .write(|c, _| Ok(c.execute_batch("CREATE TABLE after_the_panic (x INTEGER)")?))
            .await
            .unwrap();
        let n: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM after_the_panic", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 0);
        store.ping().await.unwrap();
    }
}

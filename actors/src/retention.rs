//! The retention sweeper: confirmed sessions keep their shared data and files for a
//! set time after the decision, then lose them (the session's status, seq, times and
//! references stay, and the decision shows `purged_at`). It also deletes idempotency
//! keys once their 24 h window is over, which nothing else would; and, record
//! retention (SPEC §2 "Records", `--record-retention-days`), every record of a session
//! ended that long ago whose webhooks are delivered or given up: its row, events,
//! idempotency record, files and data key. From then on the session never existed.
//! Records go in short batches of [`RECORD_BATCH`], each its own write, so the writer
//! is never held long; on several nodes one node at a time deletes (the store's lock).
//!
//! One actor per broker. It sweeps every [`SweeperConfig::every`] and on a [`Sweep`]
//! message; sweeps never overlap because the handler holds the mailbox
//! ([`AtomicResponse`]) until the store answered. Time comes from the injected clock,
//! so tests move the clock instead of waiting 30 days.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::clock::SharedClock;
use crate::session_store::SessionStore;
use crate::store::{RecordsDeleted, StoreError, PURGE_BATCH};
use crate::supervise::{start_actor, Lifeline, Supervised, Task, Tasks};

/// Default time confirmed sessions keep their personal data after the decision.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Default time an ended session's records are kept (SPEC §6: 90 days).
pub const DEFAULT_RECORD_RETENTION: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// Most sessions whose records one write deletes: each is a short transaction that
/// transitions queued behind it barely notice (docs/benchmarks.md).
pub const RECORD_BATCH: usize = 64;

/// Default time between sweeps.
pub const DEFAULT_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How the sweeper runs.
#[derive(Clone, Debug)]
pub struct SweeperConfig {
    /// How long after `decided_at` a confirmed session's data is purged.
    pub retention: Duration,
    /// How long after it ended a session's records are deleted (`0`: at the first
    /// sweep once its webhooks are delivered or given up).
    pub record_retention: Duration,
    /// Time between sweeps.
    pub every: Duration,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            record_retention: DEFAULT_RECORD_RETENTION,
            every: DEFAULT_SWEEP_EVERY,
        }
    }
}

/// Purges confirmed sessions whose retention has passed, and expired idempotency keys.
pub struct RetentionSweeper {
    /// The store, whichever engine.
    store: Arc<dyn SessionStore>,
    clock: SharedClock,
    config: SweeperConfig,
    /// Its supervision ([`RetentionSweeper::supervised`]); a sweep is one round.
    life: Lifeline,
}

impl RetentionSweeper {
    /// A sweeper over `store`, reading time from `clock`.
    pub fn new(store: Arc<dyn SessionStore>, clock: SharedClock, config: SweeperConfig) -> Self {
        Self {
            store,
            clock,
            config,
            life: Tasks::default().lifeline(Task::Retention),
        }
    }

    /// Starts this sweeper under supervision: one that dies (a panic) is replaced, and
    /// the new one sweeps at once (a sweep is idempotent: what was purged stays purged).
    pub fn supervised(self, tasks: &Tasks) -> Supervised<RetentionSweeper> {
        start_actor(tasks, Task::Retention, move |life| Self {
            store: self.store.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            life,
        })
    }
}

impl Actor for RetentionSweeper {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.life.stopped();
    }

    fn started(&mut self, ctx: &mut Self::Context) {
        // `notify`, not a direct call: the sweep queues behind any on-demand one.
        ctx.notify(Sweep);
        ctx.run_interval(self.config.every, |_, ctx| ctx.notify(Sweep));
    }
}

/// Sweep now; answers how many sessions were purged (expired idempotency keys are
/// deleted too, and only logged).
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct Sweep;

impl Handler<Sweep> for RetentionSweeper {
    type Result = AtomicResponse<Self, Result<usize, StoreError>>;

    fn handle(&mut self, _: Sweep, _: &mut Context<Self>) -> Self::Result {
        self.life.round();
        let store = self.store.clone();
        let clock = self.clock.clone();
        let retention =
            chrono::Duration::from_std(self.config.retention).unwrap_or(chrono::Duration::MAX);
        let record_retention = chrono::Duration::from_std(self.config.record_retention)
            .unwrap_or(chrono::Duration::MAX);
        AtomicResponse::new(Box::pin(
            async move {
                let mut total = 0;
                loop {
                    let now = clock.now();
                    // A retention too long to subtract purges nothing, not everything.
                    let cutoff = now
                        .checked_sub_signed(retention)
                        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
                    let purged = store.purge_retained(cutoff, now).await?;
                    total += purged;
                    // Batches keep each write short; go on while they come back full.
                    if purged < PURGE_BATCH {
                        break;
                    }
                }
                let mut keys = 0;
                loop {
                    let deleted = store
                        .purge_idempotency_keys(clock.now(), PURGE_BATCH)
                        .await?;
                    keys += deleted;
                    if deleted < PURGE_BATCH {
                        break;
                    }
                }
                if keys > 0 {
                    tracing::debug!(deleted = keys, "expired idempotency keys deleted");
                }
                let mut records = RecordsDeleted::default();
                loop {
                    let cutoff = clock
                        .now()
                        .checked_sub_signed(record_retention)
                        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
                    let batch = store.delete_ended_records(cutoff, RECORD_BATCH).await?;
                    records.add(batch);
                    crate::metrics::records_deleted("sessions", batch.sessions);
                    crate::metrics::records_deleted("events", batch.events);
                    crate::metrics::records_deleted("idempotency", batch.idempotency);
                    crate::metrics::records_deleted("webhooks", batch.webhooks);
                    if batch.sessions < RECORD_BATCH {
                        break;
                    }
                }
                if records.sessions > 0 {
                    tracing::info!(
                        sessions = records.sessions,
                        events = records.events,
                        idempotency = records.idempotency,
                        webhooks = records.webhooks,
                        "record retention deleted ended sessions"
                    );
                }
                Ok(total)
            }
            .into_actor(self)
            .map(|res, _, _| {
                match &res {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "retention purged confirmed sessions"),
                    Err(e) => {
                        tracing::error!(error = %e, "retention sweep failed; next sweep retries")
                    }
                }
                res
            }),
        ))
    }
}

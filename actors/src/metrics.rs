//! The broker's Prometheus metrics: their names, their buckets, the recorder, and the
//! few helpers the instrumented code calls.
//!
//! Layout:
//! - the metric names, as constants (the list in `docs/api.md` is this one);
//! - [`install`]: the process-wide recorder, installed once, with its upkeep thread;
//! - [`render`]: the text exposition served at `GET /metrics`;
//! - [`GaugeGuard`]: a gauge held up for as long as a value lives (a session actor, a
//!   WebSocket subscriber, a waiting long-poll), so it cannot leak on an early return.
//!
//! # One recorder per process, and why
//!
//! The instrumentation uses the `metrics` facade (`counter!`, `gauge!`, `histogram!`)
//! so that the actors, the writer thread and the web crate record with one line each,
//! without a handle threaded through every constructor. The facade has one global
//! recorder; it is the only global here, and [`install`] sets it at most once
//! (`OnceLock`), whichever broker in the process starts first. Tests run many brokers
//! in one process, so every broker's figures add up in one recorder: counters and
//! histograms only grow, and the gauges are moved up and down by the values they count
//! (never `set`), so each is the sum over the brokers of the process. Tests therefore
//! assert on deltas and presence, not on absolute values. A production process runs one
//! broker, where the sum is that broker's figure.
//!
//! Labels are bounded: a status name, an outcome, a route *template* and an HTTP status;
//! never a session id, a user id or a raw path.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Sessions created (counter).
pub const SESSIONS_CREATED: &str = "idv_sessions_created_total";
/// Records deleted by record retention, by kind (counter, label `what`: `sessions`,
/// `events`, `idempotency`, `webhooks`).
pub const RECORDS_DELETED: &str = "idv_records_deleted_total";
/// Transitions committed, by the status reached (counter, label `status`).
pub const TRANSITIONS: &str = "idv_session_transitions_total";
/// Wrong binding codes on approve, the last one of a session included (counter).
pub const BINDING_MISMATCHES: &str = "idv_binding_mismatches_total";
/// Sessions ended `declined` by their last wrong binding code (counter).
pub const BINDING_ENDED: &str = "idv_sessions_ended_by_binding_mismatch_total";
/// Live session actors (gauge).
pub const LIVE_SESSIONS: &str = "idv_live_sessions";
/// Open WebSocket subscribers (gauge).
pub const WS_SUBSCRIBERS: &str = "idv_ws_subscribers";
/// Long-polls waiting for a change (gauge).
pub const WAITING_LONG_POLLS: &str = "idv_waiting_long_polls";
/// From a transition's commit, as the session actor sees it complete, to its frame
/// written to the WebSocket (histogram, seconds).
pub const PUSH_LATENCY: &str = "idv_push_latency_seconds";
/// A transition's time in each stage of its way through the broker (histogram, seconds,
/// label `stage`, one of [`Stage`]): where a push spends its time beyond the fsync.
pub const TRANSITION_STAGES: &str = "idv_transition_stage_seconds";
/// One group commit of the store writer, from `BEGIN` to `COMMIT` done (histogram, seconds).
pub const STORE_COMMIT_LATENCY: &str = "idv_store_commit_seconds";
/// Jobs in one group commit (histogram).
pub const STORE_BATCH_SIZE: &str = "idv_store_batch_size";
/// Webhook delivery attempts by outcome (counter, label `outcome` =
/// `delivered` / `failed` / `retry`).
pub const WEBHOOK_DELIVERIES: &str = "idv_webhook_deliveries_total";
/// Webhook events in the outbox, not yet delivered nor given up (gauge).
pub const OUTBOX_DEPTH: &str = "idv_webhook_outbox_depth";
/// Bytes of uploads held in memory, charged to the staging budget (gauge).
pub const STAGED_BYTES: &str = "idv_staged_upload_bytes";
/// Requests refused by the rate limit (counter).
pub const RATE_LIMITED: &str = "idv_rate_limited_requests_total";
/// HTTP requests by route template and status (counter, labels `route`, `status`).
pub const HTTP_REQUESTS: &str = "idv_http_requests_total";
/// HTTP request latency by route template (histogram, seconds, label `route`).
pub const HTTP_LATENCY: &str = "idv_http_request_duration_seconds";
/// Counter, by `outcome`: commands sent to another node that owns the session
/// (`ok`, `refused`: the owner answered an error, `not_owner`, `unreachable`,
/// `no_answer`). Several nodes only.
pub const FORWARDED: &str = "idv_cluster_forwarded_commands_total";
/// Histogram: a command's round trip to the owner node, answered or not.
pub const FORWARD_LATENCY: &str = "idv_cluster_forward_seconds";
/// Counter: live sessions this node took over from nodes whose lease lapsed.
pub const ADOPTED: &str = "idv_cluster_adopted_sessions_total";
/// Counter, by `reason`: messages from NATS dropped unopened (`unopened`: another key,
/// altered, or not sealed at all), too old or too far ahead (`stale`), or seen before
/// (`replayed`). Several nodes only.
pub const CLUSTER_DROPPED: &str = "idv_cluster_messages_dropped_total";

/// JWKS fetches by issuer and outcome (counter, labels `issuer`, `outcome` = `ok` /
/// `unreachable` / `bad_status` / `invalid`).
pub const JWKS_FETCHES: &str = "idv_jwks_fetches_total";
/// Seconds since the key set in use was fetched, by issuer (gauge, label `issuer`; set,
/// not moved: one per issuer, absent until a first set). Several brokers of one process
/// with the same issuer name share it.
pub const JWKS_AGE: &str = "idv_jwks_age_seconds";
/// Long-lived tasks restarted after a panic, by `task` (counter; the names are
/// [`crate::supervise::Task::name`]: `store_writer`, `expiry_sweep`, `webhooks`, …).
pub const TASK_RESTARTS: &str = "idv_task_restarts_total";

/// Buckets for latencies in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Finer buckets for the stages of a transition and its push, whose parts take tens of
/// microseconds: 10 µs to 10 s.
const STAGE_BUCKETS: [f64; 22] = [
    0.000_01, 0.000_02, 0.000_03, 0.000_04, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2,
    0.000_25, 0.000_3, 0.000_4, 0.000_5, 0.000_75, 0.001, 0.002_5, 0.005, 0.01, 0.1, 0.5, 1.0,
    10.0,
];

/// Buckets for the batch size: 1 to the writer's `MAX_BATCH` (1024).
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder, once; later calls return the same handle.
/// `None` if another recorder was installed first (by an embedding program): then the
/// broker's figures go there, and `/metrics` has nothing of its own to render.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(STORE_BATCH_SIZE.to_owned()),
                        &BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(TRANSITION_STAGES.to_owned()),
                        &STAGE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(PUSH_LATENCY.to_owned()), &STAGE_BUCKETS)
                });
            let builder = match builder {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "metrics buckets rejected");
                    return None;
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    zero();
                    spawn_upkeep(handle.clone());
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed");
                    None
                }
            }
        })
        .as_ref()
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The exporter keeps every histogram sample until upkeep folds it into the buckets
/// (a scrape does too); without this thread an unscraped broker's memory would grow
/// with every request. A plain thread, not a task: the recorder outlives any one
/// broker's runtime in a process that runs several.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the metrics upkeep thread");
    }
}

/// The Prometheus text exposition of every metric recorded in this process.
pub fn render() -> String {
    match install() {
        Some(handle) => {
            // Drops histogram samples already folded into buckets, and idle entries.
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(SESSIONS_CREATED, "Sessions created.");
    describe_counter!(TRANSITIONS, "Transitions committed, by the status reached.");
    describe_counter!(
        BINDING_MISMATCHES,
        "Wrong binding codes on approve, the last of a session included."
    );
    describe_counter!(
        BINDING_ENDED,
        "Sessions ended declined by their last wrong binding code."
    );
    describe_counter!(
        RECORDS_DELETED,
        "Records of ended sessions deleted by record retention, by kind."
    );
    describe_gauge!(LIVE_SESSIONS, "Live session actors.");
    describe_gauge!(WS_SUBSCRIBERS, "Open WebSocket subscribers.");
    describe_gauge!(WAITING_LONG_POLLS, "Long-polls waiting for a change.");
    describe_histogram!(
        PUSH_LATENCY,
        Unit::Seconds,
        "From a transition's commit to its WebSocket frame written."
    );
    describe_histogram!(
        TRANSITION_STAGES,
        Unit::Seconds,
        "A transition's time in each stage: auth, queue, statements, commit, wake, session."
    );
    describe_histogram!(
        STORE_COMMIT_LATENCY,
        Unit::Seconds,
        "One group commit of the store writer."
    );
    describe_histogram!(STORE_BATCH_SIZE, "Jobs in one group commit.");
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook delivery attempts by outcome.");
    describe_gauge!(OUTBOX_DEPTH, "Webhook events waiting in the outbox.");
    describe_gauge!(
        STAGED_BYTES,
        Unit::Bytes,
        "Upload bytes held in memory (staging budget)."
    );
    describe_counter!(RATE_LIMITED, "Requests refused by the rate limit.");
    describe_counter!(JWKS_FETCHES, "JWKS fetches by issuer and outcome.");
    describe_gauge!(
        JWKS_AGE,
        Unit::Seconds,
        "Age of the JWKS key set in use, by issuer."
    );
    describe_counter!(
        TASK_RESTARTS,
        "Long-lived tasks restarted after a panic, by task."
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route template and status.");
    describe_histogram!(
        HTTP_LATENCY,
        Unit::Seconds,
        "HTTP request latency by route template."
    );
    describe_counter!(
        FORWARDED,
        "Commands sent to the node that owns the session, by outcome (several nodes)."
    );
    describe_histogram!(
        FORWARD_LATENCY,
        Unit::Seconds,
        "Round trip of a command to the node that owns the session."
    );
    describe_counter!(
        ADOPTED,
        "Live sessions taken over from nodes whose lease lapsed (several nodes)."
    );
    describe_counter!(
        CLUSTER_DROPPED,
        "Messages between nodes dropped: unopened, stale or replayed (several nodes)."
    );
}

/// Registers the counters and gauges whose series are known in advance at zero, so a
/// scrape shows them before their first event (a rate over a missing series is no rate).
fn zero() {
    for name in [
        SESSIONS_CREATED,
        RATE_LIMITED,
        BINDING_MISMATCHES,
        BINDING_ENDED,
    ] {
        metrics::counter!(name).increment(0);
    }
    for status in crate::status::Status::ALL {
        if status != crate::status::Status::Initialized {
            metrics::counter!(TRANSITIONS, "status" => status.as_str()).increment(0);
        }
    }
    for outcome in ["delivered", "failed", "retry"] {
        metrics::counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(0);
    }
    for what in ["sessions", "events", "idempotency", "webhooks"] {
        metrics::counter!(RECORDS_DELETED, "what" => what).increment(0);
    }
    for name in [
        LIVE_SESSIONS,
        WS_SUBSCRIBERS,
        WAITING_LONG_POLLS,
        OUTBOX_DEPTH,
        STAGED_BYTES,
    ] {
        metrics::gauge!(name).increment(0.0);
    }
}

/// A supervised task restarted after a panic.
pub fn task_restarted(task: &'static str) {
    metrics::counter!(TASK_RESTARTS, "task" => task).increment(1);
}

/// Record retention deleted `n` records of kind `what`.
pub fn records_deleted(what: &'static str, n: usize) {
    metrics::counter!(RECORDS_DELETED, "what" => what).increment(n as u64);
}

/// A transition committed, reaching `status`.
pub fn transition(status: &'static str) {
    metrics::counter!(TRANSITIONS, "status" => status).increment(1);
}

/// A wrong binding code was committed; `ended`: it was the last, and ended the session.
pub fn binding_mismatch(ended: bool) {
    metrics::counter!(BINDING_MISMATCHES).increment(1);
    if ended {
        metrics::counter!(BINDING_ENDED).increment(1);
    }
}

/// A push written to a WebSocket, `elapsed` after its commit.
pub fn push_written(elapsed: Duration) {
    metrics::histogram!(PUSH_LATENCY).record(elapsed.as_secs_f64());
}

/// A stage of a transition's way through the broker ([`TRANSITION_STAGES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The device's token checked (the `Authorization` header read, the JWT verified).
    Auth,
    /// Its write waiting for the writer thread: sent to the queue → its batch taken.
    Queue,
    /// Its batch's statements, `BEGIN` to before `COMMIT`.
    Statements,
    /// Its batch's `COMMIT`: the WAL frames written and synced (the fsync).
    Commit,
    /// The writer's answer reaching the session actor: answered → the actor resumed.
    Wake,
    /// The whole command as the HTTP handler waits on it: sent to the registry → the
    /// session's answer back (the stages above, plus the hops to and from the actor).
    Session,
}

impl Stage {
    /// Every stage, in the order a transition passes them.
    pub const ALL: [Stage; 6] = [
        Stage::Auth,
        Stage::Queue,
        Stage::Statements,
        Stage::Commit,
        Stage::Wake,
        Stage::Session,
    ];

    /// The `stage` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Auth => "auth",
            Stage::Queue => "queue",
            Stage::Statements => "statements",
            Stage::Commit => "commit",
            Stage::Wake => "wake",
            Stage::Session => "session",
        }
    }
}

/// A transition spent `elapsed` in `stage`.
pub fn stage(stage: Stage, elapsed: Duration) {
    metrics::histogram!(TRANSITION_STAGES, "stage" => stage.as_str()).record(elapsed.as_secs_f64());
}

/// One group commit of `jobs` jobs took `elapsed`.
pub fn store_commit(jobs: usize, elapsed: Duration) {
    metrics::histogram!(STORE_COMMIT_LATENCY).record(elapsed.as_secs_f64());
    metrics::histogram!(STORE_BATCH_SIZE).record(jobs as f64);
}

/// One webhook delivery attempt ended with `outcome` (`delivered`, `failed`, `retry`).
pub fn webhook_delivery(outcome: &'static str) {
    metrics::counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

/// The outbox grew (`delta > 0`) or shrank.
pub fn outbox_moved(delta: f64) {
    metrics::gauge!(OUTBOX_DEPTH).increment(delta);
}

/// The staging budget took (`delta > 0`) or gave back bytes.
pub fn staged_moved(delta: f64) {
    metrics::gauge!(STAGED_BYTES).increment(delta);
}

/// One HTTP request answered: `route` is the match pattern (or a fixed word), never
/// the raw path.
pub fn http_request(route: String, status: u16, elapsed: Duration) {
    metrics::histogram!(HTTP_LATENCY, "route" => route.clone()).record(elapsed.as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
}

/// A command went to the owner node and came back with `outcome` after `elapsed`.
pub fn forwarded(outcome: &'static str, elapsed: Duration) {
    metrics::counter!(FORWARDED, "outcome" => outcome).increment(1);
    metrics::histogram!(FORWARD_LATENCY).record(elapsed.as_secs_f64());
}

/// A message from NATS was dropped, for `reason` ([`crate::seal::Dropped`]).
pub fn cluster_message_dropped(reason: &'static str) {
    metrics::counter!(CLUSTER_DROPPED, "reason" => reason).increment(1);
}

/// This node took `n` sessions over.
pub fn adopted(n: usize) {
    metrics::counter!(ADOPTED).increment(n as u64);
}

/// Holds a gauge one higher for as long as it lives.
#[derive(Debug)]
pub struct GaugeGuard {
    name: &'static str,
}

impl GaugeGuard {
    /// Raises the gauge `name` by one until the guard drops.
    pub fn new(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        Self { name }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(self.name).decrement(1.0);
    }
}

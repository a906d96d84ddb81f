//! Several nodes (SPEC §7): the [`Router`] over NATS, this node's lease, and the
//! adoption of the sessions of nodes that died.
//!
//! Every message on these subjects, and every reply, is sealed under the cluster key
//! ([`crate::seal`]): a message that does not open, is stale or is a replay is dropped
//! unanswered and counted, so whoever else reaches NATS can neither read nor command.
//! An answer carries only what the request it answers returns
//! ([`SessionRecord::for_wire`](crate::model::SessionRecord::for_wire)).
//!
//! Subjects (core NATS, no JetStream):
//! - `idv.node.<id>.cmd`: request/reply. A command for a session node `<id>` owns, as
//!   JSON `{session, cmd}`; the reply is `{"Ok": answer}` or `{"Err": error}`, and
//!   `NotOwner` when that node does not own the session (any more).
//! - `idv.node.<id>.chunk`: request/reply. The bytes of an upload, in chunks below the
//!   server's `max_payload`, before the `Stage` command that stages them: a body of
//!   any size travels through NATS alone, with no second transport between nodes. A
//!   chunk is `session id (36 bytes of text) · ticket (8 bytes, big-endian) · bytes`.
//! - `idv.events.<session id>`: the owner's announcement of each committed transition
//!   (the seq, as text). Every node hears them all on one subscription
//!   (`idv.events.*`); one that watches the session (it holds its WebSocket
//!   subscribers or long-polls) reads the transitions from the store. An announcement
//!   is only a wake-up, so one lost costs latency, not data: a sweep of the watched
//!   sessions' seqs ([`WATCH_SWEEP`]) makes it up.
//!
//! The lease: this node's row in the store's `nodes` table is renewed every
//! [`ClusterConfig::renew_every`] for [`ClusterConfig::lease_ttl`], by the database's
//! clock. Every [`ClusterConfig::adopt_every`], the node takes over, in batches, the
//! sessions of nodes whose lease lapsed: their actors start here (the path of a restart:
//! overdue sessions expire at once) and their webhooks are dispatched from here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::ids::{Seq, SessionId};
use crate::model::WireView;
use crate::nats_link::{self, NatsOptions};
use crate::redact::redact_url;
use crate::registry::{Registry, ServeError};
use crate::route::{ForwardError, Outbound, RouteFuture, Router, Wire, WireError, WireOk};
use crate::seal::{ClusterKey, Sealer};
use crate::session::messages::Caller;
use crate::session::messages::{Refresh, RotateToken, StageFile, UploadTicket};
use crate::session_store::ClusterStore;
use crate::staging::UploadBuffer;
use crate::supervise::{self, Lifeline, Task};
use crate::write::ImageType;

/// Timing of the cluster layer.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The NATS server(s), e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// TLS files and a credentials file for NATS.
    pub nats: NatsOptions,
    /// How long a lease lasts unrenewed: a dead node's sessions are taken over after it.
    pub lease_ttl: Duration,
    /// How often the lease is renewed.
    pub renew_every: Duration,
    /// How often the node looks for sessions of nodes whose lease lapsed.
    pub adopt_every: Duration,
    /// How long a forwarded command waits for the owner's answer.
    pub request_timeout: Duration,
    /// The cluster keys (`--cluster-key`): the first seals every message, each opens.
    pub keys: Vec<ClusterKey>,
}

impl ClusterConfig {
    /// The defaults: a 5 s lease renewed every 1.5 s, orphans looked for every second,
    /// so a dead node's sessions are taken over within about 6 s (SPEC §7: 10 s). A
    /// forwarded command waits 2 s for its answer: well under a lease, so an owner that
    /// stalls is given up on (and its route dropped) twice before its lease lapses, and
    /// a retry soon after finds the new owner (docs/cluster.md, "Pauses and outages").
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            nats: NatsOptions::default(),
            lease_ttl: Duration::from_secs(5),
            renew_every: Duration::from_millis(1500),
            adopt_every: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            keys: Vec::new(),
        }
    }
}

/// Why the cluster layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The node id cannot be part of a NATS subject.
    #[error("node id {0:?}: use 1 to 64 of A-Z a-z 0-9 _ -")]
    NodeId(String),
    /// NATS is not reachable.
    #[error("cannot connect to NATS at {}: {reason}", redact_url(url))]
    Nats {
        /// The URL, with its secrets (printed redacted).
        url: String,
        /// Why.
        reason: String,
    },
    /// No cluster key: messages between nodes could not be sealed.
    #[error("several nodes need a cluster key (--cluster-key) to seal their messages")]
    NoKey,
    /// Another process holds this node id's lease, and kept renewing it while this one
    /// waited: two processes never run as one node (SPEC §7).
    #[error("node id {0:?} is in use by another running process (it keeps renewing its lease); give this one another --node-id, or stop that one")]
    NodeIdInUse(String),
    /// The store refused to register this node.
    #[error("cannot register this node in the store: {0}")]
    Store(String),
}

/// Most sessions taken over in one batch.
const ADOPT_BATCH: usize = 500;

/// How long an upload held for another node waits for its bytes: the upload timeout
/// (SPEC §3: 30 s) with room to spare. Swept with the lease's beat.
const PARKED_UPLOAD_TTL: Duration = Duration::from_secs(60);

/// How much sooner than the database's end of the lease this process stops trusting
/// it, by its own monotonic clock: covers the clocks' rates drifting apart and the
/// time between a check and the answer it allows (docs/cluster.md, "Reads behind the
/// lease").
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// Takes this node id's lease for this process before anything of its sessions is
/// read or committed (the restore at start expires what is overdue: under the lease).
/// A lease another process holds is waited for until it lapses (a process that was
/// `kill -9`ed and restarted at once); if that process keeps renewing it for twice
/// the lease's length, this one gives up ([`ClusterError::NodeIdInUse`], exit 2).
pub async fn take_lease(store: &dyn ClusterStore, ttl: Duration) -> Result<(), ClusterError> {
    let id = store.node_id().to_owned();
    if !valid_node_id(&id) {
        return Err(ClusterError::NodeId(id));
    }
    let deadline = Instant::now() + ttl * 2 + Duration::from_secs(1);
    let mut said = false;
    loop {
        match store.register_node(ttl).await {
            Ok(true) => return Ok(()),
            Ok(false) if Instant::now() < deadline => {
                if !said {
                    said = true;
                    tracing::warn!(node = %id, "another process holds this node id's lease; waiting for it to lapse");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(false) => return Err(ClusterError::NodeIdInUse(id)),
            Err(e) => return Err(ClusterError::Store(e.to_string())),
        }
    }
}

/// Longest wait for NATS to confirm a watcher's subscription, or to flush at stop.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Whether `id` can name a node in a NATS subject.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A forwarded command as it travels.
#[derive(Serialize, Deserialize)]
struct Request {
    session: SessionId,
    cmd: Wire,
}

/// An upload another node streams in for a session this node owns.
struct Parked {
    ticket: UploadTicket,
    buffer: Option<UploadBuffer>,
    since: Instant,
}

/// This node in the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    node: Arc<Node>,
}

struct Node {
    id: String,
    nats: async_nats::Client,
    /// The runtime every NATS subscription and publication runs on: it outlives the
    /// actix arbiters, so nothing of NATS is dropped where no runtime is left.
    io: tokio::runtime::Handle,
    store: Arc<dyn ClusterStore>,
    registry: Registry,
    config: ClusterConfig,
    /// The watching actors of the sessions this node watches (it holds their
    /// subscribers or long-polls, their owner is another node), by session: woken by
    /// the announcements ([`Node::serve_announcements`]) and the sweep ([`WATCH_SWEEP`]).
    watched: DashMap<SessionId, actix::Recipient<Refresh>>,
    /// Uploads streaming in from other nodes, by session and ticket.
    uploads: DashMap<(SessionId, u64), Parked>,
    /// The largest chunk of an upload sent in one message.
    chunk: usize,
    /// Set when the node hands its sessions over: the lease and adoption loops end,
    /// so the released lease is never renewed and nothing more is taken.
    stopping: std::sync::atomic::AtomicBool,
    /// Seals what this node sends, opens what it receives, remembers the nonces seen.
    sealer: Sealer,
    /// The origin of [`Node::lease_until`].
    epoch: Instant,
    /// Until when this process trusts its lease, in ms since `epoch` (monotonic): the
    /// time a successful renewal was sent, plus the lease, less [`LEASE_MARGIN`]. The
    /// database ends the lease no sooner than that, so another node cannot have taken a
    /// session of this one before it.
    lease_until: std::sync::atomic::AtomicU64,
    /// One renewal on demand at a time; the others wait for its outcome.
    confirming: tokio::sync::Mutex<()>,
    /// When a dropped message was last logged (unix seconds): one line per
    /// [`DROP_LOG_EVERY`] at most, so a flood of forgeries cannot flood the log (the
    /// metric counts each).
    last_drop_logged: std::sync::atomic::AtomicI64,
}

/// At most one log line per this many seconds about dropped messages.
const DROP_LOG_EVERY: i64 = 10;

/// How often a node reads the seq of every session it watches, in one statement per
/// [`WATCH_SWEEP_BATCH`], and sends each watcher still behind what the store held one
/// sweep earlier a [`Refresh`]: announcements travel at most once (and not at all
/// while NATS is out), so this bounds how late a lost one is noticed (two periods).
/// One statement for all of them, not a read per watcher: at 7,600 watched sessions a
/// node, reads of their own every 2 s were 3,800 statements a second per node, which
/// a two-core machine could not serve beside the traffic (docs/benchmarks.md, "Three
/// nodes at the limit").
pub(crate) const WATCH_SWEEP: Duration = Duration::from_secs(2);

/// Most sessions whose seqs one statement of the sweep reads.
const WATCH_SWEEP_BATCH: usize = 4096;

impl Cluster {
    /// Connects to NATS (on `io`, whose runtime outlives every request), registers this
    /// node's lease, answers commands for its sessions, and starts the lease and
    /// adoption loops. Call it inside the actix system, before listening.
    pub async fn start(
        config: ClusterConfig,
        io: tokio::runtime::Handle,
        store: Arc<dyn ClusterStore>,
        registry: Registry,
    ) -> Result<Cluster, ClusterError> {
        let id = store.node_id().to_owned();
        if !valid_node_id(&id) {
            return Err(ClusterError::NodeId(id));
        }
        let sealer = Sealer::new(&id, &config.keys).ok_or(ClusterError::NoKey)?;
        // Normally taken already, before the restore (`take_lease`); taken again here
        // (this process's own: it is extended) so that the clock below starts now.
        let registered_at = Instant::now();
        take_lease(store.as_ref(), config.lease_ttl).await?;
        let url = config.nats_url.clone();
        let name = format!("idv-broker {id}");
        let timeout = config.request_timeout;
        let options = config.nats.clone();
        let nats = io
            .clone()
            .spawn(async move { nats_link::connect(&url, &options, name, timeout).await })
            .await
            .map_err(|e| ClusterError::Nats {
                url: config.nats_url.clone(),
                reason: e.to_string(),
            })?
            .map_err(|e| ClusterError::Nats {
                url: config.nats_url.clone(),
                reason: e.to_string(),
            })?;
        let max_payload = nats.server_info().max_payload;
        // Room for the header and the protocol line; at most 512 KiB per message.
        let chunk = max_payload.saturating_sub(1024).clamp(4096, 512 * 1024);
        let node = Arc::new(Node {
            id,
            nats,
            io,
            store,
            registry: registry.clone(),
            config,
            watched: DashMap::new(),
            uploads: DashMap::new(),
            chunk,
            stopping: std::sync::atomic::AtomicBool::new(false),
            sealer,
            last_drop_logged: std::sync::atomic::AtomicI64::new(i64::MIN),
            epoch: Instant::now(),
            lease_until: std::sync::atomic::AtomicU64::new(0),
            confirming: tokio::sync::Mutex::new(()),
        });
        node.lease_renewed(registered_at);
        for reason in ["unopened", "stale", "replayed"] {
            metrics::counter!(crate::metrics::CLUSTER_DROPPED, "reason" => reason).increment(0);
        }
        node.serve_commands().await?;
        node.serve_announcements().await?;
        registry.set_router(Arc::new(Link(node.clone())));
        node.clone().run_lease();
        node.clone().run_watch_sweep();
        node.clone().run_adoption();
        tracing::info!(node = %node.id, chunk, "joined the cluster");
        Ok(Cluster { node })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node.id
    }

    /// SIGTERM: this node's sessions go to the others. Its actors stop (uploads staged
    /// here are lost, SPEC §7), then its lease lapses at once, so the other nodes take
    /// the sessions at their next look or at the next request for one. Commands that
    /// still reach this node are answered "not the owner", and their sender asks again.
    pub async fn hand_over(&self, wait: Duration) {
        self.node
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.node.registry.relinquish_all(true);
        let deadline = Instant::now() + wait;
        while self.node.registry.owned_count() > 0 && Instant::now() < deadline {
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.node.store.release_node().await {
            tracing::error!(error = %e, "cannot release this node's lease; its sessions are taken over when it lapses");
        }
        // Bounded: with NATS gone a flush would wait for ever, and the stop must end.
        let _ = tokio::time::timeout(FLUSH_WAIT, self.node.nats.flush()).await;
        tracing::info!(node = %self.node.id, "sessions handed over");
    }
}

impl Node {
    fn subject(node: &str, what: &str) -> String {
        format!("idv.node.{node}.{what}")
    }

    /// A renewal sent at `sent` succeeded: the lease is trusted until `sent` plus the
    /// lease, less the margin.
    fn lease_renewed(&self, sent: Instant) {
        let until = (sent + self.config.lease_ttl).saturating_duration_since(self.epoch);
        let until = until.saturating_sub(LEASE_MARGIN).as_millis() as u64;
        self.lease_until
            .fetch_max(until, std::sync::atomic::Ordering::AcqRel);
    }

    fn lease_fresh(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        now < self.lease_until.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Renews the lease now (a request found it not fresh); on a lapse, lets every
    /// session go and registers afresh.
    async fn confirm_lease(&self) -> bool {
        let _one = self.confirming.lock().await;
        if self.lease_fresh() {
            // Renewed by whoever held the lock before.
            return true;
        }
        if self.stopping.load(std::sync::atomic::Ordering::Acquire)
            || self.nats.connection_state() != async_nats::connection::State::Connected
        {
            return false;
        }
        let sent = Instant::now();
        match self.store.renew_lease(self.config.lease_ttl).await {
            Ok(true) => {
                self.lease_renewed(sent);
                true
            }
            Ok(false) => {
                self.lapsed().await;
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew this node's lease");
                false
            }
        }
    }

    /// This process's lease lapsed (it was paused, or cut off from the database):
    /// another node may have taken any of its sessions, so it lets them all go, then
    /// takes a new lease (later claims take new epochs). If another process took this
    /// node id meanwhile, this one is an impostor now: it exits.
    async fn lapsed(&self) {
        tracing::warn!(node = %self.id, "this node's lease lapsed; letting its sessions go");
        self.registry.relinquish_all(false);
        let sent = Instant::now();
        match self.store.register_node(self.config.lease_ttl).await {
            Ok(true) => self.lease_renewed(sent),
            Ok(false) => {
                tracing::error!(
                    node = %self.id,
                    "another process took this node id while this one was stalled; exiting (it commits nothing and serves nothing now)"
                );
                std::process::exit(2);
            }
            Err(e) => tracing::error!(error = %e, "cannot register this node again"),
        }
    }

    /// NATS refused what the node needs to join the cluster.
    fn nats_error(&self, e: &dyn std::fmt::Display) -> ClusterError {
        ClusterError::Nats {
            url: self.config.nats_url.clone(),
            reason: e.to_string(),
        }
    }

    /// Hears every owner's announcements, on one subscription (`idv.events.*`) taken
    /// before any session is watched, and wakes the watcher of each session this node
    /// watches. One subscription for the node, not one per watched session: no
    /// subscription and no round trip to NATS when a watcher starts, and no task and
    /// no subscription to keep per watched session; each node opens every announcement
    /// (a few microseconds each) in exchange.
    async fn serve_announcements(self: &Arc<Self>) -> Result<(), ClusterError> {
        let mut announcements = self
            .nats
            .subscribe("idv.events.*")
            .await
            .map_err(|e| self.nats_error(&e))?;
        // In place at the server before any watcher reads the store.
        self.nats.flush().await.map_err(|e| self.nats_error(&e))?;
        let node = self.clone();
        self.io.spawn(async move {
            while let Some(msg) = announcements.next().await {
                let Some(id) = msg
                    .subject
                    .strip_prefix("idv.events.")
                    .and_then(SessionId::parse)
                else {
                    continue;
                };
                // Most announcements are of sessions not watched here: looked up before
                // they are opened. Only a sealed one wakes a watcher: a forged one would
                // cost a store read each.
                if !node.watched.contains_key(&id) || node.open(&msg).is_none() {
                    continue;
                }
                node.wake(id, Refresh::default());
            }
        });
        Ok(())
    }

    /// Sends `refresh` to the watcher of session `id`, if this node has one; forgets a
    /// watcher that is gone.
    fn wake(&self, id: SessionId, refresh: Refresh) {
        let gone = match self.watched.get(&id) {
            // A full mailbox already holds a `Refresh`: it reads everything.
            Some(to) => matches!(
                to.try_send(refresh),
                Err(actix::prelude::SendError::Closed(_))
            ),
            None => false,
        };
        if gone {
            self.watched.remove_if(&id, |_, to| !to.connected());
        }
    }

    /// Answers the commands and upload chunks other nodes send for this node's sessions.
    async fn serve_commands(self: &Arc<Self>) -> Result<(), ClusterError> {
        let mut commands = self
            .nats
            .subscribe(Self::subject(&self.id, "cmd"))
            .await
            .map_err(|e| self.nats_error(&e))?;
        let mut chunks = self
            .nats
            .subscribe(Self::subject(&self.id, "chunk"))
            .await
            .map_err(|e| self.nats_error(&e))?;
        self.nats.flush().await.map_err(|e| self.nats_error(&e))?;
        // The subscriptions are read on `io`; each command is carried out on an actix
        // arbiter (it may start a session actor), its answer published from `io`.
        let (to_actix, mut from_io) = tokio::sync::mpsc::unbounded_channel();
        self.io.spawn(async move {
            while let Some(msg) = commands.next().await {
                if to_actix.send(msg).is_err() {
                    break;
                }
            }
        });
        let node = self.clone();
        actix::spawn(async move {
            while let Some(msg) = from_io.recv().await {
                let node = node.clone();
                actix::spawn(async move { node.answer_command(msg).await });
            }
        });
        let node = self.clone();
        self.io.spawn(async move {
            // In order: the chunks of one upload arrive one after another (each waits
            // for its reply), and appending is quick.
            while let Some(msg) = chunks.next().await {
                let Some(chunk) = node.open(&msg) else {
                    continue;
                };
                let reply = node.take_chunk(&chunk);
                if let Some(to) = msg.reply {
                    let sealed = node.sealer.seal(&to, &reply);
                    let _ = node.nats.publish(to, sealed.into()).await;
                }
            }
        });
        Ok(())
    }

    /// Opens a message from another node, or drops it: counted, and logged at most
    /// once per [`DROP_LOG_EVERY`] seconds.
    fn open(&self, msg: &async_nats::Message) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        match self.sealer.open(msg.subject.as_str(), &msg.payload) {
            Ok(opened) => Some(zeroize::Zeroizing::new(opened.body)),
            Err(why) => {
                let now = chrono::Utc::now().timestamp();
                let last = self
                    .last_drop_logged
                    .load(std::sync::atomic::Ordering::Relaxed);
                if now.saturating_sub(last) >= DROP_LOG_EVERY
                    && self
                        .last_drop_logged
                        .compare_exchange(
                            last,
                            now,
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    tracing::warn!(
                        subject = %msg.subject,
                        reason = why.as_str(),
                        "dropped a message from NATS that is not a fresh one sealed with the cluster key (counted in idv_cluster_messages_dropped_total; logged once per 10 s)"
                    );
                }
                None
            }
        }
    }

    async fn answer_command(&self, msg: async_nats::Message) {
        let Some(body) = self.open(&msg) else { return };
        let Some(reply) = msg.reply else { return };
        let answer: Result<WireOk, WireError> = match serde_json::from_slice::<Request>(&body) {
            Ok(req) => {
                let session = req.session;
                let res = self.run(session, req.cmd).await;
                if let Err(e) = &res {
                    tracing::info!(%session, kind = ?e.kind, "forwarded command refused");
                }
                res
            }
            Err(e) => Err(WireError::from(&crate::SessionError::Invalid(format!(
                "a command from another node could not be read: {e}"
            )))),
        };
        match serde_json::to_vec(&answer) {
            Ok(body) => {
                let body = zeroize::Zeroizing::new(body);
                let sealed = self.sealer.seal(&reply, &body);
                let nats = self.nats.clone();
                self.io.spawn(async move {
                    let _ = nats.publish(reply, sealed.into()).await;
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot encode an answer to another node"),
        }
    }

    /// Carries out a forwarded command here (never forwards it again).
    async fn run(&self, id: SessionId, cmd: Wire) -> Result<WireOk, WireError> {
        let r = &self.registry;
        let res = match cmd {
            Wire::Inspect(c) => {
                let view = match c.caller {
                    Caller::Backend { .. } => WireView::Session,
                    Caller::Client { .. } => WireView::Status,
                    // Never the client's view: it holds the binding code.
                    Caller::Device { .. } => WireView::Decided,
                };
                r.serve(id, c)
                    .await
                    .map(|s| WireOk::Record(s.for_wire(view)))
            }
            Wire::Retrieve(c) => r
                .serve(id, c)
                .await
                .map(|s| WireOk::Record(s.for_wire(WireView::Information))),
            Wire::Decide(c) => r
                .serve(id, c)
                .await
                .map(|s| WireOk::Record(s.for_wire(WireView::Decided))),
            Wire::Cancel(c) => r
                .serve(id, c)
                .await
                .map(|s| WireOk::Record(s.for_wire(WireView::Session))),
            Wire::ShowOn(c) => r
                .serve(id, c)
                .await
                .map(|s| WireOk::Record(s.for_wire(WireView::Status))),
            Wire::RotateToken => r.serve(id, RotateToken).await.map(|()| WireOk::Unit),
            Wire::CheckUpload(c) => r
                .serve(id, c)
                .await
                .map(|ticket| WireOk::Ticket(self.park(id, ticket))),
            Wire::Stage {
                device,
                kind,
                upload,
                content_type,
            } => {
                let Some((_, parked)) = self.uploads.remove(&(id, upload)) else {
                    return Err(WireError::from(&crate::SessionError::Unavailable(
                        "the session moved to another node while the upload was sent; upload it again",
                    )));
                };
                let (Some(buffer), Some(content_type)) =
                    (parked.buffer, ImageType::from_content_type(&content_type))
                else {
                    return Err(WireError::from(&crate::SessionError::Invalid(
                        "the upload arrived empty or of an unknown type".into(),
                    )));
                };
                r.serve(
                    id,
                    StageFile {
                        device,
                        kind,
                        upload_id: parked.ticket.id,
                        upload: buffer.finish(content_type),
                    },
                )
                .await
                .map(WireOk::Staged)
            }
        };
        res.map_err(|e| match e {
            ServeError::NotOwner => WireError::not_owner(),
            ServeError::Session(e) => WireError::from(&e),
        })
    }

    /// Holds the ticket of an upload another node streams in, under a random number
    /// (not the actor's own counter, which another owner of the session would reuse):
    /// its chunks and its `Stage` name it.
    fn park(&self, id: SessionId, ticket: UploadTicket) -> u64 {
        self.sweep_uploads();
        let number: u64 = rand::random();
        self.uploads.insert(
            (id, number),
            Parked {
                ticket,
                buffer: None,
                since: Instant::now(),
            },
        );
        number
    }

    /// Lets go of uploads whose bytes never came (the device or the forwarding node
    /// went away) or whose session ended them: their bytes and budget go at once.
    fn sweep_uploads(&self) {
        self.uploads
            .retain(|_, p| p.since.elapsed() < PARKED_UPLOAD_TTL && !ticket_ended(&mut p.ticket));
    }

    /// Appends a chunk to its parked upload; the reply is empty, or why not.
    fn take_chunk(&self, payload: &[u8]) -> Vec<u8> {
        const HEADER: usize = 36 + 8;
        if payload.len() < HEADER {
            return b"malformed".to_vec();
        }
        let id = std::str::from_utf8(&payload[..36])
            .ok()
            .and_then(SessionId::parse);
        let mut number = [0u8; 8];
        number.copy_from_slice(&payload[36..HEADER]);
        let Some(id) = id else {
            return b"malformed".to_vec();
        };
        let key = (id, u64::from_be_bytes(number));
        let Some(mut parked) = self.uploads.get_mut(&key) else {
            // Not an upload this node holds: the session moved to this node after the
            // ticket was given, or the ticket was swept.
            return b"unknown".to_vec();
        };
        if ticket_ended(&mut parked.ticket) {
            // A newer upload of the kind, or the end of the session: let the bytes go.
            drop(parked);
            self.uploads.remove(&key);
            return b"replaced".to_vec();
        }
        let budget = self.registry.staging_budget().clone();
        let buffer = parked
            .buffer
            .get_or_insert_with(|| UploadBuffer::new(&budget, None));
        match buffer.push(&payload[HEADER..]) {
            Ok(()) => Vec::new(),
            Err(_) => {
                drop(parked);
                self.uploads.remove(&key);
                b"full".to_vec()
            }
        }
    }

    /// Sends `payload` sealed to `subject` and answers the opened reply. A reply that
    /// does not open is as no reply: the command may have been carried out.
    async fn request(
        &self,
        subject: String,
        payload: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ForwardError> {
        use async_nats::RequestErrorKind;
        let payload = self.sealer.seal(&subject, payload);
        let nats = self.nats.clone();
        let sent = self
            .io
            .spawn(async move { nats.request(subject, payload.into()).await })
            .await
            .map_err(|_| ForwardError::Unreachable)?;
        match sent {
            Ok(msg) => self.open(&msg).ok_or(ForwardError::NoAnswer),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => ForwardError::Unreachable,
                RequestErrorKind::TimedOut => ForwardError::NoAnswer,
                RequestErrorKind::Other => ForwardError::Unreachable,
                // Never sent: a bug (node ids are checked, chunks sized below the limit).
                RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                    tracing::error!(error = %e, "a message to another node could not be sent");
                    ForwardError::Session(crate::SessionError::Unavailable(
                        "a message to the node that runs this session could not be sent",
                    ))
                }
            }),
        }
    }

    async fn send(
        self: Arc<Self>,
        node: String,
        id: SessionId,
        out: Outbound,
    ) -> Result<WireOk, ForwardError> {
        let started = Instant::now();
        let res = self.send_timed(node, id, out).await;
        let outcome = match &res {
            Ok(_) => "ok",
            Err(ForwardError::Session(_)) => "refused",
            Err(ForwardError::NotOwner) => "not_owner",
            Err(ForwardError::Unreachable) => "unreachable",
            Err(ForwardError::NoAnswer) => "no_answer",
        };
        crate::metrics::forwarded(outcome, started.elapsed());
        res
    }

    async fn send_timed(
        self: Arc<Self>,
        node: String,
        id: SessionId,
        out: Outbound,
    ) -> Result<WireOk, ForwardError> {
        if let (Some(upload), Wire::Stage { upload: number, .. }) = (&out.upload, &out.cmd) {
            let subject = Self::subject(&node, "chunk");
            let head = format!("{id}");
            for part in upload.bytes.chunks(self.chunk) {
                let mut payload = zeroize::Zeroizing::new(Vec::with_capacity(44 + part.len()));
                payload.extend_from_slice(head.as_bytes());
                payload.extend_from_slice(&number.to_be_bytes());
                payload.extend_from_slice(part);
                let reply = self.request(subject.clone(), &payload).await?;
                match reply.as_slice() {
                    b"" => {}
                    b"full" => {
                        return Err(ForwardError::Session(crate::SessionError::Unavailable(
                            "too many uploads are held in memory; try again shortly",
                        )))
                    }
                    b"unknown" => {
                        return Err(ForwardError::Session(crate::SessionError::Unavailable(
                            "the session moved to another node while the upload was sent; upload it again",
                        )))
                    }
                    _ => return Err(ForwardError::Session(crate::SessionError::UploadReplaced)),
                }
            }
        }
        let body = serde_json::to_vec(&Request {
            session: id,
            cmd: out.cmd,
        })
        .map(zeroize::Zeroizing::new)
        .map_err(|_| {
            ForwardError::Session(crate::SessionError::Unavailable(
                "a command could not be encoded for another node",
            ))
        })?;
        let reply = self.request(Self::subject(&node, "cmd"), &body).await?;
        let answer: Result<WireOk, WireError> = serde_json::from_slice(&reply).map_err(|e| {
            tracing::error!(error = %e, %node, "unreadable answer from another node");
            ForwardError::Session(crate::SessionError::Unavailable(
                "the node that runs this session answered unreadably; try again",
            ))
        })?;
        match answer {
            Ok(ok) => Ok(ok),
            Err(e) => match e.into_session_error() {
                Some(e) => Err(ForwardError::Session(e)),
                None => Err(ForwardError::NotOwner),
            },
        }
    }

    /// Renews this node's lease; if it lapsed (the node was cut off longer than the
    /// lease), its sessions may be another node's now: it lets them all go (a commit
    /// would be refused anyway) and registers afresh.
    fn run_lease(self: Arc<Self>) {
        let tasks = self.registry.tasks().clone();
        actix::spawn(supervise::run_loop(tasks, Task::Lease, move |life| {
            self.clone().lease_loop(life)
        }));
    }

    async fn lease_loop(self: Arc<Self>, life: Lifeline) {
        let mut ticks = actix::clock::interval(self.config.renew_every);
        // Since when NATS has been unreachable, if it is.
        let mut cut_off: Option<Instant> = None;
        loop {
            ticks.tick().await;
            if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                // Handing over: the released lease must stay released.
                break;
            }
            life.round();
            self.sweep_uploads();
            // Cut off from NATS, this node can neither serve its sessions to the
            // other nodes nor tell them of its commits. A blip is ridden out; past
            // a lease's length it lets its lease lapse, so the nodes that still
            // reach NATS take its sessions over (SPEC §7: lost network).
            if self.nats.connection_state() != async_nats::connection::State::Connected {
                let since = *cut_off.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.config.lease_ttl {
                    tracing::warn!(node = %self.id, "NATS is not reachable; not renewing this node's lease");
                    continue;
                }
            } else {
                cut_off = None;
            }
            let sent = Instant::now();
            let renewed = {
                let _one = self.confirming.lock().await;
                self.store.renew_lease(self.config.lease_ttl).await
            };
            match renewed {
                Ok(true) => self.lease_renewed(sent),
                Ok(false) => {
                    if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    let _one = self.confirming.lock().await;
                    if !self.lease_fresh() {
                        self.lapsed().await;
                    }
                }
                Err(crate::store::StoreError::Closed) => break,
                Err(e) => tracing::warn!(error = %e, "cannot renew this node's lease"),
            }
        }
    }

    /// Takes over the sessions of nodes whose lease lapsed, in batches.
    fn run_adoption(self: Arc<Self>) {
        let tasks = self.registry.tasks().clone();
        actix::spawn(supervise::run_loop(tasks, Task::Adoption, move |life| {
            self.clone().adoption_loop(life)
        }));
    }

    fn run_watch_sweep(self: Arc<Self>) {
        let tasks = self.registry.tasks().clone();
        actix::spawn(supervise::run_loop(tasks, Task::WatchSweep, move |life| {
            self.clone().watch_sweep_loop(life)
        }));
    }

    /// Every [`WATCH_SWEEP`]: the store's seq of every watched session; each watcher
    /// still behind the seq the *previous* sweep saw gets a [`Refresh`] (and reads the
    /// store). A transition's announcement has a whole period to arrive first, so a
    /// busy cluster, whose announcements are late but not lost, pays no second read
    /// for them; a lost one is made up within two periods. NATS is not needed: this is
    /// how watchers follow their sessions while it is out.
    async fn watch_sweep_loop(self: Arc<Self>, life: Lifeline) {
        let mut ticks = actix::clock::interval(WATCH_SWEEP);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: std::collections::HashMap<SessionId, Seq> = Default::default();
        loop {
            ticks.tick().await;
            if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            life.round();
            let ids: Vec<SessionId> = self.watched.iter().map(|w| *w.key()).collect();
            let mut seen = std::collections::HashMap::with_capacity(ids.len());
            for batch in ids.chunks(WATCH_SWEEP_BATCH) {
                match self.store.seqs(batch.to_vec()).await {
                    Ok(seqs) => {
                        for (id, seq) in seqs {
                            if let Some(&before) = previous.get(&id) {
                                self.wake(
                                    id,
                                    Refresh {
                                        stored: Some(before),
                                    },
                                );
                            }
                            seen.insert(id, seq);
                        }
                    }
                    Err(crate::store::StoreError::Closed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the seqs of the watched sessions");
                        break;
                    }
                }
            }
            previous = seen;
        }
    }

    async fn adoption_loop(self: Arc<Self>, life: Lifeline) {
        let mut ticks = actix::clock::interval(self.config.adopt_every);
        loop {
            ticks.tick().await;
            if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            if self.nats.connection_state() != async_nats::connection::State::Connected {
                continue;
            }
            life.round();
            loop {
                match self.store.adopt_orphans(ADOPT_BATCH).await {
                    Ok(batch) => {
                        let n = batch.len();
                        if n > 0 {
                            crate::metrics::adopted(n);
                            tracing::info!(node = %self.id, sessions = n, "took over sessions of a node that is gone");
                        }
                        self.registry.adopt(batch);
                        if n < ADOPT_BATCH {
                            break;
                        }
                    }
                    Err(crate::store::StoreError::Closed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look for sessions to take over");
                        break;
                    }
                }
            }
        }
    }
}

/// Whether a parked ticket was ended by its session (a newer upload, or the end).
fn ticket_ended(ticket: &mut UploadTicket) -> bool {
    !matches!(
        ticket.ended.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
    )
}

/// The node as the registry's [`Router`].
struct Link(Arc<Node>);

impl Router for Link {
    fn forward(
        &self,
        node: String,
        id: SessionId,
        out: Outbound,
    ) -> RouteFuture<Result<WireOk, ForwardError>> {
        Box::pin(self.0.clone().send(node, id, out))
    }

    fn announce(&self, id: SessionId, seq: Seq) {
        let nats = self.0.nats.clone();
        let subject = format!("idv.events.{id}");
        let sealed = self.0.sealer.seal(&subject, seq.to_string().as_bytes());
        self.0.io.spawn(async move {
            let _ = nats.publish(subject, sealed.into()).await;
        });
    }

    fn watch(&self, id: SessionId, to: actix::Recipient<Refresh>) -> RouteFuture<()> {
        // Announcements are heard from the node's start (`serve_announcements`): once
        // here, every announcement after this moment wakes the watcher, so what it
        // reads next misses nothing (a transition committed meanwhile is in the read,
        // or announced after it).
        self.0.watched.insert(id, to);
        Box::pin(std::future::ready(()))
    }

    fn unwatch(&self, id: SessionId, to: &actix::Recipient<Refresh>) {
        self.0.watched.remove_if(&id, |_, watcher| watcher == to);
    }

    fn ready(&self) -> bool {
        self.0.nats.connection_state() == async_nats::connection::State::Connected
    }

    fn lease_fresh(&self) -> bool {
        self.0.lease_fresh()
    }

    fn confirm_lease(&self) -> RouteFuture<bool> {
        let node = self.0.clone();
        Box::pin(async move { node.confirm_lease().await })
    }

    fn released(&self, id: SessionId, epoch: i64) {
        self.0.store.forget_held(id, epoch);
    }

    fn held_epoch(&self, id: SessionId) -> Option<i64> {
        self.0.store.held_epoch(id)
    }
}

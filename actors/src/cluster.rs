//! Several nodes (SPEC §7): the [`Router`] over NATS, this node's lease, and the
//! adoption of the sessions of nodes that died.
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
//!   (the seq, as text). Nodes that watch the session (they hold its WebSocket
//!   subscribers or long-polls) subscribe to it and read the transitions from the
//!   store; an announcement is only a wake-up, so one lost costs latency, not data.
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
use crate::nats_link::{self, NatsOptions};
use crate::redact::redact_url;
use crate::registry::{Registry, ServeError};
use crate::route::{ForwardError, Outbound, RouteFuture, Router, Wire, WireError, WireOk};
use crate::session::messages::{Refresh, RotateToken, StageFile, UploadTicket};
use crate::session_store::ClusterStore;
use crate::staging::UploadBuffer;
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
}

impl ClusterConfig {
    /// The defaults: a 5 s lease renewed every 1.5 s, orphans looked for every second,
    /// so a dead node's sessions are taken over within about 6 s (SPEC §7: 10 s).
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            nats: NatsOptions::default(),
            lease_ttl: Duration::from_secs(5),
            renew_every: Duration::from_millis(1500),
            adopt_every: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
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
    /// The store refused to register this node.
    #[error("cannot register this node in the store: {0}")]
    Store(String),
}

/// Most sessions taken over in one batch.
const ADOPT_BATCH: usize = 500;

/// How long an upload held for another node waits for its bytes: the upload timeout
/// (SPEC §3: 30 s) with room to spare. Swept with the lease's beat.
const PARKED_UPLOAD_TTL: Duration = Duration::from_secs(60);

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
    /// The tasks that forward each watched session's announcements (each holds the
    /// session's subscription), by session.
    watch_tasks: DashMap<SessionId, tokio::task::JoinHandle<()>>,
    /// Uploads streaming in from other nodes, by session and ticket.
    uploads: DashMap<(SessionId, u64), Parked>,
    /// The largest chunk of an upload sent in one message.
    chunk: usize,
    /// Set when the node hands its sessions over: the lease and adoption loops end,
    /// so the released lease is never renewed and nothing more is taken.
    stopping: std::sync::atomic::AtomicBool,
}

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
        store
            .register_node(config.lease_ttl)
            .await
            .map_err(|e| ClusterError::Store(e.to_string()))?;
        let node = Arc::new(Node {
            id,
            nats,
            io,
            store,
            registry: registry.clone(),
            config,
            watch_tasks: DashMap::new(),
            uploads: DashMap::new(),
            chunk,
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        node.serve_commands().await?;
        registry.set_router(Arc::new(Link(node.clone())));
        node.clone().run_lease();
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

    /// Answers the commands and upload chunks other nodes send for this node's sessions.
    async fn serve_commands(self: &Arc<Self>) -> Result<(), ClusterError> {
        let nats_error = |e: &dyn std::fmt::Display| ClusterError::Nats {
            url: self.config.nats_url.clone(),
            reason: e.to_string(),
        };
        let mut commands = self
            .nats
            .subscribe(Self::subject(&self.id, "cmd"))
            .await
            .map_err(|e| nats_error(&e))?;
        let mut chunks = self
            .nats
            .subscribe(Self::subject(&self.id, "chunk"))
            .await
            .map_err(|e| nats_error(&e))?;
        self.nats.flush().await.map_err(|e| nats_error(&e))?;
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
                let reply = node.take_chunk(&msg.payload);
                if let Some(to) = msg.reply {
                    let _ = node.nats.publish(to, reply.into()).await;
                }
            }
        });
        Ok(())
    }

    async fn answer_command(&self, msg: async_nats::Message) {
        let Some(reply) = msg.reply else { return };
        let answer: Result<WireOk, WireError> =
            match serde_json::from_slice::<Request>(&msg.payload) {
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
                let nats = self.nats.clone();
                self.io.spawn(async move {
                    let _ = nats.publish(reply, body.into()).await;
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot encode an answer to another node"),
        }
    }

    /// Carries out a forwarded command here (never forwards it again).
    async fn run(&self, id: SessionId, cmd: Wire) -> Result<WireOk, WireError> {
        let r = &self.registry;
        let res = match cmd {
            Wire::Inspect(c) => r.serve(id, c).await.map(WireOk::Record),
            Wire::Retrieve(c) => r.serve(id, c).await.map(WireOk::Record),
            Wire::Decide(c) => r.serve(id, c).await.map(WireOk::Record),
            Wire::Cancel(c) => r.serve(id, c).await.map(WireOk::Record),
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

    async fn request(&self, subject: String, payload: Vec<u8>) -> Result<Vec<u8>, ForwardError> {
        use async_nats::RequestErrorKind;
        let nats = self.nats.clone();
        let sent = self
            .io
            .spawn(async move { nats.request(subject, payload.into()).await })
            .await
            .map_err(|_| ForwardError::Unreachable)?;
        match sent {
            Ok(msg) => Ok(msg.payload.to_vec()),
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
                let reply = self.request(subject.clone(), payload.to_vec()).await?;
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
        .map_err(|_| {
            ForwardError::Session(crate::SessionError::Unavailable(
                "a command could not be encoded for another node",
            ))
        })?;
        let reply = self.request(Self::subject(&node, "cmd"), body).await?;
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
        actix::spawn(async move {
            let mut ticks = actix::clock::interval(self.config.renew_every);
            // Since when NATS has been unreachable, if it is.
            let mut cut_off: Option<Instant> = None;
            loop {
                ticks.tick().await;
                if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                    // Handing over: the released lease must stay released.
                    break;
                }
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
                match self.store.renew_lease(self.config.lease_ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                            break;
                        }
                        tracing::warn!(node = %self.id, "this node's lease lapsed; letting its sessions go");
                        self.registry.relinquish_all(false);
                        if let Err(e) = self.store.register_node(self.config.lease_ttl).await {
                            tracing::error!(error = %e, "cannot register this node again");
                        }
                    }
                    Err(crate::store::StoreError::Closed) => break,
                    Err(e) => tracing::warn!(error = %e, "cannot renew this node's lease"),
                }
            }
        });
    }

    /// Takes over the sessions of nodes whose lease lapsed, in batches.
    fn run_adoption(self: Arc<Self>) {
        actix::spawn(async move {
            let mut ticks = actix::clock::interval(self.config.adopt_every);
            loop {
                ticks.tick().await;
                if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                if self.nats.connection_state() != async_nats::connection::State::Connected {
                    continue;
                }
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
        });
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
        self.0.io.spawn(async move {
            let _ = nats
                .publish(format!("idv.events.{id}"), seq.to_string().into())
                .await;
        });
    }

    fn watch(&self, id: SessionId, to: actix::Recipient<Refresh>) -> RouteFuture<()> {
        let node = self.0.clone();
        let nats = node.nats.clone();
        Box::pin(async move {
            match nats.subscribe(format!("idv.events.{id}")).await {
                Ok(mut sub) => {
                    // The subscription is in place at the server before the watcher
                    // reads the store: a request nobody answers comes back ("no
                    // responders") only after the server handled everything this
                    // connection sent before it, the subscription included.
                    let _ = tokio::time::timeout(
                        FLUSH_WAIT,
                        nats.request(format!("idv.sync.{}", node.id), Vec::new().into()),
                    )
                    .await;
                    let task = node.io.spawn(async move {
                        while sub.next().await.is_some() {
                            // A full mailbox already holds a `Refresh`: it reads everything.
                            if let Err(actix::prelude::SendError::Closed(_)) = to.try_send(Refresh)
                            {
                                break;
                            }
                        }
                    });
                    if let Some(old) = node.watch_tasks.insert(id, task) {
                        old.abort();
                    }
                }
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "cannot watch a session; reading it every few seconds instead")
                }
            }
        })
    }

    fn unwatch(&self, id: SessionId) {
        if let Some((_, task)) = self.0.watch_tasks.remove(&id) {
            // Dropping the subscription unsubscribes.
            task.abort();
        }
    }

    fn ready(&self) -> bool {
        self.0.nats.connection_state() == async_nats::connection::State::Connected
    }

    fn released(&self, id: SessionId) {
        self.0.store.forget_held(id);
    }
}

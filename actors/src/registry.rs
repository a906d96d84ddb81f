//! The registry of live session actors.
//!
//! A `DashMap` from session id to the actor's address: lookups never block the
//! runtime. A miss for a session that the store says is live rehydrates its actor;
//! a dead address (an actor killed by a panic outside its containment) is replaced
//! the same way, so no caller ever sees a closed mailbox.
//!
//! Several nodes (SPEC §7): a live session has one owner node. A command for a session
//! owned elsewhere goes to the owner through the [`Router`] and is answered as if here;
//! subscriptions and long-polls are served here, by a watching actor that hears of the
//! owner's commits (see [`crate::session`]). One node alone has no router.
//!
//! The registry reaches the store only through [`SessionStore`], and is the web
//! crate's only way to it: the web crate never sees the store. Session actors get the
//! store, the clock and a [`LiveSessions`] handle, not the registry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::{Addr, MailboxError, Recipient, Supervisor};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::clock::SharedClock;
use crate::commands::{plan_expiry, SessionCommand};
use crate::error::SessionError;
use crate::ids::{Seq, SessionId, SessionToken, TokenHash, UserId};
use crate::live::{Generation, LiveSessions};
use crate::model::{Decision, SessionEvent, SessionRecord, UserRecord, UserStatus};
use crate::route::{ForwardError, RouteFuture, Router};
use crate::session::messages::{
    AudienceLost, Change, CountAudience, Push, Subscribe, Subscribed, SubscriberId, Unsubscribe,
    WaitChange,
};
use crate::session::messages::{Caller, Inspect, Promote, Refresh, Relinquish, RotateToken, Tick};
use crate::session::SessionActor;
use crate::session_store::{Claim, SessionStore};
use crate::staging::{StagingBudget, DEFAULT_MAX_STAGED_BYTES};
use crate::store::{
    CreateOutcome, IdempotencyClaim, NewSession, StoreError, StoredFile, WebhookCounts,
};
use crate::supervise::{self, Task, Tasks};

/// How often a command is re-sent after the actor it went to died or restarted.
const MAX_ATTEMPTS: usize = 3;

/// How long a command for a session whose owner node is gone waits for another node to
/// take the session over (a dead node's lease lapses within seconds, SPEC §7: 10 s)
/// before it is answered `503` with `Retry-After`.
const TAKEOVER_PATIENCE: Duration = Duration::from_secs(12);

/// Pause between two tries to reach a session whose owner is gone or moving.
const TAKEOVER_BACKOFF: Duration = Duration::from_millis(200);

/// Most remembered owners of sessions run by other nodes; past it the memory is
/// cleared (it is only a shortcut: a wrong or missing entry costs one store read).
const MAX_REMOTE_ROUTES: usize = 65_536;

/// Default of `--max-live-sessions`: about 2 GiB of actors at 2 KiB each (measured by `benches/http_load`).
pub const DEFAULT_MAX_LIVE_SESSIONS: usize = 1_000_000;

/// Limits of the registry.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Most live (non-terminal) sessions at once; creating more is `503 unavailable`.
    pub max_live_sessions: usize,
    /// Most live sessions one API key (`owner`) holds at once; `None`: no quota.
    pub max_live_sessions_per_key: Option<usize>,
    /// Most subscribers one session holds; subscribing past it is `503 unavailable`.
    pub max_subscribers_per_session: usize,
    /// Most bytes of uploads held in memory across the broker (staged, or still
    /// streaming in); an upload past it is `503 unavailable`.
    pub max_staged_bytes: usize,
    /// Limits of particular API keys, tighter than the ones above (the demo's own key,
    /// SPEC §6), by key name.
    pub key_limits: HashMap<String, KeyLimits>,
    /// Shares of `max_staged_bytes` that the uploads of particular issuers' devices
    /// may take at most (the demo's issuer), by issuer name.
    pub issuer_staged_bytes: HashMap<String, usize>,
    /// The broker's supervised tasks: the expiry sweep, and the cluster's loops.
    pub tasks: Tasks,
}

/// Limits that one API key's sessions have of their own, on top of the broker's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLimits {
    /// Most live sessions the key holds at once (with
    /// [`RegistryConfig::max_live_sessions_per_key`], the smaller counts); creating
    /// more is `503 unavailable`.
    pub max_live_sessions: usize,
    /// Most subscribers one of its sessions holds (with
    /// [`RegistryConfig::max_subscribers_per_session`], the smaller counts).
    pub max_subscribers_per_session: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            max_live_sessions: DEFAULT_MAX_LIVE_SESSIONS,
            max_live_sessions_per_key: None,
            max_subscribers_per_session: crate::delivery::MAX_SUBSCRIBERS_PER_SESSION,
            max_staged_bytes: DEFAULT_MAX_STAGED_BYTES,
            key_limits: HashMap::new(),
            issuer_staged_bytes: HashMap::new(),
            tasks: Tasks::default(),
        }
    }
}

impl RegistryConfig {
    /// Most live sessions `owner` may hold; `None`: only the broker-wide bound.
    fn live_quota_of(&self, owner: &str) -> Option<usize> {
        let own = self.key_limits.get(owner).map(|l| l.max_live_sessions);
        match (self.max_live_sessions_per_key, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Most subscribers a session of `owner` holds.
    fn subscribers_of(&self, owner: &str) -> usize {
        self.key_limits
            .get(owner)
            .map_or(self.max_subscribers_per_session, |l| {
                l.max_subscribers_per_session
                    .min(self.max_subscribers_per_session)
            })
    }
}

/// Where a session is.
pub enum Lookup {
    /// Live, with its actor.
    Live(Addr<SessionActor>),
    /// Terminal: no actor, the store's record.
    Ended(SessionRecord),
    /// Live, owned by another node (its id).
    Remote(String),
}

/// Why the registry could not carry out a command here.
enum RouteError {
    /// The session is owned by another node (only when forwarding is not allowed).
    NotOwner,
    /// The command failed.
    Session(SessionError),
}

impl From<SessionError> for RouteError {
    fn from(e: SessionError) -> Self {
        RouteError::Session(e)
    }
}

impl From<StoreError> for RouteError {
    fn from(e: StoreError) -> Self {
        RouteError::Session(e.into())
    }
}

/// Why a command forwarded from another node was not carried out here.
pub enum ServeError {
    /// This node does not own the session (any more): the sender asks again.
    NotOwner,
    /// The command failed.
    Session(SessionError),
}

/// A handle to the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// A live session's actor, and which start of it this is.
struct Live {
    addr: Addr<SessionActor>,
    generation: Generation,
    /// Whether the actor only watches a session owned by another node.
    watching: bool,
    /// With several nodes, the ownership epoch this owner actor runs under: when it
    /// stops, that epoch (and no newer one, taken for a new actor) is let go.
    epoch: Option<i64>,
}

struct Inner {
    /// Live sessions' actors. DashMap shards its locks, so lookups from every worker
    /// thread proceed in parallel and no lock is held across an `.await`.
    live: DashMap<SessionId, Live>,
    /// Numbers the actors started (see [`Generation`]).
    generations: AtomicU64,
    /// The token hash of every live session that has its record in memory, kept by the
    /// session actors themselves. A token that is not the session's own is told apart
    /// here, without the store: another live session's (`403`) or nobody's live one
    /// (`401`), so a probe with random tokens costs no store read. Keyed by the SHA-256,
    /// so the lookup's timing says nothing about any token.
    tokens: DashMap<[u8; 32], SessionId>,
    /// The owner (API key name) of every live session this registry created or
    /// restored, released when the session ends: what the per-key quota counts.
    owners: DashMap<SessionId, Arc<str>>,
    /// Live sessions per owner (entries at zero are removed).
    /// Keyed by the same `Arc` every session of the owner holds in `owners`.
    per_owner: DashMap<Arc<str>, usize>,
    store: Arc<dyn SessionStore>,
    clock: SharedClock,
    config: RegistryConfig,
    /// The staging budget every upload reserves from and every session actor's staged
    /// files hold; shared across threads (atomic inside).
    staging: Arc<StagingBudget>,
    /// Shares of `staging` for the uploads of particular issuers' devices
    /// ([`RegistryConfig::issuer_staged_bytes`]).
    issuer_staging: HashMap<String, Arc<StagingBudget>>,
    /// With several nodes: the way to the others (set once, at start).
    router: OnceLock<Arc<dyn Router>>,
    /// The owner node of sessions run elsewhere, as last seen (a shortcut, see
    /// [`MAX_REMOTE_ROUTES`]).
    remote: DashMap<SessionId, String>,
    /// Set when this node hands its sessions over (SIGTERM): it takes none any more.
    handing_over: AtomicBool,
    /// Owner actors started before this generation were told to let their sessions go
    /// (this node's lease lapsed): until they stop, lookups pass them by, so nothing
    /// is answered from what they remember (SPEC §7: no read older than a transition
    /// another node acknowledged).
    fence: AtomicU64,
}

impl Registry {
    /// An empty registry over `store`.
    pub fn new(store: Arc<dyn SessionStore>, clock: SharedClock, config: RegistryConfig) -> Self {
        let staging = StagingBudget::new(config.max_staged_bytes);
        let issuer_staging = config
            .issuer_staged_bytes
            .iter()
            .map(|(iss, bytes)| (iss.clone(), StagingBudget::within(&staging, *bytes)))
            .collect();
        Self {
            inner: Arc::new(Inner {
                live: DashMap::new(),
                generations: AtomicU64::new(0),
                tokens: DashMap::new(),
                owners: DashMap::new(),
                per_owner: DashMap::new(),
                store,
                clock,
                issuer_staging,
                staging,
                config,
                router: OnceLock::new(),
                remote: DashMap::new(),
                handing_over: AtomicBool::new(false),
                fence: AtomicU64::new(0),
            }),
        }
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The broker-wide budget for uploads held in memory.
    pub fn staging_budget(&self) -> &Arc<StagingBudget> {
        &self.inner.staging
    }

    /// The budget an upload of `device` reserves from: its issuer's share of the
    /// broker-wide one if it has one (the demo's), else the broker-wide one.
    pub fn staging_budget_for(&self, device: &crate::ids::DeviceId) -> &Arc<StagingBudget> {
        self.inner
            .issuer_staging
            .get(&device.issuer)
            .unwrap_or(&self.inner.staging)
    }

    /// How many sessions have an actor.
    pub fn live_count(&self) -> usize {
        self.inner.live.len()
    }

    /// How many live sessions the API key `owner` holds.
    pub fn live_count_of(&self, owner: &str) -> usize {
        self.inner.per_owner.get(owner).map_or(0, |n| *n)
    }

    /// On start, before listening: expires what became overdue while the broker was
    /// down, then starts an actor (and its expiry timer) for every live session.
    /// Returns (expired, restored).
    pub async fn restore(&self) -> Result<(usize, usize), StoreError> {
        let now = self.inner.clock.now();
        let live = self.inner.store.load_live_sessions().await?;
        // The same planning as the actors' own timers, committed in one transaction.
        let (overdue, live): (Vec<_>, Vec<_>) = live
            .into_iter()
            .map(|record| (plan_expiry(&record, now), record))
            .partition(|(expiry, _)| expiry.is_some());
        let writes: Vec<_> = overdue.into_iter().filter_map(|(w, _)| w).collect();
        let expired = match self.inner.store.commit_transitions(writes.clone()).await {
            Ok(committed) => committed.len(),
            // Several nodes: another node moved one of them meanwhile (it took the
            // session over, or expired it). Each on its own then, skipping those.
            Err(StoreError::Stale) | Err(StoreError::NotOwner) => {
                let mut expired = 0;
                for write in writes {
                    match self.inner.store.commit_transition(write).await {
                        Ok(_) => expired += 1,
                        Err(StoreError::Stale) | Err(StoreError::NotOwner) => {}
                        Err(e) => return Err(e),
                    }
                }
                expired
            }
            Err(e) => return Err(e),
        };
        let restored = live.len();
        for (_, record) in live {
            self.inner.hold(record.id, &record.owner, None);
            self.spawn(record.id, Some(record));
        }
        Ok((expired, restored))
    }

    /// The live actor for session `id`, starting one if none runs. `record` is given only
    /// when it is known current (a create, the restore at start); otherwise the actor
    /// loads the session itself, inside its mailbox, so a record read before a racing
    /// terminal commit can never bring the session back to life.
    fn spawn(&self, id: SessionId, record: Option<SessionRecord>) -> Addr<SessionActor> {
        match self.inner.live.entry(id) {
            Entry::Occupied(e) if e.get().addr.connected() => e.get().addr.clone(),
            entry => {
                let generation = Generation(self.inner.generations.fetch_add(1, Ordering::Relaxed));
                let store = self.inner.store.clone();
                let clock = self.inner.clock.clone();
                let live: Arc<dyn LiveSessions> = self.inner.clone();
                let addr = Supervisor::start(move |_| {
                    SessionActor::new(id, record, store, clock, live, generation)
                });
                let epoch = self.inner.router.get().and_then(|r| r.held_epoch(id));
                entry.insert(Live {
                    addr: addr.clone(),
                    generation,
                    watching: false,
                    epoch,
                });
                addr
            }
        }
    }

    /// The actor that watches session `id` (owned by another node) for the subscribers
    /// and long-polls of this node, starting one if none runs.
    fn watcher(&self, id: SessionId) -> Addr<SessionActor> {
        match self.inner.live.entry(id) {
            Entry::Occupied(e) if e.get().addr.connected() => e.get().addr.clone(),
            entry => {
                let generation = Generation(self.inner.generations.fetch_add(1, Ordering::Relaxed));
                let store = self.inner.store.clone();
                let clock = self.inner.clock.clone();
                let live: Arc<dyn LiveSessions> = self.inner.clone();
                let addr = Supervisor::start(move |_| {
                    SessionActor::watching(id, store, clock, live, generation)
                });
                entry.insert(Live {
                    addr: addr.clone(),
                    generation,
                    watching: true,
                    epoch: None,
                });
                addr
            }
        }
    }

    /// This node now owns session `id` (it claimed or adopted it): its watching actor,
    /// if one runs, becomes the owner; else an owner actor starts (from `record` when
    /// it is known current, else from the store).
    fn own(&self, id: SessionId, owner: &str, record: Option<SessionRecord>) -> Addr<SessionActor> {
        self.inner.remote.remove(&id);
        if let Some(mut live) = self.inner.live.get_mut(&id) {
            if live.addr.connected() {
                if live.watching {
                    live.watching = false;
                    live.epoch = self.inner.router.get().and_then(|r| r.held_epoch(id));
                    live.addr.do_send(Promote);
                    self.inner.hold(id, owner, None);
                }
                return live.addr.clone();
            }
        }
        self.inner.hold(id, owner, None);
        self.spawn(id, record)
    }

    /// With several nodes: the way to the other nodes. Set once, at start.
    pub fn set_router(&self, router: Arc<dyn Router>) {
        let _ = self.inner.router.set(router);
    }

    /// Whether the link to the other nodes is up (always with one node).
    pub fn router_ready(&self) -> bool {
        self.inner.router.get().is_none_or(|r| r.ready())
    }

    /// This node took over `sessions` (their owner's lease lapsed): their actors start
    /// here, expiring at once what is overdue (the path of a restart).
    pub fn adopt(&self, sessions: Vec<SessionRecord>) {
        if self.inner.handing_over.load(Ordering::Acquire) {
            // Leaving: they are released with this node's lease, to the others.
            return;
        }
        for record in sessions {
            let owner = record.owner.clone();
            self.own(record.id, &owner, Some(record));
        }
    }

    /// Stops every session actor this node owns without ending the sessions: another
    /// node takes them over. With `for_good` (SIGTERM) this node takes no session
    /// any more; otherwise (its lease lapsed) it may take sessions again.
    pub fn relinquish_all(&self, for_good: bool) {
        if for_good {
            self.inner.handing_over.store(true, Ordering::Release);
        }
        // Before the messages go: from here on no lookup hands out these actors.
        self.inner.fence.store(
            self.inner.generations.load(Ordering::Acquire),
            Ordering::Release,
        );
        for entry in self.inner.live.iter() {
            if !entry.value().watching {
                entry.value().addr.do_send(Relinquish);
            }
        }
    }

    /// How many sessions this node runs as their owner.
    pub fn owned_count(&self) -> usize {
        self.inner.live.iter().filter(|l| !l.watching).count()
    }

    /// Removes `addr` for `id`, if it is still the one registered (idempotent).
    fn forget(&self, id: SessionId, addr: &Addr<SessionActor>) {
        let removed = self.inner.live.remove_if(&id, |_, live| live.addr == *addr);
        // An owner actor passed by (stopped, or fenced off after a lapse) lets its
        // epoch go here: when it stops, its own forget finds no entry any more.
        if let (
            Some(router),
            Some((
                _,
                Live {
                    epoch: Some(epoch), ..
                },
            )),
        ) = (self.inner.router.get(), removed)
        {
            router.released(id, epoch);
        }
    }

    /// Whether `hash` is the token of a live session.
    fn is_live_token(&self, hash: TokenHash) -> bool {
        // The id is copied out first: no lock of one map is held while taking the other's.
        let owner = self.inner.tokens.get(&hash.0).map(|id| *id);
        owner.is_some_and(|id| self.inner.live.contains_key(&id))
    }

    /// Finds a session: its live actor (rehydrated if needed), its owner node if another
    /// node runs it, or its terminal record.
    pub async fn lookup(&self, id: SessionId) -> Result<Option<Lookup>, StoreError> {
        if let Some((addr, watching, generation)) = self
            .inner
            .live
            .get(&id)
            .map(|l| (l.addr.clone(), l.watching, l.generation))
        {
            // An owner actor answers from memory only while this node's lease is
            // surely valid (SPEC §7); else the lease is renewed first, and if it had
            // lapsed, every owner actor here is let go (fenced) and the session is
            // looked up afresh: it may be another node's now.
            let trusted = watching
                || match self.inner.router.get() {
                    Some(router) => router.lease_fresh() || router.confirm_lease().await,
                    None => true,
                };
            let fenced = generation.0 < self.inner.fence.load(Ordering::Acquire);
            if !addr.connected() || (!watching && fenced) {
                // Stopped, or letting its session go.
                self.forget(id, &addr);
            } else if !trusted {
                // The lease could not be renewed (the store is unreachable): whether
                // another node took the session cannot be known. The actor stays; the
                // request is answered `503`.
                return Err(StoreError::NoLease);
            } else if !watching {
                return Ok(Some(Lookup::Live(addr)));
            }
        }
        if self.inner.router.get().is_some() {
            if let Some(node) = self.inner.remote.get(&id).map(|n| n.clone()) {
                return Ok(Some(Lookup::Remote(node)));
            }
        }
        let Some(record) = self.inner.store.load_session(id).await? else {
            return Ok(None);
        };
        if record.status.is_terminal() {
            return Ok(Some(Lookup::Ended(record)));
        }
        if self.inner.router.get().is_none() {
            return Ok(Some(Lookup::Live(self.spawn(record.id, None))));
        }
        if self.inner.handing_over.load(Ordering::Acquire) {
            // Handing over: the session stays with whoever takes it; ask again later.
            return Ok(Some(Lookup::Remote(String::new())));
        }
        Ok(match self.inner.store.claim(id).await? {
            Claim::Mine => Some(Lookup::Live(self.own(id, &record.owner, None))),
            Claim::Other(node) => {
                if self.inner.remote.len() >= MAX_REMOTE_ROUTES {
                    self.inner.remote.clear();
                }
                self.inner.remote.insert(id, node.clone());
                Some(Lookup::Remote(node))
            }
            // It ended between the two reads.
            Claim::NotLive => self.inner.store.load_session(id).await?.map(Lookup::Ended),
        })
    }

    /// Creates a session (or replays an idempotent create) and starts its actor.
    /// Returns the session, the token to hand out (`token`, or a fresh one for the
    /// replayed session) and whether it was a replay.
    pub async fn create(
        &self,
        record: SessionRecord,
        token: SessionToken,
        claim: Option<IdempotencyClaim>,
    ) -> Result<(SessionRecord, SessionToken, bool), SessionError> {
        if self.live_count() >= self.inner.config.max_live_sessions {
            return Err(SessionError::Unavailable(
                "too many live sessions; try again later",
            ));
        }
        // Reserved before the commit, so concurrent creates cannot overshoot the quota;
        // given back unless a session was created.
        let id = record.id;
        if !self.inner.hold(
            id,
            &record.owner,
            self.inner.config.live_quota_of(&record.owner),
        ) {
            return Err(SessionError::Unavailable(
                "this API key holds as many live sessions as it may; try again later",
            ));
        }
        let outcome = self.create_held(record, token, claim).await;
        if !matches!(outcome, Ok((_, _, false))) {
            self.inner.release(id);
        }
        outcome
    }

    async fn create_held(
        &self,
        record: SessionRecord,
        token: SessionToken,
        claim: Option<IdempotencyClaim>,
    ) -> Result<(SessionRecord, SessionToken, bool), SessionError> {
        match self
            .inner
            .store
            .create_session(
                NewSession {
                    record: record.clone(),
                },
                claim,
            )
            .await?
        {
            CreateOutcome::Created => {
                metrics::counter!(crate::metrics::SESSIONS_CREATED).increment(1);
                self.spawn(record.id, Some(record.clone()));
                Ok((record, token, false))
            }
            CreateOutcome::Replayed(existing, token) => {
                // The store already holds the new token's hash; tell the live actor so
                // the old token stops working before the new one is handed out.
                self.call(existing.id, RotateToken).await?;
                Ok((*existing, token, true))
            }
            CreateOutcome::Conflict => Err(SessionError::IdempotencyConflict),
        }
    }

    /// Sends `cmd` to the session's actor, or answers it from the store if the session
    /// ended. A command the actor refused with [`SessionError::Restarted`] (a contained
    /// panic: nothing was committed) is re-sent to the restarted actor. A command whose
    /// actor died while holding it (`MailboxError::Closed`) may have committed: it is
    /// re-sent only if it commits nothing ([`SessionCommand::retry_safe`]), else
    /// answered `503`, so a committed approve is never re-run into a false `409`.
    ///
    /// A session owned by another node gets the command there (SPEC §7). If that node
    /// is gone, the command waits (bounded) for another node to take the session over.
    pub async fn call<C: SessionCommand>(
        &self,
        id: SessionId,
        cmd: C,
    ) -> Result<C::Output, SessionError>
    where
        SessionActor: actix::Handler<C>,
        C::Result: Send,
    {
        match self.dispatch(id, cmd, true).await {
            Ok(out) => Ok(out),
            Err(RouteError::Session(e)) => Err(e),
            Err(RouteError::NotOwner) => Err(SessionError::Unavailable(
                "the session is moving between nodes; try again",
            )),
        }
    }

    /// Carries out a command another node forwarded: here, or not at all (a node that
    /// does not own the session answers [`ServeError::NotOwner`], never forwards).
    pub async fn serve<C: SessionCommand>(
        &self,
        id: SessionId,
        cmd: C,
    ) -> Result<C::Output, ServeError>
    where
        SessionActor: actix::Handler<C>,
        C::Result: Send,
    {
        match self.dispatch(id, cmd, false).await {
            Ok(out) => Ok(out),
            Err(RouteError::Session(e)) => Err(ServeError::Session(e)),
            Err(RouteError::NotOwner) => Err(ServeError::NotOwner),
        }
    }

    async fn dispatch<C: SessionCommand>(
        &self,
        id: SessionId,
        cmd: C,
        forward: bool,
    ) -> Result<C::Output, RouteError>
    where
        SessionActor: actix::Handler<C>,
        C::Result: Send,
    {
        let patience = std::time::Instant::now() + TAKEOVER_PATIENCE;
        let mut last = SessionError::Unavailable("the session is restarting; try again");
        let mut attempts = 0;
        while attempts < MAX_ATTEMPTS {
            let addr = match self.lookup(id).await? {
                None => return Err(SessionError::NotFound.into()),
                Some(Lookup::Ended(record)) => {
                    return Ok(cmd.on_ended(&record, self.inner.clock.now())?)
                }
                Some(Lookup::Live(addr)) => addr,
                Some(Lookup::Remote(node)) => {
                    let Some(out) = cmd.to_wire() else {
                        // Served here, by an actor that watches the owner's commits.
                        if !forward {
                            return Err(RouteError::NotOwner);
                        }
                        let addr = self.watcher(id);
                        attempts += 1;
                        match addr.send(cmd.clone()).await {
                            Ok(Err(SessionError::Restarted)) | Err(_) => continue,
                            Ok(res) => return Ok(res?),
                        }
                    };
                    let (Some(router), true, false) =
                        (self.inner.router.get(), forward, node.is_empty())
                    else {
                        if !forward {
                            return Err(RouteError::NotOwner);
                        }
                        return Err(SessionError::Unavailable(
                            "this node is shutting down; try again",
                        )
                        .into());
                    };
                    // An upload's bytes went to that node: they are not sent again
                    // to another (its ticket is that node's), the device sends again.
                    let carries_upload = out.upload.is_some();
                    let gone = match router.forward(node.clone(), id, out).await {
                        Ok(ok) => return Ok(C::from_wire(ok)?),
                        Err(ForwardError::Session(SessionError::Restarted)) => {
                            attempts += 1;
                            false
                        }
                        Err(ForwardError::Session(e)) => return Err(e.into()),
                        Err(ForwardError::NotOwner) | Err(ForwardError::Unreachable) => true,
                        Err(ForwardError::NoAnswer) if cmd.retry_safe() => true,
                        Err(ForwardError::NoAnswer) => {
                            // The route goes too: the owner may be stalled, and the
                            // client's retry must not wait on it again (SPEC §7).
                            self.inner.remote.remove(&id);
                            return Err(SessionError::Unavailable(
                                "the node that runs this session did not answer; \
                                 read the session before trying again",
                            )
                            .into());
                        }
                    };
                    // Ask the store again who owns it; its owner may have died, in which
                    // case the session is ours to claim once that node's lease lapses.
                    self.inner.remote.remove(&id);
                    if gone && carries_upload {
                        return Err(SessionError::Unavailable(
                            "the session moved to another node while the upload was sent; upload it again",
                        )
                        .into());
                    }
                    if gone {
                        if std::time::Instant::now() >= patience {
                            return Err(SessionError::Unavailable(
                                "the node that ran this session is gone and another is taking it over; try again",
                            )
                            .into());
                        }
                        actix::clock::sleep(TAKEOVER_BACKOFF).await;
                    }
                    continue;
                }
            };
            attempts += 1;
            match addr.send(cmd.clone()).await {
                Ok(Err(SessionError::Restarted)) => {
                    last = SessionError::Unavailable("the session is restarting; try again");
                }
                Ok(res) => return Ok(res?),
                Err(MailboxError::Closed) | Err(MailboxError::Timeout) => {
                    // Stopped (ended, or killed by a panic): drop the dead address; the
                    // next lookup asks the store whether it is live or ended.
                    self.forget(id, &addr);
                    if !cmd.retry_safe() {
                        return Err(SessionError::Unavailable(
                            "the session restarted while handling this request; \
                             read it before trying again",
                        )
                        .into());
                    }
                }
            }
        }
        Err(last.into())
    }

    /// Reads a session for `caller`. A session token that is not this session's is
    /// `403` if it belongs to another session, `401` if to none.
    pub async fn inspect(
        &self,
        id: SessionId,
        caller: Caller,
    ) -> Result<SessionRecord, SessionError> {
        let token = client_token(&caller);
        let res = self.call(id, Inspect { caller }).await;
        self.refine(res, token).await
    }

    /// Subscribes to a session's transitions. Returns the subscription (its snapshot
    /// seq is the seam) and the transitions after `after` up to that seq, read from
    /// the events log: together with the pushes that follow, every transition after
    /// `after` exactly once, in order.
    pub async fn subscribe(
        &self,
        id: SessionId,
        caller: Caller,
        after: Option<Seq>,
        subscriber: Recipient<Push>,
        lost: Recipient<AudienceLost>,
        evicted: Arc<AtomicBool>,
    ) -> Result<(Subscribed, Vec<SessionEvent>), SessionError> {
        let token = client_token(&caller);
        let res = self
            .call(
                id,
                Subscribe {
                    caller,
                    after,
                    subscriber,
                    lost,
                    evicted,
                },
            )
            .await;
        let subscribed = self.refine(res, token).await?;
        let replay = match after {
            Some(after) if after < subscribed.snapshot.seq => {
                let upto = subscribed.snapshot.seq;
                // Creation (seq 1) is not a transition: it is never replayed.
                let events = self
                    .inner
                    .store
                    .events_after(id, after.max(Seq::FIRST))
                    .await;
                match events {
                    Ok(mut events) => {
                        events.retain(|e| e.seq <= upto);
                        events
                    }
                    Err(e) => {
                        if let Some(sub) = subscribed.id {
                            self.unsubscribe(id, sub);
                        }
                        return Err(e.into());
                    }
                }
            }
            _ => Vec::new(),
        };
        Ok((subscribed, replay))
    }

    /// Removes a subscriber from its session if the session is still live (idempotent;
    /// never rehydrates a session just for this).
    pub fn unsubscribe(&self, id: SessionId, subscriber: SubscriberId) {
        if let Some(live) = self.inner.live.get(&id) {
            live.addr.do_send(Unsubscribe { id: subscriber });
        }
    }

    /// A long-poll: the session now if `seq > after`, else a receiver for its next
    /// transition.
    pub async fn wait_change(
        &self,
        id: SessionId,
        caller: Caller,
        after: Option<Seq>,
    ) -> Result<Change, SessionError> {
        let token = client_token(&caller);
        let res = self.call(id, WaitChange { caller, after }).await;
        self.refine(res, token).await
    }

    /// How many subscribers a session has (0 once it ended).
    pub async fn subscriber_count(&self, id: SessionId) -> Result<usize, SessionError> {
        Ok(self.call(id, CountAudience).await?.subscribers)
    }

    /// How many long-polls wait on a session (0 once it ended).
    pub async fn waiter_count(&self, id: SessionId) -> Result<usize, SessionError> {
        Ok(self.call(id, CountAudience).await?.waiters)
    }

    /// Tells a foreign session token (`403`) from one that is no session's (`401`).
    ///
    /// The session answered first, from memory if it is live: a wrong token for a live
    /// session never costs a session load. A token that is not its own is looked up
    /// among the live sessions' tokens, in memory; only a token that no live session
    /// has is looked up in the store (one read of the session the token names, by
    /// primary key): it may be the token of an ended session, which is still a valid
    /// credential (`403`, SPEC §1), or of none (`401`). Those reads are bounded like
    /// every other: by the per-IP rate limit and the store's queue bound (`503` past it).
    async fn refine<T>(
        &self,
        res: Result<T, SessionError>,
        token: Option<(TokenHash, Option<SessionId>)>,
    ) -> Result<T, SessionError> {
        let Some((t, claims)) = token else { return res };
        match res {
            Err(SessionError::Unauthorized) => {
                let foreign =
                    self.is_live_token(t) || self.inner.store.token_in_use(t, claims).await?;
                Err(if foreign {
                    SessionError::Forbidden("this token belongs to another session")
                } else {
                    SessionError::Unauthorized
                })
            }
            // A token of no session learns nothing, not even whether the id exists.
            Err(SessionError::NotFound)
                if !self.is_live_token(t) && !self.inner.store.token_in_use(t, claims).await? =>
            {
                Err(SessionError::Unauthorized)
            }
            res => res,
        }
    }

    /// The decision of a session owned by `owner`: `409` until it is terminal.
    pub async fn decision(&self, id: SessionId, owner: &str) -> Result<Decision, SessionError> {
        let decision = self
            .inner
            .store
            .load_decision(id)
            .await?
            .ok_or(SessionError::NotFound)?;
        crate::commands::authorize(
            &decision.session,
            &Caller::Backend {
                owner: owner.to_owned(),
            },
        )?;
        if !decision.session.status.is_terminal() {
            return Err(SessionError::InvalidState(decision.session.status));
        }
        Ok(decision)
    }

    /// A stored file of a session owned by `owner`; `NotFound` for another key's
    /// session, an unknown file, or one deleted by a purge.
    pub async fn file(
        &self,
        id: SessionId,
        file_id: crate::ids::FileId,
        owner: &str,
    ) -> Result<StoredFile, SessionError> {
        match self.inner.store.load_file(id, file_id).await? {
            Some(file) if file.owner == owner => Ok(file),
            _ => Err(SessionError::NotFound),
        }
    }

    /// Every `every`, makes sure each overdue live session is expired: its actor (started
    /// again if it is gone, e.g. killed by a panic) re-checks its expiry. The actors'
    /// own timers do this within a second; this is the net under them, so a session
    /// expires "with or without traffic" even when its actor died. Stops once the store
    /// is closed.
    pub fn start_expiry_sweep(&self, every: std::time::Duration) {
        let registry = self.clone();
        actix::spawn(supervise::run_loop(
            self.tasks().clone(),
            Task::ExpirySweep,
            move |life| {
                let registry = registry.clone();
                async move {
                    let mut ticks = actix::clock::interval(every);
                    loop {
                        ticks.tick().await;
                        life.round();
                        match registry.sweep_overdue().await {
                            Ok(_) => {}
                            Err(StoreError::Closed) => break,
                            Err(e) => tracing::error!(error = %e, "expiry sweep failed"),
                        }
                    }
                }
            },
        ));
    }

    /// The broker's supervised tasks.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.config.tasks
    }

    /// One pass of the expiry sweep; returns how many overdue sessions it nudged.
    pub async fn sweep_overdue(&self) -> Result<usize, StoreError> {
        let overdue = self
            .inner
            .store
            .overdue_live(self.inner.clock.now(), 1024)
            .await?;
        for id in &overdue {
            if let Some(Lookup::Live(addr)) = self.lookup(*id).await? {
                addr.do_send(Tick);
            }
        }
        Ok(overdue.len())
    }

    /// Asks every live session to re-check its expiry now (after the clock moved).
    pub fn tick_all(&self) {
        for entry in self.inner.live.iter() {
            entry.value().addr.do_send(Tick);
        }
    }
}

impl Registry {
    /// How a session's webhooks fared (for `GET /v1/sessions/{id}`).
    pub async fn webhook_counts(&self, id: SessionId) -> Result<WebhookCounts, SessionError> {
        Ok(self.inner.store.webhook_counts(id).await?)
    }

    /// A user as the key `owner` sees them.
    pub async fn user(
        &self,
        owner: String,
        user: UserId,
    ) -> Result<Option<UserRecord>, SessionError> {
        Ok(self.inner.store.user(owner, user).await?)
    }

    /// Sets a user's status for the key `owner`, now.
    pub async fn set_user_status(
        &self,
        owner: String,
        user: UserId,
        status: UserStatus,
    ) -> Result<UserRecord, SessionError> {
        let now = self.inner.clock.now();
        Ok(self
            .inner
            .store
            .set_user_status(owner, user, status, now)
            .await?)
    }

    /// Whether the store answers (readiness).
    pub async fn ping_store(&self) -> Result<(), StoreError> {
        self.inner.store.ping().await
    }
}

impl Inner {
    /// Counts session `id` against `owner`, unless that would take the owner past
    /// `quota`; returns whether it is counted.
    fn hold(&self, id: SessionId, owner: &str, quota: Option<usize>) -> bool {
        if self.owners.contains_key(&id) {
            // Already counted (a session taken over again, or an actor started again).
            return true;
        }
        let name = {
            // One copy of the owner's name, shared by all its sessions.
            let mut n = match self.per_owner.get_mut(owner) {
                Some(n) => n,
                None => self.per_owner.entry(Arc::from(owner)).or_insert(0),
            };
            if quota.is_some_and(|q| *n >= q) {
                return false;
            }
            *n += 1;
            n.key().clone()
        };
        self.owners.insert(id, name);
        true
    }

    /// Stops counting session `id` against its owner (idempotent).
    fn release(&self, id: SessionId) {
        if let Some((_, owner)) = self.owners.remove(&id) {
            if let Entry::Occupied(mut n) = self.per_owner.entry(owner) {
                *n.get_mut() = n.get().saturating_sub(1);
                if *n.get() == 0 {
                    n.remove();
                }
            }
        }
    }
}

impl LiveSessions for Inner {
    fn forget(&self, id: SessionId, generation: Generation) {
        let removed = self
            .live
            .remove_if(&id, |_, live| live.generation == generation);
        // Only an actor whose session ended (or never existed) forgets itself: the
        // session leaves its owner's quota for good.
        self.release(id);
        // The ownership epoch it ran under goes too; compared and removed at once in
        // the store's map, so an epoch a new claim took meanwhile (for a new actor)
        // stays.
        if let (
            Some(router),
            Some((
                _,
                Live {
                    epoch: Some(epoch), ..
                },
            )),
        ) = (self.router.get(), removed)
        {
            router.released(id, epoch);
        }
    }

    fn max_subscribers(&self, owner: &str) -> usize {
        self.config.subscribers_of(owner)
    }

    fn track_token(&self, id: SessionId, hash: TokenHash) {
        self.tokens.insert(hash.0, id);
    }

    fn untrack_token(&self, id: SessionId, hash: TokenHash) {
        self.tokens.remove_if(&hash.0, |_, owner| *owner == id);
    }

    fn announce(&self, id: SessionId, seq: Seq) {
        if let Some(router) = self.router.get() {
            router.announce(id, seq);
        }
    }

    fn watch(&self, id: SessionId, to: actix::Recipient<Refresh>) -> RouteFuture<()> {
        match self.router.get() {
            Some(router) => router.watch(id, to),
            None => Box::pin(std::future::ready(())),
        }
    }

    fn unwatch(&self, id: SessionId) {
        if let Some(router) = self.router.get() {
            router.unwatch(id);
        }
    }
}

fn client_token(caller: &Caller) -> Option<(TokenHash, Option<SessionId>)> {
    match caller {
        Caller::Client { token, claims } => Some((*token, *claims)),
        _ => None,
    }
}

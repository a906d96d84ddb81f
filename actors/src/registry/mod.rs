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
//!
//! Layout:
//! - this module: the [`Registry`] handle the web crate and the cluster use (create,
//!   commands, reads, subscriptions, the 401/403 token check, store pass-throughs);
//! - `directory`: the local actor directory (which actor runs which session, per-key
//!   quotas, live tokens, the fence), bookkeeping only;
//! - `dispatch`: finding a session and carrying a command out there or on its owner
//!   node: claim, forward, retries and backoff;
//! - `restore`: start-up (expire the overdue, restore the live) and the expiry sweep.

mod directory;
mod dispatch;
mod restore;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use actix::{Addr, Recipient, Supervisor};
use dashmap::DashMap;

use crate::clock::SharedClock;
use crate::error::SessionError;
use crate::ids::{Seq, SessionId, SessionToken, TokenHash, UserId};
use crate::live::{Generation, LiveSessions};
use crate::model::{Decision, SessionEvent, SessionRecord, UserRecord, UserStatus};
use crate::route::{RouteFuture, Router};
use crate::session::messages::{
    AudienceLost, Change, CountAudience, Push, Subscribe, Subscribed, SubscriberId, Unsubscribe,
    WaitChange,
};
use crate::session::messages::{Caller, Inspect, Promote, Refresh, Relinquish, RotateToken};
use crate::session::SessionActor;
use crate::session_store::SessionStore;
use crate::staging::{StagingBudget, DEFAULT_MAX_STAGED_BYTES};
use crate::store::{
    CreateOutcome, IdempotencyClaim, NewSession, StoreError, StoredFile, WebhookCounts,
};
use crate::supervise::Tasks;
use directory::Directory;

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

struct Inner {
    /// The actors of this process, quotas and live tokens.
    directory: Directory<Addr<SessionActor>>,
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
    /// The owner node of sessions run elsewhere, as last seen (a shortcut: a wrong or
    /// missing entry costs one store read; bounded by `dispatch::MAX_REMOTE_ROUTES`).
    remote: DashMap<SessionId, String>,
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
                directory: Directory::default(),
                store,
                clock,
                issuer_staging,
                staging,
                config,
                router: OnceLock::new(),
                remote: DashMap::new(),
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
        self.inner.directory.len()
    }

    /// How many live sessions the API key `owner` holds.
    pub fn live_count_of(&self, owner: &str) -> usize {
        self.inner.directory.held_by(owner)
    }

    /// The broker's supervised tasks.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.config.tasks
    }

    /// The live actor for session `id`, starting one if none runs. `record` is the
    /// session as just committed or read (a create, the restore, a lookup's one read);
    /// `None`: the actor loads it itself, inside its mailbox.
    fn spawn(&self, id: SessionId, record: Option<SessionRecord>) -> Addr<SessionActor> {
        let epoch = self.inner.router.get().and_then(|r| r.held_epoch(id));
        self.inner.directory.start(id, false, epoch, |generation| {
            let store = self.inner.store.clone();
            let clock = self.inner.clock.clone();
            let live: Arc<dyn LiveSessions> = self.inner.clone();
            Supervisor::start(move |_| {
                SessionActor::new(id, record, store, clock, live, generation)
            })
        })
    }

    /// The actor that watches session `id` (owned by another node) for the subscribers
    /// and long-polls of this node, starting one if none runs.
    fn watcher(&self, id: SessionId) -> Addr<SessionActor> {
        self.inner.directory.start(id, true, None, |generation| {
            let store = self.inner.store.clone();
            let clock = self.inner.clock.clone();
            let live: Arc<dyn LiveSessions> = self.inner.clone();
            Supervisor::start(move |_| SessionActor::watching(id, store, clock, live, generation))
        })
    }

    /// This node now owns session `id` (it claimed or adopted it): its watching actor,
    /// if one runs, becomes the owner; else an owner actor starts from `record`.
    fn own(&self, id: SessionId, owner: &str, record: Option<SessionRecord>) -> Addr<SessionActor> {
        self.inner.remote.remove(&id);
        let epoch = self.inner.router.get().and_then(|r| r.held_epoch(id));
        if let Some((addr, promoted)) = self.inner.directory.promote(id, epoch) {
            if promoted {
                addr.do_send(Promote);
                self.inner.directory.hold(id, owner, None);
            }
            return addr;
        }
        self.inner.directory.hold(id, owner, None);
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
        if self.inner.directory.handing_over() {
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
            self.inner.directory.stop_taking();
        }
        // Fenced before the messages go: from here on no lookup hands out these actors.
        for addr in self.inner.directory.fence_owners() {
            addr.do_send(Relinquish);
        }
    }

    /// How many sessions this node runs as their owner.
    pub fn owned_count(&self) -> usize {
        self.inner.directory.owned()
    }

    /// Removes `addr` for `id`, if it is still the one registered (idempotent).
    fn forget(&self, id: SessionId, addr: &Addr<SessionActor>) {
        let removed = self.inner.directory.remove_addr(id, addr);
        // An owner actor passed by (stopped, or fenced off after a lapse) lets its
        // epoch go here: when it stops, its own forget finds no entry any more.
        if let (Some(router), Some(epoch)) =
            (self.inner.router.get(), removed.and_then(|l| l.epoch))
        {
            router.released(id, epoch);
        }
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
        if !self.inner.directory.hold(
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
            self.inner.directory.release(id);
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
        if let Some(found) = self.inner.directory.find(id) {
            found.addr.do_send(Unsubscribe { id: subscriber });
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
                let foreign = self.inner.directory.is_live_token(t)
                    || self.inner.store.token_in_use(t, claims).await?;
                Err(if foreign {
                    SessionError::Forbidden("this token belongs to another session")
                } else {
                    SessionError::Unauthorized
                })
            }
            // A token of no session learns nothing, not even whether the id exists.
            Err(SessionError::NotFound)
                if !self.inner.directory.is_live_token(t)
                    && !self.inner.store.token_in_use(t, claims).await? =>
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

impl LiveSessions for Inner {
    fn forget(&self, id: SessionId, generation: Generation) {
        let removed = self.directory.remove_generation(id, generation);
        // Only an actor whose session ended (or never existed) forgets itself: the
        // session leaves its owner's quota for good.
        self.directory.release(id);
        // The ownership epoch it ran under goes too; compared and removed at once in
        // the store's map, so an epoch a new claim took meanwhile (for a new actor)
        // stays.
        if let (Some(router), Some(epoch)) = (self.router.get(), removed.and_then(|l| l.epoch)) {
            router.released(id, epoch);
        }
    }

    fn max_subscribers(&self, owner: &str) -> usize {
        self.config.subscribers_of(owner)
    }

    fn track_token(&self, id: SessionId, hash: TokenHash) {
        self.directory.track_token(id, hash);
    }

    fn untrack_token(&self, id: SessionId, hash: TokenHash) {
        self.directory.untrack_token(id, hash);
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

    fn unwatch(&self, id: SessionId, to: &actix::Recipient<Refresh>) {
        if let Some(router) = self.router.get() {
            router.unwatch(id, to);
        }
    }
}

fn client_token(caller: &Caller) -> Option<(TokenHash, Option<SessionId>)> {
    match caller {
        Caller::Client { token, claims } => Some((*token, *claims)),
        _ => None,
    }
}

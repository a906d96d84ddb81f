//! The session actor: one per live session, owning its state, seq and expiry timer.
//!
//! Every transition goes validate → commit → apply → answer, inside an
//! [`AtomicResponse`] (or `ctx.wait` for the timer), so the mailbox is held while
//! the commit is in flight: one session's transitions are strictly serialized,
//! while different sessions commit concurrently (and share the store's group
//! commit).
//!
//! Supervision: the actor runs under [`Supervisor`](actix::Supervisor). If it
//! stops unexpectedly (a contained panic, a stale write) it is restarted in place:
//! the same `Addr` keeps working and [`Supervised::restarting`] drops the
//! in-memory state, which `started` reloads from the store before any queued
//! message is handled. A panic outside the containment kills the actor for good;
//! its [`Audience`] then tells the subscribers (they re-subscribe through the
//! registry, which starts a replacement) and wakes the long-polls (they wait again),
//! so nobody waits on a dead actor. [`ArmFault`] (test-only) injects such panics.
//!
//! Several nodes (SPEC §7): the actor runs on the session's owner node. Another node
//! that holds subscribers or long-polls for the session runs a *watching* actor for it
//! ([`SessionActor::watching`]): it commits nothing and arms no timer; it reads the
//! session from the store at each of the owner's announcements ([`Refresh`]) and pushes
//! what its audience has not had, so every node's clients see every transition, in
//! order. A watching actor becomes the owner when this node takes the session over
//! ([`Promote`]); an owner that loses the session ([`Relinquish`], or a commit the store
//! refuses with [`StoreError::NotOwner`]) stops without ending it, and its subscribers
//! re-subscribe through the registry.
//!
//! The actor holds only the handles it uses: the store (as [`SessionStore`]), the
//! clock, and a [`LiveSessions`] handle on the registry; it never sees the registry.

pub mod messages;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::clock::SharedClock;
use crate::commands::{answer_move, answer_note, authorize, plan_expiry, Plan};
use crate::delivery::{check_after, Audience};
use crate::error::SessionError;
use crate::ids::SessionId;
use crate::live::{Generation, LiveSessions};
use crate::model::SessionRecord;
#[cfg(any(test, feature = "fault-injection"))]
use crate::session::messages::ArmFault;
#[cfg(any(test, feature = "fault-injection"))]
use crate::session::messages::FaultPoint;
#[cfg(any(test, feature = "fault-injection"))]
use crate::session::messages::InjectFault;
use crate::session::messages::{
    AudienceCount, Change, CountAudience, Subscribe, Subscribed, Unsubscribe, WaitChange,
};
use crate::session::messages::{Cancel, Decide, Inspect, Retrieve, RotateToken, ShowOn, Tick};
use crate::session::messages::{CheckUpload, StageFile, StagedFile, UploadTicket};
use crate::session::messages::{Promote, Refresh, Relinquish};
use crate::session_store::SessionStore;
use crate::staging::Staged;
use crate::store::StoreError;
use crate::write::Note;
use watch::Watch;

/// A point where a test may have armed a panic ([`ArmFault`]); nothing at all in builds
/// without fault injection (release builds), so no test hook ships.
#[cfg(any(test, feature = "fault-injection"))]
macro_rules! trip {
    ($actor:expr, $at:ident) => {
        $actor.trip(FaultPoint::$at)
    };
}
#[cfg(not(any(test, feature = "fault-injection")))]
macro_rules! trip {
    ($actor:expr, $at:ident) => {};
}

/// Longest single timer; a longer wait re-arms, so a moved clock is noticed.
const MAX_TIMER: Duration = Duration::from_secs(60);

/// How long to wait before retrying an expiry the store refused.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// The reply of the transition handlers: given at once when nothing is committed (a
/// refusal, or a transition that changes nothing), else once the commit is in, holding
/// the mailbox meanwhile.
///
/// An answer known at once must not wait in the context's queue of `wait` futures:
/// that queue runs newest first, so an expiry the timer starts in the same pass runs
/// ahead of it, ends the session and stops the actor, and the waiting answer is
/// dropped with the stopped context (the caller saw `MailboxError::Closed`, answered
/// `503`, for a cancel that was refused `409` all along).
pub struct Reply(Answer);

enum Answer {
    Now(Result<SessionRecord, SessionError>),
    Commit(AtomicResponse<SessionActor, Result<SessionRecord, SessionError>>),
}

impl<M> actix::dev::MessageResponse<SessionActor, M> for Reply
where
    M: Message<Result = Result<SessionRecord, SessionError>>,
{
    fn handle(
        self,
        ctx: &mut Context<SessionActor>,
        tx: Option<actix::dev::OneshotSender<M::Result>>,
    ) {
        match self.0 {
            Answer::Now(answer) => {
                if let Some(tx) = tx {
                    // The caller may have gone; the answer changes nothing either way.
                    let _ = tx.send(answer);
                }
            }
            Answer::Commit(commit) => {
                actix::dev::MessageResponse::<SessionActor, M>::handle(commit, ctx, tx)
            }
        }
    }
}

/// What a session actor is to its session; no flag says it, this does.
enum Role {
    /// The owner (this node runs the session): it commits, arms the expiry timer and
    /// stages uploads.
    Owner,
    /// It watches a session another node owns, for this node's audience ([`watch`]).
    Watcher(Watch),
    /// The session moved to another node, or this node stopped watching it: the actor
    /// answers nothing more (the registry asks again, and finds the new owner).
    Gone,
}

impl Role {
    fn is_owner(&self) -> bool {
        matches!(self, Role::Owner)
    }

    fn is_watcher(&self) -> bool {
        matches!(self, Role::Watcher(_))
    }

    fn is_gone(&self) -> bool {
        matches!(self, Role::Gone)
    }
}

/// One live verification session.
pub struct SessionActor {
    id: SessionId,
    /// The session as committed; `None` while it is (re)loaded from the store.
    state: Option<SessionRecord>,
    /// Set once the session is terminal. Survives restarts, so an ended actor that a
    /// lingering `Addr` restarts answers from its final state instead of reloading.
    ended: bool,
    /// Where the session is committed.
    store: Arc<dyn SessionStore>,
    clock: SharedClock,
    /// The registry, as far as this actor tells it anything.
    live: Arc<dyn LiveSessions>,
    /// Which start of this session's actor this is (for [`LiveSessions::forget`]).
    generation: Generation,
    /// The pending expiry timer.
    expiry: Option<SpawnHandle>,
    /// WebSocket subscribers and long-poll waiters. Kept across restarts: they are
    /// still connected, and a reload publishes whatever they missed.
    audience: Audience,
    /// Uploads held in memory until approve (SPEC §2); dropped by every other end and
    /// by a restart.
    staged: Staged,
    /// Test-only ([`ArmFault`]): the point where this actor panics, uncontained.
    #[cfg(any(test, feature = "fault-injection"))]
    fault: Option<FaultPoint>,
    /// What this actor is to its session: its owner, a watcher, or gone.
    role: Role,
    /// Holds the live-actors gauge up while this actor exists; restarts keep it.
    _live_gauge: crate::metrics::GaugeGuard,
}

impl SessionActor {
    /// An actor for session `id`: with its record when it is at hand and known current
    /// (just created, or restored at start), else `None` and it loads the session from
    /// the store before handling anything.
    pub(crate) fn new(
        id: SessionId,
        record: Option<SessionRecord>,
        store: Arc<dyn SessionStore>,
        clock: SharedClock,
        live: Arc<dyn LiveSessions>,
        generation: Generation,
    ) -> Self {
        Self::with_role(id, record, store, clock, live, generation, Role::Owner)
    }

    /// An actor that watches session `id`, owned by another node (see the module
    /// documentation).
    pub(crate) fn watching(
        id: SessionId,
        store: Arc<dyn SessionStore>,
        clock: SharedClock,
        live: Arc<dyn LiveSessions>,
        generation: Generation,
    ) -> Self {
        Self::with_role(
            id,
            None,
            store,
            clock,
            live,
            generation,
            Role::Watcher(Watch::default()),
        )
    }

    fn with_role(
        id: SessionId,
        record: Option<SessionRecord>,
        store: Arc<dyn SessionStore>,
        clock: SharedClock,
        live: Arc<dyn LiveSessions>,
        generation: Generation,
        role: Role,
    ) -> Self {
        Self {
            id,
            state: record,
            ended: false,
            store,
            clock,
            live,
            generation,
            expiry: None,
            audience: Audience::new(id),
            staged: Staged::default(),
            #[cfg(any(test, feature = "fault-injection"))]
            fault: None,
            role,
            _live_gauge: crate::metrics::GaugeGuard::new(crate::metrics::LIVE_SESSIONS),
        }
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Panics, outside any containment, if a test armed a fault at `at`.
    #[cfg(any(test, feature = "fault-injection"))]
    fn trip(&mut self, at: FaultPoint) {
        if self.fault == Some(at) {
            self.fault = None;
            panic!("injected fault at {at:?} in session {}", self.id);
        }
    }

    fn record(&self) -> Result<&SessionRecord, SessionError> {
        if self.role.is_gone() {
            return Err(SessionError::Restarted);
        }
        self.state.as_ref().ok_or(SessionError::Unavailable(
            "the session could not be loaded; try again",
        ))
    }

    /// The record, for a command only the owner may carry out (uploads: a watching
    /// actor stages nothing; the registry sends them to the owner).
    fn owned_record(&self) -> Result<&SessionRecord, SessionError> {
        if self.role.is_watcher() {
            return Err(SessionError::Restarted);
        }
        self.record()
    }

    /// Runs `f`, turning a panic into a restart of this actor (state reloaded from the
    /// store) and [`SessionError::Restarted`], which the registry retries.
    fn contain<R>(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut Self, &mut Context<Self>) -> Result<R, SessionError>,
    ) -> Result<R, SessionError> {
        match catch_unwind(AssertUnwindSafe(|| f(self, ctx))) {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(session = %self.id, "session actor panicked; restarting it from the store");
                ctx.stop();
                Err(SessionError::Restarted)
            }
        }
    }

    /// Reads the session from the store, holding the mailbox until it is in.
    fn load(&mut self, ctx: &mut Context<Self>) {
        trip!(self, Load);
        let store = self.store.clone();
        let id = self.id;
        ctx.wait(
            async move { store.load_session(id).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(Some(record)) => {
                        let terminal = record.status.is_terminal();
                        // Whoever listens is brought up to date from the events log (an
                        // empty read when nothing was missed; restarts are rare).
                        let listened = act.audience.published();
                        act.live.track_token(id, record.token_hash);
                        act.state = Some(record);
                        if let Some(after) = listened {
                            act.catch_up(after, ctx);
                        } else if terminal {
                            act.finish(ctx);
                        } else {
                            act.arm_expiry(ctx);
                        }
                    }
                    Ok(None) => {
                        act.ended = true;
                        act.live.forget(id, act.generation);
                        ctx.stop();
                    }
                    Err(e) => {
                        tracing::error!(session = %id, error = %e, "cannot load session; retrying");
                        ctx.run_later(EXPIRY_RETRY, |act, ctx| act.load(ctx));
                    }
                }),
        );
    }

    /// Publishes the transitions after `after` from the events log to the subscribers
    /// kept across a restart: the actor may have restarted between a commit and its
    /// push, and subscribers must miss nothing. Then resumes as a load does (finish if
    /// terminal, else arm the expiry timer).
    fn catch_up(&mut self, after: crate::ids::Seq, ctx: &mut Context<Self>) {
        trip!(self, CatchUp);
        let store = self.store.clone();
        let id = self.id;
        ctx.wait(async move { store.events_after(id, after).await }.into_actor(self).map(
            |res, act, ctx| {
                let Some(s) = act.state.clone() else { return };
                match res {
                    Ok(events) => {
                        for e in &events {
                            act.audience.republish(&s, e);
                        }
                    }
                    Err(e) => {
                        tracing::error!(session = %act.id, error = %e, "cannot replay to subscribers")
                    }
                }
                if s.status.is_terminal() {
                    act.finish(ctx);
                } else {
                    act.arm_expiry(ctx);
                }
            },
        ));
    }

    fn arm_expiry(&mut self, ctx: &mut Context<Self>) {
        if !self.role.is_owner() {
            // The owner node's timer expires the session.
            return;
        }
        if let Some(h) = self.expiry.take() {
            ctx.cancel_future(h);
        }
        let Some(s) = &self.state else { return };
        let left = (s.expires_at - self.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        self.expiry = Some(ctx.run_later(left.min(MAX_TIMER), |act, ctx| {
            act.expiry = None;
            act.check_expiry(ctx);
        }));
    }

    /// Expires the session if `expires_at` has passed, else re-arms the timer.
    fn check_expiry(&mut self, ctx: &mut Context<Self>) {
        trip!(self, CheckExpiry);
        if !self.role.is_owner() {
            return;
        }
        let now = self.now();
        let Some(s) = &self.state else { return };
        if s.status.is_terminal() {
            return;
        }
        let Some(write) = plan_expiry(s, now) else {
            self.arm_expiry(ctx);
            return;
        };
        let store = self.store.clone();
        // `wait`, not `spawn`: nothing else may touch the session while it expires.
        ctx.wait(
            async move { store.commit_transition(write).await }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(committed) => act.apply(committed, ctx),
                Err(StoreError::Stale) => act.reload(ctx),
                Err(StoreError::NotOwner) => act.relinquish(ctx),
                Err(e) => {
                    tracing::error!(session = %act.id, error = %e, "cannot commit expiry; retrying");
                    act.expiry = Some(ctx.run_later(EXPIRY_RETRY, |act, ctx| act.check_expiry(ctx)));
                }
            }),
        );
    }

    /// Commits a planned transition and answers once it is applied; the mailbox is
    /// held meanwhile.
    fn execute(&mut self, plan: Result<Plan, SessionError>) -> Reply {
        // A watching actor commits nothing (the registry sends commands to the owner).
        let plan = if !self.role.is_owner() {
            Err(SessionError::Restarted)
        } else {
            plan
        };
        match plan {
            Err(e) => Reply(Answer::Now(Err(e))),
            Ok(Plan::Stay) => Reply(Answer::Now(self.record().cloned())),
            Ok(Plan::Move(write)) => {
                let store = self.store.clone();
                Reply(Answer::Commit(AtomicResponse::new(Box::pin(
                    async move { store.commit_transition(write).await }
                        .into_actor(self)
                        .map(|res, act, ctx| match res {
                            Ok(committed) => {
                                let answer = committed.clone();
                                act.apply(committed, ctx);
                                answer_move(answer)
                            }
                            Err(StoreError::Stale) => {
                                act.reload(ctx);
                                Err(SessionError::Restarted)
                            }
                            Err(StoreError::NotOwner) => {
                                // Another node took the session over: the registry asks
                                // again and reaches it there.
                                act.relinquish(ctx);
                                Err(SessionError::Restarted)
                            }
                            Err(e) => Err(e.into()),
                        }),
                ))))
            }
            Ok(Plan::Note(write)) => {
                let store = self.store.clone();
                Reply(Answer::Commit(AtomicResponse::new(Box::pin(
                    async move {
                        let note = write.note.clone();
                        (store.commit_note(write).await, note)
                    }
                    .into_actor(self)
                    .map(|(res, note), act, ctx| match res {
                        Ok(committed) => {
                            if let Note::BindingMiss { .. } = note {
                                crate::metrics::binding_mismatch(false);
                            }
                            // No transition: nothing to push or announce; the
                            // watching nodes read it with the next one.
                            act.state = Some(committed.clone());
                            answer_note(&note, committed)
                        }
                        Err(StoreError::Stale) => {
                            act.reload(ctx);
                            Err(SessionError::Restarted)
                        }
                        Err(StoreError::NotOwner) => {
                            act.relinquish(ctx);
                            Err(SessionError::Restarted)
                        }
                        Err(e) => Err(e.into()),
                    }),
                ))))
            }
        }
    }

    /// The in-memory state went out of step with the store: restart and reload.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!(session = %self.id, "session changed underneath its actor; reloading");
        ctx.stop();
    }

    /// Adopts the session as the store committed it: the actor recomputes nothing of
    /// what the transition changed.
    fn apply(&mut self, committed: SessionRecord, ctx: &mut Context<Self>) {
        trip!(self, Apply);
        let terminal = committed.status.is_terminal();
        let at = committed.updated_at;
        if self.state.as_ref().is_none_or(|s| s.seq < committed.seq) {
            crate::metrics::transition(committed.status.as_str());
            if committed.reason == Some(crate::status::Reason::BindingMismatch) {
                crate::metrics::binding_mismatch(true);
            }
        }
        let seq = committed.seq;
        self.state = Some(committed);
        // Pushed only now, after the commit: nobody hears of a transition that could
        // still be lost.
        self.publish(at);
        self.live.announce(self.id, seq);
        if terminal {
            self.finish(ctx);
        }
    }

    /// Pushes the committed state, reached at `at`, to the audience.
    fn publish(&mut self, at: chrono::DateTime<chrono::Utc>) {
        trip!(self, Publish);
        if let Some(s) = &self.state {
            self.audience.publish(s, s.seq, at);
        }
    }

    /// The session is terminal: leave the registry and stop. Reads are served from the
    /// store from now on.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        trip!(self, Finish);
        // Committed with the approve, or discarded by any other end: either way the
        // memory copy goes now (see `leave`).
        self.leave(ctx);
        // Every subscriber has had the terminal push and closes itself.
        self.audience.release();
        ctx.stop();
    }

    /// What every stop of a session here does, whether the session ended or moved: the
    /// staged uploads go (their bytes return to the staging budget) and uploads still
    /// streaming in are ended, since nothing here can stage them any more; the token,
    /// the timer, the watch and the registry entry are let go.
    fn leave(&mut self, ctx: &mut Context<Self>) {
        self.ended = true;
        self.staged.clear();
        self.staged.end_streaming();
        if let Some(s) = &self.state {
            self.live.untrack_token(self.id, s.token_hash);
        }
        if let Some(h) = self.expiry.take() {
            ctx.cancel_future(h);
        }
        if self.role.is_watcher() {
            self.live.unwatch(self.id, &ctx.address().recipient());
        }
        self.live.forget(self.id, self.generation);
    }

    /// The session moved to another node: stop without ending it. Staged uploads are
    /// lost (the device uploads again, SPEC §7); subscribers re-subscribe through the
    /// registry and long-polls wait again, both reaching the new owner.
    fn relinquish(&mut self, ctx: &mut Context<Self>) {
        if self.ended {
            return;
        }
        if self.role.is_watcher() {
            tracing::debug!(session = %self.id, "no longer watching a session");
        } else {
            tracing::info!(session = %self.id, "session moved to another node");
        }
        self.leave(ctx);
        self.role = Role::Gone;
        self.audience.hand_off();
        ctx.stop();
    }

    fn uploaded_kinds(&self) -> BTreeSet<String> {
        self.staged.kinds()
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.ended {
            return;
        }
        if self.role.is_watcher() {
            self.start_watching(ctx);
            return;
        }
        match &self.state {
            None => self.load(ctx),
            Some(s) => {
                self.live.track_token(self.id, s.token_hash);
                self.arm_expiry(ctx);
            }
        }
    }
}

impl Supervised for SessionActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Timers and futures were dropped with the old context. Unless the session
        // ended, forget what was in memory: `started` reloads it from the store.
        self.expiry = None;
        // Staged uploads were never committed; a restart loses them by design (the
        // device uploads again), rather than trusting memory the panic may have left
        // half-changed. Uploads still streaming in keep their tickets: the reloaded
        // session checks them again when they are staged.
        self.staged.clear();
        if !self.ended {
            self.state = None;
        }
    }
}

impl Handler<Inspect> for SessionActor {
    type Result = Result<SessionRecord, SessionError>;

    fn handle(&mut self, msg: Inspect, ctx: &mut Context<Self>) -> Self::Result {
        self.contain(ctx, |act, _| {
            let s = act.record()?;
            authorize(s, &msg.caller)?;
            Ok(s.clone())
        })
    }
}

impl Handler<Retrieve> for SessionActor {
    type Result = Reply;

    fn handle(&mut self, msg: Retrieve, ctx: &mut Context<Self>) -> Reply {
        let now = self.now();
        let plan = self.contain(ctx, |act, _| msg.plan(act.record()?, now));
        self.execute(plan)
    }
}

impl Handler<Decide> for SessionActor {
    type Result = Reply;

    fn handle(&mut self, msg: Decide, ctx: &mut Context<Self>) -> Reply {
        let now = self.now();
        let plan = self.contain(ctx, |act, _| {
            let plan = msg.plan(act.record()?, &act.uploaded_kinds(), now);
            act.staged.attach(plan)
        });
        self.execute(plan)
    }
}

impl Handler<Cancel> for SessionActor {
    type Result = Reply;

    fn handle(&mut self, msg: Cancel, ctx: &mut Context<Self>) -> Reply {
        let now = self.now();
        let plan = self.contain(ctx, |act, _| msg.plan(act.record()?, now));
        self.execute(plan)
    }
}

impl Handler<ShowOn> for SessionActor {
    type Result = Reply;

    fn handle(&mut self, msg: ShowOn, ctx: &mut Context<Self>) -> Reply {
        let plan = self.contain(ctx, |act, _| msg.plan(act.record()?));
        self.execute(plan)
    }
}

impl Handler<StageFile> for SessionActor {
    type Result = Result<StagedFile, SessionError>;

    fn handle(&mut self, msg: StageFile, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.now();
        self.contain(ctx, |act, _| {
            msg.check(act.owned_record()?, now)?;
            act.staged.put(msg)
        })
    }
}

impl Handler<CheckUpload> for SessionActor {
    type Result = Result<UploadTicket, SessionError>;

    fn handle(&mut self, msg: CheckUpload, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.now();
        self.contain(ctx, |act, _| {
            msg.check(act.owned_record()?, now)?;
            Ok(act.staged.begin(&msg.kind))
        })
    }
}

impl Handler<RotateToken> for SessionActor {
    type Result = AtomicResponse<Self, Result<(), SessionError>>;

    fn handle(&mut self, _: RotateToken, _: &mut Context<Self>) -> Self::Result {
        trip!(self, RotateToken);
        // Re-read rather than take a token from the message: replays may deliver their
        // messages out of commit order, and the store's token is the one that counts.
        let store = self.store.clone();
        let id = self.id;
        AtomicResponse::new(Box::pin(
            async move { store.load_session(id).await }
                .into_actor(self)
                .map(|res, act, _| {
                    if let (Some(stored), Some(s)) = (res?, act.state.as_mut()) {
                        act.live.untrack_token(act.id, s.token_hash);
                        s.token_hash = stored.token_hash;
                        if !act.ended {
                            act.live.track_token(act.id, s.token_hash);
                            // Nodes that watch the session take the new token too.
                            act.live.announce(act.id, s.seq);
                        }
                    }
                    Ok(())
                }),
        ))
    }
}

impl Handler<Tick> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        trip!(self, Tick);
        self.check_expiry(ctx);
    }
}

#[cfg(any(test, feature = "fault-injection"))]
impl Handler<InjectFault> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, msg: InjectFault, ctx: &mut Context<Self>) -> Self::Result {
        if !msg.contained {
            // Outside the containment: this kills the actor for good, as a bug would.
            panic!("injected fault (uncontained) in session {}", self.id);
        }
        let id = self.id;
        match self.contain(ctx, |_, _| -> Result<(), SessionError> {
            panic!("injected fault (contained) in session {id}")
        }) {
            Err(SessionError::Restarted) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(any(test, feature = "fault-injection"))]
impl Handler<ArmFault> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, msg: ArmFault, _: &mut Context<Self>) -> Self::Result {
        self.fault = Some(msg.at);
        Ok(())
    }
}

impl Handler<Subscribe> for SessionActor {
    type Result = Result<Subscribed, SessionError>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        if self.lagging(msg.after, &msg.caller, ctx) {
            return Err(SessionError::Restarted);
        }
        self.contain(ctx, |act, _| {
            let s = act.record()?;
            authorize(s, &msg.caller)?;
            check_after(msg.after, s.seq)?;
            let snapshot = s.clone();
            if snapshot.status.is_terminal() {
                return Ok(Subscribed { id: None, snapshot });
            }
            let max = act.live.max_subscribers(&s.owner);
            let id = act.audience.subscribe(&msg, snapshot.seq, max)?;
            Ok(Subscribed {
                id: Some(id),
                snapshot,
            })
        })
    }
}

impl Handler<Unsubscribe> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) -> Self::Result {
        trip!(self, Unsubscribe);
        self.audience.unsubscribe(msg.id);
        Ok(())
    }
}

impl Handler<WaitChange> for SessionActor {
    type Result = Result<Change, SessionError>;

    fn handle(&mut self, msg: WaitChange, ctx: &mut Context<Self>) -> Self::Result {
        if self.lagging(msg.after, &msg.caller, ctx) {
            return Err(SessionError::Restarted);
        }
        self.contain(ctx, |act, _| {
            let s = act.record()?;
            authorize(s, &msg.caller)?;
            let after = check_after(msg.after, s.seq)?;
            let current = s.clone();
            if current.seq > after {
                Ok(Change::Now(current))
            } else if current.status.is_terminal() {
                Ok(Change::Never(current))
            } else {
                Ok(Change::Later {
                    current,
                    next: act.audience.wait()?,
                })
            }
        })
    }
}

impl Handler<Refresh> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Refresh, ctx: &mut Context<Self>) {
        let current = self.state.as_ref().map(|s| s.seq);
        if msg.stored.is_some() && msg.stored <= current {
            return;
        }
        self.refresh(ctx);
    }
}

impl Handler<Promote> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Promote, ctx: &mut Context<Self>) {
        if !self.role.is_watcher() || self.ended {
            return;
        }
        self.role = Role::Owner;
        self.live.unwatch(self.id, &ctx.address().recipient());
        // Read the session again (it may have moved since the last announcement),
        // bring the audience up to date, and arm the timer: a restart's path.
        self.load(ctx);
    }
}

impl Handler<Relinquish> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Relinquish, ctx: &mut Context<Self>) {
        self.relinquish(ctx);
    }
}

impl Handler<CountAudience> for SessionActor {
    type Result = Result<AudienceCount, SessionError>;

    fn handle(&mut self, _: CountAudience, _: &mut Context<Self>) -> Self::Result {
        Ok(self.audience.count())
    }
}

//! The store as the rest of the broker sees it: one object-safe trait,
//! [`SessionStore`], implemented by the SQLite [`Store`] and by the PostgreSQL
//! [`PgStore`](crate::pg::PgStore); and [`ClusterStore`], what several nodes need
//! besides (leases and ownership), implemented by PostgreSQL only.
//!
//! Layout:
//! - [`SessionStore`]: sessions, events, files, users, the webhook outbox, retention,
//!   the counters tests read, and `close`.
//! - [`Claim`]: who owns a live session.
//! - [`ClusterStore`]: a node's lease, orphan adoption and hand-over.
//!
//! Everything holds an `Arc<dyn SessionStore>`, never a backend's type, so the
//! session actors, the registry, the dispatcher, the sweeper and the web crate work
//! over either engine. The futures are boxed so the trait stays object-safe; one
//! allocation per store call is nothing beside the call itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ids::{FileId, Seq, SessionId, TokenHash, UserId};
use crate::model::{Decision, SessionEvent, SessionRecord, UserRecord, UserStatus};
use crate::store::RecordsDeleted;
use crate::store::{
    CreateOutcome, DeliveryRecord, DueEvents, IdempotencyClaim, NewSession, Store, StoreError,
    StoredFile, WebhookCounts,
};
use crate::write::{NoteWrite, TransitionWrite};

/// Who owns a session, and the session as read with that answer (see
/// [`SessionStore::claim`]): the one read a lookup makes, which the actor adopts.
#[derive(Clone, Debug)]
pub enum Claim {
    /// Live, and this node owns it (it did already, or it just took it over from a
    /// node whose lease lapsed): this node runs its actor, from this record.
    Mine(Box<SessionRecord>),
    /// Live, and another node, with a valid lease, owns it: forward to that node (its id).
    Other(String),
    /// Terminal: nobody runs an actor for it; reads are answered from this record.
    Ended(Box<SessionRecord>),
    /// No such session.
    Missing,
}

/// What a store call resolves to.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What the session actors and the registry need from the store, and nothing more.
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts a new session (or replays/refuses an idempotent create).
    fn create_session(
        &self,
        new: NewSession,
        claim: Option<IdempotencyClaim>,
    ) -> StoreFuture<'_, CreateOutcome>;

    /// Commits a transition if the session is still at `write.from_seq`
    /// ([`StoreError::Stale`] otherwise); returns the committed row.
    fn commit_transition(&self, write: TransitionWrite) -> StoreFuture<'_, SessionRecord>;

    /// Commits a change that is no transition if the session is still at
    /// `write.from_seq` ([`StoreError::Stale`] otherwise); returns the committed row.
    fn commit_note(&self, write: NoteWrite) -> StoreFuture<'_, SessionRecord>;

    /// Commits several transitions in one transaction (the start-up expiry); returns
    /// the committed rows.
    fn commit_transitions(
        &self,
        writes: Vec<TransitionWrite>,
    ) -> StoreFuture<'_, Vec<SessionRecord>>;

    /// Up to `limit` live sessions overdue at `now`.
    fn overdue_live(&self, now: DateTime<Utc>, limit: usize) -> StoreFuture<'_, Vec<SessionId>>;

    /// A session, live or ended.
    fn load_session(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>>;

    /// Every live session (at start).
    fn load_live_sessions(&self) -> StoreFuture<'_, Vec<SessionRecord>>;

    /// A session's decision (its record and shared data).
    fn load_decision(&self, id: SessionId) -> StoreFuture<'_, Option<Decision>>;

    /// A session's transitions after `after`, in order.
    fn events_after(&self, id: SessionId, after: Seq) -> StoreFuture<'_, Vec<SessionEvent>>;

    /// Whether `hash` is some session's current token; `claims` is the session the
    /// token names, if it names one.
    fn token_in_use(&self, hash: TokenHash, claims: Option<SessionId>) -> StoreFuture<'_, bool>;

    /// A stored file of a session.
    fn load_file(&self, id: SessionId, file_id: FileId) -> StoreFuture<'_, Option<StoredFile>>;

    /// How a session's webhooks fared.
    fn webhook_counts(&self, id: SessionId) -> StoreFuture<'_, WebhookCounts>;

    /// A user as the key `owner` sees them.
    fn user(&self, owner: String, user: UserId) -> StoreFuture<'_, Option<UserRecord>>;

    /// Sets a user's status for the key `owner`.
    fn set_user_status(
        &self,
        owner: String,
        user: UserId,
        status: UserStatus,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, UserRecord>;

    /// Whether the store answers.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Reads session `id` and says who owns it, claiming it for this node when it is
    /// live and its owner's lease has lapsed: one read. One node alone (SQLite) owns
    /// every live session.
    fn claim(&self, id: SessionId) -> StoreFuture<'_, Claim>;

    /// The head (lowest undelivered seq) of every session whose head is due at `now`,
    /// among the sessions whose webhooks this node sends; and when the next falls due.
    fn due_webhooks(&self, now: DateTime<Utc>, limit: usize) -> StoreFuture<'_, DueEvents>;

    /// Records the outcome of a delivery attempt made at `attempted_at`.
    fn record_delivery(
        &self,
        session_id: SessionId,
        seq: Seq,
        attempted_at: DateTime<Utc>,
        outcome: DeliveryRecord,
    ) -> StoreFuture<'_, ()>;

    /// How many events are pending in all (the outbox depth gauge at start).
    fn pending_webhooks(&self) -> StoreFuture<'_, u64>;

    /// Notified after every commit that enqueued (or handed this node) a webhook event:
    /// the dispatcher's wake-up. `Notify` keeps one permit when nobody waits.
    fn webhook_wake(&self) -> Arc<tokio::sync::Notify>;

    /// Retention: purges up to [`PURGE_BATCH`](crate::store::PURGE_BATCH) confirmed
    /// sessions decided at or before `cutoff`; returns how many.
    fn purge_retained(&self, cutoff: DateTime<Utc>, now: DateTime<Utc>) -> StoreFuture<'_, usize>;

    /// Deletes up to `limit` idempotency keys whose window is over at `now`; returns
    /// how many.
    fn purge_idempotency_keys(&self, now: DateTime<Utc>, limit: usize) -> StoreFuture<'_, usize>;

    /// Record retention: deletes the records of up to `limit` ended sessions whose time
    /// is over at `cutoff` and whose webhooks are delivered or given up (SPEC §2,
    /// "Records"); answers what it deleted. On several nodes, one node at a time.
    fn delete_ended_records(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> StoreFuture<'_, RecordsDeleted>;

    /// The ids of the operator keys (`--data-key`) that seal stored data.
    fn data_key_ids(&self) -> StoreFuture<'_, Vec<String>>;

    /// How many session loads the store was asked for (tests check what probes cost).
    fn session_reads(&self) -> u64;

    /// How many token lookups the store was asked for.
    fn token_lookups(&self) -> u64;

    /// Stops taking work and flushes what is queued. Blocking: call it off the runtime.
    fn close(&self);
}

/// What several nodes over one PostgreSQL database need besides [`SessionStore`]:
/// each node's lease, and the ownership of sessions whose node is gone. Times of
/// leases are the database's clock, so the nodes' clock skew never matters.
pub trait ClusterStore: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;

    /// Takes this node id's lease for this process, `ttl` from now: answers `false`
    /// while another process (another incarnation of the node id) holds it.
    fn register_node(&self, ttl: Duration) -> StoreFuture<'_, bool>;

    /// Extends this node's lease by `ttl` from now if it is still valid; `false` if it
    /// had lapsed (others may have adopted its sessions: re-register).
    fn renew_lease(&self, ttl: Duration) -> StoreFuture<'_, bool>;

    /// Takes over up to `limit` sessions of nodes whose lease lapsed (or that have no
    /// lease at all) that are live or have pending webhooks; returns the live ones, for
    /// their actors. Two adopters never take the same session.
    fn adopt_orphans(&self, limit: usize) -> StoreFuture<'_, Vec<SessionRecord>>;

    /// Ends this node's lease at once (SIGTERM hand-over), so the others adopt its
    /// sessions without waiting for it to lapse; this node holds nothing afterwards.
    fn release_node(&self) -> StoreFuture<'_, ()>;

    /// The nodes with a valid lease.
    fn live_nodes(&self) -> StoreFuture<'_, Vec<String>>;

    /// The current seq of each of `ids` still stored (a watching node's safety net
    /// against a lost announcement: one statement for every session it watches).
    fn seqs(&self, ids: Vec<SessionId>) -> StoreFuture<'_, Vec<(SessionId, Seq)>>;

    /// The epoch this process holds for session `id`, if any.
    fn held_epoch(&self, id: SessionId) -> Option<i64>;

    /// This node no longer runs session `id`'s actor, which held it at `epoch`: its
    /// commits are refused until it claims the session again. Only that epoch is let
    /// go (atomically): a newer one, taken meanwhile for a new actor, stays.
    fn forget_held(&self, id: SessionId, epoch: i64);
}

impl SessionStore for Store {
    fn create_session(
        &self,
        new: NewSession,
        claim: Option<IdempotencyClaim>,
    ) -> StoreFuture<'_, CreateOutcome> {
        Box::pin(Store::create_session(self, new, claim))
    }

    fn commit_transition(&self, write: TransitionWrite) -> StoreFuture<'_, SessionRecord> {
        Box::pin(Store::commit_transition(self, write))
    }

    fn commit_note(&self, write: NoteWrite) -> StoreFuture<'_, SessionRecord> {
        Box::pin(Store::commit_note(self, write))
    }

    fn commit_transitions(
        &self,
        writes: Vec<TransitionWrite>,
    ) -> StoreFuture<'_, Vec<SessionRecord>> {
        Box::pin(Store::commit_transitions(self, writes))
    }

    fn overdue_live(&self, now: DateTime<Utc>, limit: usize) -> StoreFuture<'_, Vec<SessionId>> {
        Box::pin(Store::overdue_live(self, now, limit))
    }

    fn load_session(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>> {
        Box::pin(Store::load_session(self, id))
    }

    fn load_live_sessions(&self) -> StoreFuture<'_, Vec<SessionRecord>> {
        Box::pin(Store::load_live_sessions(self))
    }

    fn load_decision(&self, id: SessionId) -> StoreFuture<'_, Option<Decision>> {
        Box::pin(Store::load_decision(self, id))
    }

    fn events_after(&self, id: SessionId, after: Seq) -> StoreFuture<'_, Vec<SessionEvent>> {
        Box::pin(Store::events_after(self, id, after))
    }

    fn token_in_use(&self, hash: TokenHash, claims: Option<SessionId>) -> StoreFuture<'_, bool> {
        Box::pin(Store::token_in_use(self, hash, claims))
    }

    fn load_file(&self, id: SessionId, file_id: FileId) -> StoreFuture<'_, Option<StoredFile>> {
        Box::pin(Store::load_file(self, id, file_id))
    }

    fn webhook_counts(&self, id: SessionId) -> StoreFuture<'_, WebhookCounts> {
        Box::pin(Store::webhook_counts(self, id))
    }

    fn user(&self, owner: String, user: UserId) -> StoreFuture<'_, Option<UserRecord>> {
        Box::pin(Store::user(self, owner, user))
    }

    fn set_user_status(
        &self,
        owner: String,
        user: UserId,
        status: UserStatus,
        at: DateTime<Utc>,
    ) -> StoreFuture<'_, UserRecord> {
        Box::pin(Store::set_user_status(self, owner, user, status, at))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(Store::ping(self))
    }

    fn claim(&self, id: SessionId) -> StoreFuture<'_, Claim> {
        Box::pin(async move {
            Ok(match Store::load_session(self, id).await? {
                None => Claim::Missing,
                Some(r) if r.status.is_terminal() => Claim::Ended(Box::new(r)),
                Some(r) => Claim::Mine(Box::new(r)),
            })
        })
    }

    fn due_webhooks(&self, now: DateTime<Utc>, limit: usize) -> StoreFuture<'_, DueEvents> {
        Box::pin(Store::due_webhooks(self, now, limit))
    }

    fn record_delivery(
        &self,
        session_id: SessionId,
        seq: Seq,
        attempted_at: DateTime<Utc>,
        outcome: DeliveryRecord,
    ) -> StoreFuture<'_, ()> {
        Box::pin(Store::record_delivery(
            self,
            session_id,
            seq,
            attempted_at,
            outcome,
        ))
    }

    fn pending_webhooks(&self) -> StoreFuture<'_, u64> {
        Box::pin(Store::pending_webhooks(self))
    }

    fn webhook_wake(&self) -> Arc<tokio::sync::Notify> {
        Store::webhook_wake(self)
    }

    fn purge_retained(&self, cutoff: DateTime<Utc>, now: DateTime<Utc>) -> StoreFuture<'_, usize> {
        Box::pin(Store::purge_retained(self, cutoff, now))
    }

    fn purge_idempotency_keys(&self, now: DateTime<Utc>, limit: usize) -> StoreFuture<'_, usize> {
        Box::pin(Store::purge_idempotency_keys(self, now, limit))
    }

    fn delete_ended_records(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> StoreFuture<'_, RecordsDeleted> {
        Box::pin(Store::delete_ended_records(self, cutoff, limit))
    }

    fn data_key_ids(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(Store::data_key_ids(self))
    }

    fn session_reads(&self) -> u64 {
        Store::session_reads(self)
    }

    fn token_lookups(&self) -> u64 {
        Store::token_lookups(self)
    }

    fn close(&self) {
        Store::close(self)
    }
}

//! The store as the session actors and the registry see it: one narrow, object-safe
//! trait, [`SessionStore`], that the SQLite [`Store`] implements.
//!
//! The actors hold an `Arc<dyn SessionStore>`, never the SQLite type, so another
//! backend (PostgreSQL, for several nodes) slots in here without touching the session
//! actor, the registry or the web crate. The futures are boxed so the trait stays
//! object-safe; one allocation per store call is nothing beside the call itself.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};

use crate::ids::{FileId, Seq, SessionId, TokenHash, UserId};
use crate::model::{Decision, SessionEvent, SessionRecord, UserRecord, UserStatus};
use crate::store::{
    CreateOutcome, IdempotencyClaim, NewSession, Store, StoreError, StoredFile, WebhookCounts,
};
use crate::write::TransitionWrite;

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

    /// Whether any session has the token `hash`.
    fn token_in_use(&self, hash: TokenHash) -> StoreFuture<'_, bool>;

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

    /// Who owns live session `id`, claiming it for this node when its owner's lease has lapsed.
    fn claim(&self, id: SessionId) -> StoreFuture<'_, Claim>;
}

/// What the cluster layer needs from a store shared by several nodes (PostgreSQL).
pub trait ClusterStore: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;
    /// Upserts this node's row with a lease of `ttl` (database clock).
    fn register_node(&self, ttl: std::time::Duration) -> StoreFuture<'_, ()>;
    /// Extends this node's lease; `false`: it had lapsed (the caller re-registers).
    fn renew_lease(&self, ttl: std::time::Duration) -> StoreFuture<'_, bool>;
    /// Takes over, in one batch of at most `limit`, sessions of nodes whose lease lapsed;
    /// returns the live ones.
    fn adopt_orphans(&self, limit: usize) -> StoreFuture<'_, Vec<SessionRecord>>;
    /// Hands everything over at once (SIGTERM): the lease lapses now.
    fn release_node(&self) -> StoreFuture<'_, ()>;
    /// Nodes with a valid lease.
    fn live_nodes(&self) -> StoreFuture<'_, Vec<String>>;
    /// This node stopped running that session's actor.
    fn forget_held(&self, id: SessionId);
}

/// Which node owns a live session (several nodes, SPEC §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This node (always, with one node).
    Mine,
    /// Another node, by its id.
    Other(String),
    /// The session is not live (ended, or unknown).
    NotLive,
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

    fn token_in_use(&self, hash: TokenHash) -> StoreFuture<'_, bool> {
        Box::pin(Store::token_in_use(self, hash))
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

    fn claim(&self, _: SessionId) -> StoreFuture<'_, Claim> {
        // One node owns every session.
        Box::pin(std::future::ready(Ok(Claim::Mine)))
    }
}

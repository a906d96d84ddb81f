//! How the registry reaches a session whose actor runs on another node (SPEC §7).
//!
//! With several nodes, each live session has one owner node, which runs its actor. A
//! command for a session owned elsewhere is sent to the owner as a [`Wire`] command and
//! answered with a [`WireOk`] or a [`WireError`]; a node that only watches a session
//! (it holds WebSocket subscribers or long-polls for it) hears of each commit from the
//! owner's announcement and reads the transitions from the store itself.
//!
//! The registry sees all of this through one trait, [`Router`], which the cluster layer
//! implements over NATS; one node alone has no router and routes nothing.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use actix::Recipient;
use serde::{Deserialize, Serialize};

use crate::error::SessionError;
use crate::ids::{DeviceId, Seq, SessionId};
use crate::model::SessionRecord;
use crate::session::messages::{
    AudienceCount, Cancel, CheckUpload, Decide, Inspect, Refresh, Retrieve, ShowOn, StagedFile,
};
use crate::status::Status;
use crate::store::StoreError;
use crate::write::Upload;

/// A command as it travels to the session's owner node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Wire {
    /// [`Inspect`].
    Inspect(Inspect),
    /// [`Retrieve`].
    Retrieve(Retrieve),
    /// [`Decide`].
    Decide(Decide),
    /// [`Cancel`].
    Cancel(Cancel),
    /// [`ShowOn`].
    ShowOn(ShowOn),
    /// [`RotateToken`](crate::session::messages::RotateToken).
    RotateToken,
    /// [`CheckUpload`]: the owner keeps the ticket and answers its number.
    CheckUpload(CheckUpload),
    /// [`StageFile`](crate::session::messages::StageFile), once the bytes of upload
    /// `upload` went ahead in chunks.
    Stage {
        /// The device.
        device: DeviceId,
        /// The file scope.
        kind: String,
        /// The ticket number the owner answered to `CheckUpload`.
        upload: u64,
        /// The checked media type (`image/jpeg` or `image/png`).
        content_type: String,
    },
}

/// What a command sent ahead carries besides itself: the bytes of an upload.
pub struct Outbound {
    /// The command.
    pub cmd: Wire,
    /// For [`Wire::Stage`]: the body, sent in chunks before the command.
    pub upload: Option<Arc<Upload>>,
}

/// A successful answer from the owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireOk {
    /// The session after the command.
    Record(SessionRecord),
    /// Done, nothing to tell.
    Unit,
    /// The number of an upload ticket the owner holds.
    Ticket(u64),
    /// A staged upload.
    Staged(StagedFile),
    /// Who listens (not forwarded today; kept for completeness of the protocol).
    Audience(AudienceCount),
}

/// A refusal from the owner, as [`SessionError`] says it, in a form that travels.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireError {
    /// Which [`SessionError`].
    pub kind: WireErrorKind,
    /// Its message.
    pub message: String,
    /// The status, for `InvalidState`.
    pub status: Option<Status>,
    /// The tries left, for `BindingMismatch`.
    #[serde(default)]
    pub tries_left: Option<u8>,
}

/// The variants of [`SessionError`] that travel.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum WireErrorKind {
    /// `404`.
    NotFound,
    /// `401`.
    Unauthorized,
    /// `403`.
    Forbidden,
    /// `409 invalid_state`.
    InvalidState,
    /// `409`, an upload replaced.
    UploadReplaced,
    /// `409 idempotency_conflict`.
    IdempotencyConflict,
    /// `422`.
    Incomplete,
    /// `422 binding_mismatch`, with the tries left.
    BindingMismatch,
    /// `400`.
    Invalid,
    /// `503`.
    Unavailable,
    /// The owner's actor restarted: the sender tries again.
    Restarted,
    /// The owner's store failed: `503` here, the cause is in the owner's log.
    Store,
    /// The node asked no longer owns the session: ask again who does.
    NotOwner,
}

impl From<&SessionError> for WireError {
    fn from(e: &SessionError) -> Self {
        let kind = match e {
            SessionError::NotFound => WireErrorKind::NotFound,
            SessionError::Unauthorized => WireErrorKind::Unauthorized,
            SessionError::Forbidden(_) => WireErrorKind::Forbidden,
            SessionError::InvalidState(_) => WireErrorKind::InvalidState,
            SessionError::UploadReplaced => WireErrorKind::UploadReplaced,
            SessionError::IdempotencyConflict => WireErrorKind::IdempotencyConflict,
            SessionError::Incomplete(_) => WireErrorKind::Incomplete,
            SessionError::BindingMismatch { .. } => WireErrorKind::BindingMismatch,
            SessionError::Invalid(_) => WireErrorKind::Invalid,
            SessionError::Unavailable(_) => WireErrorKind::Unavailable,
            SessionError::Restarted => WireErrorKind::Restarted,
            // Refusals of a busy or closing store are `503` here as there.
            SessionError::Store(
                StoreError::Busy
                | StoreError::Closed
                | StoreError::NoLease
                | StoreError::Unavailable(_),
            ) => WireErrorKind::Unavailable,
            SessionError::Store(_) => WireErrorKind::Store,
        };
        let status = match e {
            SessionError::InvalidState(s) => Some(*s),
            _ => None,
        };
        // A store error's cause stays in the owner's log.
        let message = match e {
            SessionError::Store(StoreError::Busy) => {
                "the broker is overloaded; try again".to_owned()
            }
            SessionError::Store(StoreError::Closed) => {
                "the node that runs this session is shutting down; try again".to_owned()
            }
            SessionError::Store(StoreError::NoLease) => {
                "the node that runs this session is rejoining the cluster; try again".to_owned()
            }
            SessionError::Store(StoreError::Unavailable(_)) => {
                "the database is unavailable; try again shortly".to_owned()
            }
            SessionError::Store(_) => String::new(),
            e => e.to_string(),
        };
        let tries_left = match e {
            SessionError::BindingMismatch { tries_left } => Some(*tries_left),
            _ => None,
        };
        WireError {
            kind,
            message,
            status,
            tries_left,
        }
    }
}

impl WireError {
    /// The owner answered that it does not own the session.
    pub fn not_owner() -> Self {
        WireError {
            kind: WireErrorKind::NotOwner,
            message: String::new(),
            status: None,
            tries_left: None,
        }
    }

    /// The error as this node answers it; `None` for [`WireErrorKind::NotOwner`].
    pub fn into_session_error(self) -> Option<SessionError> {
        Some(match self.kind {
            WireErrorKind::NotFound => SessionError::NotFound,
            WireErrorKind::Unauthorized => SessionError::Unauthorized,
            WireErrorKind::Forbidden => SessionError::Forbidden(intern(self.message)),
            WireErrorKind::InvalidState => {
                SessionError::InvalidState(self.status.unwrap_or(Status::Expired))
            }
            WireErrorKind::UploadReplaced => SessionError::UploadReplaced,
            WireErrorKind::IdempotencyConflict => SessionError::IdempotencyConflict,
            WireErrorKind::Incomplete => SessionError::Incomplete(self.message),
            WireErrorKind::BindingMismatch => SessionError::BindingMismatch {
                tries_left: self.tries_left.unwrap_or(0),
            },
            WireErrorKind::Invalid => SessionError::Invalid(self.message),
            WireErrorKind::Unavailable => SessionError::Unavailable(intern(self.message)),
            WireErrorKind::Restarted => SessionError::Restarted,
            // As the store's failure is answered where it happens (`500`); the cause
            // is in the owner's log.
            WireErrorKind::Store => SessionError::Store(StoreError::Postgres(Arc::new(
                std::io::Error::other("on the node that runs this session"),
            ))),
            WireErrorKind::NotOwner => return None,
        })
    }
}

/// Most distinct messages kept by [`intern`]; past it a generic one is used.
const MAX_INTERNED: usize = 256;

/// A `'static` copy of a message from another node. The messages are the broker's own
/// constants (every node runs the same code), so the set stays small; it is bounded
/// anyway, so a confused peer cannot grow it without end.
fn intern(message: String) -> &'static str {
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let Ok(mut seen) = SEEN.get_or_init(Default::default).lock() else {
        return "refused by the node that runs this session";
    };
    if let Some(s) = seen.get(message.as_str()) {
        return s;
    }
    if seen.len() >= MAX_INTERNED {
        return "refused by the node that runs this session";
    }
    let s: &'static str = Box::leak(message.into_boxed_str());
    seen.insert(s);
    s
}

/// Why a forwarded command got no answer of its own.
#[derive(Debug)]
pub enum ForwardError {
    /// Nobody listens for that node: it stopped or died. The command was not delivered;
    /// sending it again is safe once the session has a new owner.
    Unreachable,
    /// Sent, but no answer came in time: it may or may not have been carried out.
    NoAnswer,
    /// The node no longer owns the session.
    NotOwner,
    /// The owner refused or failed it.
    Session(SessionError),
}

/// A boxed future, as the router's methods return them (the trait stays object-safe).
pub type RouteFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the registry needs from the cluster layer.
pub trait Router: Send + Sync + 'static {
    /// Sends a command to session `id`'s owner `node` and waits for its answer.
    fn forward(
        &self,
        node: String,
        id: SessionId,
        out: Outbound,
    ) -> RouteFuture<Result<WireOk, ForwardError>>;

    /// This node committed transition `seq` of session `id`: tell the nodes watching it.
    fn announce(&self, id: SessionId, seq: Seq);

    /// From now on, tell `to` whenever the owner announces a transition of `id`;
    /// resolves once the subscription is in place (the watcher reads the store after).
    fn watch(&self, id: SessionId, to: Recipient<Refresh>) -> RouteFuture<()>;

    /// Stop telling `to` about `id` (idempotent; a newer watcher of `id` stays).
    fn unwatch(&self, id: SessionId, to: &Recipient<Refresh>);

    /// Whether the link to the other nodes is up (readiness).
    fn ready(&self) -> bool;

    /// Whether this node's lease is surely valid now, by this process's monotonic
    /// clock with a margin: an owner actor may answer from memory only then.
    fn lease_fresh(&self) -> bool;

    /// Renews this node's lease now; `false` if it lapsed (every owner actor here has
    /// been told to let its session go) or the store cannot be reached.
    fn confirm_lease(&self) -> RouteFuture<bool>;

    /// This node no longer runs an actor for `id` (it ended, moved, or was only
    /// watched): the store forgets the ownership epoch it held for it.
    fn released(&self, id: SessionId, epoch: i64);

    /// The ownership epoch this node holds for `id`, if it holds one: what an actor
    /// started now runs under.
    fn held_epoch(&self, id: SessionId) -> Option<i64>;
}

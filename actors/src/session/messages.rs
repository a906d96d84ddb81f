//! The messages the session actor handles, beside it (as in the actix chat example),
//! with the plain data they carry and answer. Their rules live elsewhere: what a
//! command does is planned in [`commands`](crate::commands) (from
//! [`status::next`](crate::status::next)), subscriptions are kept by
//! [`delivery`](crate::delivery), uploads by [`staging`](crate::staging); the
//! [`SessionActor`](super::SessionActor) runs them.
//!
//! Layout:
//! - commands: [`Inspect`], [`Retrieve`], [`Decide`] (with [`Answer`]), [`Cancel`], [`ShowOn`],
//!   [`RotateToken`], [`Tick`], [`InjectFault`], and [`Caller`], who sends them;
//! - delivery: [`Subscribe`], [`Unsubscribe`], [`WaitChange`], [`CountAudience`], and
//!   what the actor sends its subscribers: [`Push`], [`AudienceLost`];
//! - uploads: [`CheckUpload`], [`StageFile`];
//! - tests: [`ArmFault`] at a [`FaultPoint`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::SessionError;
use crate::ids::{DeviceId, FileId, Seq, SessionId, TokenHash};
use crate::model::{BindingCode, SessionEvent, SessionRecord, ShownOn};
use crate::write::Upload;

// ---- Commands --------------------------------------------------------------

/// Who is calling, as the web layer authenticated them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Caller {
    /// The enterprise backend, by the name of its API key.
    Backend {
        /// The API key's name.
        owner: String,
    },
    /// The browser showing the QR, by the hash of the session token it presented.
    Client {
        /// SHA-256 of the presented token.
        token: TokenHash,
        /// The session the token names, if it is of a format that names one
        /// ([`SessionToken::claimed_session`](crate::ids::SessionToken::claimed_session)):
        /// where to look when it is not this session's own.
        #[serde(default)]
        claims: Option<SessionId>,
    },
    /// The phone, by its JWT's issuer and `sub`.
    Device {
        /// The device.
        device: DeviceId,
    },
}

/// Reads the session (any role).
#[derive(Message, Clone, Debug, Serialize, Deserialize)]
#[rtype(result = "Result<SessionRecord, SessionError>")]
pub struct Inspect {
    /// Who asks.
    pub caller: Caller,
}

/// A device opens the session (`information`).
#[derive(Message, Clone, Debug, Serialize, Deserialize)]
#[rtype(result = "Result<SessionRecord, SessionError>")]
pub struct Retrieve {
    /// The device.
    pub device: DeviceId,
}

/// The person's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Answer {
    /// Approve and share these values.
    Approve {
        /// One string per non-file scope.
        shared_data: serde_json::Map<String, serde_json::Value>,
        /// The number the person typed (sessions with a binding, SPEC §2).
        #[serde(default)]
        binding_code: Option<BindingCode>,
    },
    /// Deny.
    Deny,
}

/// The bound device approves or denies (`update`).
#[derive(Message, Clone, Debug, Serialize, Deserialize)]
#[rtype(result = "Result<SessionRecord, SessionError>")]
pub struct Decide {
    /// The device.
    pub device: DeviceId,
    /// What the person decided.
    pub answer: Answer,
}

/// The backend cancels the session (`DELETE`).
#[derive(Message, Clone, Debug, Serialize, Deserialize)]
#[rtype(result = "Result<SessionRecord, SessionError>")]
pub struct Cancel {
    /// The API key's name.
    pub owner: String,
}

/// A client subscribed or fetched the QR: the first one tells the device where the
/// session is shown (SPEC §2, `shown_on`). Answers the session.
#[derive(Message, Clone, Debug, Serialize, Deserialize)]
#[rtype(result = "Result<SessionRecord, SessionError>")]
pub struct ShowOn {
    /// The client (its session token).
    pub caller: Caller,
    /// Its browser and OS, and now.
    pub shown_on: ShownOn,
}

/// An idempotent replay committed a new token; the old one stops working.
///
/// It carries no token: concurrent replays commit their tokens in one order but may
/// deliver these messages in another, so the actor adopts whatever token the store
/// holds when it handles the message. Every message is sent after its commit, so once
/// the last one is handled the actor holds the last token committed.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<(), SessionError>")]
pub struct RotateToken;

/// The clock moved: re-check expiry now.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Tick;

/// Test hook: makes the session actor fail, to prove supervision. Only in test builds
/// (the `fault-injection` feature, which the tests turn on and release builds leave off).
#[doc(hidden)]
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<(), SessionError>")]
pub struct InjectFault {
    /// `true`: a panic inside the actor's containment; `false`: a panic that kills the actor.
    pub contained: bool,
}

// ---- Several nodes ---------------------------------------------------------

/// A session this node only watches (its owner is another node) may have moved: read
/// it from the store and push what the audience here has not had. Sent at each of the
/// owner's announcements, and by the node's sweep of every watched session's seq
/// (announcements are not guaranteed to arrive).
#[derive(Message, Clone, Copy, Debug, Default)]
#[rtype(result = "()")]
pub struct Refresh {
    /// A seq the store was seen at (by the node's sweep): a watcher already there
    /// reads nothing. `None` (an announcement): read.
    pub stored: Option<Seq>,
}

/// This node took the session over (its owner died or handed it over): the watching
/// actor becomes the owner, arming the expiry timer.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Promote;

/// This node no longer owns the session (it hands its sessions over on SIGTERM, or its
/// lease lapsed): the actor stops without ending the session. Its subscribers are told
/// ([`AudienceLost`]) and re-subscribe through the registry, which finds the new owner.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Relinquish;

// ---- Delivery --------------------------------------------------------------

/// A committed transition, pushed to a subscriber.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Push {
    /// The session.
    pub session_id: SessionId,
    /// The transition.
    pub event: SessionEvent,
    /// When the session actor saw the commit complete: the start of the push latency.
    pub committed_at: std::time::Instant,
}

/// The session actor that held this subscription died without finishing the session
/// (a panic outside its containment): no push will come through it any more. The
/// subscriber re-subscribes through the registry with the last seq it has.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct AudienceLost {
    /// The session.
    pub session_id: SessionId,
}

/// The id of a subscriber within its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscriberId(pub(crate) u64);

/// Registers a subscriber for the session's transitions.
#[derive(Message, Clone)]
#[rtype(result = "Result<Subscribed, SessionError>")]
pub struct Subscribe {
    /// Who asks (a client token).
    pub caller: Caller,
    /// The last seq the subscriber has; more than the current seq is `400`.
    pub after: Option<Seq>,
    /// Where pushes go. The session uses `try_send`: a subscriber whose mailbox is
    /// full is dropped (and told through `evicted`), so it never slows the session.
    pub subscriber: Recipient<Push>,
    /// Told if the session's actor dies with this subscription (see [`AudienceLost`]).
    pub lost: Recipient<AudienceLost>,
    /// Set by the session when it drops the subscriber for not keeping up.
    pub evicted: Arc<AtomicBool>,
}

/// The answer to [`Subscribe`].
#[derive(Debug)]
pub struct Subscribed {
    /// The subscription, or `None` for an ended session (nothing more will come).
    pub id: Option<SubscriberId>,
    /// The session at the moment of subscribing; transitions after `snapshot.seq` are
    /// pushed, those up to it are in the events log.
    pub snapshot: SessionRecord,
}

/// Removes a subscriber (idempotent).
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<(), SessionError>")]
pub struct Unsubscribe {
    /// The subscription.
    pub id: SubscriberId,
}

/// A long-poll: the session once `seq > after`.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Change, SessionError>")]
pub struct WaitChange {
    /// Who asks (a client token).
    pub caller: Caller,
    /// Answer once `seq` is above this; `None`: the current seq (the next change).
    pub after: Option<Seq>,
}

/// The answer to [`WaitChange`].
#[derive(Debug)]
pub enum Change {
    /// Already past `after`.
    Now(SessionRecord),
    /// Not yet: `next` fires with the session after its next transition.
    Later {
        /// The session as it is now.
        current: SessionRecord,
        /// Resolves at the next committed transition.
        next: oneshot::Receiver<SessionRecord>,
    },
    /// The session is terminal: nothing will change.
    Never(SessionRecord),
}

/// Who is listening to a live session (for tests and metrics).
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<AudienceCount, SessionError>")]
pub struct CountAudience;

/// The answer to [`CountAudience`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceCount {
    /// WebSocket subscribers.
    pub subscribers: usize,
    /// Parked long-polls.
    pub waiters: usize,
}

// ---- Uploads ---------------------------------------------------------------

/// What [`StageFile`] answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    /// The new file id.
    pub file_id: FileId,
    /// The kind.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
}

/// The bound device uploads a file (`PUT /files/{kind}`); the actor holds it in memory.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<StagedFile, SessionError>")]
pub struct StageFile {
    /// The device (issuer and `sub`).
    pub device: DeviceId,
    /// The file scope.
    pub kind: String,
    /// The ticket [`CheckUpload`] gave this upload; refused if a newer upload of the
    /// kind replaced it meanwhile.
    pub upload_id: UploadId,
    /// The body, already checked for type and size.
    pub upload: Arc<Upload>,
}

/// Which upload of a session and kind is the one streaming in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadId(pub(crate) u64);

/// What [`CheckUpload`] answers: the upload may stream in, as the one of its kind.
#[derive(Debug)]
pub struct UploadTicket {
    /// To hand back with [`StageFile`].
    pub id: UploadId,
    /// Resolves (with an error: nothing is ever sent) once this upload may no longer
    /// be staged: a newer upload of the same kind replaced it, or the session ended.
    /// The upload's reader stops at once and lets its bytes go.
    pub ended: oneshot::Receiver<()>,
    /// For an upload to a session on another node: the sender of `ended`, kept here so
    /// that it never resolves (the owner checks the ticket again at staging).
    pub(crate) _keep: Option<oneshot::Sender<()>>,
}

impl UploadTicket {
    /// The ticket of an upload to a session owned by another node, which holds the
    /// real ticket `id`.
    pub(crate) fn remote(id: u64) -> Self {
        let (keep, ended) = oneshot::channel();
        Self {
            id: UploadId(id),
            ended,
            _keep: Some(keep),
        }
    }
}

/// Asks whether an upload would be staged, before its body is read: without it any
/// valid device token could stream 5 MiB at any session id and hold the staging
/// budget meanwhile. It answers as [`StageFile`] would; [`StageFile`] checks again,
/// since the session may change while the body streams in.
///
/// Accepted, the upload becomes the one of its kind that streams in: an unfinished
/// earlier one is ended at once (its [`UploadTicket::ended`] resolves), so a phone that
/// retries after a dropped connection does not wait for the dead upload to time out,
/// and the dead upload's bytes go back to the budget.
#[derive(Message, Clone, Debug, Serialize, Deserialize)]
#[rtype(result = "Result<UploadTicket, SessionError>")]
pub struct CheckUpload {
    /// The device (issuer and `sub`).
    pub device: DeviceId,
    /// The file scope.
    pub kind: String,
}

// ---- Tests: fault injection (nothing in the broker sends these; only the integration
// tests do, to prove that supervision strands nobody) -----------------------------------------------------------------

/// Where an armed session actor panics.
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// Applying a committed transition to the in-memory state.
    Apply,
    /// Pushing a committed transition to the audience.
    Publish,
    /// Ending a terminal session's actor.
    Finish,
    /// Loading the session from the store (at start and after a restart).
    Load,
    /// Publishing, after a restart, what the subscribers missed.
    CatchUp,
    /// Checking (and committing) the expiry.
    CheckExpiry,
    /// The `RotateToken` handler.
    RotateToken,
    /// The `Tick` handler.
    Tick,
    /// The `Unsubscribe` handler.
    Unsubscribe,
}

/// Test hook: the session actor panics, uncontained, the next time it reaches `at`.
/// The arming survives a contained restart (so `Load` and `CatchUp` can be reached).
#[doc(hidden)]
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<(), SessionError>")]
pub struct ArmFault {
    /// The point to panic at.
    pub at: FaultPoint,
}

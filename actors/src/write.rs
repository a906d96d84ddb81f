//! What a transition writes: the description the session's planning hands the store.
//!
//! It depends on neither the store nor staging (both depend on it), so the rules that
//! plan a transition, the uploads it carries and the store that commits it import no
//! cycle. The store writes exactly what this says and decides nothing itself.
//!
//! Layout:
//! - [`TransitionWrite`]: one transition, with everything it changes.
//! - [`NoteWrite`]: a change to a live session that is no transition (seq stays).
//! - [`NewFile`] / [`Upload`] / [`ImageType`]: an uploaded file it stores on approve.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::ids::{DeviceId, FileId, Seq, SessionId};
use crate::model::{BindingCode, Consent, ShownOn};
use crate::status::{Reason, Status};

/// One transition, as planned by [`commands`](crate::commands) from
/// [`status::next`](crate::status::next): the store commits exactly this (guarded by
/// `from_seq`) and hands back the committed row.
#[derive(Clone, Debug)]
pub struct TransitionWrite {
    /// The session.
    pub id: SessionId,
    /// The seq the writer believes is current; the write fails as stale otherwise.
    pub from_seq: Seq,
    /// The new status.
    pub status: Status,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Binds the device, its issuer and `sub` (on `retrieved`).
    pub bind: Option<DeviceId>,
    /// The person's decision (on approve and deny).
    pub consent: Option<Consent>,
    /// The values shared on approve.
    pub shared_data: Option<serde_json::Map<String, serde_json::Value>>,
    /// The staged files, stored on approve in the same commit.
    pub files: Vec<NewFile>,
    /// Set as `decided_at` (a terminal transition).
    pub decided_at: Option<DateTime<Utc>>,
    /// Deletes everything stored about the person: registration, shared data, files
    /// (an end without consent).
    pub purge: bool,
    /// Makes the bound user known to the session's backend (`PENDING` until set).
    pub registers_user: bool,
    /// The binding code drawn for the client (on `retrieved`, with a binding).
    pub binding_code: Option<BindingCode>,
    /// Wrong binding codes counted, when this transition counts one (the last).
    pub binding_misses: Option<u8>,
    /// Why the session ends `declined`.
    pub reason: Option<Reason>,
}

/// A change to a live session that is not a transition: seq, status and events stay,
/// nothing is pushed or webhooked. Guarded by `from_seq` like a transition (a session
/// that moved meanwhile refuses it as stale), and on several nodes by ownership.
#[derive(Clone, Debug)]
pub struct NoteWrite {
    /// The session.
    pub id: SessionId,
    /// The seq the writer believes is current.
    pub from_seq: Seq,
    /// What changes.
    pub note: Note,
}

/// What a [`NoteWrite`] changes.
#[derive(Clone, Debug)]
pub enum Note {
    /// A wrong binding code short of the last: the count is now `misses` (it was one
    /// less: the store refuses the write as stale otherwise).
    BindingMiss {
        /// Wrong codes counted, this one included.
        misses: u8,
    },
    /// The first client that subscribed or fetched the QR (set once: the store refuses
    /// the write as stale if it is already set).
    ShownOn(ShownOn),
}

/// The media types an upload may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageType {
    /// `image/jpeg`.
    Jpeg,
    /// `image/png`.
    Png,
}

impl ImageType {
    /// Parses a `Content-Type` value (parameters and case ignored); `None` for any
    /// other type.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("image/jpeg") {
            Some(ImageType::Jpeg)
        } else if essence.eq_ignore_ascii_case("image/png") {
            Some(ImageType::Png)
        } else {
            None
        }
    }

    /// The canonical `Content-Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::Jpeg => "image/jpeg",
            ImageType::Png => "image/png",
        }
    }

    /// The format's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            ImageType::Jpeg => "JPEG",
            ImageType::Png => "PNG",
        }
    }

    /// The signature every file of this type starts with.
    fn magic(self) -> &'static [u8] {
        match self {
            ImageType::Jpeg => &[0xFF, 0xD8, 0xFF],
            ImageType::Png => &[0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'],
        }
    }

    /// Whether `bytes` start with this type's signature: a header that claims PNG over
    /// a body that is not one is refused.
    pub fn matches(self, bytes: &[u8]) -> bool {
        bytes.starts_with(self.magic())
    }
}

/// One uploaded body with its type, holding its bytes' share of the budget.
pub struct Upload {
    /// The checked media type.
    pub content_type: ImageType,
    /// The body; wiped when the last handle to the upload is dropped.
    pub bytes: Zeroizing<Vec<u8>>,
    /// Its share of the staging budget (a [`Reservation`](crate::staging::Reservation)),
    /// released when the last handle to this upload is dropped. Opaque here, so the
    /// write description depends on nothing of staging.
    _hold: Box<dyn Send + Sync>,
}

/// Its bytes are wiped when it is dropped (they are a `Zeroizing` buffer).
impl ZeroizeOnDrop for Upload {}

impl Upload {
    /// An upload whose `bytes` are covered by `hold` (its budget reservation), which
    /// is kept until the upload is dropped.
    pub fn new(
        content_type: ImageType,
        bytes: impl Into<Zeroizing<Vec<u8>>>,
        hold: impl Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            content_type,
            bytes: bytes.into(),
            _hold: Box::new(hold),
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

impl fmt::Debug for Upload {
    // Never the bytes: this is biometric data, and Debug output ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Upload({}, {} bytes)",
            self.content_type.as_str(),
            self.bytes.len()
        )
    }
}

/// A staged file as the approve transition writes it.
#[derive(Clone, Debug)]
pub struct NewFile {
    /// The id handed to the device at upload.
    pub file_id: FileId,
    /// The file scope it satisfies.
    pub kind: String,
    /// The body; shared with the actor's staging, so the write copies nothing.
    pub upload: Arc<Upload>,
}

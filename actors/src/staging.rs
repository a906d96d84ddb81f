//! Uploads held in memory until the person approves (SPEC §2, data custody).
//!
//! Layout:
//! - [`ImageType`]: the accepted media types, and the magic bytes that prove them.
//! - [`StagingBudget`] / [`Reservation`]: the broker-wide bound on staged bytes.
//! - [`Upload`]: one uploaded body, holding its share of the budget.
//! - [`Staged`]: a session actor's uploads by kind, and [`StageFile`], the message
//!   that adds one.
//! - [`CheckUpload`]: the same rules asked before the body is read.
//!
//! Nothing here touches the disk. A staged upload reaches the store only inside the
//! approve transition ([`NewFile`] in [`TransitionWrite`]); every other way a session
//! ends, and an actor restart, drops it, which gives its bytes back to the budget.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::Message;
use chrono::{DateTime, Utc};

use crate::commands::{authorize, Caller, Plan, SessionCommand};
use crate::error::SessionError;
use crate::ids::{DeviceId, FileId};
use crate::model::{is_file_scope, SessionRecord};
use crate::status::Status;
use crate::store::TransitionWrite;

/// Largest upload accepted (SPEC §3: at most 5 MiB).
pub const MAX_UPLOAD_BYTES: usize = 5 * 1024 * 1024;

/// Default bound on the bytes staged across the whole broker.
pub const DEFAULT_MAX_STAGED_BYTES: usize = 256 * 1024 * 1024;

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

    /// Parses the canonical name as stored.
    pub fn parse(s: &str) -> Option<Self> {
        [ImageType::Jpeg, ImageType::Png]
            .into_iter()
            .find(|t| t.as_str() == s)
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

/// The broker-wide bound on staged bytes, shared by every session actor and every
/// upload still streaming in.
#[derive(Debug)]
pub struct StagingBudget {
    /// Bytes reserved now. Atomic: uploads on every worker thread reserve and every
    /// session actor releases concurrently, without a lock.
    used: AtomicUsize,
    /// Most bytes that may be reserved at once.
    limit: usize,
}

impl StagingBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// An empty reservation, to grow while a body streams in.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }
}

/// Bytes taken from a [`StagingBudget`]; given back when dropped, so every way an
/// upload goes away (refused, replaced, committed, discarded) releases it.
pub struct Reservation {
    budget: Arc<StagingBudget>,
    bytes: usize,
}

impl Reservation {
    /// Takes `n` more bytes; `false` (and nothing taken) if the budget is full.
    #[must_use]
    pub fn grow(&mut self, n: usize) -> bool {
        let ok = self.budget.take(n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back whatever is held beyond `n` bytes (a body shorter than announced).
    pub fn shrink_to(&mut self, n: usize) {
        if n < self.bytes {
            self.budget.used.fetch_sub(self.bytes - n, Ordering::AcqRel);
            self.bytes = n;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reservation({} bytes)", self.bytes)
    }
}

/// One uploaded body with its type, holding its bytes' share of the budget.
pub struct Upload {
    /// The checked media type.
    pub content_type: ImageType,
    /// The body.
    pub bytes: Vec<u8>,
    /// Released when the last handle to this upload is dropped.
    _reservation: Reservation,
}

impl Upload {
    /// An upload whose `bytes` are covered by `reservation`.
    pub fn new(content_type: ImageType, bytes: Vec<u8>, reservation: Reservation) -> Arc<Self> {
        Arc::new(Self {
            content_type,
            bytes,
            _reservation: reservation,
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

/// What [`StageFile`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The body, already checked for type and size.
    pub upload: Arc<Upload>,
}

/// The rules of an upload (SPEC §3), shared by [`CheckUpload`] before the body is read
/// and [`StageFile`] after: the bound device, a `retrieved` session that is not
/// overdue, and a kind that is one of its file scopes. The device comes first, so a
/// foreign device learns nothing about the session's state.
fn check_upload(
    session: &SessionRecord,
    device: &DeviceId,
    kind: &str,
    now: DateTime<Utc>,
) -> Result<(), SessionError> {
    authorize(
        session,
        &Caller::Device {
            device: device.clone(),
        },
    )?;
    if session.status != Status::Retrieved {
        return Err(SessionError::InvalidState(session.status));
    }
    if now >= session.expires_at {
        return Err(SessionError::InvalidState(Status::Expired));
    }
    if session.device.as_ref() != Some(device) {
        return Err(SessionError::Forbidden(
            "the session is bound to another device",
        ));
    }
    if !is_file_scope(kind) || !session.request.scopes.iter().any(|s| s == kind) {
        return Err(SessionError::Invalid(format!(
            "{kind:?} is not a file scope of this session"
        )));
    }
    Ok(())
}

impl StageFile {
    /// Checks that the upload may be staged now (see [`check_upload`]).
    pub fn check(&self, session: &SessionRecord, now: DateTime<Utc>) -> Result<(), SessionError> {
        check_upload(session, &self.device, &self.kind, now)
    }
}

impl SessionCommand for StageFile {
    type Output = StagedFile;
    fn on_ended(
        &self,
        session: &SessionRecord,
        now: DateTime<Utc>,
    ) -> Result<StagedFile, SessionError> {
        self.check(session, now)?;
        // Unreachable in practice (an ended session is never `retrieved`), but an ended
        // session must never stage anything.
        Err(SessionError::InvalidState(session.status))
    }
}

/// Asks whether an upload would be staged, before its body is read: without it any
/// valid device token could stream 5 MiB at any session id and hold the staging
/// budget meanwhile. It answers as [`StageFile`] would; [`StageFile`] checks again,
/// since the session may change while the body streams in.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<(), SessionError>")]
pub struct CheckUpload {
    /// The device (issuer and `sub`).
    pub device: DeviceId,
    /// The file scope.
    pub kind: String,
}

impl CheckUpload {
    /// `Ok` if [`StageFile`] with this device and kind would be accepted now.
    pub fn check(&self, session: &SessionRecord, now: DateTime<Utc>) -> Result<(), SessionError> {
        check_upload(session, &self.device, &self.kind, now)
    }
}

impl SessionCommand for CheckUpload {
    type Output = ();
    fn on_ended(&self, session: &SessionRecord, now: DateTime<Utc>) -> Result<(), SessionError> {
        self.check(session, now)?;
        // As for `StageFile`: an ended session never takes an upload.
        Err(SessionError::InvalidState(session.status))
    }
}

/// A session actor's staged uploads, one per file kind.
#[derive(Debug, Default)]
pub struct Staged {
    /// Kind → the latest upload of that kind.
    files: BTreeMap<String, NewFile>,
}

impl Staged {
    /// Stages `msg` (already checked), replacing an earlier upload of the same kind;
    /// the replaced one is dropped and its bytes go back to the budget.
    pub fn put(&mut self, msg: StageFile) -> StagedFile {
        let file = NewFile {
            file_id: FileId::new(),
            kind: msg.kind,
            upload: msg.upload,
        };
        let answer = StagedFile {
            file_id: file.file_id,
            kind: file.kind.clone(),
            size: file.upload.size(),
        };
        self.files.insert(file.kind.clone(), file);
        answer
    }

    /// The kinds with an upload.
    pub fn kinds(&self) -> std::collections::BTreeSet<String> {
        self.files.keys().cloned().collect()
    }

    /// Adds the staged files to an approve plan, so they are stored in the same commit
    /// as the transition. Other plans are left alone.
    pub fn attach(&self, plan: Result<Plan, SessionError>) -> Result<Plan, SessionError> {
        match plan {
            Ok(Plan::Move(write)) if write.status == Status::Confirmed => {
                Ok(Plan::Move(TransitionWrite {
                    files: self.files.values().cloned().collect(),
                    ..write
                }))
            }
            other => other,
        }
    }

    /// Drops everything staged (deny, expiry, cancel, commit, restart).
    pub fn clear(&mut self) {
        self.files.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_jpeg_and_png_only() {
        assert_eq!(
            ImageType::from_content_type("image/png"),
            Some(ImageType::Png)
        );
        assert_eq!(
            ImageType::from_content_type("Image/JPEG; q=1"),
            Some(ImageType::Jpeg)
        );
        assert_eq!(ImageType::from_content_type("image/gif"), None);
        assert_eq!(ImageType::from_content_type("application/json"), None);
        assert_eq!(ImageType::from_content_type(""), None);
    }

    #[test]
    fn magic_bytes_must_match_the_declared_type() {
        let png = b"\x89PNG\r\n\x1a\n rest";
        let jpeg = b"\xff\xd8\xff\xe0 rest";
        assert!(ImageType::Png.matches(png));
        assert!(!ImageType::Png.matches(jpeg));
        assert!(ImageType::Jpeg.matches(jpeg));
        assert!(!ImageType::Jpeg.matches(png));
        assert!(!ImageType::Jpeg.matches(b""));
        assert!(!ImageType::Png.matches(b"\x89PN"));
    }

    #[test]
    fn the_budget_refuses_past_its_limit_and_reservations_give_back_on_drop() {
        let budget = StagingBudget::new(10);
        let mut a = budget.reserve();
        assert!(a.grow(6));
        let mut b = budget.reserve();
        assert!(!b.grow(5), "6 + 5 > 10");
        assert!(b.grow(4));
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 4);
        b.shrink_to(3);
        assert_eq!(budget.used(), 3);
        assert!(b.grow(1));
        let upload = Upload::new(ImageType::Png, vec![0; 4], b);
        let copy = upload.clone();
        drop(upload);
        assert_eq!(budget.used(), 4, "still held by the other handle");
        drop(copy);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_second_upload_of_a_kind_replaces_the_first_and_releases_it() {
        let budget = StagingBudget::new(100);
        let upload = |n: usize| {
            let mut r = budget.reserve();
            assert!(r.grow(n));
            Upload::new(ImageType::Jpeg, vec![0; n], r)
        };
        let mut staged = Staged::default();
        let device = DeviceId::new("phone-app", crate::ids::UserId::parse("alice").unwrap());
        let first = staged.put(StageFile {
            device: device.clone(),
            kind: "selfie".into(),
            upload: upload(30),
        });
        let second = staged.put(StageFile {
            device,
            kind: "selfie".into(),
            upload: upload(20),
        });
        assert_ne!(first.file_id, second.file_id);
        assert_eq!(budget.used(), 20);
        assert_eq!(staged.kinds().len(), 1);
        staged.clear();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn debug_output_never_shows_the_bytes() {
        let budget = StagingBudget::new(100);
        let upload = Upload::new(ImageType::Png, b"SECRET".to_vec(), budget.reserve());
        assert!(!format!("{upload:?}").contains("SECRET"));
    }
}

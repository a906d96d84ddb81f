//! Uploads held in memory until the person approves (SPEC §2, data custody).
//!
//! Layout:
//! - [`StagingBudget`] / [`Reservation`]: the broker-wide bound on staged bytes.
//! - [`UploadBuffer`]: a body while it streams in, taking memory from the budget as
//!   its bytes arrive.
//! - [`Staged`]: a session actor's uploads by kind, kept by the rules of
//!   [`StageFile`] (which adds one) and [`CheckUpload`] (the same rules asked before
//!   the body is read; it also makes the upload the one of its kind that streams in,
//!   [`UploadTicket`]). The messages are beside the actor, in
//!   [`session::messages`](crate::session::messages); the uploaded body
//!   ([`Upload`], [`ImageType`]) is in [`write`](crate::write).
//!
//! Nothing here touches the disk. A staged upload reaches the store only inside the
//! approve transition ([`NewFile`] in [`TransitionWrite`]); every other way a session
//! ends, and an actor restart, drops it, which gives its bytes back to the budget.
//! Every buffer that held an upload's bytes is wiped (zeroized) when it is let go:
//! the growing buffer's old copies, and the staged body itself when its last handle
//! drops.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::commands::{admit_device, check_not_overdue, unexpected, Plan, SessionCommand};
use crate::error::SessionError;
use crate::ids::{DeviceId, FileId};
use crate::model::{is_file_scope, SessionRecord};
use crate::route::{Outbound, Wire, WireOk};
use crate::session::messages::{CheckUpload, StageFile, StagedFile, UploadId, UploadTicket};
use crate::status::{next, Event, Status};
use crate::write::{ImageType, NewFile, TransitionWrite, Upload};

/// Largest upload accepted (SPEC §3: at most 5 MiB).
pub const MAX_UPLOAD_BYTES: usize = 5 * 1024 * 1024;

/// Default bound on the bytes staged across the whole broker.
pub const DEFAULT_MAX_STAGED_BYTES: usize = 256 * 1024 * 1024;

/// The broker-wide bound on staged bytes, shared by every session actor and every
/// upload still streaming in; or a smaller share of it, for the uploads of some
/// devices only (the demo's, [`StagingBudget::within`]).
#[derive(Debug)]
pub struct StagingBudget {
    /// Bytes reserved now. Atomic: uploads on every worker thread reserve and every
    /// session actor releases concurrently, without a lock.
    used: AtomicUsize,
    /// Most bytes that may be reserved at once.
    limit: usize,
    /// The budget this one is a share of: every byte taken here is taken there too.
    parent: Option<Arc<StagingBudget>>,
}

impl StagingBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
            parent: None,
        })
    }

    /// A share of `parent` of at most `limit` bytes: what is reserved here counts
    /// against both, so these uploads never take more than `limit` of the whole.
    pub fn within(parent: &Arc<Self>, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
            parent: Some(parent.clone()),
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// An empty reservation, to grow while a body streams in.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, n: usize) -> bool {
        let here = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok();
        if here && !self.parent.as_ref().is_none_or(|p| p.take(n)) {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        here
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        if let Some(parent) = &self.parent {
            parent.give(n);
        }
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
            crate::metrics::staged_moved(n as f64);
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
            self.budget.give(self.bytes - n);
            crate::metrics::staged_moved(-((self.bytes - n) as f64));
            self.bytes = n;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
        crate::metrics::staged_moved(-(self.bytes as f64));
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reservation({} bytes)", self.bytes)
    }
}

/// Why a chunk could not be added to an [`UploadBuffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferFull {
    /// The body would pass [`MAX_UPLOAD_BYTES`] (`413`).
    TooLarge,
    /// The staging budget cannot cover it (`503`).
    Budget,
}

/// An upload's body while it streams in.
///
/// Memory is taken from the [`StagingBudget`] as bytes arrive, never from an announced
/// `Content-Length`: a stalled upload holds only about what it sent. The buffer grows
/// by doubling (at most to the announced length), so it holds at most twice what
/// arrived, and the budget is charged for what is allocated, not just what is filled.
/// Growing copies into a new buffer and wipes the old one, so no stale copy of the
/// bytes is left in freed memory; the last buffer is wiped when dropped.
pub struct UploadBuffer {
    bytes: Zeroizing<Vec<u8>>,
    /// Covers `bytes.capacity()`.
    reservation: Reservation,
    /// The announced length, if any: the buffer never grows past it while the body
    /// keeps to it.
    announced: Option<usize>,
}

impl UploadBuffer {
    /// An empty buffer charging `budget`; `announced` is the `Content-Length`, if any.
    pub fn new(budget: &Arc<StagingBudget>, announced: Option<usize>) -> Self {
        Self {
            bytes: Zeroizing::new(Vec::new()),
            reservation: budget.reserve(),
            announced,
        }
    }

    /// Appends `chunk`, taking more of the budget if the buffer must grow. On an error
    /// nothing is added and nothing more is taken.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), BufferFull> {
        let len = self.bytes.len() + chunk.len();
        if len > MAX_UPLOAD_BYTES {
            return Err(BufferFull::TooLarge);
        }
        if len > self.bytes.capacity() {
            let doubled = (self.bytes.capacity() * 2).min(MAX_UPLOAD_BYTES);
            let ceiling = self
                .announced
                .filter(|&a| a >= len)
                .unwrap_or(MAX_UPLOAD_BYTES);
            let target = len.max(doubled.min(ceiling));
            // Short of budget for the slack, grow just enough: only bytes that do not
            // fit are refused.
            if self.regrow(target).is_err() {
                self.regrow(len)?;
            }
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    /// Bytes received.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes received.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes taken from the budget (the allocated capacity).
    pub fn reserved(&self) -> usize {
        self.reservation.bytes()
    }

    /// Moves the bytes into a buffer of exactly `capacity`, wiping the old one, and
    /// makes the reservation match.
    fn regrow(&mut self, capacity: usize) -> Result<(), BufferFull> {
        let more = capacity.saturating_sub(self.reservation.bytes());
        if more > 0 && !self.reservation.grow(more) {
            return Err(BufferFull::Budget);
        }
        let mut next = Zeroizing::new(Vec::with_capacity(capacity));
        next.extend_from_slice(&self.bytes);
        // The old buffer is zeroized as it drops here.
        self.bytes = next;
        self.reservation.shrink_to(capacity);
        Ok(())
    }

    /// The finished upload. A buffer left larger than its body (a body without a
    /// `Content-Length`, or shorter than announced) is first copied into one that fits.
    pub fn finish(mut self, content_type: ImageType) -> Arc<Upload> {
        if self.bytes.capacity() > self.bytes.len() {
            // Cannot fail: it needs no more of the budget than is held.
            let _ = self.regrow(self.bytes.len());
        }
        Upload::new(content_type, self.bytes, self.reservation)
    }
}

impl fmt::Debug for UploadBuffer {
    // Never the bytes (see `Upload`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UploadBuffer({} bytes, {} reserved)",
            self.bytes.len(),
            self.reservation.bytes()
        )
    }
}

/// Its bytes are wiped when it is dropped (they are a `Zeroizing` buffer).
impl ZeroizeOnDrop for UploadBuffer {}

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
    // The device (its issuer's lane, then the binding), then the state (SPEC §2
    // through `next`), then the clock: the same order every device command checks in.
    admit_device(session, device)?;
    next(
        session.status,
        session.device.as_ref(),
        Event::Upload { device },
    )?;
    check_not_overdue(session, now)?;
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
    fn to_wire(&self) -> Option<Outbound> {
        Some(Outbound {
            cmd: Wire::Stage {
                device: self.device.clone(),
                kind: self.kind.clone(),
                upload: self.upload_id.0,
                content_type: self.upload.content_type.as_str().to_owned(),
            },
            upload: Some(self.upload.clone()),
        })
    }
    fn from_wire(ok: WireOk) -> Result<StagedFile, SessionError> {
        match ok {
            WireOk::Staged(staged) => Ok(staged),
            other => Err(unexpected(other)),
        }
    }
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

impl CheckUpload {
    /// `Ok` if [`StageFile`] with this device and kind would be accepted now.
    pub fn check(&self, session: &SessionRecord, now: DateTime<Utc>) -> Result<(), SessionError> {
        check_upload(session, &self.device, &self.kind, now)
    }
}

impl SessionCommand for CheckUpload {
    type Output = UploadTicket;
    fn to_wire(&self) -> Option<Outbound> {
        Some(Outbound {
            cmd: Wire::CheckUpload(self.clone()),
            upload: None,
        })
    }
    fn from_wire(ok: WireOk) -> Result<UploadTicket, SessionError> {
        match ok {
            WireOk::Ticket(id) => Ok(UploadTicket::remote(id)),
            other => Err(unexpected(other)),
        }
    }
    fn on_ended(
        &self,
        session: &SessionRecord,
        now: DateTime<Utc>,
    ) -> Result<UploadTicket, SessionError> {
        self.check(session, now)?;
        // As for `StageFile`: an ended session never takes an upload.
        Err(SessionError::InvalidState(session.status))
    }
}

/// The upload of one kind that is streaming in.
#[derive(Debug)]
struct Streaming {
    id: UploadId,
    /// Dropped to end the upload: its reader's [`UploadTicket::ended`] resolves.
    _end: oneshot::Sender<()>,
}

/// A session actor's staged uploads, one per file kind, and the uploads streaming in,
/// at most one per kind.
#[derive(Debug, Default)]
pub struct Staged {
    /// Kind → the latest upload of that kind.
    files: BTreeMap<String, NewFile>,
    /// Kind → the upload of that kind streaming in now. An entry whose upload failed
    /// (cut off, too large, too slow) stays until the next upload of the kind or the
    /// end of the session: at most one per file kind, so this stays small.
    streaming: BTreeMap<String, Streaming>,
    /// The id of the next upload to begin.
    next_upload: u64,
}

impl Staged {
    /// Makes a new upload of `kind` the one streaming in; an unfinished earlier one is
    /// ended (its sender dropped).
    pub fn begin(&mut self, kind: &str) -> UploadTicket {
        let id = UploadId(self.next_upload);
        self.next_upload += 1;
        let (end, ended) = oneshot::channel();
        self.streaming
            .insert(kind.to_owned(), Streaming { id, _end: end });
        UploadTicket {
            id,
            ended,
            _keep: None,
        }
    }

    /// Stages `msg` (already checked), replacing an earlier upload of the same kind;
    /// the replaced one is dropped and its bytes go back to the budget. Refused
    /// (`409`) if a newer upload of the kind began while this one streamed in.
    pub fn put(&mut self, msg: StageFile) -> Result<StagedFile, SessionError> {
        match self.streaming.get(&msg.kind) {
            Some(current) if current.id == msg.upload_id => {
                self.streaming.remove(&msg.kind);
            }
            _ => return Err(SessionError::UploadReplaced),
        }
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
        Ok(answer)
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

    /// Drops everything staged (deny, expiry, cancel, commit, restart). Uploads still
    /// streaming in are left alone: see [`end_streaming`](Self::end_streaming).
    pub fn clear(&mut self) {
        self.files.clear();
    }

    /// Ends every upload still streaming in (the session is over).
    pub fn end_streaming(&mut self) {
        self.streaming.clear();
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
    fn a_share_refuses_past_its_own_limit_or_its_parents_and_gives_back_to_both() {
        let whole = StagingBudget::new(100);
        let share = StagingBudget::within(&whole, 30);
        let mut a = share.reserve();
        assert!(a.grow(30));
        assert!(!a.grow(1), "past the share");
        assert_eq!((share.used(), whole.used()), (30, 30));
        let mut other = whole.reserve();
        assert!(other.grow(70));
        drop(a);
        assert_eq!((share.used(), whole.used()), (0, 70));
        let mut b = share.reserve();
        assert!(b.grow(20));
        b.shrink_to(5);
        assert_eq!((share.used(), whole.used()), (5, 75));
        drop(b);
        drop(other);
        // The parent full: a share with room of its own takes nothing, and keeps nothing.
        let mut hog = whole.reserve();
        assert!(hog.grow(100));
        let mut c = share.reserve();
        assert!(!c.grow(1));
        assert_eq!((share.used(), whole.used()), (0, 100));
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
        let ticket = staged.begin("selfie");
        let first = staged
            .put(StageFile {
                device: device.clone(),
                kind: "selfie".into(),
                upload_id: ticket.id,
                upload: upload(30),
            })
            .unwrap();
        let ticket = staged.begin("selfie");
        let second = staged
            .put(StageFile {
                device,
                kind: "selfie".into(),
                upload_id: ticket.id,
                upload: upload(20),
            })
            .unwrap();
        assert_ne!(first.file_id, second.file_id);
        assert_eq!(budget.used(), 20);
        assert_eq!(staged.kinds().len(), 1);
        staged.clear();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_new_upload_of_a_kind_ends_the_one_still_streaming_in() {
        let budget = StagingBudget::new(100);
        let mut staged = Staged::default();
        let device = DeviceId::new("phone-app", crate::ids::UserId::parse("alice").unwrap());
        let stage = |kind: &str, id: UploadId| StageFile {
            device: device.clone(),
            kind: kind.into(),
            upload_id: id,
            upload: Upload::new(ImageType::Png, vec![1; 4], budget.reserve()),
        };
        let mut stalled = staged.begin("selfie");
        let other_kind = staged.begin("document_front");
        assert_eq!(
            stalled.ended.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "still the current upload"
        );
        let mut retry = staged.begin("selfie");
        assert_eq!(
            stalled.ended.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "ended by the retry"
        );
        assert!(matches!(
            staged.put(stage("selfie", stalled.id)),
            Err(SessionError::UploadReplaced)
        ));
        assert!(staged.put(stage("selfie", retry.id)).is_ok());
        // Once staged, a ticket cannot be used again.
        assert!(staged.put(stage("selfie", retry.id)).is_err());
        assert!(staged.put(stage("document_front", other_kind.id)).is_ok());
        assert_eq!(staged.kinds().len(), 2);
        assert_eq!(
            retry.ended.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        );
        let mut streaming = staged.begin("selfie");
        staged.end_streaming();
        assert_eq!(
            streaming.ended.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "the session ended"
        );
    }

    #[test]
    fn an_upload_buffer_takes_memory_as_bytes_arrive_not_as_announced() {
        let budget = StagingBudget::new(MAX_UPLOAD_BYTES);
        let mut buffer = UploadBuffer::new(&budget, Some(MAX_UPLOAD_BYTES));
        assert_eq!(budget.used(), 0, "nothing taken for the announced length");
        buffer.push(&[7; 100]).unwrap();
        assert_eq!((buffer.len(), budget.used()), (100, 100));
        buffer.push(&[7; 10]).unwrap();
        assert_eq!(budget.used(), 200, "grows by doubling");
        buffer.push(&[7; 300]).unwrap();
        assert_eq!(budget.used(), 410, "or to what a large chunk needs");
        drop(buffer);
        assert_eq!(budget.used(), 0);

        // Never past the announced length while the body keeps to it, so an honest
        // body ends in a buffer that fits exactly.
        let mut buffer = UploadBuffer::new(&budget, Some(150));
        buffer.push(&[7; 100]).unwrap();
        buffer.push(&[7; 50]).unwrap();
        assert_eq!(buffer.reserved(), 150);
        let upload = buffer.finish(ImageType::Png);
        assert_eq!((upload.size(), budget.used()), (150, 150));
        drop(upload);

        // Without a length, the finished body is copied into a buffer that fits.
        let mut buffer = UploadBuffer::new(&budget, None);
        buffer.push(&[7; 100]).unwrap();
        buffer.push(&[8; 1]).unwrap();
        assert_eq!(budget.used(), 200);
        let upload = buffer.finish(ImageType::Png);
        assert_eq!(budget.used(), 101);
        assert_eq!(upload.bytes.capacity(), 101);
        assert_eq!(upload.bytes[100], 8);
        drop(upload);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_upload_buffer_refuses_past_the_cap_or_the_budget_and_takes_nothing_then() {
        let budget = StagingBudget::new(1000);
        let mut buffer = UploadBuffer::new(&budget, None);
        buffer.push(&[0; 600]).unwrap();
        assert_eq!(buffer.push(&[0; 500]), Err(BufferFull::Budget));
        assert_eq!((buffer.len(), budget.used()), (600, 600));
        buffer.push(&[0; 400]).unwrap();
        assert_eq!((buffer.len(), budget.used()), (1000, 1000));

        let budget = StagingBudget::new(2 * MAX_UPLOAD_BYTES);
        let mut buffer = UploadBuffer::new(&budget, None);
        buffer.push(&vec![0; MAX_UPLOAD_BYTES]).unwrap();
        assert_eq!(buffer.push(&[0]), Err(BufferFull::TooLarge));
        assert_eq!(budget.used(), MAX_UPLOAD_BYTES);
    }

    #[test]
    fn staged_bytes_are_wiped_when_dropped() {
        // Reading freed memory to watch the wipe would need `unsafe`; what can be
        // checked is that every type holding upload bytes wipes them on drop.
        fn wipes_on_drop<T: ZeroizeOnDrop>() {}
        wipes_on_drop::<Upload>();
        wipes_on_drop::<UploadBuffer>();
        wipes_on_drop::<Zeroizing<Vec<u8>>>();
    }

    #[test]
    fn debug_output_never_shows_the_bytes() {
        let budget = StagingBudget::new(100);
        let upload = Upload::new(ImageType::Png, b"SECRET".to_vec(), budget.reserve());
        assert!(!format!("{upload:?}").contains("SECRET"));
    }
}

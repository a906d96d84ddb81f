//! Files as both engines return them, and the batch of the retention purge.

/// Most sessions one retention job purges, so one sweep never holds the writer (and
/// every transition queued behind it) for long; the sweeper repeats until done.
pub const PURGE_BATCH: usize = 256;

/// A stored file as the backend downloads it.
#[derive(Clone)]
pub struct StoredFile {
    /// The API key that owns its session.
    pub owner: String,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for StoredFile {
    // Never the bytes: they are personal data and Debug output ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredFile({}, {} bytes)",
            self.content_type,
            self.bytes.len()
        )
    }
}

//! The store's vocabulary, one for every engine (STYLE: as sqlx and diesel keep it):
//! the errors, the outcomes, the rows and the decisions. `store/` (SQLite) and `pg/`
//! (PostgreSQL) are dialect layers over it that run SQL; they import this, never each
//! other, and decide nothing this module decides.
//!
//! Layout:
//! - [`error`]: [`StoreError`], whichever engine failed.
//! - [`time`]: times as stored (Unix milliseconds).
//! - [`sessions`]: the session row's columns and their decoding (opening the sealed
//!   fields), the create's types and the idempotency rule ([`key_seen`]).
//! - [`files`]: stored files, the purge batch.
//! - [`outbox`]: the webhook outbox's types, the payload, where an event goes.
//! - [`records`]: record retention's counts and rule-made statements.
//!
//! The trait the actors call ([`crate::session_store::SessionStore`]) is beside it.

pub mod error;
pub mod files;
pub mod outbox;
pub mod records;
pub mod sessions;
pub mod time;

pub use error::StoreError;
pub use files::{StoredFile, PURGE_BATCH};
pub use outbox::{
    body_to_send, event_body, webhook_url, DeliveryRecord, DueEvents, OutboxEvent,
    StoredReferences, WebhookCounts, STATUS_CHANGED,
};
pub use records::{expired_records_sql, retained_data_sql, RecordsDeleted, DATA_KEY_IDS_SQL};
pub use sessions::{
    idempotency_cutoff, key_seen, replay_token, session_columns_of, session_from_row, Column,
    CreateOutcome, IdempotencyClaim, KeySeen, NewSession, SqlRow, IDEMPOTENCY_WINDOW,
    SESSION_COLUMNS,
};
pub use time::{ms, opt_time, time};

impl WebhookCounts {
    /// Counts `n` events of the outbox `state` (`pending` or `failed`, as stored).
    pub fn count(&mut self, state: &str, n: i64) -> Result<(), StoreError> {
        let n = u64::try_from(n).unwrap_or(0);
        match state {
            "pending" => self.pending = n,
            "failed" => self.failed = n,
            other => return Err(StoreError::Corrupt(format!("outbox state {other}"))),
        }
        Ok(())
    }
}

use crate::at_rest::SealedKey;
use crate::ids::SessionId;

/// Where webhook events go when a session has no `callback_url`; present only when
/// the broker can sign (it sends nothing unsigned, SPEC §4). Here, beside the store's
/// other shared types, so that the writer and the outbox (which uses the writer) do
/// not import each other.
#[derive(Clone, Debug, Default)]
pub struct WebhookRoute {
    /// The broker's default `--webhook-url`.
    pub default_url: Option<String>,
}

/// A session's data key as stored (columns `data_key_id`, `data_key`), if it has one.
pub fn stored_key(id: Option<String>, sealed: Option<Vec<u8>>) -> Option<SealedKey> {
    Some(SealedKey {
        key_id: id?,
        sealed: sealed?,
    })
}

/// A sealed value that does not open: the row is unreadable (a clean `500`, and the
/// log names the session), never read as garbage.
pub fn sealed_error(id: SessionId, e: crate::at_rest::AtRestError) -> StoreError {
    StoreError::Corrupt(format!("session {id}: {e}"))
}

/// What stays of a purged session, sealed anew (SPEC §2: a purge destroys the data key
/// with the data; the references stay): its references as stored (`vendor_data`,
/// `external_reference_id`) and its data key's columns. `None`: the row has no data
/// key (kept in clear, it stays so) and nothing is to be written.
pub struct Shredded {
    /// `data_key_id`, `data_key`: a fresh key, or none when nothing is left to seal.
    pub key: (Option<String>, Option<Vec<u8>>),
    /// `vendor_data` as stored from now on.
    pub vendor_data: Option<String>,
    /// `external_reference_id` as stored from now on.
    pub external_reference_id: Option<String>,
}

/// Crypto-shredding of session `id`, whose row holds `vendor_data` and
/// `external_reference_id` (sealed) under the data key `stored`.
pub fn shred(
    keys: &crate::at_rest::DataKeys,
    id: SessionId,
    vendor_data: Option<String>,
    external_reference_id: Option<String>,
    stored: Option<SealedKey>,
) -> Result<Option<Shredded>, StoreError> {
    use crate::at_rest::Field;
    let Some(stored) = stored else {
        return Ok(None);
    };
    let seal = keys
        .row(id, Some(stored))
        .map_err(|e| sealed_error(id, e))?;
    let open = |field, value| {
        seal.open_text(field, value)
            .map_err(|e| sealed_error(id, e))
    };
    let vendor = open(Field::VendorData, vendor_data)?;
    let reference = open(Field::ExternalReferenceId, external_reference_id)?;
    let kept = keys.reseal_references(id, vendor.as_deref(), reference.as_deref());
    Ok(Some(Shredded {
        key: kept
            .key
            .map_or((None, None), |k| (Some(k.key_id), Some(k.sealed))),
        vendor_data: kept.vendor_data,
        external_reference_id: kept.external_reference_id,
    }))
}

/// The `shared_data` column a transition writes: its shared data as JSON, sealed under
/// the session's key when `seal` is given (it is, whenever the person's data is kept).
pub fn shared_data_column(
    t: &crate::write::TransitionWrite,
    seal: Option<&crate::at_rest::RowSeal>,
) -> Result<Option<String>, StoreError> {
    let shared = t
        .shared_data
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("shared data: {e}")))?;
    Ok(match seal {
        Some(seal) => seal.seal_text(crate::at_rest::Field::SharedData, shared.as_deref()),
        None => shared,
    })
}

//! The webhook outbox as both engines keep it (SPEC §4): what the dispatcher reads and
//! records, the payload (the same bytes from either engine), and where an event goes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{StoreError, WebhookRoute};
use crate::at_rest::{DataKeys, Field, SealedKey};
use crate::clock::rfc3339;
use crate::ids::{Seq, SessionId};
use crate::write::TransitionWrite;

/// The `event` name of every webhook the broker sends.
pub const STATUS_CHANGED: &str = "session.status_changed";

/// One event to deliver, as the dispatcher reads it.
#[derive(Clone, Debug)]
pub struct OutboxEvent {
    /// The session it reports on.
    pub session_id: SessionId,
    /// The transition's seq.
    pub seq: Seq,
    /// `event_id` of the payload, sent as `X-Idv-Event-Id`.
    pub event_id: String,
    /// Where to POST it.
    pub url: String,
    /// `url` is the operator's default `--webhook-url` (trusted configuration), not the
    /// session's `callback_url` (which the SSRF guard checks again at connect).
    pub operator_url: bool,
    /// The exact bytes to send (and sign), the same at every attempt; `Err` when the
    /// session's sealed references do not open (a changed byte): then nothing is sent
    /// and the attempt counts as failed, with this reason (it names no value).
    pub body: Result<Arc<[u8]>, String>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt was made, if one was.
    pub first_attempt_at: Option<DateTime<Utc>>,
}

/// How one delivery attempt ended, as the outbox records it.
#[derive(Clone, Debug)]
pub enum DeliveryRecord {
    /// The receiver answered 2xx: the event is done and leaves the outbox.
    Delivered,
    /// Not accepted; try again at `next_attempt_at`.
    Retry {
        /// When to try again.
        next_attempt_at: DateTime<Utc>,
        /// A short note on why, for diagnosis.
        error: String,
    },
    /// Not accepted and out of time: kept as `failed`, counted on the session.
    Failed {
        /// A short note on the last failure.
        error: String,
    },
}

/// The webhook counts of `GET /v1/sessions/{id}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WebhookCounts {
    /// Events not yet delivered (including one in flight).
    pub pending: u64,
    /// Events given up on.
    pub failed: u64,
}

/// What the dispatcher should do now.
#[derive(Debug, Default)]
pub struct DueEvents {
    /// The oldest undelivered event of sessions whose turn has come.
    pub due: Vec<OutboxEvent>,
    /// The earliest later retry, to set a timer for.
    pub next_at: Option<DateTime<Utc>>,
}

/// The payload of SPEC §4, field order as documented.
#[derive(Serialize, Deserialize)]
struct StatusChanged {
    event_id: String,
    event: String,
    session_id: String,
    status: String,
    seq: u64,
    vendor_data: Option<String>,
    external_reference_id: Option<String>,
    at: String,
}

/// A fresh `event_id` and the body of the webhook of transition `t` as the outbox
/// stores it (both engines): the payload of SPEC §4 *without* the session's
/// references (`vendor_data` and `external_reference_id` are `null`), which
/// [`body_to_send`] puts in at each attempt.
///
/// Why not store them: with `--data-key` they are the person's data and sealed at rest,
/// and a copy sealed under the session's data key at enqueue time would no longer open
/// once a purge (deny, expiry, cancel) replaces that key. The session row keeps them
/// (sealed under its current key, resealed by a purge) for as long as the outbox has
/// an event of the session (retention waits for delivery), and they never change over
/// a session's life: every attempt of an event sends the same bytes, and the outbox
/// holds no personal data at all, sealed or not.
pub fn event_body(t: &TransitionWrite) -> Result<(String, Vec<u8>), StoreError> {
    let event_id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::to_vec(&StatusChanged {
        event_id: event_id.clone(),
        event: STATUS_CHANGED.to_owned(),
        session_id: t.id.to_string(),
        status: t.status.as_str().to_owned(),
        seq: t.from_seq.next().0,
        vendor_data: None,
        external_reference_id: None,
        at: rfc3339(t.at),
    })
    .map_err(|e| StoreError::Corrupt(format!("webhook payload: {e}")))?;
    Ok((event_id, body))
}

/// A session's references as its row stores them: sealed under its data key `key`, or
/// in clear (no key).
pub struct StoredReferences {
    /// `vendor_data` as stored.
    pub vendor_data: Option<String>,
    /// `external_reference_id` as stored.
    pub external_reference_id: Option<String>,
    /// The session's data key as stored, if its row is sealed.
    pub key: Option<SealedKey>,
}

/// The exact bytes to send (and sign) for an outbox row holding `stored` (made by
/// [`event_body`]): the session's references opened and put in. `refs` is `None` when
/// the session row is gone (it cannot be while an event is pending: retention waits);
/// the body is then sent as stored. `Err` (naming the session, never a value) when
/// the references do not open: the event is not sent but counted as a failed attempt.
pub fn body_to_send(
    keys: &DataKeys,
    session: SessionId,
    stored: Vec<u8>,
    refs: Option<StoredReferences>,
) -> Result<Arc<[u8]>, String> {
    let Some(refs) = refs else {
        return Ok(stored.into());
    };
    let opened = keys.row(session, refs.key).and_then(|row| {
        Ok((
            row.open_text(Field::VendorData, refs.vendor_data)?,
            row.open_text(Field::ExternalReferenceId, refs.external_reference_id)?,
        ))
    });
    let (vendor_data, external_reference_id) =
        opened.map_err(|e| format!("not sent: session {session}: {e}"))?;
    let mut payload: StatusChanged = serde_json::from_slice(&stored)
        .map_err(|e| format!("not sent: the stored webhook payload is not readable: {e}"))?;
    payload.vendor_data = vendor_data;
    payload.external_reference_id = external_reference_id;
    serde_json::to_vec(&payload)
        .map(Into::into)
        .map_err(|e| format!("not sent: webhook payload: {e}"))
}

/// Where the event of a session goes: its `callback_url`, else the operator's default;
/// nothing without a route (no signing secret: the broker sends nothing unsigned) or
/// without either URL.
pub fn webhook_url(route: Option<&WebhookRoute>, callback_url: Option<&str>) -> Option<String> {
    let route = route?;
    callback_url
        .map(str::to_owned)
        .or_else(|| route.default_url.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callback_wins_the_default_is_the_fallback_and_no_route_sends_nothing() {
        let route = WebhookRoute {
            default_url: Some("https://ops.example/hooks".into()),
        };
        let bare = WebhookRoute { default_url: None };
        let cb = Some("https://bank.example/cb");
        assert_eq!(webhook_url(Some(&route), cb).as_deref(), cb);
        assert_eq!(
            webhook_url(Some(&route), None).as_deref(),
            Some("https://ops.example/hooks")
        );
        assert_eq!(webhook_url(Some(&bare), None), None);
        assert_eq!(webhook_url(None, cb), None);
    }
}

//! The webhook outbox as both engines keep it (SPEC §4): what the dispatcher reads and
//! records, the payload (the same bytes from either engine), and where an event goes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{StoreError, WebhookRoute};
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
    /// The exact bytes to send (and sign).
    pub body: Arc<[u8]>,
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
#[derive(Serialize)]
struct StatusChanged<'a> {
    event_id: &'a str,
    event: &'static str,
    session_id: String,
    status: &'static str,
    seq: u64,
    vendor_data: Option<&'a str>,
    external_reference_id: Option<&'a str>,
    at: String,
}

/// A fresh `event_id` and the exact bytes of the webhook of transition `t` (both
/// engines send the same payload).
pub fn event_body(
    t: &TransitionWrite,
    vendor_data: Option<&str>,
    external_reference_id: Option<&str>,
) -> Result<(String, Vec<u8>), StoreError> {
    let event_id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::to_vec(&StatusChanged {
        event_id: &event_id,
        event: STATUS_CHANGED,
        session_id: t.id.to_string(),
        status: t.status.as_str(),
        seq: t.from_seq.next().0,
        vendor_data,
        external_reference_id,
        at: rfc3339(t.at),
    })
    .map_err(|e| StoreError::Corrupt(format!("webhook payload: {e}")))?;
    Ok((event_id, body))
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

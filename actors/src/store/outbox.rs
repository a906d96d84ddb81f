//! SQL for the webhook outbox (SPEC §4): events enqueued with their transition, and
//! what the dispatcher needs to deliver them in order.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::writer::Effects;
use super::{ms, time, Store, StoreError};
use crate::ids::{Seq, SessionId};
use crate::store_api::{
    body_to_send, event_body, stored_key, DeliveryRecord, DueEvents, OutboxEvent, StoredReferences,
    WebhookCounts,
};
use crate::write::TransitionWrite;

/// Enqueues the event of a transition just written, inside the same transaction. No
/// route (no secret) or no URL for the session: no event.
pub(crate) fn enqueue(
    conn: &Connection,
    t: &TransitionWrite,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    if fx.webhooks.is_none() {
        return Ok(());
    }
    let callback: Option<String> = conn
        .prepare_cached("SELECT callback_url FROM sessions WHERE id = ?1")?
        .query_row([t.id.to_string()], |r| r.get(0))?;
    let Some(url) = crate::store_api::webhook_url(fx.webhooks.as_deref(), callback.as_deref())
    else {
        return Ok(());
    };
    let seq = t.from_seq.next();
    // Without the references: they are put in at each attempt (see event_body).
    let (event_id, body) = event_body(t)?;
    conn.prepare_cached(
        "INSERT INTO webhook_outbox (session_id, seq, event_id, url, body, created_at, \
         next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    )?
    .execute(params![
        t.id.to_string(),
        seq.0 as i64,
        event_id,
        url,
        body,
        ms(t.at)
    ])?;
    fx.webhook_enqueued = true;
    Ok(())
}

impl Store {
    /// The head (lowest undelivered seq) of every session whose head is due at `now`,
    /// oldest first, at most `limit`; and when the next later one falls due.
    pub async fn due_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<DueEvents, StoreError> {
        let keys = self.data_keys();
        self.read(move |conn| {
            // A pending event with an earlier pending one in the same session waits:
            // that is what keeps delivery in seq order per session.
            let mut stmt = conn.prepare_cached(
                "SELECT o.session_id, o.seq, o.event_id, o.url, o.body, o.attempts, \
                        o.first_attempt_at, s.id IS NOT NULL AND s.callback_url IS NULL, \
                        s.id IS NOT NULL, s.vendor_data, s.external_reference_id, \
                        s.data_key_id, s.data_key \
                 FROM webhook_outbox o LEFT JOIN sessions s ON s.id = o.session_id \
                 WHERE o.state = 'pending' AND o.next_attempt_at <= ?1 \
                   AND NOT EXISTS (SELECT 1 FROM webhook_outbox p \
                                   WHERE p.session_id = o.session_id AND p.state = 'pending' \
                                     AND p.seq < o.seq) \
                 ORDER BY o.next_attempt_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![ms(now), limit as i64], |r| {
                let refs = if r.get::<_, bool>(8)? {
                    Some(StoredReferences {
                        vendor_data: r.get(9)?,
                        external_reference_id: r.get(10)?,
                        key: stored_key(r.get(11)?, r.get(12)?),
                    })
                } else {
                    None
                };
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, bool>(7)?,
                    refs,
                ))
            })?;
            let mut due = Vec::new();
            for row in rows {
                let (session_id, seq, event_id, url, body, attempts, first, operator_url, refs) =
                    row?;
                let session_id = SessionId::parse(&session_id)
                    .ok_or_else(|| StoreError::Corrupt("outbox session id".into()))?;
                due.push(OutboxEvent {
                    session_id,
                    seq: Seq(u64::try_from(seq).map_err(|_| StoreError::Corrupt("seq".into()))?),
                    event_id,
                    url,
                    // enqueue() takes the default URL only for a session without a
                    // callback_url; a session that cannot be found counts as a callback.
                    operator_url,
                    body: body_to_send(&keys, session_id, body, refs),
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    first_attempt_at: first.map(time).transpose()?,
                });
            }
            // A hint for the timer: a non-head row may be counted, which only costs a
            // scan that finds nothing.
            let next_at: Option<i64> = conn
                .prepare_cached(
                    "SELECT MIN(next_attempt_at) FROM webhook_outbox \
                     WHERE state = 'pending' AND next_attempt_at > ?1",
                )?
                .query_row([ms(now)], |r| r.get(0))
                .optional()?
                .flatten();
            Ok(DueEvents {
                due,
                next_at: next_at.map(time).transpose()?,
            })
        })
        .await
    }

    /// Records the outcome of an attempt made at `attempted_at`.
    pub async fn record_delivery(
        &self,
        session_id: SessionId,
        seq: Seq,
        attempted_at: DateTime<Utc>,
        outcome: DeliveryRecord,
    ) -> Result<(), StoreError> {
        self.write(move |conn, _| {
            let key = (session_id.to_string(), seq.0 as i64);
            match &outcome {
                DeliveryRecord::Delivered => {
                    conn.prepare_cached(
                        "DELETE FROM webhook_outbox WHERE session_id = ?1 AND seq = ?2",
                    )?
                    .execute(params![key.0, key.1])?;
                }
                DeliveryRecord::Retry {
                    next_attempt_at,
                    error,
                } => {
                    conn.prepare_cached(
                        "UPDATE webhook_outbox SET attempts = attempts + 1, \
                         first_attempt_at = COALESCE(first_attempt_at, ?3), \
                         next_attempt_at = ?4, last_error = ?5 \
                         WHERE session_id = ?1 AND seq = ?2",
                    )?
                    .execute(params![
                        key.0,
                        key.1,
                        ms(attempted_at),
                        ms(*next_attempt_at),
                        error
                    ])?;
                }
                DeliveryRecord::Failed { error } => {
                    conn.prepare_cached(
                        "UPDATE webhook_outbox SET attempts = attempts + 1, state = 'failed', \
                         first_attempt_at = COALESCE(first_attempt_at, ?3), last_error = ?4 \
                         WHERE session_id = ?1 AND seq = ?2",
                    )?
                    .execute(params![
                        key.0,
                        key.1,
                        ms(attempted_at),
                        error
                    ])?;
                }
            }
            Ok(())
        })
        .await
    }

    /// How many events in all are pending (the outbox depth), when the dispatcher starts.
    pub async fn pending_webhooks(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM webhook_outbox WHERE state = 'pending'")?
                .query_row([], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// How many of a session's events are pending and how many failed.
    pub async fn webhook_counts(&self, id: SessionId) -> Result<WebhookCounts, StoreError> {
        self.read(move |conn| {
            let mut counts = WebhookCounts::default();
            let mut stmt = conn.prepare_cached(
                "SELECT state, COUNT(*) FROM webhook_outbox WHERE session_id = ?1 GROUP BY state",
            )?;
            let rows = stmt.query_map([id.to_string()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (state, n) = row?;
                counts.count(&state, n)?;
            }
            Ok(counts)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::at_rest::DataKeys;
    use crate::clock::rfc3339;
    use crate::model::{SessionRecord, SessionRequest};
    use crate::status::Status;
    use crate::store::WebhookRoute;
    use crate::store::{NewSession, StoreConfig};

    fn open(dir: &tempfile::TempDir, route: Option<WebhookRoute>) -> Store {
        open_with(dir, route, DataKeys::none())
    }

    fn open_with(dir: &tempfile::TempDir, route: Option<WebhookRoute>, keys: DataKeys) -> Store {
        Store::open(&StoreConfig {
            webhooks: route,
            data_keys: std::sync::Arc::new(keys),
            ..StoreConfig::new(dir.path().join("t.db"))
        })
        .unwrap()
    }

    async fn session(store: &Store, callback_url: Option<&str>) -> SessionRecord {
        session_with(store, callback_url, None).await
    }

    async fn session_with(
        store: &Store,
        callback_url: Option<&str>,
        external_reference_id: Option<&str>,
    ) -> SessionRecord {
        let record = SessionRecord::open(
            "acme",
            SessionRequest {
                scopes: vec!["full_name".into()],
                vendor_data: Some("v".into()),
                external_reference_id: external_reference_id.map(str::to_owned),
                registration: None,
                redirect_url: None,
                callback_url: callback_url.map(str::to_owned),
                binding: Default::default(),
            },
            Utc::now(),
            chrono::Duration::seconds(600),
        )
        .0;
        store
            .create_session(
                NewSession {
                    record: record.clone(),
                },
                None,
            )
            .await
            .unwrap();
        record
    }

    fn step(s: &SessionRecord, from: u64, status: Status) -> TransitionWrite {
        let at = s.created_at + chrono::Duration::seconds(from as i64);
        TransitionWrite {
            id: s.id,
            from_seq: Seq(from),
            status,
            at,
            bind: None,
            consent: None,
            shared_data: None,
            files: Vec::new(),
            decided_at: status.is_terminal().then_some(at),
            purge: status.discards_personal_data(),
            registers_user: status.registers_user(),
            binding_code: None,
            binding_misses: None,
            reason: None,
        }
    }

    /// After every transition the tests make (they are spaced a second apart).
    fn soon() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::minutes(1)
    }

    fn route(default_url: Option<&str>) -> Option<WebhookRoute> {
        Some(WebhookRoute {
            default_url: default_url.map(str::to_owned),
        })
    }

    #[actix_rt::test]
    async fn a_transition_enqueues_its_event_and_a_refused_one_enqueues_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, route(None));
        let s = session(&store, Some("https://example.test/hook")).await;
        let wake = store.webhook_wake();
        store
            .commit_transition(step(&s, 1, Status::Retrieved))
            .await
            .unwrap();
        // The wake-up was signalled (a permit is waiting).
        tokio::time::timeout(std::time::Duration::from_secs(1), wake.notified())
            .await
            .unwrap();
        // Stale: the transaction rolls back, the event with it.
        let stale = store
            .commit_transition(step(&s, 1, Status::Cancelled))
            .await;
        assert!(matches!(stale, Err(StoreError::Stale)));

        let found = store.due_webhooks(soon(), 10).await.unwrap();
        assert_eq!(found.due.len(), 1);
        let e = &found.due[0];
        assert_eq!(
            (e.session_id, e.seq, e.url.as_str()),
            (s.id, Seq(2), "https://example.test/hook")
        );
        let body: serde_json::Value = serde_json::from_slice(e.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["event_id"], e.event_id);
        assert_eq!(body["status"], "retrieved");
        assert_eq!(body["seq"], 2);
        assert_eq!(body["vendor_data"], "v");
        assert_eq!(body["external_reference_id"], serde_json::Value::Null);
        assert_eq!(
            body["at"],
            rfc3339(s.created_at + chrono::Duration::seconds(1))
        );
        assert_eq!(
            store.webhook_counts(s.id).await.unwrap(),
            WebhookCounts {
                pending: 1,
                failed: 0
            }
        );
    }

    #[actix_rt::test]
    async fn the_callback_url_wins_the_default_is_the_fallback_and_no_route_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, route(Some("https://default.test/")));
        let own = session(&store, Some("https://own.test/")).await;
        let plain = session(&store, None).await;
        for s in [&own, &plain] {
            store
                .commit_transition(step(s, 1, Status::Cancelled))
                .await
                .unwrap();
        }
        let mut urls: Vec<String> = store
            .due_webhooks(soon(), 10)
            .await
            .unwrap()
            .due
            .into_iter()
            .map(|e| e.url)
            .collect();
        urls.sort();
        assert_eq!(urls, ["https://default.test/", "https://own.test/"]);
        drop(store);

        // No route (no secret) even with a callback_url; a route but no URL at all.
        for (r, callback) in [(None, Some("https://own.test/")), (route(None), None)] {
            let dir = tempfile::tempdir().unwrap();
            let store = open(&dir, r);
            let s = session(&store, callback).await;
            store
                .commit_transition(step(&s, 1, Status::Cancelled))
                .await
                .unwrap();
            assert!(store.due_webhooks(soon(), 10).await.unwrap().due.is_empty());
        }
    }

    #[actix_rt::test]
    async fn a_session_s_next_event_waits_until_the_head_is_delivered_or_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, route(Some("https://default.test/")));
        let s = session(&store, None).await;
        store
            .commit_transition(step(&s, 1, Status::Retrieved))
            .await
            .unwrap();
        store
            .commit_transition(step(&s, 2, Status::Cancelled))
            .await
            .unwrap();
        let now = soon();
        let seqs = |d: DueEvents| d.due.iter().map(|e| e.seq.0).collect::<Vec<_>>();

        assert_eq!(seqs(store.due_webhooks(now, 10).await.unwrap()), [2]);
        let later = now + chrono::Duration::seconds(5);
        store
            .record_delivery(
                s.id,
                Seq(2),
                now,
                DeliveryRecord::Retry {
                    next_attempt_at: later,
                    error: "HTTP 500".into(),
                },
            )
            .await
            .unwrap();
        let found = store.due_webhooks(now, 10).await.unwrap();
        assert_eq!(
            found.next_at.map(|t| t.timestamp_millis()),
            Some(later.timestamp_millis())
        );
        assert!(found.due.is_empty(), "seq 3 waits behind a retrying seq 2");
        store
            .record_delivery(
                s.id,
                Seq(2),
                now,
                DeliveryRecord::Failed {
                    error: "HTTP 500".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(seqs(store.due_webhooks(now, 10).await.unwrap()), [3]);
        store
            .record_delivery(s.id, Seq(3), now, DeliveryRecord::Delivered)
            .await
            .unwrap();
        assert!(store.due_webhooks(now, 10).await.unwrap().due.is_empty());
        assert_eq!(
            store.webhook_counts(s.id).await.unwrap(),
            WebhookCounts {
                pending: 0,
                failed: 1
            }
        );
    }

    #[actix_rt::test]
    async fn with_a_data_key_the_outbox_holds_no_reference_and_every_attempt_sends_them_even_after_a_purge(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let keys =
            DataKeys::new(vec![crate::at_rest::OperatorKey::from_bytes("k1", [7; 32])]).unwrap();
        let store = open_with(&dir, route(Some("https://default.test/")), keys);
        let marker = format!("ref-{}", uuid::Uuid::new_v4().simple());
        let s = session_with(&store, None, Some(&marker)).await;
        store
            .commit_transition(step(&s, 1, Status::Retrieved))
            .await
            .unwrap();
        // The cancel purges: the data key that sealed the references is replaced.
        store
            .commit_transition(step(&s, 2, Status::Cancelled))
            .await
            .unwrap();
        let stored: Vec<(Vec<u8>, Vec<u8>)> = store
            .read(|conn| {
                let mut stmt = conn.prepare(
                    "SELECT o.body, s.external_reference_id FROM webhook_outbox o \
                                   JOIN sessions s ON s.id = o.session_id",
                )?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?.into_bytes()))
                    })?
                    .collect::<Result<_, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        assert_eq!(stored.len(), 2);
        let holds = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        for (body, reference) in &stored {
            assert!(
                !holds(body, marker.as_bytes()),
                "the outbox holds the marker"
            );
            assert!(
                !holds(reference, marker.as_bytes()),
                "the row holds it sealed"
            );
        }

        let now = soon();
        let mut sent = Vec::new();
        let mut first_sent = None;
        for seq in [2, 3] {
            let due = store.due_webhooks(now, 10).await.unwrap().due;
            assert_eq!(due.iter().map(|e| e.seq.0).collect::<Vec<_>>(), [seq]);
            let first = due[0].body.clone().unwrap();
            // A retry reads it again: the same bytes.
            let again = store.due_webhooks(now, 10).await.unwrap().due;
            assert_eq!(again[0].body.as_ref().unwrap(), &first);
            sent.push(serde_json::from_slice::<serde_json::Value>(&first).unwrap());
            first_sent.get_or_insert(first);
            store
                .record_delivery(s.id, Seq(seq), now, DeliveryRecord::Delivered)
                .await
                .unwrap();
        }
        for (body, status) in sent.iter().zip(["retrieved", "cancelled"]) {
            assert_eq!(body["status"], status);
            assert_eq!(body["vendor_data"], "v");
            assert_eq!(body["external_reference_id"], marker.as_str());
        }
        // The bytes sent keep the field order of SPEC §4.
        let text = String::from_utf8(first_sent.unwrap().to_vec()).unwrap();
        let at = |field: &str| text.find(&format!("\"{field}\":")).unwrap();
        let order = [
            "event_id",
            "event",
            "session_id",
            "status",
            "seq",
            "vendor_data",
            "external_reference_id",
            "at",
        ];
        assert!(order.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
    }

    #[actix_rt::test]
    async fn references_that_do_not_open_send_nothing_and_name_the_session_only() {
        let dir = tempfile::tempdir().unwrap();
        let keys =
            DataKeys::new(vec![crate::at_rest::OperatorKey::from_bytes("k1", [7; 32])]).unwrap();
        let store = open_with(&dir, route(Some("https://default.test/")), keys);
        let s = session_with(&store, None, Some("ref-secret")).await;
        store
            .commit_transition(step(&s, 1, Status::Retrieved))
            .await
            .unwrap();
        let id = s.id.to_string();
        store
            .write(move |conn, _| {
                // A changed byte in the sealed reference (its first base64 character
                // after the version byte's: a nonce byte).
                conn.execute(
                    "UPDATE sessions SET external_reference_id = \
                     substr(external_reference_id, 1, 3) || \
                     CASE substr(external_reference_id, 4, 1) WHEN 'A' THEN 'B' ELSE 'A' END || \
                     substr(external_reference_id, 5) WHERE id = ?1",
                    [&id],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let due = store.due_webhooks(soon(), 10).await.unwrap().due;
        let error = due[0].body.clone().unwrap_err();
        assert!(error.contains(&s.id.to_string()), "{error}");
        assert!(
            !error.contains("ref-secret") && !error.contains("\"v\""),
            "{error}"
        );
    }
}

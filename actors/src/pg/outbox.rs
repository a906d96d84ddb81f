//! The webhook outbox on PostgreSQL (SPEC §4): events enqueued with their transition,
//! and dispatched by the node that owns their session, in seq order.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::{execute, limit, ms, query, query_opt, time, Shared};
use crate::ids::{Seq, SessionId};
use crate::model::SessionRecord;
use crate::store_api::{
    body_to_send, stored_key, DeliveryRecord, DueEvents, OutboxEvent, StoreError, StoredReferences,
    WebhookCounts,
};
use crate::write::TransitionWrite;

impl Shared {
    /// Enqueues the event of transition `t`, just written as `committed`, in the same
    /// transaction; `true` if one was. No route (no secret) or no URL: no event.
    pub(crate) async fn enqueue(
        &self,
        c: &impl GenericClient,
        t: &TransitionWrite,
        committed: &SessionRecord,
    ) -> Result<bool, StoreError> {
        let Some(url) = crate::store_api::webhook_url(
            self.webhooks.as_deref(),
            committed.request.callback_url.as_deref(),
        ) else {
            return Ok(false);
        };
        // Without the references: they are put in at each attempt (see event_body).
        let (event_id, body) = crate::store_api::event_body(t)?;
        execute(
            c,
            "INSERT INTO webhook_outbox (session_id, seq, event_id, url, body, created_at, \
             next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
            &[
                &t.id.to_string(),
                &(t.from_seq.next().0 as i64),
                &event_id,
                &url,
                &body,
                &ms(t.at),
            ],
        )
        .await?;
        Ok(true)
    }

    /// The head of every session owned by this node whose head is due at `now`, oldest
    /// first, at most `n`; and when the next later one of this node falls due.
    pub(crate) async fn due_webhooks(
        &self,
        now: DateTime<Utc>,
        n: usize,
    ) -> Result<DueEvents, StoreError> {
        let conn = self.conn().await?;
        // A pending event with an earlier pending one in the same session waits: that
        // keeps delivery in seq order per session. Only the owner's node sends them.
        let rows = query(
            &conn,
            "SELECT o.session_id, o.seq, o.event_id, o.url, o.body, o.attempts, \
                    o.first_attempt_at, s.callback_url IS NULL, s.vendor_data, \
                    s.external_reference_id, s.data_key_id, s.data_key \
             FROM webhook_outbox o JOIN sessions s ON s.id = o.session_id \
             WHERE o.state = 'pending' AND o.next_attempt_at <= $1 AND s.owner_node = $3 \
               AND NOT EXISTS (SELECT 1 FROM webhook_outbox p \
                               WHERE p.session_id = o.session_id AND p.state = 'pending' \
                                 AND p.seq < o.seq) \
             ORDER BY o.next_attempt_at LIMIT $2",
            &[&ms(now), &limit(n), &self.node_id],
        )
        .await?;
        let mut due = Vec::with_capacity(rows.len());
        for r in rows {
            let session_id: String = r.try_get(0)?;
            let seq: i64 = r.try_get(1)?;
            let attempts: i32 = r.try_get(5)?;
            let first: Option<i64> = r.try_get(6)?;
            let body: Vec<u8> = r.try_get(4)?;
            let session_id = SessionId::parse(&session_id)
                .ok_or_else(|| StoreError::Corrupt("outbox session id".into()))?;
            // The owner's join always finds the session row.
            let refs = StoredReferences {
                vendor_data: r.try_get(8)?,
                external_reference_id: r.try_get(9)?,
                key: stored_key(r.try_get(10)?, r.try_get(11)?),
            };
            due.push(OutboxEvent {
                session_id,
                seq: Seq(u64::try_from(seq).map_err(|_| StoreError::Corrupt("seq".into()))?),
                event_id: r.try_get(2)?,
                url: r.try_get(3)?,
                // enqueue() takes the default URL only for a session without a callback_url.
                operator_url: r.try_get(7)?,
                body: body_to_send(&self.data_keys, session_id, body, Some(refs)),
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                first_attempt_at: first.map(time).transpose()?,
            });
        }
        // A hint for the timer: a non-head row may be counted, which only costs a scan.
        let next_at: Option<i64> = query_opt(
            &conn,
            "SELECT MIN(o.next_attempt_at) FROM webhook_outbox o \
             JOIN sessions s ON s.id = o.session_id \
             WHERE o.state = 'pending' AND o.next_attempt_at > $1 AND s.owner_node = $2",
            &[&ms(now), &self.node_id],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .flatten();
        Ok(DueEvents {
            due,
            next_at: next_at.map(time).transpose()?,
        })
    }

    /// Records the outcome of an attempt made at `attempted_at`, if this process still
    /// dispatches the session's webhooks (it owns the session and holds its lease):
    /// otherwise the node that took the session over delivers the event again (at
    /// least once, SPEC §4) and this late outcome is not written over its own.
    pub(crate) async fn record_delivery(
        &self,
        session_id: SessionId,
        seq: Seq,
        attempted_at: DateTime<Utc>,
        outcome: DeliveryRecord,
    ) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        let (id, seq) = (session_id.to_string(), seq.0 as i64);
        let (node, incarnation) = (&self.node_id, &self.incarnation);
        // $1 the session, $2 the seq; the guard's parameters come after each
        // statement's own.
        let guard = |n: usize| {
            format!(
                "EXISTS (SELECT 1 FROM sessions s WHERE s.id = $1 AND s.owner_node = ${n}) AND {}",
                super::lease_held(&format!("${n}"), &format!("${}", n + 1))
            )
        };
        match outcome {
            DeliveryRecord::Delivered => {
                let sql = format!(
                    "DELETE FROM webhook_outbox WHERE session_id = $1 AND seq = $2 AND {}",
                    guard(3)
                );
                execute(&conn, &sql, &[&id, &seq, node, incarnation]).await?;
            }
            DeliveryRecord::Retry {
                next_attempt_at,
                error,
            } => {
                let sql = format!(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, \
                     first_attempt_at = COALESCE(first_attempt_at, $3), \
                     next_attempt_at = $4, last_error = $5 \
                     WHERE session_id = $1 AND seq = $2 AND {}",
                    guard(6)
                );
                execute(
                    &conn,
                    &sql,
                    &[
                        &id,
                        &seq,
                        &ms(attempted_at),
                        &ms(next_attempt_at),
                        &error,
                        node,
                        incarnation,
                    ],
                )
                .await?;
            }
            DeliveryRecord::Failed { error } => {
                let sql = format!(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, state = 'failed', \
                     first_attempt_at = COALESCE(first_attempt_at, $3), last_error = $4 \
                     WHERE session_id = $1 AND seq = $2 AND {}",
                    guard(5)
                );
                execute(
                    &conn,
                    &sql,
                    &[&id, &seq, &ms(attempted_at), &error, node, incarnation],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// How many events in all are pending.
    pub(crate) async fn pending_webhooks(&self) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        let n: i64 = query_opt(
            &conn,
            "SELECT COUNT(*) FROM webhook_outbox WHERE state = 'pending'",
            &[],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// How many of a session's events are pending and how many failed.
    pub(crate) async fn webhook_counts(&self, id: SessionId) -> Result<WebhookCounts, StoreError> {
        let conn = self.conn().await?;
        let rows = query(
            &conn,
            "SELECT state, COUNT(*) FROM webhook_outbox WHERE session_id = $1 GROUP BY state",
            &[&id.to_string()],
        )
        .await?;
        let mut counts = WebhookCounts::default();
        for r in rows {
            let state: String = r.try_get(0)?;
            counts.count(&state, r.try_get(1)?)?;
        }
        Ok(counts)
    }
}

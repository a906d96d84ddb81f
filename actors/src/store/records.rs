//! SQL of record retention (SPEC §2 "Records") and of the sealed data keys' upkeep
//! (the check at start, `idv-broker rekey`) on SQLite. The rules (which statuses end,
//! how keys are sealed) come from [`Status`] and [`crate::at_rest`]; this holds SQL only.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::{ms, Store, StoreError};
use crate::at_rest::{DataKeys, SealedKey};
use crate::ids::SessionId;
use crate::status::Status;

/// What one retention batch deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordsDeleted {
    /// Session rows (with their data key and files).
    pub sessions: usize,
    /// Their transition events.
    pub events: usize,
    /// Their idempotency records.
    pub idempotency: usize,
    /// Their webhook events given up (delivered ones are already gone).
    pub webhooks: usize,
}

impl RecordsDeleted {
    /// Adds another batch's counts.
    pub fn add(&mut self, other: RecordsDeleted) {
        self.sessions += other.sessions;
        self.events += other.events;
        self.idempotency += other.idempotency;
        self.webhooks += other.webhooks;
    }
}

/// The ended sessions whose records retention deletes: ended at or before the cutoff,
/// and no webhook event still pending (delivered or given up). `?1`/`$1` the cutoff,
/// `?2`/`$2` the batch size; both engines run it.
pub(crate) fn expired_records_sql(p1: &str, p2: &str) -> String {
    format!(
        "SELECT id FROM sessions s WHERE decided_at IS NOT NULL AND decided_at <= {p1} \
         AND status IN {} AND NOT EXISTS (SELECT 1 FROM webhook_outbox o \
         WHERE o.session_id = s.id AND o.state = 'pending') ORDER BY decided_at LIMIT {p2}",
        Status::records_expire_sql()
    )
}

/// The distinct operator key ids that seal stored data keys, by a walk of the index on
/// `data_key_id` (one probe per id, however many sessions); both engines run it.
pub(crate) const DATA_KEY_IDS_SQL: &str = "WITH RECURSIVE k(id) AS ( \
     SELECT MIN(data_key_id) FROM sessions WHERE data_key_id IS NOT NULL \
     UNION ALL SELECT (SELECT MIN(data_key_id) FROM sessions WHERE data_key_id > k.id) \
     FROM k WHERE k.id IS NOT NULL) SELECT id FROM k WHERE id IS NOT NULL";

impl Store {
    /// Deletes the records of up to `limit` ended sessions whose time is over at
    /// `cutoff` (rows, events, idempotency records, files, data keys and given-up
    /// webhook events) in one short write; answers what it deleted. Call again while
    /// it deletes a full batch.
    pub async fn delete_ended_records(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<RecordsDeleted, StoreError> {
        self.write(move |conn, fx| {
            let ids: Vec<String> = conn
                .prepare_cached(&expired_records_sql("?1", "?2"))?
                .query_map(
                    params![ms(cutoff), i64::try_from(limit).unwrap_or(i64::MAX)],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            let mut out = RecordsDeleted::default();
            for id in &ids {
                conn.prepare_cached("DELETE FROM files WHERE session_id = ?1")?
                    .execute([id])?;
                out.events += conn
                    .prepare_cached("DELETE FROM session_events WHERE session_id = ?1")?
                    .execute([id])?;
                out.idempotency += conn
                    .prepare_cached("DELETE FROM idempotency_keys WHERE session_id = ?1")?
                    .execute([id])?;
                out.webhooks += conn
                    .prepare_cached("DELETE FROM webhook_outbox WHERE session_id = ?1")?
                    .execute([id])?;
                out.sessions += conn
                    .prepare_cached("DELETE FROM sessions WHERE id = ?1")?
                    .execute([id])?;
            }
            // The deleted rows leave the WAL too, as after any purge.
            fx.scrub |= !ids.is_empty();
            Ok(out)
        })
        .await
    }

    /// The ids of the operator keys that seal stored data (checked at start: each must
    /// be given).
    pub async fn data_key_ids(&self) -> Result<Vec<String>, StoreError> {
        self.read(data_key_ids).await
    }
}

fn data_key_ids(conn: &Connection) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare(DATA_KEY_IDS_SQL)?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// `idv-broker rekey` on SQLite: seals every session's data key again under the first
/// key, `batch` sessions per short transaction, beside running brokers (its own
/// connection; a broker's writer and this one take turns on SQLite's lock). Stopped
/// half-way, it resumes where it was: it looks for what is not under the first key
/// yet. Answers how many it sealed again.
pub fn rekey(path: &Path, keys: &DataKeys, batch: usize) -> Result<usize, StoreError> {
    let Some(first) = keys.sealing_id().map(str::to_owned) else {
        return Ok(0);
    };
    let mut conn = super::open_connection(path, false)?;
    super::schema::migrate(&mut conn)?;
    let mut total = 0;
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rows: Vec<(String, String, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT id, data_key_id, data_key FROM sessions \
                 WHERE data_key_id IS NOT NULL AND data_key_id <> ?1 LIMIT ?2",
            )?
            .query_map(
                params![first, i64::try_from(batch).unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<Result<_, _>>()?;
        if rows.is_empty() {
            return Ok(total);
        }
        for (id, key_id, sealed) in rows {
            let sid = SessionId::parse(&id)
                .ok_or_else(|| StoreError::Corrupt(format!("session id {id}")))?;
            let stored = SealedKey { key_id, sealed };
            let Some(new) = keys
                .reseal(sid, &stored)
                .map_err(|e| super::keys::sealed_error(sid, e))?
            else {
                continue;
            };
            // Guarded by the key as read: a purge that replaced it meanwhile wins.
            total += tx
                .prepare_cached(
                    "UPDATE sessions SET data_key_id = ?2, data_key = ?3 \
                     WHERE id = ?1 AND data_key = ?4",
                )?
                .execute(params![id, new.key_id, new.sealed, stored.sealed])?;
        }
        tx.commit()?;
    }
}

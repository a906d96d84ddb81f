//! SQL of record retention (SPEC §2 "Records") and of the sealed data keys' upkeep
//! (the check at start, `idv-broker rekey`) on SQLite. The rules (which statuses end,
//! how keys are sealed) come from [`Status`] and [`crate::at_rest`]; this holds SQL only.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::{ms, Store, StoreError};
use crate::at_rest::{DataKeys, SealedKey};
use crate::ids::SessionId;
use crate::store_api::{expired_records_sql, RecordsDeleted, DATA_KEY_IDS_SQL};

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
                .map_err(|e| crate::store_api::sealed_error(sid, e))?
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

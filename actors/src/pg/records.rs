//! Record retention (SPEC §2 "Records") and the sealed data keys' upkeep (the check
//! at start, `idv-broker rekey`) on PostgreSQL. Which sessions qualify is the SQL that
//! [`crate::store`] generates from [`crate::status::Status`]; the keys are handled by
//! [`crate::at_rest`].

use chrono::{DateTime, Utc};

use super::{execute, limit, ms, query, PgStore, Shared};
use crate::at_rest::SealedKey;
use crate::ids::SessionId;
use crate::store_api::{expired_records_sql, DATA_KEY_IDS_SQL};
use crate::store_api::{RecordsDeleted, StoreError};

/// The advisory lock that lets one node at a time delete records ("idvr" in ASCII):
/// taken for one batch's transaction; a node that does not get it skips the batch.
const RETENTION_LOCK: i64 = 0x6964_7672;

impl Shared {
    /// Deletes the records of up to `n` ended sessions whose time is over at `cutoff`,
    /// in one transaction, while holding [`RETENTION_LOCK`]; another node's sweep that
    /// holds it makes this one delete nothing this time.
    pub(crate) async fn delete_ended_records(
        &self,
        cutoff: DateTime<Utc>,
        n: usize,
    ) -> Result<RecordsDeleted, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])
            .await?
            .try_get(0)?;
        let mut out = RecordsDeleted::default();
        if !locked {
            return Ok(out);
        }
        let rows = query(
            &tx,
            &expired_records_sql("$1", "$2"),
            &[&ms(cutoff), &limit(n)],
        )
        .await?;
        let ids = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        if !ids.is_empty() {
            let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
            out.idempotency = count(
                execute(
                    &tx,
                    "DELETE FROM idempotency_keys WHERE session_id = ANY($1)",
                    &[&ids],
                )
                .await?,
            );
            out.webhooks = count(
                execute(
                    &tx,
                    "DELETE FROM webhook_outbox WHERE session_id = ANY($1)",
                    &[&ids],
                )
                .await?,
            );
            out.events = count(
                execute(
                    &tx,
                    "DELETE FROM session_events WHERE session_id = ANY($1)",
                    &[&ids],
                )
                .await?,
            );
            // Files go with their session (ON DELETE CASCADE), the data key with its row.
            out.sessions =
                count(execute(&tx, "DELETE FROM sessions WHERE id = ANY($1)", &[&ids]).await?);
        }
        tx.commit().await?;
        if out.sessions > 0 {
            self.purged();
        }
        Ok(out)
    }

    /// The ids of the operator keys that seal stored data keys.
    pub(crate) async fn data_key_ids(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn().await?;
        query(&conn, DATA_KEY_IDS_SQL, &[])
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }

    /// One `rekey` batch: up to `n` data keys not under the first operator key sealed
    /// again under it; answers how many, 0 when none is left.
    async fn rekey_batch(&self, first: &str, n: usize) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let rows = query(
            &tx,
            "SELECT id, data_key_id, data_key FROM sessions \
             WHERE data_key_id IS NOT NULL AND data_key_id <> $1 LIMIT $2 FOR UPDATE",
            &[&first, &limit(n)],
        )
        .await?;
        let mut done = 0;
        for row in &rows {
            let id: String = row.try_get(0)?;
            let sid = SessionId::parse(&id)
                .ok_or_else(|| StoreError::Corrupt(format!("session id {id}")))?;
            let stored = SealedKey {
                key_id: row.try_get(1)?,
                sealed: row.try_get(2)?,
            };
            let Some(new) = self
                .data_keys
                .reseal(sid, &stored)
                .map_err(|e| crate::store_api::sealed_error(sid, e))?
            else {
                continue;
            };
            done += execute(
                &tx,
                "UPDATE sessions SET data_key_id = $2, data_key = $3 WHERE id = $1",
                &[&id, &new.key_id, &new.sealed],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(usize::try_from(done).unwrap_or(usize::MAX))
    }
}

impl PgStore {
    /// `idv-broker rekey` on PostgreSQL: seals every session's data key again under the
    /// first key, `batch` at a time (each its own short transaction, rows locked only
    /// for it, so running nodes go on), until none is left; resumable, as it looks for
    /// what is not under the first key yet. Answers how many it sealed again.
    pub async fn rekey(&self, batch: usize) -> Result<usize, StoreError> {
        let Some(first) = self.shared.data_keys.sealing_id().map(str::to_owned) else {
            return Ok(0);
        };
        let shared = self.shared.clone();
        self.handle
            .spawn(async move {
                let mut total = 0;
                loop {
                    let done = shared.rekey_batch(&first, batch).await?;
                    if done == 0 {
                        return Ok(total);
                    }
                    total += done;
                }
            })
            .await
            .map_err(|_| StoreError::Panicked)?
    }
}

//! Uploaded files and the retention purge on PostgreSQL.
//!
//! Files are written only by the approve transition (in its transaction) and deleted,
//! never flagged, by every purge; each purge asks the scrubber to vacuum soon.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::{execute, limit, ms, query, query_opt, Shared};
use crate::at_rest::{Field, RowSeal, SealedKey};
use crate::ids::{FileId, SessionId};
use crate::model::FileMeta;
use crate::store_api::retained_data_sql;
use crate::store_api::{StoreError, StoredFile, PURGE_BATCH};
use crate::write::TransitionWrite;

/// The file part of a transition: stores the staged files on approve, deletes every
/// file of a session that ends without consent.
pub(crate) async fn apply(
    c: &impl GenericClient,
    seal: Option<&RowSeal>,
    t: &TransitionWrite,
) -> Result<(), StoreError> {
    let id = t.id.to_string();
    if !t.files.is_empty() && seal.is_none() {
        return Err(StoreError::Corrupt(
            "files without their session's key".into(),
        ));
    }
    for (f, seal) in t.files.iter().zip(std::iter::repeat(seal).flatten()) {
        execute(
            c,
            "INSERT INTO files (file_id, session_id, kind, content_type, size, bytes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &f.file_id.to_string(),
                &id,
                &f.kind,
                &f.upload.content_type.as_str(),
                &(f.upload.size() as i64),
                &seal.seal_bytes(Field::File(f.file_id), &f.upload.bytes[..]),
                &ms(t.at),
            ],
        )
        .await?;
    }
    if t.purge {
        // Nothing is stored before approve, so this finds nothing today; it is here so
        // that "a session ended without consent has no files" holds by construction.
        execute(c, "DELETE FROM files WHERE session_id = $1", &[&id]).await?;
    }
    Ok(())
}

/// The files of a session, oldest kind first.
pub(crate) async fn list(
    c: &impl GenericClient,
    id: SessionId,
) -> Result<Vec<FileMeta>, StoreError> {
    let rows = query(
        c,
        "SELECT file_id, kind, content_type, size FROM files WHERE session_id = $1 \
         ORDER BY created_at, kind",
        &[&id.to_string()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let file_id: String = r.try_get(0)?;
            let size: i64 = r.try_get(3)?;
            Ok(FileMeta {
                file_id: FileId::parse(&file_id)
                    .ok_or_else(|| StoreError::Corrupt(format!("file id {file_id}")))?,
                kind: r.try_get(1)?,
                content_type: r.try_get(2)?,
                size: u64::try_from(size).map_err(|_| StoreError::Corrupt("file size".into()))?,
            })
        })
        .collect()
}

impl Shared {
    /// One stored file of session `id`, with its session's owner.
    pub(crate) async fn load_file(
        &self,
        id: SessionId,
        file_id: FileId,
    ) -> Result<Option<StoredFile>, StoreError> {
        let conn = self.conn().await?;
        let Some(r) = query_opt(
            &conn,
            "SELECT s.owner, f.content_type, f.bytes, s.data_key_id, s.data_key FROM files f \
             JOIN sessions s ON s.id = f.session_id \
             WHERE f.file_id = $1 AND f.session_id = $2",
            &[&file_id.to_string(), &id.to_string()],
        )
        .await?
        else {
            return Ok(None);
        };
        // One row: the bytes and the key that sealed them, as of one moment.
        let stored = match (r.try_get(3)?, r.try_get(4)?) {
            (Some(key_id), Some(sealed)) => Some(SealedKey { key_id, sealed }),
            _ => None,
        };
        let sealed: Vec<u8> = r.try_get(2)?;
        let bytes = self
            .data_keys
            .row(id, stored)
            .and_then(|seal| seal.open_bytes(Field::File(file_id), sealed))
            .map_err(|e| crate::store_api::sealed_error(id, e))?;
        Ok(Some(StoredFile {
            owner: r.try_get(0)?,
            content_type: r.try_get(1)?,
            bytes,
        }))
    }

    /// Retention: for up to [`PURGE_BATCH`] confirmed sessions decided at or before
    /// `cutoff` and not yet purged, deletes their files and clears their shared data and
    /// registration, recording `now` as `purged_at`, in one transaction. Any node may
    /// run it: `SKIP LOCKED` keeps two sweepers off the same rows.
    pub(crate) async fn purge_retained(
        &self,
        cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let rows = query(
            &tx,
            &format!("{} FOR UPDATE SKIP LOCKED", retained_data_sql("$1", "$2")),
            &[&ms(cutoff), &limit(PURGE_BATCH)],
        )
        .await?;
        let ids = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        if !ids.is_empty() {
            execute(&tx, "DELETE FROM files WHERE session_id = ANY($1)", &[&ids]).await?;
            execute(
                &tx,
                "UPDATE sessions SET shared_data = NULL, registration = NULL, purged_at = $2 \
                 WHERE id = ANY($1)",
                &[&ids, &ms(now)],
            )
            .await?;
            for id in &ids {
                let sid = SessionId::parse(id)
                    .ok_or_else(|| StoreError::Corrupt(format!("session id {id}")))?;
                super::keys::shred_key(&tx, &self.data_keys, sid).await?;
            }
        }
        tx.commit().await?;
        if !ids.is_empty() {
            self.purged();
        }
        Ok(ids.len())
    }
}

//! SQL for uploaded files and for the retention purge.
//!
//! Files are written only by the approve transition (inside
//! [`apply_transition`](super::sessions::apply_transition), so they commit with it) and
//! deleted, never flagged, by every purge; each purge sets [`Effects::scrub`] so the
//! writer checkpoints the WAL and the deleted bytes leave the disk (SPEC §2).

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::writer::Effects;
use super::{Store, StoreError};
use crate::at_rest::{Field, RowSeal};
use crate::ids::{FileId, SessionId};
use crate::model::FileMeta;
use crate::store_api::{retained_data_sql, StoredFile, PURGE_BATCH};
use crate::write::TransitionWrite;

/// The file part of a transition: stores the staged files on approve, deletes every
/// file of a session that ends without consent.
pub(crate) fn apply(
    conn: &Connection,
    seal: Option<&RowSeal>,
    t: &TransitionWrite,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    if !t.files.is_empty() {
        let seal =
            seal.ok_or_else(|| StoreError::Corrupt("files without their session's key".into()))?;
        let mut insert = conn.prepare_cached(
            "INSERT INTO files (file_id, session_id, kind, content_type, size, bytes, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for f in &t.files {
            insert.execute(params![
                f.file_id.to_string(),
                t.id.to_string(),
                f.kind,
                f.upload.content_type.as_str(),
                f.upload.size() as i64,
                seal.seal_bytes(Field::File(f.file_id), &f.upload.bytes[..]),
                t.at.timestamp_millis(),
            ])?;
        }
    }
    if t.purge {
        // Nothing is stored before approve, so this finds nothing today; it is here so
        // that "a session ended without consent has no files" holds by construction.
        let deleted = conn
            .prepare_cached("DELETE FROM files WHERE session_id = ?1")?
            .execute([t.id.to_string()])?;
        fx.scrub |= deleted > 0;
    }
    Ok(())
}

/// The files of a session, oldest kind first.
pub(crate) fn list(conn: &Connection, id: SessionId) -> Result<Vec<FileMeta>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT file_id, kind, content_type, size FROM files WHERE session_id = ?1 \
         ORDER BY created_at, kind",
    )?;
    let rows = stmt.query_map([id.to_string()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (file_id, kind, content_type, size) = row?;
        out.push(FileMeta {
            file_id: FileId::parse(&file_id)
                .ok_or_else(|| StoreError::Corrupt(format!("file id {file_id}")))?,
            kind,
            content_type,
            size: u64::try_from(size).map_err(|_| StoreError::Corrupt("file size".into()))?,
        });
    }
    Ok(out)
}

impl Store {
    /// One stored file of session `id`, with its session's owner; `None` if there is no
    /// such file (never stored, or deleted).
    pub async fn load_file(
        &self,
        id: SessionId,
        file_id: FileId,
    ) -> Result<Option<StoredFile>, StoreError> {
        let keys = self.data_keys();
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let found = tx
                .prepare_cached(
                    "SELECT s.owner, f.content_type, f.bytes FROM files f \
                     JOIN sessions s ON s.id = f.session_id \
                     WHERE f.file_id = ?1 AND f.session_id = ?2",
                )?
                .query_row(params![file_id.to_string(), id.to_string()], |r| {
                    Ok(StoredFile {
                        owner: r.get(0)?,
                        content_type: r.get(1)?,
                        bytes: r.get(2)?,
                    })
                })
                .optional()?;
            let Some(mut file) = found else {
                return Ok(None);
            };
            file.bytes = super::keys::row_seal(&tx, &keys, id)?
                .open_bytes(Field::File(file_id), std::mem::take(&mut file.bytes))
                .map_err(|e| crate::store_api::sealed_error(id, e))?;
            Ok(Some(file))
        })
        .await
    }

    /// Retention: for up to [`PURGE_BATCH`] confirmed sessions decided at or before
    /// `cutoff` and not yet purged, deletes their files and clears their shared data and
    /// registration, recording `now` as `purged_at`. Returns how many were purged; call
    /// again while it returns a full batch.
    pub async fn purge_retained(
        &self,
        cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let keys = self.data_keys();
        self.write(move |conn, fx| {
            let ids: Vec<String> = conn
                .prepare_cached(&retained_data_sql("?1", "?2"))?
                .query_map(
                    params![cutoff.timestamp_millis(), PURGE_BATCH as i64],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            let mut delete = conn.prepare_cached("DELETE FROM files WHERE session_id = ?1")?;
            let mut clear = conn.prepare_cached(
                "UPDATE sessions SET shared_data = NULL, registration = NULL, purged_at = ?2 \
                 WHERE id = ?1",
            )?;
            for id in &ids {
                delete.execute([id])?;
                clear.execute(params![id, now.timestamp_millis()])?;
                let sid = SessionId::parse(id)
                    .ok_or_else(|| StoreError::Corrupt(format!("session id {id}")))?;
                super::keys::shred_key(conn, &keys, sid)?;
            }
            fx.scrub |= !ids.is_empty();
            Ok(ids.len())
        })
        .await
    }
}

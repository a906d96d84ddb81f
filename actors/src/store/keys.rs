//! SQL of a session's data key on SQLite (SPEC §2 "At rest"): read and opened for the
//! fields it seals, destroyed by a purge. The cryptography is [`crate::at_rest`]'s.

use rusqlite::{params, Connection, OptionalExtension};

use super::StoreError;
use crate::at_rest::{DataKeys, RowSeal};
use crate::ids::SessionId;
use crate::store_api::{sealed_error, shred, stored_key};

/// The opener of session `id`'s sealed fields: its data key, read and opened.
pub(crate) fn row_seal(
    conn: &Connection,
    keys: &DataKeys,
    id: SessionId,
) -> Result<RowSeal, StoreError> {
    let (key_id, sealed): (Option<String>, Option<Vec<u8>>) = conn
        .prepare_cached("SELECT data_key_id, data_key FROM sessions WHERE id = ?1")?
        .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((None, None));
    keys.row(id, stored_key(key_id, sealed))
        .map_err(|e| sealed_error(id, e))
}

/// Crypto-shredding, in the transaction of a purge: the key that sealed the person's
/// data is destroyed with it; what stays of the session (its references) is sealed
/// again under a fresh key (none when nothing is left, or no key is given). A row kept
/// in clear stays in clear.
pub(crate) fn shred_key(
    conn: &Connection,
    keys: &DataKeys,
    id: SessionId,
) -> Result<(), StoreError> {
    let (vendor, reference, key_id, sealed): (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<Vec<u8>>,
    ) = conn
        .prepare_cached(
            "SELECT vendor_data, external_reference_id, data_key_id, data_key \
             FROM sessions WHERE id = ?1",
        )?
        .query_row([id.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let Some(kept) = shred(keys, id, vendor, reference, stored_key(key_id, sealed))? else {
        return Ok(());
    };
    let (key_id, key) = kept.key;
    conn.prepare_cached(
        "UPDATE sessions SET data_key_id = ?2, data_key = ?3, vendor_data = ?4, \
         external_reference_id = ?5 WHERE id = ?1",
    )?
    .execute(params![
        id.to_string(),
        key_id,
        key,
        kept.vendor_data,
        kept.external_reference_id
    ])?;
    Ok(())
}

//! SQL of a session's data key on PostgreSQL (SPEC §2 "At rest"): read and opened for
//! the fields it seals, destroyed by a purge. The cryptography is [`crate::at_rest`]'s.

use deadpool_postgres::GenericClient;

use super::{execute, query_opt};
use crate::at_rest::{DataKeys, RowSeal};
use crate::ids::SessionId;
use crate::store_api::{sealed_error, shred, stored_key, StoreError};

/// The opener of session `id`'s sealed fields: its data key, read and opened.
pub(crate) async fn row_seal(
    c: &impl GenericClient,
    keys: &DataKeys,
    id: SessionId,
) -> Result<RowSeal, StoreError> {
    let row = query_opt(
        c,
        "SELECT data_key_id, data_key FROM sessions WHERE id = $1",
        &[&id.to_string()],
    )
    .await?;
    let stored = match row {
        Some(r) => stored_key(r.try_get(0)?, r.try_get(1)?),
        None => None,
    };
    keys.row(id, stored).map_err(|e| sealed_error(id, e))
}

/// Crypto-shredding, in the transaction of a purge: the key that sealed the person's
/// data is destroyed with it; what stays (the references) is sealed again under a
/// fresh key (none when nothing is left, or no key is given). A row kept in clear
/// stays in clear.
pub(crate) async fn shred_key(
    c: &impl GenericClient,
    keys: &DataKeys,
    id: SessionId,
) -> Result<(), StoreError> {
    let Some(row) = query_opt(
        c,
        "SELECT vendor_data, external_reference_id, data_key_id, data_key \
         FROM sessions WHERE id = $1",
        &[&id.to_string()],
    )
    .await?
    else {
        return Ok(());
    };
    let stored = stored_key(row.try_get(2)?, row.try_get(3)?);
    let Some(kept) = shred(keys, id, row.try_get(0)?, row.try_get(1)?, stored)? else {
        return Ok(());
    };
    let (key_id, key) = kept.key;
    execute(
        c,
        "UPDATE sessions SET data_key_id = $2, data_key = $3, vendor_data = $4, \
         external_reference_id = $5 WHERE id = $1",
        &[
            &id.to_string(),
            &key_id,
            &key,
            &kept.vendor_data,
            &kept.external_reference_id,
        ],
    )
    .await?;
    Ok(())
}

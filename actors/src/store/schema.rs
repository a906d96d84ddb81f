//! Applies the numbered SQL files of `migrations/` in order, once each.

use rusqlite::Connection;

use super::StoreError;

/// Every migration, in order: (version, SQL). Versions are never reused or edited.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../migrations/0001_sessions.sql")),
    (2, include_str!("../../../migrations/0002_files.sql")),
    (3, include_str!("../../../migrations/0003_webhooks.sql")),
    (
        4,
        include_str!("../../../migrations/0004_idempotency_expiry.sql"),
    ),
    (
        5,
        include_str!("../../../migrations/0005_device_issuer.sql"),
    ),
];

/// Brings the schema up to date inside one transaction, recording each version applied.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    if current > MIGRATIONS.last().map_or(0, |m| m.0) {
        return Err(StoreError::Schema(format!(
            "the database has schema version {current}, newer than this broker knows"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            (version, chrono::Utc::now().timestamp_millis()),
        )?;
    }
    tx.commit()?;
    Ok(())
}

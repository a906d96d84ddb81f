//! Applies `migrations/postgres/*.sql` in order, once each, in one transaction that
//! holds an advisory lock: nodes starting together migrate one after the other, and
//! the later ones find the work done.

use deadpool_postgres::Pool;

use crate::store_api::StoreError;

/// Every migration, in order: (version, SQL). Versions are never reused or edited.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../../migrations/postgres/0001_schema.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/postgres/0002_tokens_name_their_session.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/postgres/0003_node_incarnations.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/postgres/0004_sealed_at_rest.sql"),
    ),
    (
        5,
        include_str!("../../../migrations/postgres/0005_binding.sql"),
    ),
];

/// The schema version this broker brings a database to.
#[cfg(test)]
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// The advisory lock key that serialises migrations ("idvb" in ASCII).
const MIGRATION_LOCK: i64 = 0x6964_7662;

/// Brings the schema up to date, recording each version applied.
pub(crate) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    // Held to the end of the transaction: a second node waits here, then sees the
    // versions the first one recorded.
    // A migration of a large table, and the wait for another node's migration, run
    // past the timeouts every other statement has (pg/mod.rs).
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at BIGINT NOT NULL
         )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::bigint FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    if current > MIGRATIONS.last().map_or(0, |m| m.0) {
        return Err(StoreError::Schema(format!(
            "the database has schema version {current}, newer than this broker knows"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[version, &chrono::Utc::now().timestamp_millis()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

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
    (
        6,
        include_str!("../../../migrations/0006_tokens_name_their_session.sql"),
    ),
    (
        7,
        include_str!("../../../migrations/0007_sealed_at_rest.sql"),
    ),
    (8, include_str!("../../../migrations/0008_binding.sql")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SessionId, TokenHash};
    use crate::store::{Store, StoreConfig};

    /// A database made by a broker before tokens named their session (schema 5), with
    /// one session whose token is of the earlier format.
    fn schema_5_with_a_legacy_session(path: &std::path::Path) -> (SessionId, TokenHash) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .unwrap();
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 5) {
            conn.execute_batch(sql).unwrap();
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
                [version],
            )
            .unwrap();
        }
        let id = SessionId::new();
        let legacy = crate::ids::SessionToken::presented(&crate::ids::random_secret()).hash();
        conn.execute(
            "INSERT INTO sessions (id, owner, token_hash, status, seq, scopes, created_at, \
             updated_at, expires_at) VALUES (?1, 'acme', ?2, 'expired', 2, '[]', 0, 0, 0)",
            rusqlite::params![id.to_string(), &legacy.0[..]],
        )
        .unwrap();
        (id, legacy)
    }

    #[actix_rt::test]
    async fn tokens_issued_before_they_named_their_session_are_still_known_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (id, legacy) = schema_5_with_a_legacy_session(&path);

        let store = Store::open(&StoreConfig::new(&path)).unwrap();
        assert!(store.token_in_use(legacy, None).await.unwrap());
        let other = crate::ids::SessionToken::presented("not-a-token").hash();
        assert!(!store.token_in_use(other, None).await.unwrap());
        // Checked by the session it names, a made-up hash is nobody's.
        assert!(!store.token_in_use(other, Some(id)).await.unwrap());
        drop(store);

        // The index over token hashes is gone; nothing else indexes them.
        let conn = Connection::open(&path).unwrap();
        let indexes: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '%token_hash%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, Vec::<String>::new());
    }

    #[actix_rt::test]
    async fn a_legacy_token_replaced_on_its_session_is_nobodys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (id, legacy) = schema_5_with_a_legacy_session(&path);
        let store = Store::open(&StoreConfig::new(&path)).unwrap();
        // What an idempotent replay does to the session's token.
        let fresh = crate::ids::SessionToken::generate(id);
        let hash = fresh.hash();
        store
            .write(move |conn, _| {
                conn.execute(
                    "UPDATE sessions SET token_hash = ?1 WHERE id = ?2",
                    rusqlite::params![&hash.0[..], id.to_string()],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        assert!(!store.token_in_use(legacy, None).await.unwrap());
        assert!(store
            .token_in_use(fresh.hash(), fresh.claimed_session())
            .await
            .unwrap());
    }
}

//! Record retention (SPEC §2 "Records") as both engines run it: what one batch
//! deleted, and the statements whose rules come from [`Status`].

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
pub fn expired_records_sql(p1: &str, p2: &str) -> String {
    format!(
        "SELECT id FROM sessions s WHERE decided_at IS NOT NULL AND decided_at <= {p1} \
         AND status IN {} AND NOT EXISTS (SELECT 1 FROM webhook_outbox o \
         WHERE o.session_id = s.id AND o.state = 'pending') ORDER BY decided_at LIMIT {p2}",
        Status::records_expire_sql()
    )
}

/// The distinct operator key ids that seal stored data keys, by a walk of the index on
/// `data_key_id` (one probe per id, however many sessions); both engines run it.
pub const DATA_KEY_IDS_SQL: &str = "WITH RECURSIVE k(id) AS ( \
     SELECT MIN(data_key_id) FROM sessions WHERE data_key_id IS NOT NULL \
     UNION ALL SELECT (SELECT MIN(data_key_id) FROM sessions WHERE data_key_id > k.id) \
     FROM k WHERE k.id IS NOT NULL) SELECT id FROM k WHERE id IS NOT NULL";

/// The confirmed sessions whose shared data and files retention purges (SPEC §2:
/// only a confirmed session keeps the person's data): decided at or before `{p1}`, not
/// purged yet, at most `{p2}`; both engines run it.
pub fn retained_data_sql(p1: &str, p2: &str) -> String {
    format!(
        "SELECT id FROM sessions WHERE status IN {} AND purged_at IS NULL \
         AND decided_at <= {p1} ORDER BY decided_at LIMIT {p2}",
        Status::keeps_data_sql()
    )
}

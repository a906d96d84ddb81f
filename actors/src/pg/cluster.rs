//! Leases, claims and orphan adoption ([`ClusterStore`](crate::session_store::ClusterStore)).
//!
//! A node's lease is a row of `nodes` whose `lease_until` is measured by the database's
//! clock ([`DB_NOW`]), so clock skew between nodes never matters. The lease is held by
//! one *incarnation* of the node id (one process, [`Shared::incarnation`]): another
//! process with the same `--node-id` takes it only once it lapsed, and from then on the
//! first process's renewals and commits are refused ([`lease_held`]).
//!
//! Only a process that holds a valid lease takes a session (on request, or in a batch):
//! one without would lose it again at once. Every take bumps `owner_epoch`, whoever
//! owned the row before: a session whose owner has no valid lease, a session of this
//! node id that this process does not run yet (after a restart, or after its lease
//! lapsed and came back), so the commits of any earlier holder fail the guard
//! ([`StoreError::NotOwner`]).

use std::time::Duration;

use super::{execute, lease_held, limit, query, query_opt, Shared, DB_NOW};
use crate::ids::{Seq, SessionId};
use crate::model::SessionRecord;
use crate::session_store::Claim;
use crate::status::Status;
use crate::store_api::StoreError;
use crate::store_api::{session_columns_of, session_from_row};

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

impl Shared {
    /// Notes that this process holds `id` at `epoch`. Two claims of one session may
    /// finish in either order: the higher epoch is the one the row has.
    pub(crate) fn hold(&self, id: SessionId, epoch: i64) {
        self.held
            .entry(id)
            .and_modify(|e| *e = (*e).max(epoch))
            .or_insert(epoch);
    }

    /// Reads session `id` and says who owns it, taking it (with a new epoch) when it
    /// is live and its owner's lease has lapsed, or it is this node id's but this
    /// process does not hold it. One statement: the update and the read of the row as
    /// it was (the columns a claim changes are not in the record). Only called when no
    /// actor of this process runs the session.
    pub(crate) async fn claim(&self, id: SessionId) -> Result<Claim, StoreError> {
        let conn = self.conn().await?;
        let key = id.to_string();
        let sql = format!(
            "WITH taken AS ( \
                 UPDATE sessions s SET owner_node = $2, owner_epoch = s.owner_epoch + 1 \
                 WHERE s.id = $1 AND s.status IN {live} \
                   AND (s.owner_node = $2 \
                        OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = s.owner_node \
                                       AND n.lease_until > {DB_NOW})) \
                   AND {mine} \
                 RETURNING s.owner_epoch) \
             SELECT {columns}, s.owner_node AS claim_owner, \
                 (SELECT owner_epoch FROM taken) AS taken_epoch \
             FROM sessions s WHERE s.id = $1",
            live = Status::live_sql(),
            mine = lease_held("$2", "$3"),
            columns = session_columns_of("s"),
        );
        let row = query_opt(&conn, &sql, &[&key, &self.node_id, &self.incarnation]).await?;
        let Some(row) = row else {
            self.held.remove(&id);
            return Ok(Claim::Missing);
        };
        let record = session_from_row(&row, &self.data_keys)?;
        if let Some(epoch) = row.try_get::<_, Option<i64>>("taken_epoch")? {
            self.hold(id, epoch);
            return Ok(Claim::Mine(Box::new(record)));
        }
        self.held.remove(&id);
        if record.status.is_terminal() {
            return Ok(Claim::Ended(Box::new(record)));
        }
        let owner: String = row.try_get("claim_owner")?;
        if owner == self.node_id {
            // This node id's, and live, yet not taken: this process holds no lease
            // (it lapsed, or another process with this node id holds it).
            Err(StoreError::NoLease)
        } else {
            Ok(Claim::Other(owner))
        }
    }

    /// Takes this node id's lease for this process: a new row, a lease that lapsed,
    /// or this process's own; `false` while another process holds it.
    pub(crate) async fn register_node(&self, ttl: Duration) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO nodes (node_id, lease_until, incarnation) VALUES ($1, {DB_NOW} + $2, $3) \
             ON CONFLICT (node_id) DO UPDATE \
             SET lease_until = excluded.lease_until, incarnation = excluded.incarnation \
             WHERE nodes.incarnation = excluded.incarnation OR nodes.lease_until <= {DB_NOW}"
        );
        self.write_lease(&sql, ttl).await
    }

    /// Extends this process's lease if it is still valid.
    pub(crate) async fn renew_lease(&self, ttl: Duration) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE nodes SET lease_until = {DB_NOW} + $2 \
             WHERE node_id = $1 AND incarnation = $3 AND lease_until > {DB_NOW}"
        );
        self.write_lease(&sql, ttl).await
    }

    /// Runs a statement on this node's row (`$1` the node id, `$2` the lease in ms,
    /// `$3` this process's incarnation); whether it touched the row.
    async fn write_lease(&self, sql: &str, ttl: Duration) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&self.node_id, &ttl_ms(ttl), &self.incarnation];
        Ok(execute(&conn, sql, &params).await? == 1)
    }

    /// Takes over up to `n` sessions of lapsed nodes that are live or have pending
    /// webhooks; answers the live ones (this node holds them now).
    pub(crate) async fn adopt_orphans(&self, n: usize) -> Result<Vec<SessionRecord>, StoreError> {
        let conn = self.conn().await?;
        // SKIP LOCKED: a row another adopter is taking is left to it, so two adopters
        // never take the same session; a row it already took is owned by a live node.
        // Candidates come from the live-session index and the pending-outbox index, not
        // from a scan of every session ever made.
        let sql = format!(
            "WITH orphans AS ( \
                 SELECT o.id FROM sessions o \
                 WHERE o.id IN (SELECT c.id FROM sessions c \
                                WHERE c.status IN {live} AND c.owner_node <> $1 \
                                UNION \
                                SELECT w.session_id FROM webhook_outbox w \
                                WHERE w.state = 'pending') \
                   AND o.owner_node <> $1 \
                   AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = o.owner_node \
                                   AND n.lease_until > {DB_NOW}) \
                   AND {mine} \
                 ORDER BY (o.status IN {live}) DESC \
                 LIMIT $2 FOR UPDATE OF o SKIP LOCKED) \
             UPDATE sessions s SET owner_node = $1, owner_epoch = s.owner_epoch + 1 \
             FROM orphans WHERE s.id = orphans.id \
             RETURNING {columns}, s.owner_epoch, s.status IN {live} AS live, \
                 EXISTS (SELECT 1 FROM webhook_outbox w WHERE w.session_id = s.id \
                         AND w.state = 'pending') AS webhooks_pending",
            live = Status::live_sql(),
            columns = session_columns_of("s"),
            mine = lease_held("$1", "$3"),
        );
        let rows = query(&conn, &sql, &[&self.node_id, &limit(n), &self.incarnation]).await?;
        let mut live = Vec::new();
        let mut outbox = false;
        for row in rows {
            outbox |= row.try_get::<_, bool>("webhooks_pending")?;
            if row.try_get::<_, bool>("live")? {
                let record = session_from_row(&row, &self.data_keys)?;
                self.hold(record.id, row.try_get("owner_epoch")?);
                live.push(record);
            }
        }
        if outbox {
            self.webhook_wake.notify_one();
        }
        Ok(live)
    }

    /// Ends this node's lease now and holds nothing.
    pub(crate) async fn release_node(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        execute(
            &conn,
            "UPDATE nodes SET lease_until = 0 WHERE node_id = $1 AND incarnation = $2",
            &[&self.node_id, &self.incarnation],
        )
        .await?;
        self.held.clear();
        Ok(())
    }

    /// The nodes with a valid lease.
    pub(crate) async fn live_nodes(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn().await?;
        let sql =
            format!("SELECT node_id FROM nodes WHERE lease_until > {DB_NOW} ORDER BY node_id");
        query(&conn, &sql, &[])
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }

    /// The current seq of each of `ids` that is still stored, in one statement.
    pub(crate) async fn seqs(
        &self,
        ids: &[SessionId],
    ) -> Result<Vec<(SessionId, Seq)>, StoreError> {
        let conn = self.conn().await?;
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        query(
            &conn,
            "SELECT id, seq FROM sessions WHERE id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| {
            let id: String = r.try_get(0)?;
            let seq: i64 = r.try_get(1)?;
            let id = SessionId::parse(&id)
                .ok_or_else(|| StoreError::Corrupt(format!("session id {id:?}")))?;
            let seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt("seq".into()))?;
            Ok((id, Seq(seq)))
        })
        .collect()
    }
}

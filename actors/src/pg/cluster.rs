//! Leases, claims and orphan adoption ([`ClusterStore`](crate::session_store::ClusterStore)).
//!
//! A node's lease is a row of `nodes` whose `lease_until` is measured by the database's
//! clock ([`DB_NOW`]), so clock skew between nodes never matters. Only a node that holds
//! a valid lease itself takes a session (on request, or in a batch): one without would
//! lose it again at once. A session whose owner
//! has no valid lease may be taken by any node, which bumps `owner_epoch`: the old
//! owner's commits then fail the guard ([`StoreError::NotOwner`]).

use std::time::Duration;

use super::sessions::{session_columns_of, session_from_row};
use super::{execute, limit, query, query_opt, Shared, DB_NOW};
use crate::ids::SessionId;
use crate::model::SessionRecord;
use crate::session_store::Claim;
use crate::status::Status;
use crate::store::StoreError;

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

impl Shared {
    /// Who owns live session `id`, taking it when its owner's lease has lapsed.
    pub(crate) async fn claim(&self, id: SessionId) -> Result<Claim, StoreError> {
        let conn = self.conn().await?;
        let key = id.to_string();
        let sql = format!(
            "UPDATE sessions s SET owner_node = $2, owner_epoch = s.owner_epoch + 1 \
             WHERE s.id = $1 AND s.status IN {live} AND s.owner_node <> $2 \
               AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = s.owner_node \
                               AND n.lease_until > {DB_NOW}) \
               AND EXISTS (SELECT 1 FROM nodes m WHERE m.node_id = $2 \
                           AND m.lease_until > {DB_NOW}) \
             RETURNING s.owner_epoch",
            live = Status::live_sql()
        );
        if let Some(row) = query_opt(&conn, &sql, &[&key, &self.node_id]).await? {
            self.held.insert(id, row.try_get(0)?);
            return Ok(Claim::Mine);
        }
        let sql = format!(
            "SELECT owner_node, owner_epoch FROM sessions WHERE id = $1 AND status IN {}",
            Status::live_sql()
        );
        let Some(row) = query_opt(&conn, &sql, &[&key]).await? else {
            self.held.remove(&id);
            return Ok(Claim::NotLive);
        };
        let owner: String = row.try_get(0)?;
        if owner == self.node_id {
            self.held.insert(id, row.try_get(1)?);
            Ok(Claim::Mine)
        } else {
            self.held.remove(&id);
            Ok(Claim::Other(owner))
        }
    }

    /// Upserts this node's lease.
    pub(crate) async fn register_node(&self, ttl: Duration) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "INSERT INTO nodes (node_id, lease_until) VALUES ($1, {DB_NOW} + $2) \
             ON CONFLICT (node_id) DO UPDATE SET lease_until = excluded.lease_until"
        );
        execute(&conn, &sql, &[&self.node_id, &ttl_ms(ttl)]).await?;
        Ok(())
    }

    /// Extends this node's lease if it is still valid.
    pub(crate) async fn renew_lease(&self, ttl: Duration) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "UPDATE nodes SET lease_until = {DB_NOW} + $2 \
             WHERE node_id = $1 AND lease_until > {DB_NOW}"
        );
        Ok(execute(&conn, &sql, &[&self.node_id, &ttl_ms(ttl)]).await? == 1)
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
                   AND EXISTS (SELECT 1 FROM nodes m WHERE m.node_id = $1 \
                               AND m.lease_until > {DB_NOW}) \
                 ORDER BY (o.status IN {live}) DESC \
                 LIMIT $2 FOR UPDATE OF o SKIP LOCKED) \
             UPDATE sessions s SET owner_node = $1, owner_epoch = s.owner_epoch + 1 \
             FROM orphans WHERE s.id = orphans.id \
             RETURNING {columns}, s.status IN {live}, \
                 EXISTS (SELECT 1 FROM webhook_outbox w WHERE w.session_id = s.id \
                         AND w.state = 'pending')",
            live = Status::live_sql(),
            columns = session_columns_of("s"),
        );
        let rows = query(&conn, &sql, &[&self.node_id, &limit(n)]).await?;
        let mut live = Vec::new();
        let mut outbox = false;
        for row in rows {
            outbox |= row.try_get::<_, bool>(21)?;
            if row.try_get::<_, bool>(20)? {
                let record = session_from_row(&row)?;
                self.held.insert(record.id, row.try_get(19)?);
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
            "UPDATE nodes SET lease_until = 0 WHERE node_id = $1",
            &[&self.node_id],
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
}

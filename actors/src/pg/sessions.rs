//! Sessions, their events, idempotency keys and users on PostgreSQL; the commit guard.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::{IsolationLevel, Row};

use super::keys::{row_seal, shred_key};
use super::{execute, limit, ms, query, query_opt, time, Shared};
use crate::at_rest::{DataKeys, Field, RowSeal};
use crate::ids::{Seq, SessionId, TokenHash, UserId};
use crate::model::{Decision, SessionEvent, SessionRecord, UserRecord, UserStatus};
use crate::status::Status;
use crate::store_api::{
    idempotency_cutoff, key_seen, replay_token, session_from_row, shared_data_column, Column,
    CreateOutcome, IdempotencyClaim, KeySeen, NewSession, StoreError, SESSION_COLUMNS,
};
use crate::store_api::{opt_time, sealed_error};
use crate::write::{Note, NoteWrite, TransitionWrite};

/// A PostgreSQL row read by column index, for the shared decoding
/// ([`session_from_row`]).
impl<T> Column<T> for Row
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    fn column(&self, i: usize) -> Result<T, StoreError> {
        Ok(self.try_get(i)?)
    }
}

/// One session, whatever its status.
pub(crate) async fn load_session(
    c: &impl GenericClient,
    keys: &DataKeys,
    id: SessionId,
) -> Result<Option<SessionRecord>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
    query_opt(c, &sql, &[&id.to_string()])
        .await?
        .map(|r| session_from_row(&r, keys))
        .transpose()
}

async fn insert_session(
    c: &impl GenericClient,
    keys: &DataKeys,
    s: &SessionRecord,
    node: &str,
) -> Result<(), StoreError> {
    let scopes = serde_json::to_string(&s.request.scopes)
        .map_err(|e| StoreError::Corrupt(format!("scopes: {e}")))?;
    let id = s.id.to_string();
    let (seal, key) = RowSeal::new_session(keys, s.id);
    let (key_id, key) = key.map_or((None, None), |k| (Some(k.key_id), Some(k.sealed)));
    execute(
        c,
        "INSERT INTO sessions (id, owner, token_hash, status, seq, scopes, vendor_data, \
         external_reference_id, registration, redirect_url, callback_url, created_at, \
         updated_at, expires_at, owner_node, owner_epoch, data_key_id, data_key, binding) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 1, $16, $17, $18)",
        &[
            &id,
            &s.owner,
            &&s.token_hash.0[..],
            &s.status.as_str(),
            &(s.seq.0 as i64),
            &scopes,
            &seal.seal_text(Field::VendorData, s.request.vendor_data.as_deref()),
            &seal.seal_text(
                Field::ExternalReferenceId,
                s.request.external_reference_id.as_deref(),
            ),
            &seal.seal_text(
                Field::Registration,
                s.request.registration.as_ref().map(|r| r.get()),
            ),
            &s.request.redirect_url,
            &s.request.callback_url,
            &ms(s.created_at),
            &ms(s.updated_at),
            &ms(s.expires_at),
            &node,
            &key_id,
            &key,
            &s.request.binding.as_str(),
        ],
    )
    .await?;
    execute(
        c,
        "INSERT INTO session_events (session_id, seq, status, at) VALUES ($1, $2, $3, $4)",
        &[
            &id,
            &(s.seq.0 as i64),
            &s.status.as_str(),
            &ms(s.created_at),
        ],
    )
    .await?;
    Ok(())
}

/// What a committed transition asks of the store afterwards.
#[derive(Default)]
pub(crate) struct After {
    /// A webhook event was enqueued: wake the dispatcher.
    pub webhook_enqueued: bool,
    /// Personal data was purged: vacuum soon.
    pub purged: bool,
}

impl Shared {
    /// Applies one transition as it is described, guarded by seq and ownership: the
    /// session row, its event, the user it makes known, the files, the purge and the
    /// webhook event. Answers the row as committed (`RETURNING`).
    async fn apply_transition(
        &self,
        c: &impl GenericClient,
        t: &TransitionWrite,
        after: &mut After,
    ) -> Result<SessionRecord, StoreError> {
        let seq = t.from_seq.next();
        // Only what stores the person's data needs the session's key.
        let seal = if t.shared_data.is_some() || !t.files.is_empty() {
            Some(row_seal(c, &self.data_keys, t.id).await?)
        } else {
            None
        };
        let shared = shared_data_column(t, seal.as_ref())?;
        // No epoch held: no row can match, and the diagnosis below says why.
        let epoch = self.held.get(&t.id).map_or(-1, |e| *e);
        let id = t.id.to_string();
        let sql = format!(
            "UPDATE sessions SET status = $1, seq = $2, updated_at = $3, \
                   decided_at = COALESCE($4, decided_at), \
                   user_id = COALESCE($5, user_id), \
                   issuer = COALESCE($12, issuer), \
                   is_consented = COALESCE($6, is_consented), \
                   consented_at = COALESCE($7, consented_at), \
                   shared_data = CASE WHEN $8 THEN NULL ELSE COALESCE($9, shared_data) END, \
                   registration = CASE WHEN $8 THEN NULL ELSE registration END, \
                   binding_code = COALESCE($16, binding_code), \
                   binding_misses = COALESCE($17, binding_misses), \
                   decline_reason = COALESCE($18, decline_reason) \
                 WHERE id = $10 AND seq = $11 AND owner_node = $13 AND owner_epoch = $14 \
                   AND {lease} \
                 RETURNING {SESSION_COLUMNS}",
            lease = super::lease_held("$13", "$15"),
        );
        let row = query_opt(
            c,
            &sql,
            &[
                &t.status.as_str(),
                &(seq.0 as i64),
                &ms(t.at),
                &t.decided_at.map(ms),
                &t.bind.as_ref().map(|d| d.user_id.as_str()),
                &t.consent.as_ref().map(|c| c.is_consented),
                &t.consent.as_ref().map(|c| ms(c.consented_at)),
                &t.purge,
                &shared,
                &id,
                &(t.from_seq.0 as i64),
                &t.bind.as_ref().map(|d| d.issuer.as_str()),
                &self.node_id,
                &epoch,
                &self.incarnation,
                &t.binding_code.map(|c| c.to_string()),
                &t.binding_misses.map(i64::from),
                &t.reason.map(|r| r.as_str()),
            ],
        )
        .await?;
        let committed = match row {
            Some(row) => session_from_row(&row, &self.data_keys)?,
            None => return Err(self.why_refused(c, t.id, t.from_seq).await?),
        };
        execute(
            c,
            "INSERT INTO session_events (session_id, seq, status, at) VALUES ($1, $2, $3, $4)",
            &[&id, &(seq.0 as i64), &t.status.as_str(), &ms(t.at)],
        )
        .await?;
        if t.registers_user {
            execute(
                c,
                "INSERT INTO users (owner, user_id, status, updated_at) \
                 SELECT owner, user_id, $3, $2 FROM sessions \
                 WHERE id = $1 AND user_id IS NOT NULL \
                 ON CONFLICT (owner, user_id) DO NOTHING",
                &[&id, &ms(t.at), &UserStatus::Pending.as_str()],
            )
            .await?;
        }
        super::files::apply(c, seal.as_ref(), t).await?;
        if t.purge {
            shred_key(c, &self.data_keys, t.id).await?;
        }
        after.purged |= t.purge;
        // Same transaction as the transition: an acknowledged transition has its event.
        after.webhook_enqueued |= self.enqueue(c, t, &committed).await?;
        Ok(committed)
    }

    /// Why the guarded update matched no row: the seq moved (or the session is gone),
    /// [`StoreError::Stale`]; else the row is not this node's at the epoch it holds,
    /// [`StoreError::NotOwner`].
    async fn why_refused(
        &self,
        c: &impl GenericClient,
        id: SessionId,
        from_seq: Seq,
    ) -> Result<StoreError, StoreError> {
        let row = query_opt(
            c,
            "SELECT seq FROM sessions WHERE id = $1",
            &[&id.to_string()],
        )
        .await?;
        Ok(match row {
            Some(row) if row.try_get::<_, i64>(0)? == from_seq.0 as i64 => StoreError::NotOwner,
            _ => StoreError::Stale,
        })
    }

    /// Commits a change that is no transition, guarded by seq and ownership as a
    /// transition is, and by what it changes (a miss counts on from the count before
    /// it; `shown_on` is set once). Answers the row as committed.
    pub(crate) async fn commit_note(&self, w: NoteWrite) -> Result<SessionRecord, StoreError> {
        let began = std::time::Instant::now();
        let conn = self.conn().await?;
        let epoch = self.held.get(&w.id).map_or(-1, |e| *e);
        let id = w.id.to_string();
        let seq = w.from_seq.0 as i64;
        let guard = format!(
            "id = $1 AND seq = $2 AND owner_node = $3 AND owner_epoch = $4 AND {lease}",
            lease = super::lease_held("$3", "$5"),
        );
        let row = match &w.note {
            Note::BindingMiss { misses } => {
                let sql = format!(
                    "UPDATE sessions SET binding_misses = $6::bigint \
                     WHERE {guard} AND binding_misses = $6::bigint - 1 RETURNING {SESSION_COLUMNS}"
                );
                query_opt(
                    &conn,
                    &sql,
                    &[
                        &id,
                        &seq,
                        &self.node_id,
                        &epoch,
                        &self.incarnation,
                        &i64::from(*misses),
                    ],
                )
                .await?
            }
            Note::ShownOn(on) => {
                let sql = format!(
                    "UPDATE sessions SET shown_browser = $6, shown_os = $7, shown_since = $8 \
                     WHERE {guard} AND shown_since IS NULL RETURNING {SESSION_COLUMNS}"
                );
                query_opt(
                    &conn,
                    &sql,
                    &[
                        &id,
                        &seq,
                        &self.node_id,
                        &epoch,
                        &self.incarnation,
                        &on.browser,
                        &on.os,
                        &ms(on.since),
                    ],
                )
                .await?
            }
        };
        crate::metrics::store_commit(1, began.elapsed());
        match row {
            Some(row) => session_from_row(&row, &self.data_keys),
            None => Err(self.why_refused(&conn, w.id, w.from_seq).await?),
        }
    }

    /// Inserts a new session owned by this node (epoch 1), honouring an idempotency key.
    pub(crate) async fn create_session(
        &self,
        new: NewSession,
        claim: Option<IdempotencyClaim>,
    ) -> Result<CreateOutcome, StoreError> {
        let began = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let s = &new.record;
        if let Some(claim) = &claim {
            // Insert the key first: a concurrent create with the same key waits on it,
            // then finds it (and replays) instead of racing to a second session.
            loop {
                let inserted = execute(
                    &tx,
                    "INSERT INTO idempotency_keys (owner, key, request_hash, session_id, \
                     created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner, key) DO NOTHING",
                    &[
                        &s.owner,
                        &claim.key,
                        &&claim.request_hash[..],
                        &s.id.to_string(),
                        &ms(s.created_at),
                    ],
                )
                .await?;
                if inserted == 1 {
                    break;
                }
                let seen = query_opt(
                    &tx,
                    "SELECT request_hash, session_id, created_at FROM idempotency_keys \
                     WHERE owner = $1 AND key = $2 FOR UPDATE",
                    &[&s.owner, &claim.key],
                )
                .await?;
                // Deleted by retention in between: insert again.
                let Some(seen) = seen else { continue };
                let hash: Vec<u8> = seen.try_get(0)?;
                let session_id: String = seen.try_get(1)?;
                let at: i64 = seen.try_get(2)?;
                match key_seen(claim, &hash, &session_id, at, s.created_at)? {
                    KeySeen::Conflict => return Ok(CreateOutcome::Conflict),
                    KeySeen::Expired => {}
                    KeySeen::Replay(id) => {
                        let token = replay_token(id);
                        execute(
                            &tx,
                            "UPDATE sessions SET token_hash = $1 WHERE id = $2",
                            &[&&token.hash().0[..], &session_id],
                        )
                        .await?;
                        let replayed =
                            load_session(&tx, &self.data_keys, id)
                                .await?
                                .ok_or_else(|| {
                                    StoreError::Corrupt("idempotency key without session".into())
                                })?;
                        tx.commit().await?;
                        crate::metrics::store_commit(1, began.elapsed());
                        return Ok(CreateOutcome::Replayed(Box::new(replayed), token));
                    }
                }
                // The window is over: the key starts again with this session.
                execute(
                    &tx,
                    "UPDATE idempotency_keys SET request_hash = $3, session_id = $4, \
                     created_at = $5 WHERE owner = $1 AND key = $2",
                    &[
                        &s.owner,
                        &claim.key,
                        &&claim.request_hash[..],
                        &s.id.to_string(),
                        &ms(s.created_at),
                    ],
                )
                .await?;
                break;
            }
        }
        insert_session(&tx, &self.data_keys, s, &self.node_id).await?;
        tx.commit().await?;
        // One transaction per call: a "batch" of one job, in SQLite's terms.
        crate::metrics::store_commit(1, began.elapsed());
        self.held.insert(s.id, 1);
        Ok(CreateOutcome::Created)
    }

    /// Commits the transitions in one transaction, each guarded; answers the rows.
    pub(crate) async fn commit_transitions(
        &self,
        writes: Vec<TransitionWrite>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let began = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let mut after = After::default();
        let mut out = Vec::with_capacity(writes.len());
        for t in &writes {
            out.push(self.apply_transition(&tx, t, &mut after).await?);
        }
        tx.commit().await?;
        crate::metrics::store_commit(1, began.elapsed());
        for s in &out {
            if s.status.is_terminal() {
                self.held.remove(&s.id);
            }
        }
        if after.webhook_enqueued {
            crate::metrics::outbox_moved(1.0);
            self.webhook_wake.notify_one();
        }
        if after.purged {
            self.purged();
        }
        Ok(out)
    }

    /// Up to `limit` of this node's live sessions overdue at `now`.
    pub(crate) async fn overdue_live(
        &self,
        now: DateTime<Utc>,
        n: usize,
    ) -> Result<Vec<SessionId>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT id FROM sessions WHERE owner_node = $1 AND status IN {} \
             AND expires_at <= $2 LIMIT $3",
            Status::live_sql()
        );
        query(&conn, &sql, &[&self.node_id, &ms(now), &limit(n)])
            .await?
            .iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                SessionId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("session id {id}")))
            })
            .collect()
    }

    /// Every live session this node id owns (a restart with the same node id gets its
    /// sessions back), taken with a new epoch each: a paused earlier process of this
    /// node id can commit none of them any more. Needs this process's lease (taken
    /// first, [`Shared::register_node`]); without it, nothing is taken.
    pub(crate) async fn load_live_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "UPDATE sessions SET owner_epoch = owner_epoch + 1 \
             WHERE owner_node = $1 AND status IN {} AND {} \
             RETURNING {SESSION_COLUMNS}, owner_epoch",
            Status::live_sql(),
            super::lease_held("$1", "$2"),
        );
        let rows = query(&conn, &sql, &[&self.node_id, &self.incarnation]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let record = session_from_row(&row, &self.data_keys)?;
            self.hold(record.id, row.try_get("owner_epoch")?);
            out.push(record);
        }
        Ok(out)
    }

    /// The session with its shared data and files, as of one moment.
    pub(crate) async fn load_decision(
        &self,
        id: SessionId,
    ) -> Result<Option<Decision>, StoreError> {
        let mut conn = self.conn().await?;
        // One snapshot: the row, its data and its files, even if a purge commits meanwhile.
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let Some(session) = load_session(&tx, &self.data_keys, id).await? else {
            return Ok(None);
        };
        let row = query_opt(
            &tx,
            "SELECT shared_data, purged_at FROM sessions WHERE id = $1",
            &[&id.to_string()],
        )
        .await?
        .ok_or_else(|| StoreError::Corrupt("session vanished".into()))?;
        let shared: Option<String> = row_seal(&tx, &self.data_keys, id)
            .await?
            .open_text(Field::SharedData, row.try_get(0)?)
            .map_err(|e| sealed_error(id, e))?;
        let purged_at: Option<i64> = row.try_get(1)?;
        let shared_data = shared
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|_| StoreError::Corrupt("shared data".into()))?;
        let files = super::files::list(&tx, id).await?;
        tx.commit().await?;
        Ok(Some(Decision {
            session,
            shared_data,
            files,
            purged_at: opt_time(purged_at)?,
        }))
    }

    /// The transitions of a session with `seq > after`, in order.
    pub(crate) async fn events_after(
        &self,
        id: SessionId,
        after: Seq,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        let conn = self.conn().await?;
        let rows = query(
            &conn,
            "SELECT seq, status, at FROM session_events WHERE session_id = $1 AND seq > $2 \
             ORDER BY seq",
            &[&id.to_string(), &(after.0 as i64)],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get(0)?;
                let status: String = r.try_get(1)?;
                Ok(SessionEvent {
                    seq: Seq(u64::try_from(seq).map_err(|_| StoreError::Corrupt("seq".into()))?),
                    status: status.parse().map_err(StoreError::Corrupt)?,
                    at: time(r.try_get(2)?)?,
                    // The log keeps no code: readers take it from the session.
                    binding_code: None,
                })
            })
            .collect()
    }

    /// Whether a presented token is some session's current token: by the session it
    /// names, or among the hashes issued before tokens named their session.
    pub(crate) async fn token_in_use(
        &self,
        hash: TokenHash,
        claims: Option<SessionId>,
    ) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let row = match claims {
            Some(id) => {
                query_opt(
                    &conn,
                    "SELECT token_hash FROM sessions WHERE id = $1",
                    &[&id.to_string()],
                )
                .await?
            }
            None => {
                query_opt(
                    &conn,
                    "SELECT s.token_hash FROM legacy_session_tokens l \
                     JOIN sessions s ON s.id = l.session_id WHERE l.token_hash = $1",
                    &[&&hash.0[..]],
                )
                .await?
            }
        };
        let current: Option<Vec<u8>> = row.map(|r| r.try_get(0)).transpose()?;
        Ok(current
            .and_then(|c| TokenHash::from_slice(&c))
            .is_some_and(|c| c.matches(&hash)))
    }

    /// Sets a user's status for this API key.
    pub(crate) async fn set_user_status(
        &self,
        owner: String,
        user_id: UserId,
        status: UserStatus,
        at: DateTime<Utc>,
    ) -> Result<UserRecord, StoreError> {
        let conn = self.conn().await?;
        execute(
            &conn,
            "INSERT INTO users (owner, user_id, status, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (owner, user_id) DO UPDATE SET status = excluded.status, \
             updated_at = excluded.updated_at",
            &[&owner, &user_id.as_str(), &status.as_str(), &ms(at)],
        )
        .await?;
        read_user(&conn, &owner, &user_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("user vanished".into()))
    }

    /// Deletes up to `n` idempotency keys whose window is over at `now`.
    pub(crate) async fn purge_idempotency_keys(
        &self,
        now: DateTime<Utc>,
        n: usize,
    ) -> Result<usize, StoreError> {
        let cutoff = idempotency_cutoff(now);
        let conn = self.conn().await?;
        let deleted = execute(
            &conn,
            "DELETE FROM idempotency_keys WHERE (owner, key) IN \
             (SELECT owner, key FROM idempotency_keys WHERE created_at <= $1 LIMIT $2)",
            &[&ms(cutoff), &limit(n)],
        )
        .await?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }
}

/// A user as this API key knows it.
pub(crate) async fn read_user(
    c: &impl GenericClient,
    owner: &str,
    user_id: &UserId,
) -> Result<Option<UserRecord>, StoreError> {
    let row = query_opt(
        c,
        "SELECT status, updated_at FROM users WHERE owner = $1 AND user_id = $2",
        &[&owner, &user_id.as_str()],
    )
    .await?;
    row.map(|r| {
        let status: String = r.try_get(0)?;
        Ok(UserRecord {
            user_id: user_id.clone(),
            status: UserStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt("user status".into()))?,
            updated_at: time(r.try_get(1)?)?,
        })
    })
    .transpose()
}

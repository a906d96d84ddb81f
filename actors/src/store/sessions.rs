//! SQL for sessions, their events, idempotency keys and users.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::keys::{row_seal, shred_key};
use super::writer::Effects;
use super::{ms, time, Store, StoreError};
use crate::at_rest::{DataKeys, Field, RowSeal};
use crate::ids::{Seq, SessionId, TokenHash, UserId};
use crate::model::{Decision, SessionEvent, SessionRecord, UserRecord, UserStatus};
use crate::status::Status;
use crate::store_api::{
    idempotency_cutoff, key_seen, opt_time, replay_token, sealed_error, session_from_row,
    shared_data_column, Column, CreateOutcome, IdempotencyClaim, KeySeen, NewSession,
    SESSION_COLUMNS,
};
use crate::write::{Note, NoteWrite, TransitionWrite};

/// A SQLite row read by column index, for the shared decoding ([`session_from_row`]).
impl<T: rusqlite::types::FromSql> Column<T> for Row<'_> {
    fn column(&self, i: usize) -> Result<T, StoreError> {
        Ok(self.get(i)?)
    }
}

pub(crate) fn load_session(
    conn: &Connection,
    keys: &DataKeys,
    id: SessionId,
) -> Result<Option<SessionRecord>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([id.to_string()])?;
    match rows.next()? {
        Some(row) => Ok(Some(session_from_row(row, keys)?)),
        None => Ok(None),
    }
}

fn token_in_use(
    conn: &Connection,
    hash: TokenHash,
    claims: Option<SessionId>,
) -> Result<bool, StoreError> {
    let current: Option<Vec<u8>> = match claims {
        Some(id) => conn
            .prepare_cached("SELECT token_hash FROM sessions WHERE id = ?1")?
            .query_row([id.to_string()], |r| r.get(0))
            .optional()?,
        // The session's current token must still be that hash: a legacy token replaced
        // by an idempotent replay is no credential any more.
        None => conn
            .prepare_cached(
                "SELECT s.token_hash FROM legacy_session_tokens l \
                 JOIN sessions s ON s.id = l.session_id WHERE l.token_hash = ?1",
            )?
            .query_row([&hash.0[..]], |r| r.get(0))
            .optional()?,
    };
    Ok(current
        .and_then(|c| TokenHash::from_slice(&c))
        .is_some_and(|c| c.matches(&hash)))
}

fn insert_session(conn: &Connection, keys: &DataKeys, s: &SessionRecord) -> Result<(), StoreError> {
    let scopes = serde_json::to_string(&s.request.scopes)
        .map_err(|e| StoreError::Corrupt(format!("scopes: {e}")))?;
    let id = s.id.text();
    let (seal, key) = RowSeal::new_session(keys, s.id);
    let (key_id, key) = key.map_or((None, None), |k| (Some(k.key_id), Some(k.sealed)));
    conn.prepare_cached(
        "INSERT INTO sessions (id, owner, token_hash, status, seq, scopes, vendor_data, \
         external_reference_id, registration, redirect_url, callback_url, created_at, \
         updated_at, expires_at, data_key_id, data_key, binding) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?
    .execute(params![
        &*id,
        s.owner,
        &s.token_hash.0[..],
        s.status.as_str(),
        s.seq.0 as i64,
        scopes,
        seal.seal_text(Field::VendorData, s.request.vendor_data.as_deref()),
        seal.seal_text(
            Field::ExternalReferenceId,
            s.request.external_reference_id.as_deref()
        ),
        seal.seal_text(
            Field::Registration,
            s.request.registration.as_ref().map(|r| r.get())
        ),
        s.request.redirect_url,
        s.request.callback_url,
        ms(s.created_at),
        ms(s.updated_at),
        ms(s.expires_at),
        key_id,
        key,
        s.request.binding.as_str(),
    ])?;
    conn.prepare_cached(
        "INSERT INTO session_events (session_id, seq, status, at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        &*id,
        s.seq.0 as i64,
        s.status.as_str(),
        ms(s.created_at)
    ])?;
    Ok(())
}

/// Applies one transition as it is described: the session row, its event, the user
/// it makes known, the files, the purge and the webhook event. Decides nothing; answers
/// the row as committed (`RETURNING`), which the session actor adopts.
pub(crate) fn apply_transition(
    conn: &Connection,
    keys: &DataKeys,
    t: &TransitionWrite,
    fx: &mut Effects,
) -> Result<SessionRecord, StoreError> {
    let seq = t.from_seq.next();
    let id = t.id.text();
    // Only what stores the person's data needs the session's key.
    let seal = if t.shared_data.is_some() || !t.files.is_empty() {
        Some(row_seal(conn, keys, t.id)?)
    } else {
        None
    };
    let shared = shared_data_column(t, seal.as_ref())?;
    let purge = t.purge;
    let sql = format!(
        "UPDATE sessions SET status = ?1, seq = ?2, updated_at = ?3, \
               decided_at = COALESCE(?4, decided_at), \
               user_id = COALESCE(?5, user_id), \
               issuer = COALESCE(?12, issuer), \
               is_consented = COALESCE(?6, is_consented), \
               consented_at = COALESCE(?7, consented_at), \
               shared_data = CASE WHEN ?8 THEN NULL ELSE COALESCE(?9, shared_data) END, \
               registration = CASE WHEN ?8 THEN NULL ELSE registration END, \
               binding_code = COALESCE(?13, binding_code), \
               binding_misses = COALESCE(?14, binding_misses), \
               decline_reason = COALESCE(?15, decline_reason) \
             WHERE id = ?10 AND seq = ?11 RETURNING {SESSION_COLUMNS}"
    );
    let committed = {
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![
            t.status.as_str(),
            seq.0 as i64,
            ms(t.at),
            t.decided_at.map(ms),
            t.bind.as_ref().map(|d| d.user_id.as_str()),
            t.consent.as_ref().map(|c| c.is_consented),
            t.consent.as_ref().map(|c| ms(c.consented_at)),
            purge,
            shared,
            &*id,
            t.from_seq.0 as i64,
            t.bind.as_ref().map(|d| d.issuer.as_str()),
            t.binding_code.map(|c| c.to_string()),
            t.binding_misses,
            t.reason.map(|r| r.as_str()),
        ])?;
        match rows.next()? {
            Some(row) => session_from_row(row, keys)?,
            // Another writer moved the session first (or it is gone).
            None => return Err(StoreError::Stale),
        }
    };
    conn.prepare_cached(
        "INSERT INTO session_events (session_id, seq, status, at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![&*id, seq.0 as i64, t.status.as_str(), ms(t.at)])?;
    if t.registers_user {
        conn.prepare_cached(
            "INSERT INTO users (owner, user_id, status, updated_at) \
             SELECT owner, user_id, 'PENDING', ?2 FROM sessions WHERE id = ?1 AND user_id IS NOT NULL \
             ON CONFLICT (owner, user_id) DO NOTHING",
        )?
        .execute(params![&*id, ms(t.at)])?;
    }
    super::files::apply(conn, seal.as_ref(), t, fx)?;
    if purge {
        fx.scrub = true;
        shred_key(conn, keys, t.id)?;
    }
    // Same transaction as the transition: an acknowledged transition has its event.
    super::outbox::enqueue(conn, t, fx)?;
    Ok(committed)
}

impl Store {
    /// Inserts a new session, honouring an idempotency key: a replay of the same body
    /// within 24 h gets the existing session with a fresh token in place of its last.
    pub async fn create_session(
        &self,
        new: NewSession,
        claim: Option<IdempotencyClaim>,
    ) -> Result<CreateOutcome, StoreError> {
        let keys = self.data_keys();
        self.write(move |conn, _fx| {
            let s = &new.record;
            if let Some(claim) = &claim {
                let seen: Option<(Vec<u8>, String, i64)> = conn
                    .prepare_cached(
                        "SELECT request_hash, session_id, created_at FROM idempotency_keys \
                         WHERE owner = ?1 AND key = ?2",
                    )?
                    .query_row(params![s.owner, claim.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                if let Some((hash, session_id, at)) = seen {
                    match key_seen(claim, &hash, &session_id, at, s.created_at)? {
                        KeySeen::Conflict => return Ok(CreateOutcome::Conflict),
                        KeySeen::Expired => {}
                        KeySeen::Replay(id) => {
                            let token = replay_token(id);
                            conn.prepare_cached("UPDATE sessions SET token_hash = ?1 WHERE id = ?2")?
                                .execute(params![&token.hash().0[..], session_id])?;
                            return load_session(conn, &keys, id)?
                                .map(|s| CreateOutcome::Replayed(Box::new(s), token))
                                .ok_or_else(|| StoreError::Corrupt("idempotency key without session".into()));
                        }
                    }
                }
                conn.prepare_cached(
                    "INSERT INTO idempotency_keys (owner, key, request_hash, session_id, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (owner, key) DO UPDATE SET \
                     request_hash = excluded.request_hash, session_id = excluded.session_id, \
                     created_at = excluded.created_at",
                )?
                .execute(params![s.owner, claim.key, &claim.request_hash[..], s.id.to_string(), ms(s.created_at)])?;
            }
            insert_session(conn, &keys, s)?;
            Ok(CreateOutcome::Created)
        })
        .await
    }

    /// Deletes up to `limit` idempotency keys whose window is over at `now` (the keys
    /// [`create_session`](Self::create_session) no longer honours); returns how many.
    /// Call again while it returns `limit`.
    pub async fn purge_idempotency_keys(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let cutoff = idempotency_cutoff(now);
        self.write(move |conn, _fx| {
            // No `DELETE … LIMIT` in a default SQLite build; the table has no rowid, so
            // the batch is chosen by its primary key.
            Ok(conn
                .prepare_cached(
                    "DELETE FROM idempotency_keys WHERE (owner, key) IN \
                     (SELECT owner, key FROM idempotency_keys WHERE created_at <= ?1 LIMIT ?2)",
                )?
                .execute(params![
                    ms(cutoff),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ])?)
        })
        .await
    }

    /// Commits a transition and answers the session as committed; `Stale` if the
    /// session's seq is no longer `from_seq`.
    pub async fn commit_transition(&self, t: TransitionWrite) -> Result<SessionRecord, StoreError> {
        let keys = self.data_keys();
        // Stamped: a transition's stages are what a push waits for (issue 28).
        self.write_then(move |conn, fx| apply_transition(conn, &keys, &t, fx), true)
            .await
    }

    /// Commits a change that is no transition (seq, status and events stay); answers the
    /// session as committed; `Stale` if the session moved, or the change was made.
    pub async fn commit_note(&self, w: NoteWrite) -> Result<SessionRecord, StoreError> {
        let keys = self.data_keys();
        self.write(move |conn, _fx| {
            let id = w.id.text();
            let seq = w.from_seq.0 as i64;
            let mut stmt;
            let mut rows = match &w.note {
                Note::BindingMiss { misses } => {
                    stmt = conn.prepare_cached(&format!(
                        "UPDATE sessions SET binding_misses = ?1 \
                         WHERE id = ?2 AND seq = ?3 AND binding_misses = ?1 - 1 \
                         RETURNING {SESSION_COLUMNS}"
                    ))?;
                    stmt.query(params![misses, &*id, seq])?
                }
                Note::ShownOn(on) => {
                    stmt = conn.prepare_cached(&format!(
                        "UPDATE sessions SET shown_browser = ?1, shown_os = ?2, shown_since = ?3 \
                         WHERE id = ?4 AND seq = ?5 AND shown_since IS NULL \
                         RETURNING {SESSION_COLUMNS}"
                    ))?;
                    stmt.query(params![on.browser, on.os, ms(on.since), &*id, seq])?
                }
            };
            match rows.next()? {
                Some(row) => session_from_row(row, &keys),
                None => Err(StoreError::Stale),
            }
        })
        .await
    }

    /// Commits several transitions in one transaction (the start-up expiry of what
    /// became overdue while the broker was down); answers the committed sessions.
    pub async fn commit_transitions(
        &self,
        writes: Vec<TransitionWrite>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let keys = self.data_keys();
        self.write(move |conn, fx| {
            writes
                .iter()
                .map(|t| apply_transition(conn, &keys, t, fx))
                .collect()
        })
        .await
    }

    /// Up to `limit` live sessions whose `expires_at` is at or before `now` (the
    /// partial index on live sessions' `expires_at` makes this cheap).
    pub async fn overdue_live(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<SessionId>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT id FROM sessions WHERE status IN {} AND expires_at <= ?1 LIMIT ?2",
                Status::live_sql()
            ))?;
            let rows = stmt.query_map(params![ms(now), limit as i64], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for id in rows {
                let id = id?;
                out.push(
                    SessionId::parse(&id)
                        .ok_or_else(|| StoreError::Corrupt(format!("session id {id}")))?,
                );
            }
            Ok(out)
        })
        .await
    }

    /// One session, whatever its status.
    pub async fn load_session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.count_session_read();
        let keys = self.data_keys();
        self.read(move |conn| load_session(conn, &keys, id)).await
    }

    /// Every session that is not terminal.
    pub async fn load_live_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let keys = self.data_keys();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE status IN {}",
                Status::live_sql()
            );
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(session_from_row(row, &keys)?);
            }
            Ok(out)
        })
        .await
    }

    /// The session with its shared data and files, for the decision.
    pub async fn load_decision(&self, id: SessionId) -> Result<Option<Decision>, StoreError> {
        let keys = self.data_keys();
        self.read(move |conn| {
            // One read transaction: the row, its data and its files as of one moment,
            // even if a retention purge commits meanwhile.
            let tx = conn.unchecked_transaction()?;
            let conn: &Connection = &tx;
            let Some(session) = load_session(conn, &keys, id)? else {
                return Ok(None);
            };
            let (shared, purged_at): (Option<String>, Option<i64>) = conn
                .prepare_cached("SELECT shared_data, purged_at FROM sessions WHERE id = ?1")?
                .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let shared = row_seal(conn, &keys, id)?
                .open_text(Field::SharedData, shared)
                .map_err(|e| sealed_error(id, e))?;
            let shared_data = shared
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(|_| StoreError::Corrupt("shared data".into()))?;
            Ok(Some(Decision {
                session,
                shared_data,
                files: super::files::list(conn, id)?,
                purged_at: opt_time(purged_at)?,
            }))
        })
        .await
    }

    /// The transitions of a session with `seq > after`, in order.
    pub async fn events_after(
        &self,
        id: SessionId,
        after: Seq,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, status, at FROM session_events WHERE session_id = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![id.to_string(), after.0 as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, status, at) = row?;
                out.push(SessionEvent {
                    seq: Seq(seq as u64),
                    status: status.parse().map_err(StoreError::Corrupt)?,
                    at: time(at)?,
                    // The log keeps no code: readers take it from the session.
                    binding_code: None,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Whether a presented token is some session's current token (to tell a foreign
    /// token, `403`, from a bad one, `401`). A token that names a session (`claims`) is
    /// checked against that session's row, by primary key; one of the earlier format
    /// against the hashes issued before tokens named their session.
    pub async fn token_in_use(
        &self,
        hash: TokenHash,
        claims: Option<SessionId>,
    ) -> Result<bool, StoreError> {
        self.count_token_lookup();
        self.read(move |conn| token_in_use(conn, hash, claims))
            .await
    }

    /// A user as this API key knows it.
    pub async fn user(
        &self,
        owner: String,
        user_id: UserId,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.read(move |conn| read_user(conn, &owner, &user_id))
            .await
    }

    /// Sets a user's status for this API key.
    pub async fn set_user_status(
        &self,
        owner: String,
        user_id: UserId,
        status: UserStatus,
        at: DateTime<Utc>,
    ) -> Result<UserRecord, StoreError> {
        self.write(move |conn, _| {
            conn.prepare_cached(
                "INSERT INTO users (owner, user_id, status, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (owner, user_id) DO UPDATE SET status = excluded.status, \
                 updated_at = excluded.updated_at",
            )?
            .execute(params![owner, user_id.as_str(), status.as_str(), ms(at)])?;
            read_user(conn, &owner, &user_id)?
                .ok_or_else(|| StoreError::Corrupt("user vanished".into()))
        })
        .await
    }
}

fn read_user(
    conn: &Connection,
    owner: &str,
    user_id: &UserId,
) -> Result<Option<UserRecord>, StoreError> {
    let row: Option<(String, i64)> = conn
        .prepare_cached("SELECT status, updated_at FROM users WHERE owner = ?1 AND user_id = ?2")?
        .query_row(params![owner, user_id.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    row.map(|(status, at)| {
        Ok(UserRecord {
            user_id: user_id.clone(),
            status: UserStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt("user status".into()))?,
            updated_at: time(at)?,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionToken;
    use crate::model::SessionRequest;
    use crate::store::StoreConfig;
    use crate::store_api::IDEMPOTENCY_WINDOW;
    use chrono::Duration;

    #[actix_rt::test]
    async fn a_token_is_known_by_the_session_it_names_and_by_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(dir.path().join("t.db"))).unwrap();
        let (record, token) = SessionRecord::open(
            "acme",
            SessionRequest::default(),
            Utc::now(),
            Duration::seconds(600),
        );
        let id = record.id;
        store
            .create_session(NewSession { record }, None)
            .await
            .unwrap();
        let claims = token.claimed_session();
        assert_eq!(claims, Some(id));
        assert!(store.token_in_use(token.hash(), claims).await.unwrap());
        // The same id with another random part; the right token naming another session;
        // a token of the earlier format that no session was ever given.
        let forged = SessionToken::generate(id);
        assert!(!store.token_in_use(forged.hash(), claims).await.unwrap());
        assert!(!store
            .token_in_use(token.hash(), Some(SessionId::new()))
            .await
            .unwrap());
        assert!(!store.token_in_use(token.hash(), None).await.unwrap());
    }

    #[actix_rt::test]
    async fn the_live_session_index_covers_exactly_the_live_statuses_the_queries_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(Store::open(&StoreConfig::new(&path)).unwrap());
        let conn = Connection::open(&path).unwrap();
        let partial: Vec<String> = conn
            .prepare(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql LIKE '%WHERE status IN%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!partial.is_empty(), "the migrations index live sessions");
        for sql in partial {
            // The migration's literal list must be the one `Status::live` makes, or the
            // planner could not use the index for the store's live-session queries.
            assert!(
                sql.contains(&format!("status IN {}", Status::live_sql())),
                "{sql}"
            );
        }
        assert_eq!(Status::live_sql(), "('initialized', 'retrieved')");
    }

    async fn create_with_key(store: &Store, key: &str, at: DateTime<Utc>) {
        let record = SessionRecord::open(
            "acme",
            SessionRequest {
                scopes: vec!["full_name".into()],
                ..SessionRequest::default()
            },
            at,
            Duration::seconds(600),
        )
        .0;
        let claim = IdempotencyClaim {
            key: key.into(),
            request_hash: [0; 32],
        };
        let outcome = store
            .create_session(NewSession { record }, Some(claim))
            .await
            .unwrap();
        assert!(matches!(outcome, CreateOutcome::Created));
    }

    #[actix_rt::test]
    async fn expired_idempotency_keys_are_deleted_in_batches_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(dir.path().join("t.db"))).unwrap();
        let t0 = Utc::now();
        for i in 0..5 {
            create_with_key(&store, &format!("old-{i}"), t0).await;
        }
        create_with_key(&store, "young", t0 + Duration::milliseconds(1)).await;

        // One millisecond short of the window, nothing is over.
        let now = t0 + IDEMPOTENCY_WINDOW - Duration::milliseconds(1);
        assert_eq!(store.purge_idempotency_keys(now, 2).await.unwrap(), 0);
        // At the window the old keys are over (create_session no longer honours them),
        // the one a millisecond younger is not.
        let now = t0 + IDEMPOTENCY_WINDOW;
        let mut batches = Vec::new();
        loop {
            let n = store.purge_idempotency_keys(now, 2).await.unwrap();
            batches.push(n);
            if n < 2 {
                break;
            }
        }
        assert_eq!(batches, [2, 2, 1]);
        let left: Vec<String> = store
            .read(|conn| {
                Ok(conn
                    .prepare("SELECT key FROM idempotency_keys")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(left, ["young"]);
    }
}

//! Sessions as both engines store them: the row's columns and their decoding into a
//! [`SessionRecord`] (the person's fields opened, SPEC §2 "At rest"), the create's
//! types, and the idempotency rule of SPEC §3. The engines run the SQL; what a row
//! means and what a key seen before decides is written here, once.

use chrono::{DateTime, Duration, Utc};
use serde_json::value::RawValue;

use super::{opt_time, sealed_error, stored_key, time, StoreError};
use crate::at_rest::{DataKeys, Field};
use crate::ids::{DeviceId, Seq, SessionId, SessionToken, TokenHash, UserId};
use crate::model::{Consent, SessionRecord, SessionRequest};

/// How long an idempotency key holds its session (SPEC §3).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::hours(24);

/// A session to insert.
#[derive(Debug)]
pub struct NewSession {
    /// The row as it starts: `initialized`, seq 1.
    pub record: SessionRecord,
}

/// An `Idempotency-Key` presented with a create.
#[derive(Clone, Debug)]
pub struct IdempotencyClaim {
    /// The key as sent.
    pub key: String,
    /// SHA-256 of the canonical request body.
    pub request_hash: [u8; 32],
}

/// What a create did.
#[derive(Debug)]
pub enum CreateOutcome {
    /// A new session was inserted.
    Created,
    /// The key was seen with the same body: that session, with its token replaced by
    /// the one given here (a token names its session, so the replay's is minted for the
    /// existing session, not for the record that was not inserted). Boxed: a record is
    /// large next to the other variants.
    Replayed(Box<SessionRecord>, SessionToken),
    /// The key was seen with another body.
    Conflict,
}

/// The columns [`session_from_row`] reads, in order, in both engines' `sessions` table
/// (an engine may select more after them).
pub const SESSION_COLUMNS: &str = "id, owner, token_hash, status, seq, scopes, vendor_data, \
     external_reference_id, registration, redirect_url, callback_url, created_at, updated_at, \
     expires_at, decided_at, user_id, is_consented, consented_at, issuer, data_key_id, data_key, \
     binding, binding_code, binding_misses, decline_reason, shown_browser, shown_os, shown_since";

/// [`SESSION_COLUMNS`] qualified by a table alias, for joins.
pub fn session_columns_of(alias: &str) -> String {
    SESSION_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Column `i` of an engine's row as a `T`: each engine implements it over its own row
/// type with its driver's conversions.
pub trait Column<T> {
    /// Column `i`; a type mismatch or a NULL where none may be is the engine's error.
    fn column(&self, i: usize) -> Result<T, StoreError>;
}

/// A row of either engine, read by column index: all [`session_from_row`] needs.
pub trait SqlRow:
    Column<String>
    + Column<Option<String>>
    + Column<i64>
    + Column<Option<i64>>
    + Column<Option<bool>>
    + Column<Vec<u8>>
    + Column<Option<Vec<u8>>>
{
    /// Column `i` as whatever the caller binds it to.
    fn col<T>(&self, i: usize) -> Result<T, StoreError>
    where
        Self: Column<T>,
    {
        self.column(i)
    }
}

impl<R> SqlRow for R where
    R: Column<String>
        + Column<Option<String>>
        + Column<i64>
        + Column<Option<i64>>
        + Column<Option<bool>>
        + Column<Vec<u8>>
        + Column<Option<Vec<u8>>>
{
}

/// The binding and `shown_on` columns of a session row, as both engines store them
/// (`binding, binding_code, binding_misses, decline_reason, shown_browser, shown_os,
/// shown_since`); each engine reads them into this and [`BindingColumns::apply`]s it.
pub struct BindingColumns {
    pub binding: String,
    pub code: Option<String>,
    pub misses: i64,
    pub reason: Option<String>,
    pub browser: Option<String>,
    pub os: Option<String>,
    pub since: Option<i64>,
}

impl BindingColumns {
    /// Sets what these columns say on `record`.
    pub fn apply(self, record: &mut crate::model::SessionRecord) -> Result<(), StoreError> {
        use crate::model::{Binding, BindingCode, ShownOn};
        let corrupt = |what: &str| StoreError::Corrupt(format!("session {}: {what}", record.id));
        let binding = Binding::parse(&self.binding).ok_or_else(|| corrupt("binding"))?;
        let code = self
            .code
            .map(|c| BindingCode::parse(&c).ok_or_else(|| corrupt("binding code")))
            .transpose()?;
        let misses = u8::try_from(self.misses).map_err(|_| corrupt("binding misses"))?;
        let reason = self
            .reason
            .map(|r| r.parse().map_err(|_| corrupt("decline reason")))
            .transpose()?;
        let shown_on = match (self.browser, self.os, self.since) {
            (Some(browser), Some(os), Some(since)) => Some(Box::new(ShownOn {
                browser,
                os,
                since: time(since)?,
            })),
            (None, None, None) => None,
            _ => return Err(corrupt("shown_on in part")),
        };
        std::sync::Arc::make_mut(&mut record.request).binding = binding;
        record.binding_code = code;
        record.binding_misses = misses;
        record.reason = reason;
        record.shown_on = shown_on;
        Ok(())
    }
}

/// What a key seen before decides for a create that presents it (SPEC §3).
#[derive(Debug, PartialEq, Eq)]
pub enum KeySeen {
    /// Within its window with another body: `409`, nothing created.
    Conflict,
    /// Within its window with the same body: that session again, with a new token.
    Replay(SessionId),
    /// Its window is over: the key starts again, with the session being created.
    Expired,
}

/// The idempotency rule: a key seen at `seen_at` with `seen_hash` for session
/// `seen_session`, presented again by `claim` for a create at `now`.
pub fn key_seen(
    claim: &IdempotencyClaim,
    seen_hash: &[u8],
    seen_session: &str,
    seen_at: i64,
    now: DateTime<Utc>,
) -> Result<KeySeen, StoreError> {
    if time(seen_at)? + IDEMPOTENCY_WINDOW <= now {
        return Ok(KeySeen::Expired);
    }
    if seen_hash != claim.request_hash {
        return Ok(KeySeen::Conflict);
    }
    SessionId::parse(seen_session)
        .map(KeySeen::Replay)
        .ok_or_else(|| StoreError::Corrupt("idempotency session id".into()))
}

/// Before when an idempotency key's window is over at `now`: a key is honoured while
/// `created_at + window > now`, so it is over once `created_at <= ` this.
pub fn idempotency_cutoff(now: DateTime<Utc>) -> DateTime<Utc> {
    now.checked_sub_signed(IDEMPOTENCY_WINDOW)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The token of a replayed create: a token names its session, so it is minted for the
/// session the key holds (not for the record that was not inserted).
pub fn replay_token(id: SessionId) -> SessionToken {
    SessionToken::generate(id)
}

pub fn session_from_row(row: &impl SqlRow, keys: &DataKeys) -> Result<SessionRecord, StoreError> {
    let id: String = row.col(0)?;
    let token: Vec<u8> = row.col(2)?;
    let status: String = row.col(3)?;
    let seq: i64 = row.col(4)?;
    let scopes: String = row.col(5)?;
    let registration: Option<String> = row.col(8)?;
    let user_id: Option<String> = row.col(15)?;
    let is_consented: Option<bool> = row.col(16)?;
    let consented_at: Option<i64> = row.col(17)?;
    let issuer: Option<String> = row.col(18)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("session {id}: {what}"));
    let binding = BindingColumns {
        binding: row.col(21)?,
        code: row.col(22)?,
        misses: row.col(23)?,
        reason: row.col(24)?,
        browser: row.col(25)?,
        os: row.col(26)?,
        since: row.col(27)?,
    };
    let sid = SessionId::parse(&id).ok_or_else(|| corrupt("id"))?;
    let seal = keys
        .row(sid, stored_key(row.col(19)?, row.col(20)?))
        .map_err(|e| sealed_error(sid, e))?;
    let open = |field, value| {
        seal.open_text(field, value)
            .map_err(|e| sealed_error(sid, e))
    };
    let registration = open(Field::Registration, registration)?;
    let mut record = SessionRecord {
        id: sid,
        owner: row.col(1)?,
        token_hash: TokenHash::from_slice(&token).ok_or_else(|| corrupt("token hash"))?,
        status: status.parse().map_err(|_| corrupt("status"))?,
        seq: Seq(u64::try_from(seq).map_err(|_| corrupt("seq"))?),
        request: std::sync::Arc::new(SessionRequest {
            scopes: serde_json::from_str(&scopes).map_err(|_| corrupt("scopes"))?,
            vendor_data: open(Field::VendorData, row.col(6)?)?,
            external_reference_id: open(Field::ExternalReferenceId, row.col(7)?)?,
            registration: registration
                .map(RawValue::from_string)
                .transpose()
                .map_err(|_| corrupt("registration"))?,
            redirect_url: row.col(9)?,
            callback_url: row.col(10)?,
            binding: Default::default(),
        }),
        created_at: time(row.col(11)?)?,
        updated_at: time(row.col(12)?)?,
        expires_at: time(row.col(13)?)?,
        decided_at: opt_time(row.col(14)?)?,
        device: match (issuer, user_id) {
            (Some(issuer), Some(user_id)) => Some(DeviceId::new(
                issuer,
                UserId::parse(&user_id).ok_or_else(|| corrupt("user id"))?,
            )),
            (None, None) => None,
            _ => return Err(corrupt("a device bound without its issuer, or the reverse")),
        },
        consent: match (is_consented, consented_at) {
            (Some(is_consented), Some(at)) => Some(Consent {
                is_consented,
                consented_at: time(at)?,
            }),
            _ => None,
        },
        binding_code: None,
        binding_misses: 0,
        reason: None,
        shown_on: None,
    };
    binding.apply(&mut record)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(byte: u8) -> IdempotencyClaim {
        IdempotencyClaim {
            key: "k".into(),
            request_hash: [byte; 32],
        }
    }

    #[test]
    fn a_key_seen_before_replays_conflicts_or_starts_again_by_its_window() {
        let at = Utc::now();
        let id = SessionId::new();
        let seen = |hash: u8, after: Duration| {
            key_seen(
                &claim(1),
                &[hash; 32],
                &id.to_string(),
                at.timestamp_millis(),
                at + after,
            )
            .unwrap()
        };
        assert_eq!(seen(1, Duration::hours(1)), KeySeen::Replay(id));
        assert_eq!(seen(2, Duration::hours(1)), KeySeen::Conflict);
        assert_eq!(
            seen(2, Duration::hours(23) + Duration::minutes(59)),
            KeySeen::Conflict
        );
        assert_eq!(seen(1, Duration::hours(24)), KeySeen::Expired);
        assert_eq!(seen(2, Duration::hours(25)), KeySeen::Expired);
        assert!(key_seen(&claim(1), &[1; 32], "not an id", at.timestamp_millis(), at).is_err());
    }
}

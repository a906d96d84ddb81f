//! The session as the store keeps it and the actor holds it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{DeviceId, Seq, SessionId, SessionToken, TokenHash, UserId};
use crate::status::{Reason, Status};

/// The scopes satisfied by an uploaded file rather than a `shared_data` value.
pub const FILE_SCOPES: [&str; 3] = ["selfie", "document_front", "document_back"];

/// Whether a scope is satisfied by an upload.
pub fn is_file_scope(scope: &str) -> bool {
    FILE_SCOPES.contains(&scope)
}

/// Whether a scope name matches `^[a-z][a-z0-9_]{0,63}$`.
pub fn is_valid_scope(scope: &str) -> bool {
    let mut bytes = scope.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && scope.len() <= 64
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// The person's consent, once they decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// `true` on approve, `false` on deny.
    pub is_consented: bool,
    /// When they decided.
    pub consented_at: DateTime<Utc>,
}

/// Whether the person must carry a code from the screen to the phone (SPEC §2,
/// binding the phone to the screen); `"binding"` at creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// No binding: approve as before.
    #[default]
    None,
    /// A two-digit code, drawn at `retrieved`, shown to the client only; approve must
    /// carry it.
    Code,
}

impl Binding {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::None => "none",
            Binding::Code => "code",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Binding::None, Binding::Code]
            .into_iter()
            .find(|b| b.as_str() == s)
    }
}

/// The two digits (`10`..=`99`) a session with [`Binding::Code`] shows its client
/// and expects back on approve.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BindingCode(u8);

impl BindingCode {
    /// A fresh code from the operating system's CSPRNG (by way of `rand`'s thread
    /// generator, a CSPRNG seeded from it), uniform over `10..=99`.
    pub fn draw() -> Self {
        use rand::Rng as _;
        Self(rand::rng().random_range(10..=99))
    }

    /// Two ASCII digits, `10` to `99`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 2 || !b.iter().all(u8::is_ascii_digit) || b[0] == b'0' {
            return None;
        }
        Some(Self((b[0] - b'0') * 10 + (b[1] - b'0')))
    }
}

impl std::fmt::Display for BindingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

// Not the digits: the code is the client's to show, and Debug output ends up in logs.
impl std::fmt::Debug for BindingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindingCode(..)")
    }
}

impl From<BindingCode> for String {
    fn from(c: BindingCode) -> Self {
        c.to_string()
    }
}

impl TryFrom<String> for BindingCode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s).ok_or_else(|| "a binding code is two digits, 10 to 99".to_owned())
    }
}

/// Where a session is shown (SPEC §2, `shown_on`): the browser family and OS of the
/// first client that subscribed or fetched the QR, read from its User-Agent, and when.
/// A hint for the person, not a proof: a User-Agent can say anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShownOn {
    /// The browser family (`Chrome`, `Firefox`, …).
    pub browser: String,
    /// The operating system (`Linux`, `Windows 10`, …).
    pub os: String,
    /// When that client first asked.
    pub since: DateTime<Utc>,
}

/// Longest `browser` or `os` name kept in [`ShownOn`], in bytes.
pub const MAX_SHOWN_ON_NAME: usize = 64;

/// What the backend asked for at creation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The scopes asked for, distinct, in the order given.
    pub scopes: Vec<String>,
    /// Opaque to the broker, echoed back.
    pub vendor_data: Option<String>,
    /// Opaque to the broker, echoed back.
    pub external_reference_id: Option<String>,
    /// Prefill shown to the device: personal data, purged when the session ends undecided or denied.
    pub registration: Option<Box<RawValue>>,
    /// Where the device page sends the person afterwards.
    pub redirect_url: Option<String>,
    /// Where webhooks go for this session.
    pub callback_url: Option<String>,
    /// Whether approve needs the binding code (SPEC §2).
    #[serde(default)]
    pub binding: Binding,
}

/// A session as the actor owns it: everything but the shared data and files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id.
    pub id: SessionId,
    /// The name of the API key that created it; no other key can see it.
    pub owner: String,
    /// The hash of the current session token.
    pub token_hash: TokenHash,
    /// Current status.
    pub status: Status,
    /// Current seq.
    pub seq: Seq,
    /// What the backend asked for; shared so that reads clone a pointer, not the prefill.
    pub request: std::sync::Arc<SessionRequest>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Time of the last transition (creation time before any).
    pub updated_at: DateTime<Utc>,
    /// Fixed at creation.
    pub expires_at: DateTime<Utc>,
    /// Time of the terminal transition.
    pub decided_at: Option<DateTime<Utc>>,
    /// The device bound by the first `information`: its issuer and `sub`.
    pub device: Option<DeviceId>,
    /// The person's decision, if they made one.
    pub consent: Option<Consent>,
    /// The binding code, drawn at `retrieved` for a session with [`Binding::Code`];
    /// the client's only.
    #[serde(default)]
    pub binding_code: Option<BindingCode>,
    /// Wrong binding codes tried so far (persisted: it survives restarts and
    /// takeovers).
    #[serde(default)]
    pub binding_misses: u8,
    /// Why a `declined` session ended (the decision's `reason`).
    #[serde(default)]
    pub reason: Option<Reason>,
    /// Where the session is shown, once a client subscribed or fetched the QR. Boxed:
    /// records travel in enums (answers, lookups) that should stay small.
    #[serde(default)]
    pub shown_on: Option<Box<ShownOn>>,
}

impl SessionRecord {
    /// A new session as the backend opens it: `initialized`, seq 1, expiring `ttl` from
    /// `now`; with its session token, which names it (shown once, never stored).
    pub fn open(
        owner: &str,
        request: SessionRequest,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> (Self, SessionToken) {
        let id = SessionId::new();
        let token = SessionToken::generate(id);
        let record = Self {
            id,
            owner: owner.to_owned(),
            token_hash: token.hash(),
            status: Status::Initialized,
            seq: Seq::FIRST,
            request: std::sync::Arc::new(request),
            created_at: now,
            updated_at: now,
            expires_at: now + ttl,
            decided_at: None,
            device: None,
            consent: None,
            binding_code: None,
            binding_misses: 0,
            reason: None,
            shown_on: None,
        };
        (record, token)
    }
}

/// What an answer to another node may show of a session (SPEC §7: a forwarded answer
/// carries only what the request it answers returns, never the stored record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireView {
    /// `GET /v1/sessions/{id}` and `DELETE`: the session without secrets or user data.
    Session,
    /// The client's `GET …/status` (and the checks of the QR and the demo).
    Status,
    /// The device's `information`: the scopes, the requester and the prefill.
    Information,
    /// The device's `update`: the status and where the person goes next.
    Decided,
}

impl SessionRecord {
    /// This session as an answer to another node may show it for `view`: never the
    /// token's hash, the callback URL or the bound device, and the person's prefill
    /// only to `information`. What is left out is emptied, not invented: the fields are
    /// there so the record keeps its type, and nothing reads them on the other side.
    pub fn for_wire(&self, view: WireView) -> SessionRecord {
        let r = &self.request;
        let backend = matches!(view, WireView::Session);
        let request = SessionRequest {
            scopes: match view {
                WireView::Session | WireView::Information => r.scopes.clone(),
                WireView::Status | WireView::Decided => Vec::new(),
            },
            vendor_data: r.vendor_data.clone().filter(|_| backend),
            external_reference_id: r.external_reference_id.clone().filter(|_| backend),
            registration: r
                .registration
                .clone()
                .filter(|_| view == WireView::Information),
            redirect_url: r
                .redirect_url
                .clone()
                .filter(|_| matches!(view, WireView::Session | WireView::Decided)),
            callback_url: None,
            binding: r.binding,
        };
        SessionRecord {
            id: self.id,
            owner: self.owner.clone(),
            token_hash: crate::ids::TokenHash([0; 32]),
            status: self.status,
            seq: self.seq,
            request: std::sync::Arc::new(request),
            created_at: self.created_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            decided_at: self.decided_at,
            device: None,
            consent: self.consent.clone().filter(|_| backend),
            // The code goes to the client only, never to the device (SPEC §2).
            binding_code: self.binding_code.filter(|_| view == WireView::Status),
            binding_misses: self.binding_misses,
            reason: self.reason,
            shown_on: self
                .shown_on
                .clone()
                .filter(|_| matches!(view, WireView::Information | WireView::Status)),
        }
    }
}

/// A committed transition, as the events log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    /// The seq the transition produced.
    pub seq: Seq,
    /// The status it moved to.
    pub status: Status,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The binding code, on the `retrieved` transition of a session with a binding:
    /// its frame carries it to the client (SPEC §2).
    pub binding_code: Option<BindingCode>,
}

/// Metadata of a stored file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileMeta {
    /// The file id.
    pub file_id: crate::ids::FileId,
    /// Which file scope it satisfies.
    pub kind: String,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
}

/// The outcome of a terminal session as the backend reads it.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The session at its terminal transition.
    pub session: SessionRecord,
    /// The values shared on approve; `None` otherwise or once purged.
    pub shared_data: Option<serde_json::Map<String, serde_json::Value>>,
    /// The files stored on approve.
    pub files: Vec<FileMeta>,
    /// When a confirmed session's data was purged by retention, if it was.
    pub purged_at: Option<DateTime<Utc>>,
}

/// A user the backend knows, with the status it set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// The user id.
    pub user_id: UserId,
    /// `PENDING`, `CREATED` or `BLOCKED`.
    pub status: UserStatus,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The status the backend keeps for a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserStatus {
    /// Bound by a confirmed session, not yet set by the backend.
    Pending,
    /// Set by the backend.
    Created,
    /// Set by the backend.
    Blocked,
}

impl UserStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Pending => "PENDING",
            UserStatus::Created => "CREATED",
            UserStatus::Blocked => "BLOCKED",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            UserStatus::Pending,
            UserStatus::Created,
            UserStatus::Blocked,
        ]
        .into_iter()
        .find(|u| u.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_follow_the_pattern() {
        assert!(is_valid_scope("full_name"));
        assert!(is_valid_scope("a"));
        assert!(is_valid_scope(&format!("a{}", "b".repeat(63))));
        assert!(!is_valid_scope(&format!("a{}", "b".repeat(64))));
        assert!(!is_valid_scope("1abc"));
        assert!(!is_valid_scope("_abc"));
        assert!(!is_valid_scope("Full"));
        assert!(!is_valid_scope(""));
        assert!(!is_valid_scope("a-b"));
        assert!(is_file_scope("selfie") && !is_file_scope("full_name"));
    }
}

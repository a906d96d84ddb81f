//! Newtypes for the identifiers and counters that travel between the parts of the broker.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The id of a verification session: a UUID, shown to every party.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A fresh, time-ordered session id.
    pub fn new() -> Self {
        // Time-ordered (UUIDv7: 48 bits of milliseconds, 74 random bits): new sessions
        // append to the primary-key B-tree instead of dirtying a random page each, and
        // the id stays unguessable (it is not a credential either: the token is).
        Self(Uuid::now_v7())
    }

    /// Parses the textual form; anything but a UUID is refused.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }

    /// The textual form (hyphenated, lower case), on the stack: for the paths every
    /// create takes (the store's binds, the response), where `to_string` would
    /// allocate a `String` through the formatting machinery.
    pub fn text(&self) -> IdText {
        let mut buf = [0; uuid::fmt::Hyphenated::LENGTH];
        self.0.hyphenated().encode_lower(&mut buf);
        IdText(buf)
    }
}

/// A [`SessionId`]'s textual form, without an allocation ([`SessionId::text`]).
#[derive(Clone, Copy)]
pub struct IdText([u8; uuid::fmt::Hyphenated::LENGTH]);

impl std::ops::Deref for IdText {
    type Target = str;

    fn deref(&self) -> &str {
        // `encode_lower` writes hex digits and hyphens only, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for IdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl Serialize for IdText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// The id of an uploaded file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileId(Uuid);

impl FileId {
    /// A fresh random file id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// Parses the textual form; anything but a UUID is refused.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }
}

impl Default for FileId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The per-session sequence number: 1 at creation, +1 per transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq a session is created with.
    pub const FIRST: Seq = Seq(1);

    /// The seq after one more transition.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user id (a device JWT's `sub`): 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Longest user id accepted.
    pub const MAX_LEN: usize = 128;

    /// Validates and wraps a user id.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:_@-".contains(&b));
        ok.then(|| Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A device as its JWT names it: the trusted issuer (`iss`) and the user id it vouches
/// for (`sub`). Sessions bind and compare the pair, so the same `sub` from another
/// issuer is another device (SPEC §2).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceId {
    /// The issuer: one of the configured `--issuer` names.
    pub issuer: String,
    /// The user id.
    pub user_id: UserId,
}

impl DeviceId {
    /// The device `user_id` of `issuer`.
    pub fn new(issuer: impl Into<String>, user_id: UserId) -> Self {
        Self {
            issuer: issuer.into(),
            user_id,
        }
    }
}

/// A session token as handed to the client once: URL-safe base64 (64 characters) of
/// the session's id (16 bytes) followed by 256 random bits.
///
/// It is never stored; only its [`TokenHash`] is. The id inside lets the broker tell a
/// token of another session (`403`) from a made-up one (`401`) by that session's row,
/// so the store needs no index over token hashes, a random-keyed B-tree that every
/// create would otherwise dirty a page of. The id is no secret (it is in every URL); the
/// random part is the credential. Tokens issued before this format (43 characters, the
/// random part alone) still work: their hashes are in the store as they were.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

/// Bytes of a session token: the session id, then the random part.
const TOKEN_ID_BYTES: usize = 16;
const TOKEN_RANDOM_BYTES: usize = 32;
/// Characters of a session token (URL-safe base64 of its 48 bytes, no padding).
const TOKEN_CHARS: usize = (TOKEN_ID_BYTES + TOKEN_RANDOM_BYTES) / 3 * 4;

impl SessionToken {
    /// A fresh token for the session `id`.
    pub fn generate(id: SessionId) -> Self {
        use base64::Engine as _;
        let mut bytes = [0u8; TOKEN_ID_BYTES + TOKEN_RANDOM_BYTES];
        bytes[..TOKEN_ID_BYTES].copy_from_slice(id.0.as_bytes());
        rand::fill(&mut bytes[TOKEN_ID_BYTES..]);
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The session a token of this format names (unchecked: only the hash proves it is
    /// that session's); `None` for anything else, tokens of the earlier format included.
    pub fn claimed_session(&self) -> Option<SessionId> {
        use base64::Engine as _;
        if self.0.len() != TOKEN_CHARS {
            return None;
        }
        let mut bytes = [0u8; TOKEN_ID_BYTES + TOKEN_RANDOM_BYTES];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_slice(self.0.as_bytes(), &mut bytes)
            .ok()?;
        (n == bytes.len()).then(|| {
            let mut id = [0u8; TOKEN_ID_BYTES];
            id.copy_from_slice(&bytes[..TOKEN_ID_BYTES]);
            SessionId(Uuid::from_bytes(id))
        })
    }

    /// Wraps a token presented by a caller (unchecked: it is only ever hashed).
    pub fn presented(s: &str) -> Self {
        Self(s.to_owned())
    }

    /// The token as text, to be shown to the creator once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 of the token, the only form that is stored or compared.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

/// 256 random bits in URL-safe base64 (43 characters): a secret made at start, such as
/// the demo's own API key.
pub fn random_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// The SHA-256 of a [`SessionToken`]; compared in constant time.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Constant-time equality, so the comparison leaks nothing about where two hashes differ.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Rebuilds a hash read from the store.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_accept_the_documented_alphabet_only() {
        assert!(UserId::parse("alice.B_9:x@y-z").is_some());
        assert!(UserId::parse(&"a".repeat(128)).is_some());
        assert!(UserId::parse(&"a".repeat(129)).is_none());
        assert!(UserId::parse("").is_none());
        assert!(UserId::parse("a b").is_none());
        assert!(UserId::parse("é").is_none());
        assert!(UserId::parse("a/b").is_none());
    }

    #[test]
    fn tokens_are_random_and_only_their_hashes_match() {
        let id = SessionId::new();
        let a = SessionToken::generate(id);
        let b = SessionToken::generate(id);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(
            a.expose().len(),
            64,
            "16 bytes of id and 32 random, in base64"
        );
        assert!(a
            .expose()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert!(a
            .hash()
            .matches(&SessionToken::presented(a.expose()).hash()));
        assert!(!a.hash().matches(&b.hash()));
        assert_eq!(format!("{a:?}"), "SessionToken(<redacted>)");
    }

    #[test]
    fn a_token_names_its_session_and_nothing_else_does() {
        let id = SessionId::new();
        let token = SessionToken::generate(id);
        assert_eq!(token.claimed_session(), Some(id));
        assert_eq!(
            SessionToken::presented(token.expose()).claimed_session(),
            Some(id)
        );
        // The earlier format (the random part alone), other lengths, other alphabets.
        let legacy = random_secret();
        assert_eq!(legacy.len(), 43);
        assert_eq!(SessionToken::presented(&legacy).claimed_session(), None);
        assert_eq!(SessionToken::presented("").claimed_session(), None);
        assert_eq!(
            SessionToken::presented(&token.expose()[..63]).claimed_session(),
            None
        );
        let mut bad = token.expose().to_owned();
        bad.replace_range(10..11, "+");
        assert_eq!(SessionToken::presented(&bad).claimed_session(), None);
        assert_eq!(
            SessionToken::presented(&"é".repeat(32)).claimed_session(),
            None
        );
    }

    #[test]
    fn session_ids_parse_only_uuids() {
        let id = SessionId::new();
        assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        assert_eq!(SessionId::parse("not-a-uuid"), None);
    }

    #[test]
    fn session_id_text_is_the_hyphenated_lower_case_uuid() {
        let id = SessionId::parse("0192F1C4-7A2B-7C3D-8E4F-A0B1C2D3E4F5").unwrap();
        assert_eq!(&*id.text(), "0192f1c4-7a2b-7c3d-8e4f-a0b1c2d3e4f5");
        assert_eq!(id.to_string(), "0192f1c4-7a2b-7c3d-8e4f-a0b1c2d3e4f5");
        assert_eq!(id.text().to_string(), id.to_string());
    }
}

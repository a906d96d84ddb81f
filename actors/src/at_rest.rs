//! The person's data sealed at rest (SPEC §2 "At rest", §6 `--data-key`): envelope
//! encryption shared by both engines, so that neither `store/` nor `pg/` holds any
//! cryptography; they move the opaque values this module makes.
//!
//! Layout:
//! - [`DataKeys`]: the operator's keys (`--data-key ID=KEY`): the first seals, every one
//!   opens. Without any, nothing is sealed and the broker stores as before.
//! - [`DataKey`]: one session's own random key, sealed by an operator key into a
//!   [`SealedKey`] that is stored with the operator key's id (never its bytes).
//! - [`Field`]: which field a value belongs to; with the session id it is the associated
//!   data, so a sealed value opens only in the session and field it was sealed for.
//! - [`RowSeal`]: what the stores call: seals a new session's fields, opens a row's, and
//!   gives a purged session a fresh key for what stays (its references).
//!
//! Every value is sealed with XChaCha20-Poly1305 (the crate the cluster messages use,
//! [`crate::seal`]) under a fresh random 24-byte nonce. Layout of a sealed value:
//! `version (1) · nonce (24) · ciphertext · tag (16)`; text columns hold it in base64.
//! A row with a data key has all its person fields sealed; a row without one (written
//! while no `--data-key` was given) has them in clear, and is read as it is.
//!
//! Keys are wiped from memory when dropped ([`Zeroizing`]).

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::ids::{FileId, SessionId};

const VERSION: u8 = 1;
const NONCE: usize = 24;
const TAG: usize = 16;
/// Longest key id: it is a label an operator types (`k1`, `2026-11`).
const MAX_KEY_ID: usize = 64;

/// Why a sealed value or key could not be opened; the row is then unreadable, never
/// read as garbage.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AtRestError {
    /// The session's data key is sealed by an operator key this process was not given.
    #[error("its data key is sealed by data key `{0}`, which this broker was not given")]
    UnknownKey(String),
    /// The value or the key did not open: a changed byte, or moved from another field
    /// or session.
    #[error("the sealed {0} does not open (changed or moved)")]
    Unopened(String),
}

/// One operator key as given: an id and 32 random bytes, wiped when dropped.
#[derive(Clone)]
pub struct OperatorKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for OperatorKey {
    // Never the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OperatorKey({})", self.id)
    }
}

impl OperatorKey {
    /// Reads `ID=KEY`, KEY being 32 random bytes in base64.
    pub fn parse(pair: &str) -> Result<OperatorKey, String> {
        let (id, key) = pair
            .split_once('=')
            .ok_or_else(|| "a data key is ID=KEY (KEY: 32 random bytes in base64)".to_owned())?;
        let id = id.trim();
        if id.is_empty()
            || id.len() > MAX_KEY_ID
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(format!(
                "a data key's id is 1 to {MAX_KEY_ID} characters of A-Z a-z 0-9 - _ . :"
            ));
        }
        let text = key.trim();
        let e = base64::engine::general_purpose::STANDARD;
        let bytes = Zeroizing::new(
            e.decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .map_err(|_| format!("data key `{id}`: KEY is 32 random bytes in base64"))?,
        );
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "data key `{id}`: KEY is 32 random bytes in base64; this one is {} bytes",
                bytes.len()
            )
        })?;
        Ok(OperatorKey {
            id: id.to_owned(),
            key: Zeroizing::new(key),
        })
    }

    /// A key from its parts (tests, benches).
    pub fn from_bytes(id: &str, key: [u8; 32]) -> OperatorKey {
        OperatorKey {
            id: id.to_owned(),
            key: Zeroizing::new(key),
        }
    }

    /// The id the operator gave it; stored beside what it seals.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The fields sealed under a session's data key; each is its own associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `registration`.
    Registration,
    /// `vendor_data`.
    VendorData,
    /// `external_reference_id`.
    ExternalReferenceId,
    /// The values shared on approve.
    SharedData,
    /// An uploaded file's bytes.
    File(FileId),
}

impl Field {
    fn label(self) -> String {
        match self {
            Field::Registration => "registration".into(),
            Field::VendorData => "vendor_data".into(),
            Field::ExternalReferenceId => "external_reference_id".into(),
            Field::SharedData => "shared_data".into(),
            Field::File(id) => format!("file {id}"),
        }
    }
}

/// Associated data: what a sealed value is bound to.
fn aad(session: SessionId, what: &str) -> Vec<u8> {
    format!("idv-broker at rest v1\0{session}\0{what}").into_bytes()
}

fn seal_with(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE];
    rand::rng().fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(1 + NONCE + plain.len() + TAG);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    // Sealing in memory under a 32-byte key cannot fail (only a plaintext past
    // the AEAD's ~256 GiB limit would); an empty ciphertext would never open anyway.
    if let Ok(ct) = cipher.encrypt(<&XNonce>::from(&nonce), Payload { msg: plain, aad }) {
        out.extend_from_slice(&ct);
    }
    out
}

fn open_with(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < 1 + NONCE + TAG || sealed[0] != VERSION {
        return None;
    }
    let nonce: [u8; NONCE] = sealed[1..1 + NONCE].try_into().ok()?;
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            <&XNonce>::from(&nonce),
            Payload {
                msg: &sealed[1 + NONCE..],
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// One session's data key; wiped when dropped.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// Seals `plain` as `field` of `session`.
    pub fn seal(&self, session: SessionId, field: Field, plain: &[u8]) -> Vec<u8> {
        seal_with(&self.0, &aad(session, &field.label()), plain)
    }

    /// Opens what [`seal`](Self::seal) made for the same session and field.
    pub fn open(
        &self,
        session: SessionId,
        field: Field,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AtRestError> {
        open_with(&self.0, &aad(session, &field.label()), sealed)
            .ok_or_else(|| AtRestError::Unopened(field.label()))
    }

    /// [`seal`](Self::seal) for a text column: base64.
    pub fn seal_text(&self, session: SessionId, field: Field, plain: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.seal(
            session,
            field,
            plain.as_bytes(),
        ))
    }

    /// Opens a text column sealed by [`seal_text`](Self::seal_text).
    pub fn open_text(
        &self,
        session: SessionId,
        field: Field,
        sealed: &str,
    ) -> Result<String, AtRestError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| AtRestError::Unopened(field.label()))?;
        let plain = self.open(session, field, &bytes)?;
        String::from_utf8(plain.to_vec()).map_err(|_| AtRestError::Unopened(field.label()))
    }
}

/// A session's data key as stored: sealed, with the id of the operator key that sealed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedKey {
    /// The operator key's id.
    pub key_id: String,
    /// The data key, sealed under it with the session id as associated data.
    pub sealed: Vec<u8>,
}

/// The operator's keys: the first seals, all open. Empty: nothing is sealed.
#[derive(Clone, Debug, Default)]
pub struct DataKeys {
    keys: Vec<OperatorKey>,
}

impl DataKeys {
    /// The keys in the order given (the first seals). Two keys with one id are refused.
    pub fn new(keys: Vec<OperatorKey>) -> Result<DataKeys, String> {
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(format!("two data keys have the id `{}`", k.id));
            }
        }
        Ok(DataKeys { keys })
    }

    /// No key: personal data is stored unsealed.
    pub fn none() -> DataKeys {
        DataKeys::default()
    }

    /// Whether new data is sealed.
    pub fn seals(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The id of the key that seals, if any.
    pub fn sealing_id(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    /// The first of `ids` (key ids found in the store) that no given key has: the
    /// broker must not start (SPEC §2: exit 2 naming it).
    pub fn first_missing<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        ids.into_iter()
            .find(|id| !self.keys.iter().any(|k| k.id == *id))
    }

    fn key_aad(session: SessionId) -> Vec<u8> {
        aad(session, "data key")
    }

    /// A fresh data key for `session`, and how it is stored; `None` without keys.
    pub fn new_data_key(&self, session: SessionId) -> Option<(DataKey, SealedKey)> {
        let first = self.keys.first()?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut_slice());
        let sealed = seal_with(&first.key, &Self::key_aad(session), bytes.as_slice());
        Some((
            DataKey(bytes),
            SealedKey {
                key_id: first.id.clone(),
                sealed,
            },
        ))
    }

    /// Opens a session's stored data key.
    pub fn open_data_key(
        &self,
        session: SessionId,
        stored: &SealedKey,
    ) -> Result<DataKey, AtRestError> {
        let op = self
            .keys
            .iter()
            .find(|k| k.id == stored.key_id)
            .ok_or_else(|| AtRestError::UnknownKey(stored.key_id.clone()))?;
        let plain = open_with(&op.key, &Self::key_aad(session), &stored.sealed)
            .ok_or_else(|| AtRestError::Unopened("data key".into()))?;
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| AtRestError::Unopened("data key".into()))?;
        Ok(DataKey(Zeroizing::new(key)))
    }

    /// `rekey`: the stored key sealed again under the first key; `None` when it already
    /// is (or there is no key to seal with).
    pub fn reseal(
        &self,
        session: SessionId,
        stored: &SealedKey,
    ) -> Result<Option<SealedKey>, AtRestError> {
        let Some(first) = self.keys.first() else {
            return Ok(None);
        };
        if stored.key_id == first.id {
            return Ok(None);
        }
        let key = self.open_data_key(session, stored)?;
        Ok(Some(SealedKey {
            key_id: first.id.clone(),
            sealed: seal_with(&first.key, &Self::key_aad(session), key.0.as_slice()),
        }))
    }

    /// The opener of a row: its data key opened, or none for a row stored in clear.
    pub fn row(
        &self,
        session: SessionId,
        stored: Option<SealedKey>,
    ) -> Result<RowSeal, AtRestError> {
        Ok(RowSeal {
            session,
            key: stored
                .map(|s| self.open_data_key(session, &s))
                .transpose()?,
        })
    }
}

/// A session row's key as the stores use it: seals and opens its fields, or passes
/// them through when the row is stored in clear (no data key).
pub struct RowSeal {
    session: SessionId,
    key: Option<DataKey>,
}

impl RowSeal {
    /// A new session's data key (none without operator keys), and how it is stored.
    pub fn new_session(keys: &DataKeys, session: SessionId) -> (RowSeal, Option<SealedKey>) {
        match keys.new_data_key(session) {
            Some((key, stored)) => (
                RowSeal {
                    session,
                    key: Some(key),
                },
                Some(stored),
            ),
            None => (RowSeal { session, key: None }, None),
        }
    }

    /// A text field as stored.
    pub fn seal_text(&self, field: Field, plain: Option<&str>) -> Option<String> {
        let plain = plain?;
        Some(match &self.key {
            Some(k) => k.seal_text(self.session, field, plain),
            None => plain.to_owned(),
        })
    }

    /// A stored text field opened.
    pub fn open_text(
        &self,
        field: Field,
        stored: Option<String>,
    ) -> Result<Option<String>, AtRestError> {
        match (&self.key, stored) {
            (Some(k), Some(s)) => k.open_text(self.session, field, &s).map(Some),
            (_, stored) => Ok(stored),
        }
    }

    /// Bytes as stored.
    pub fn seal_bytes(&self, field: Field, plain: &[u8]) -> Vec<u8> {
        match &self.key {
            Some(k) => k.seal(self.session, field, plain),
            None => plain.to_vec(),
        }
    }

    /// Stored bytes opened.
    pub fn open_bytes(&self, field: Field, stored: Vec<u8>) -> Result<Vec<u8>, AtRestError> {
        match &self.key {
            Some(k) => Ok(k.open(self.session, field, &stored)?.to_vec()),
            None => Ok(stored),
        }
    }
}

/// What a purge leaves of a session's sealed fields: its references (SPEC §2: "the
/// session's status, seq, times and references stay") under a fresh data key, so that
/// the key that sealed the person's data is destroyed with it (crypto-shredding).
pub struct Resealed {
    /// The new stored key; `None` when nothing is left to seal (or no key is given).
    pub key: Option<SealedKey>,
    /// `vendor_data` as stored.
    pub vendor_data: Option<String>,
    /// `external_reference_id` as stored.
    pub external_reference_id: Option<String>,
}

impl DataKeys {
    /// The references of a purged session, sealed under a fresh data key.
    pub fn reseal_references(
        &self,
        session: SessionId,
        vendor_data: Option<&str>,
        external_reference_id: Option<&str>,
    ) -> Resealed {
        if vendor_data.is_none() && external_reference_id.is_none() {
            return Resealed {
                key: None,
                vendor_data: None,
                external_reference_id: None,
            };
        }
        let (row, key) = RowSeal::new_session(self, session);
        Resealed {
            key,
            vendor_data: row.seal_text(Field::VendorData, vendor_data),
            external_reference_id: row.seal_text(Field::ExternalReferenceId, external_reference_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[&str]) -> DataKeys {
        DataKeys::new(
            ids.iter()
                .map(|id| OperatorKey::from_bytes(id, [id.as_bytes()[0]; 32]))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_sealed_field_opens_in_its_session_and_field_only() {
        let ks = keys(&["k1"]);
        let s = SessionId::new();
        let (row, stored) = RowSeal::new_session(&ks, s);
        let stored = stored.unwrap();
        let sealed = row.seal_text(Field::VendorData, Some("user-42")).unwrap();
        assert!(!sealed.contains("user-42"));
        let again = ks.row(s, Some(stored.clone())).unwrap();
        assert_eq!(
            again.open_text(Field::VendorData, Some(sealed.clone())),
            Ok(Some("user-42".into()))
        );
        // Another field, another session: does not open.
        assert!(again
            .open_text(Field::ExternalReferenceId, Some(sealed.clone()))
            .is_err());
        assert!(ks.row(SessionId::new(), Some(stored)).is_err());
        // Fresh nonces: the same value seals differently.
        assert_ne!(
            row.seal_text(Field::VendorData, Some("user-42")),
            Some(sealed)
        );
    }

    #[test]
    fn a_flipped_byte_never_opens() {
        let ks = keys(&["k1"]);
        let s = SessionId::new();
        let (row, _) = RowSeal::new_session(&ks, s);
        let sealed = row.seal_bytes(Field::SharedData, b"{\"a\":1}");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(row.open_bytes(Field::SharedData, bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn rotation_reseals_under_the_first_key_and_an_unknown_key_is_named() {
        let old = keys(&["k1"]);
        let s = SessionId::new();
        let (row, stored) = RowSeal::new_session(&old, s);
        let stored = stored.unwrap();
        let sealed = row.seal_bytes(Field::Registration, b"x");

        let both = keys(&["k2", "k1"]);
        let moved = both.reseal(s, &stored).unwrap().unwrap();
        assert_eq!(moved.key_id, "k2");
        assert_eq!(both.reseal(s, &moved).unwrap(), None, "already under k2");

        let new = keys(&["k2"]);
        let opened = new.row(s, Some(moved.clone())).unwrap();
        assert_eq!(
            opened.open_bytes(Field::Registration, sealed).unwrap(),
            b"x"
        );
        assert_eq!(
            keys(&["k1"]).row(s, Some(moved)).err(),
            Some(AtRestError::UnknownKey("k2".into()))
        );
        assert_eq!(keys(&["k1"]).first_missing(["k1", "k2"]), Some("k2"));
    }

    #[test]
    fn without_keys_fields_pass_through() {
        let (row, stored) = RowSeal::new_session(&DataKeys::none(), SessionId::new());
        assert!(stored.is_none());
        assert_eq!(
            row.seal_text(Field::VendorData, Some("v")),
            Some("v".into())
        );
    }

    #[test]
    fn operator_keys_are_id_and_32_bytes_of_base64() {
        let k = OperatorKey::parse("k1=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        assert_eq!(k.id(), "k1");
        assert!(format!("{k:?}").contains("k1"));
        assert!(OperatorKey::parse("k1=AAEC").is_err());
        assert!(OperatorKey::parse("=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").is_err());
        assert!(OperatorKey::parse("nokey").is_err());
        let a = OperatorKey::from_bytes("a", [1; 32]);
        assert!(DataKeys::new(vec![a.clone(), a]).is_err());
    }
}

//! Sealed messages between nodes (SPEC §7, `--cluster-key`): whoever can read or write
//! NATS can neither read what the nodes tell each other nor command a node.
//!
//! Every message a node publishes (a forwarded command, its answer, an upload chunk, an
//! announcement) is sealed with XChaCha20-Poly1305 under a key derived from the cluster
//! key, with the NATS subject as associated data, so a sealed message opens only on the
//! subject it was sealed for. Inside the seal travel the sender's node id and the time
//! it sealed. A message is dropped, and counted, when:
//! - it does not open (another key, a changed byte, a hand-written message): `unopened`;
//! - it was sealed more than [`MAX_AGE`] ago or ahead (by the sender's clock): `stale`;
//! - its nonce was seen within that window: `replayed`.
//!
//! The layout of a sealed message:
//!
//! ```text
//! version (1) · key id (4) · nonce (24) · ciphertext of [sender length (1) · sender · unix ms (8, BE) · body] · tag (16)
//! ```
//!
//! Keys rotate without a stop: every node is given the new key second, then first (it
//! seals with the first and opens with any), then alone. The key id picks the key to
//! open with; it is a hash of the key, which says nothing about the key.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// How old (or how far ahead of this node's clock) a sealed message may be.
pub const MAX_AGE: Duration = Duration::from_secs(30);

/// Most nonces remembered at once. At the window's length this is over 30,000
/// messages a second to this node; past it the oldest are let go early (a replay of
/// one of those within its 30 s would then open: logged once, as it means the window is
/// too small for the traffic).
const MAX_REMEMBERED: usize = 2_000_000;

const VERSION: u8 = 1;
const KEY_ID: usize = 4;
const NONCE: usize = 24;
const HEADER: usize = 1 + KEY_ID + NONCE;
/// Poly1305's tag.
const TAG: usize = 16;

/// One cluster key as the operator gives it: 32 random bytes. The bytes are wiped when
/// it is dropped.
#[derive(Clone)]
pub struct ClusterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({})", hex::encode(self.id()))
    }
}

impl ClusterKey {
    /// Reads a key given in base64 (standard or URL-safe, padded or not).
    pub fn from_base64(text: &str) -> Result<ClusterKey, String> {
        let text = text.trim();
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .map_err(|_| "a cluster key is 32 random bytes in base64".to_owned())?,
        );
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "a cluster key is 32 random bytes in base64; this one is {} bytes",
                bytes.len()
            )
        })?;
        Ok(ClusterKey(Zeroizing::new(key)))
    }

    /// A key from its bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> ClusterKey {
        ClusterKey(Zeroizing::new(bytes))
    }

    /// The key's public name: the first bytes of a hash of it.
    pub fn id(&self) -> [u8; KEY_ID] {
        let digest = Sha256::new()
            .chain_update(b"idv-broker cluster key id\0")
            .chain_update(self.0.as_slice())
            .finalize();
        let mut id = [0u8; KEY_ID];
        id.copy_from_slice(&digest[..KEY_ID]);
        id
    }

    /// A secret of 32 bytes for `purpose`, derived from this key (HKDF-SHA256), so that
    /// what one use derives tells nothing of the key nor of another use's secret.
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"idv-broker"), self.0.as_slice());
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 8160: this cannot fail.
        let _ = hk.expand(purpose.as_bytes(), out.as_mut_slice());
        out
    }
}

/// Why a message between nodes was dropped; the label of the metric that counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// It does not open under any key this node has.
    Unopened,
    /// Sealed more than [`MAX_AGE`] ago, or that far ahead.
    Stale,
    /// Its nonce was seen within the window.
    Replayed,
}

impl Dropped {
    /// The metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Unopened => "unopened",
            Dropped::Stale => "stale",
            Dropped::Replayed => "replayed",
        }
    }
}

/// A message that opened.
#[derive(Debug)]
pub struct Opened {
    /// The node that sealed it.
    pub sender: String,
    /// What it carries.
    pub body: Vec<u8>,
}

/// Seals what this node sends and opens what it receives. Shared by every task of the
/// cluster layer.
pub struct Sealer {
    /// This node's id, sealed into every message.
    node: String,
    /// The message keys, the first sealing, each with the id of the cluster key it
    /// came from.
    keys: Vec<([u8; KEY_ID], XChaCha20Poly1305)>,
    /// The nonces seen within the window. A mutex: one short critical section per
    /// message received, never held across an await.
    seen: Mutex<Seen>,
}

/// The replay window: the nonces of the messages opened in the last [`MAX_AGE`] × 2.
#[derive(Default)]
struct Seen {
    set: HashSet<[u8; NONCE]>,
    /// In the order they were seen, with when: the oldest are let go first.
    order: VecDeque<(Instant, [u8; NONCE])>,
    /// Whether the early letting go was logged already.
    overflow_logged: bool,
}

impl Sealer {
    /// A sealer for node `node` with `keys` (the first seals). `None` without a key.
    pub fn new(node: &str, keys: &[ClusterKey]) -> Option<Sealer> {
        if keys.is_empty() {
            return None;
        }
        let keys = keys
            .iter()
            .map(|k| {
                let derived = k.derive("cluster messages v1");
                (
                    k.id(),
                    XChaCha20Poly1305::new(<&chacha20poly1305::Key>::from(&*derived)),
                )
            })
            .collect();
        Some(Sealer {
            node: node.to_owned(),
            keys,
            seen: Mutex::new(Seen::default()),
        })
    }

    /// `body` sealed for `subject`, stamped now.
    pub fn seal(&self, subject: &str, body: &[u8]) -> Vec<u8> {
        self.seal_at(subject, body, unix_ms_now())
    }

    fn seal_at(&self, subject: &str, body: &[u8], unix_ms: i64) -> Vec<u8> {
        let (key_id, cipher) = &self.keys[0];
        let nonce: [u8; NONCE] = rand::random();
        let sender = self.node.as_bytes();
        // Node ids are at most 64 bytes (cluster::valid_node_id).
        let sender = &sender[..sender.len().min(255)];
        let mut plain = Zeroizing::new(Vec::with_capacity(1 + sender.len() + 8 + body.len()));
        plain.push(sender.len() as u8);
        plain.extend_from_slice(sender);
        plain.extend_from_slice(&unix_ms.to_be_bytes());
        plain.extend_from_slice(body);
        let mut out = Vec::with_capacity(HEADER + plain.len() + TAG);
        out.push(VERSION);
        out.extend_from_slice(key_id);
        out.extend_from_slice(&nonce);
        // Encryption into memory cannot fail but for a length past 2^38 bytes, which
        // no message here comes near (chunks are at most 512 KiB).
        if let Ok(sealed) = cipher.encrypt(
            <&XNonce>::from(&nonce),
            Payload {
                msg: &plain,
                aad: subject.as_bytes(),
            },
        ) {
            out.extend_from_slice(&sealed);
        }
        out
    }

    /// Opens a message received on `subject`, or says why it is dropped (and counts it).
    pub fn open(&self, subject: &str, message: &[u8]) -> Result<Opened, Dropped> {
        let res = self.open_at(subject, message, unix_ms_now(), Instant::now());
        if let Err(why) = res {
            crate::metrics::cluster_message_dropped(why.as_str());
        }
        res
    }

    fn open_at(
        &self,
        subject: &str,
        message: &[u8],
        unix_ms: i64,
        now: Instant,
    ) -> Result<Opened, Dropped> {
        if message.len() < HEADER + TAG || message[0] != VERSION {
            return Err(Dropped::Unopened);
        }
        let key_id = &message[1..1 + KEY_ID];
        let nonce: [u8; NONCE] = message[1 + KEY_ID..HEADER]
            .try_into()
            .map_err(|_| Dropped::Unopened)?;
        let cipher = self
            .keys
            .iter()
            .find(|(id, _)| id.as_slice() == key_id)
            .map(|(_, c)| c)
            .ok_or(Dropped::Unopened)?;
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    <&XNonce>::from(&nonce),
                    Payload {
                        msg: &message[HEADER..],
                        aad: subject.as_bytes(),
                    },
                )
                .map_err(|_| Dropped::Unopened)?,
        );
        // It opened: it was sealed by a holder of the key; the layout is ours.
        let sender_len = *plain.first().ok_or(Dropped::Unopened)? as usize;
        let stamp_at = 1 + sender_len;
        let body_at = stamp_at + 8;
        if plain.len() < body_at {
            return Err(Dropped::Unopened);
        }
        let sender = std::str::from_utf8(&plain[1..stamp_at])
            .map_err(|_| Dropped::Unopened)?
            .to_owned();
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&plain[stamp_at..body_at]);
        let age = unix_ms.saturating_sub(i64::from_be_bytes(stamp));
        if age.unsigned_abs() > MAX_AGE.as_millis() as u64 {
            return Err(Dropped::Stale);
        }
        self.remember(nonce, now)?;
        Ok(Opened {
            sender,
            body: plain[body_at..].to_vec(),
        })
    }

    /// Notes `nonce` as seen, or refuses it as a replay. A nonce is kept twice the
    /// window and a little more: a message stamped up to [`MAX_AGE`] ahead is still
    /// fresh that long after it arrived.
    fn remember(&self, nonce: [u8; NONCE], now: Instant) -> Result<(), Dropped> {
        let keep = MAX_AGE * 2 + Duration::from_secs(5);
        let Ok(mut seen) = self.seen.lock() else {
            // A panic while holding it (none of the code under it panics): refuse
            // rather than open what may be a replay.
            return Err(Dropped::Replayed);
        };
        while let Some((at, old)) = seen.order.front().copied() {
            if now.duration_since(at) < keep && seen.order.len() < MAX_REMEMBERED {
                break;
            }
            if now.duration_since(at) < keep && !seen.overflow_logged {
                seen.overflow_logged = true;
                tracing::warn!(
                    remembered = MAX_REMEMBERED,
                    "more messages between nodes than the replay window holds; the oldest are forgotten early"
                );
            }
            seen.order.pop_front();
            seen.set.remove(&old);
        }
        if !seen.set.insert(nonce) {
            return Err(Dropped::Replayed);
        }
        seen.order.push_back((now, nonce));
        Ok(())
    }
}

fn unix_ms_now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn key(n: u8) -> ClusterKey {
        ClusterKey::from_bytes([n; 32])
    }

    #[test]
    fn a_sealed_message_opens_once_on_its_subject_with_its_sender() {
        let a = Sealer::new("node-a", &[key(1)]).unwrap();
        let b = Sealer::new("node-b", &[key(1)]).unwrap();
        let sealed = a.seal("idv.node.b.cmd", b"approve it");
        assert!(
            !sealed.windows(10).any(|w| w == b"approve it"),
            "the body travels encrypted"
        );
        let opened = b.open_at("idv.node.b.cmd", &sealed, unix_ms_now(), Instant::now());
        let opened = opened.unwrap();
        assert_eq!(
            (opened.sender.as_str(), opened.body.as_slice()),
            ("node-a", &b"approve it"[..])
        );
        assert_eq!(
            b.open_at("idv.node.b.cmd", &sealed, unix_ms_now(), Instant::now())
                .unwrap_err(),
            Dropped::Replayed
        );
    }

    #[test]
    fn a_message_moved_to_another_subject_altered_or_under_another_key_does_not_open() {
        let a = Sealer::new("a", &[key(1)]).unwrap();
        let b = Sealer::new("b", &[key(1)]).unwrap();
        let sealed = a.seal("idv.node.b.cmd", b"x");
        let now = unix_ms_now();
        assert_eq!(
            b.open_at("idv.node.c.cmd", &sealed, now, Instant::now())
                .unwrap_err(),
            Dropped::Unopened
        );
        for i in [0, 3, HEADER + 2, sealed.len() - 1] {
            let mut altered = sealed.clone();
            altered[i] ^= 1;
            assert_eq!(
                b.open_at("idv.node.b.cmd", &altered, now, Instant::now())
                    .unwrap_err(),
                Dropped::Unopened,
                "byte {i} changed"
            );
        }
        let other = Sealer::new("b", &[key(2)]).unwrap();
        assert_eq!(
            other
                .open_at("idv.node.b.cmd", &sealed, now, Instant::now())
                .unwrap_err(),
            Dropped::Unopened
        );
        assert_eq!(
            b.open_at(
                "idv.node.b.cmd",
                br#"{"session":"x","cmd":"RotateToken"}"#,
                now,
                Instant::now()
            )
            .unwrap_err(),
            Dropped::Unopened,
            "a hand-written message"
        );
        assert_eq!(
            b.open_at("idv.node.b.cmd", b"", now, Instant::now())
                .unwrap_err(),
            Dropped::Unopened
        );
    }

    #[test]
    fn a_message_older_or_further_ahead_than_the_window_is_stale() {
        let a = Sealer::new("a", &[key(1)]).unwrap();
        let now = unix_ms_now();
        let window = MAX_AGE.as_millis() as i64;
        for (stamp, fresh) in [
            (now - window - 1, false),
            (now - window + 50, true),
            (now + window - 50, true),
            (now + window + 1, false),
        ] {
            let sealed = a.seal_at("s", b"x", stamp);
            let res = a.open_at("s", &sealed, now, Instant::now());
            assert_eq!(res.is_ok(), fresh, "stamped {} ms from now", stamp - now);
            if !fresh {
                assert_eq!(res.unwrap_err(), Dropped::Stale);
            }
        }
    }

    #[test]
    fn while_a_key_rotates_the_first_seals_and_every_one_opens() {
        let old = Sealer::new("a", &[key(1)]).unwrap();
        let both = Sealer::new("b", &[key(2), key(1)]).unwrap();
        let new = Sealer::new("c", &[key(2)]).unwrap();
        let now = unix_ms_now();
        let from_old = old.seal("s", b"1");
        let from_both = both.seal("s", b"2");
        assert!(both.open_at("s", &from_old, now, Instant::now()).is_ok());
        assert!(new.open_at("s", &from_both, now, Instant::now()).is_ok());
        assert_eq!(
            old.open_at("s", &from_both, now, Instant::now())
                .unwrap_err(),
            Dropped::Unopened,
            "the new key seals once it is first"
        );
    }

    #[test]
    fn nonces_are_forgotten_only_after_the_window_and_a_margin() {
        let a = Sealer::new("a", &[key(1)]).unwrap();
        let t0 = Instant::now();
        a.remember([1; NONCE], t0).unwrap();
        assert_eq!(
            a.remember([1; NONCE], t0 + MAX_AGE * 2).unwrap_err(),
            Dropped::Replayed
        );
        // Forgotten once it could no longer pass as fresh.
        a.remember([2; NONCE], t0 + MAX_AGE * 3).unwrap();
        a.remember([1; NONCE], t0 + MAX_AGE * 3).unwrap();
    }

    #[test]
    fn keys_are_read_from_base64_of_32_bytes_only() {
        let text = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(ClusterKey::from_base64(&text).unwrap().id(), key(7).id());
        assert!(ClusterKey::from_base64("c2hvcnQ=")
            .unwrap_err()
            .contains("5 bytes"));
        assert!(ClusterKey::from_base64("not base64 at all!").is_err());
        assert_ne!(key(1).derive("a").as_slice(), key(1).derive("b").as_slice());
        assert!(!format!("{:?}", key(7)).contains("0707070707"));
    }
}

//! The `X-Idv-Signature` of SPEC §4: `v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`,
//! one per configured secret, the new one first.

use std::sync::{Arc, RwLock};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signs webhook bodies with one or two secrets (two while rotating). Clones share
/// their secrets: [`Signer::replace`] (a reload of the credentials file) changes them
/// for every delivery that signs after it.
#[derive(Clone)]
pub struct Signer {
    /// Newest first; never empty (the broker sends nothing unsigned).
    secrets: Arc<RwLock<Vec<Vec<u8>>>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} secrets)", self.read().len())
    }
}

fn non_empty<S: AsRef<[u8]>>(secrets: &[S]) -> Vec<Vec<u8>> {
    secrets
        .iter()
        .map(|s| s.as_ref().to_vec())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Signer {
    /// A signer over `secrets`, newest first; `None` without a non-empty secret.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Option<Self> {
        let secrets = non_empty(secrets);
        (!secrets.is_empty()).then(|| Self {
            secrets: Arc::new(RwLock::new(secrets)),
        })
    }

    /// Signs with `secrets` from now on, newest first; refused (and nothing changed)
    /// without a non-empty secret, since the broker sends nothing unsigned.
    pub fn replace<S: AsRef<[u8]>>(&self, secrets: &[S]) -> Result<(), &'static str> {
        let secrets = non_empty(secrets);
        if secrets.is_empty() {
            return Err("webhooks need a signing secret");
        }
        *self
            .secrets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = secrets;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Vec<u8>>> {
        self.secrets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `X-Idv-Signature` value for `body` sent at `timestamp` (unix seconds).
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let signed = signed_payload(timestamp, body);
        self.read()
            .iter()
            .map(|secret| format!("v1={}", hex::encode(hmac(secret, &signed))))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn signed_payload(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut signed = Vec::with_capacity(body.len() + 12);
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    signed
}

fn hmac(secret: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return [0; 32];
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        let signer = Signer::new(&["whsec"]).unwrap();
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec
        assert_eq!(
            signer.sign(1_700_000_000, br#"{"a":1}"#),
            "v1=8ad37ba156048ae0e0a5533c75cdf26fee88b07f93cb57ee4c80adb053012032"
        );
    }

    #[test]
    fn rotation_sends_the_new_signature_first_then_the_old() {
        let both = Signer::new(&["new", "old"]).unwrap().sign(5, b"x");
        let new = Signer::new(&["new"]).unwrap().sign(5, b"x");
        let old = Signer::new(&["old"]).unwrap().sign(5, b"x");
        assert_eq!(both, format!("{new},{old}"));
        assert_ne!(new, old);
    }

    #[test]
    fn no_secret_means_no_signer() {
        assert!(Signer::new::<&str>(&[]).is_none());
        assert!(Signer::new(&[""]).is_none());
    }
}

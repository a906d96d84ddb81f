//! Demo mode's own credentials (SPEC §6 `--demo`): the API key the demo routes act as,
//! and the secret of the device issuer whose tokens the hosted page gets. Both come
//! from [`demo_secrets`] and nowhere else, so that nodes that share a seed (SPEC §7:
//! the demo's secrets derive from the cluster key) agree on them; without a seed they
//! are fresh random secrets at every start, which is all one node needs.

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The demo's secrets. Neither is ever shown or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct DemoSecrets {
    /// The demo's API key (its name is
    /// [`DEMO_API_KEY_NAME`](idv_actors::credentials::DEMO_API_KEY_NAME)).
    pub api_key: String,
    /// The HS256 secret of the demo's device issuer
    /// ([`DEMO_ISSUER`](idv_actors::credentials::DEMO_ISSUER)).
    pub issuer_secret: String,
}

impl std::fmt::Debug for DemoSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DemoSecrets(<redacted>)")
    }
}

/// The demo's secrets: derived from `seed` (HMAC-SHA256 of a label of each, keyed by
/// the seed, so one never tells anything about the other or about the seed), or
/// random when there is none. 256 bits each, in URL-safe base64.
pub fn demo_secrets(seed: Option<&[u8]>) -> DemoSecrets {
    match seed {
        None => DemoSecrets {
            api_key: idv_actors::ids::random_secret(),
            issuer_secret: idv_actors::ids::random_secret(),
        },
        Some(seed) => DemoSecrets {
            api_key: derive(seed, b"idv-broker demo api key v1"),
            issuer_secret: derive(seed, b"idv-broker demo issuer secret v1"),
        },
    }
}

fn derive(seed: &[u8], label: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mac = <Hmac<Sha256>>::new_from_slice(seed)
        .map(|mac| mac.chain_update(label).finalize().into_bytes());
    match mac {
        Ok(bytes) => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        // Unreachable; a random secret is still a working (if unshared) one.
        Err(_) => idv_actors::ids::random_secret(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_seed_the_secrets_are_fresh_and_strong() {
        let (a, b) = (demo_secrets(None), demo_secrets(None));
        assert_ne!(a.api_key, b.api_key);
        assert_ne!(a.issuer_secret, b.issuer_secret);
        assert_ne!(a.api_key, a.issuer_secret);
        assert!(a.api_key.len() >= 43 && a.issuer_secret.len() >= 43);
    }

    #[test]
    fn a_seed_gives_the_same_secrets_every_time_and_another_seed_others() {
        let seed = [7u8; 32];
        let a = demo_secrets(Some(&seed));
        assert_eq!(a, demo_secrets(Some(&seed)));
        assert_ne!(a.api_key, a.issuer_secret);
        let b = demo_secrets(Some(&[8u8; 32]));
        assert_ne!(a.api_key, b.api_key);
        assert_ne!(a.issuer_secret, b.issuer_secret);
        assert!(!a
            .api_key
            .contains(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed)));
        assert!(!format!("{a:?}").contains(&a.api_key));
    }
}

//! Public keys that sign device tokens (SPEC §1: `--issuer-key`, `--issuer-jwks`), and
//! the rules that pick one for a token: by `kid`, and only for an `alg` that fits the
//! key's type. Shared by [`crate::credentials`] (which verifies) and [`crate::jwks`]
//! (which fetches key sets), so that neither imports the other's internals.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// What kind of public key a key is: it decides which `alg`s it may verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA: RS256 and PS256.
    Rsa,
    /// ECDSA on P-256: ES256.
    EcP256,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl KeyKind {
    /// Whether a token signed with `alg` may be checked against a key of this kind.
    /// HMAC algorithms never fit a public key: a token "signed" with a public key's
    /// bytes as an HMAC secret (algorithm confusion) is refused here, before any
    /// signature is computed; `none` cannot even be parsed as an [`Algorithm`].
    pub fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (KeyKind::Rsa, Algorithm::RS256 | Algorithm::PS256)
                | (KeyKind::EcP256, Algorithm::ES256)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not a PEM public key of a supported type.
    #[error("not a PEM public key (RSA, EC P-256 or Ed25519)")]
    BadPem,
    /// A JWK of a type that is not supported (an HMAC `oct` key, another curve, …).
    #[error("unsupported key type")]
    Unsupported,
    /// A JWK whose parameters do not decode.
    #[error("the key's parameters do not decode")]
    BadJwk,
}

/// A reader of one type of PEM public key.
type PemParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// One public key of an issuer.
#[derive(Clone)]
pub struct PublicKey {
    /// The JWK's `kid`; `None` for a PEM file, which matches any `kid`.
    pub kid: Option<String>,
    /// Its type.
    pub kind: KeyKind,
    /// The JWK's `alg`, when it pins one: a token must then use exactly it.
    pub alg: Option<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

impl PublicKey {
    /// A PEM public key (`-----BEGIN PUBLIC KEY-----`, or `BEGIN RSA PUBLIC KEY`): RSA,
    /// EC P-256 or Ed25519. Without a `kid`.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::BadPem)?;
        if !text.contains("PUBLIC KEY-----") {
            // A private key or a certificate is refused rather than guessed at.
            return Err(KeyError::BadPem);
        }
        let tries: [(KeyKind, PemParser); 3] = [
            (KeyKind::Rsa, DecodingKey::from_rsa_pem),
            (KeyKind::EcP256, DecodingKey::from_ec_pem),
            (KeyKind::Ed25519, DecodingKey::from_ed_pem),
        ];
        for (kind, parse) in tries {
            if let Ok(key) = parse(pem) {
                if kind == KeyKind::EcP256 && !ec_is_p256(pem) {
                    return Err(KeyError::BadPem);
                }
                return Ok(Self {
                    kid: None,
                    kind,
                    alg: None,
                    key,
                });
            }
        }
        Err(KeyError::BadPem)
    }

    /// A key of a JSON Web Key Set. Keys marked for encryption (`"use": "enc"`), HMAC
    /// (`oct`) keys and other curves are refused.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return Err(KeyError::Unsupported);
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                KeyKind::EcP256
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyKind::Ed25519
            }
            _ => return Err(KeyError::Unsupported),
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => match a.to_string().parse::<Algorithm>() {
                Ok(alg) if kind.fits(alg) => Some(alg),
                _ => return Err(KeyError::Unsupported),
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|_| KeyError::BadJwk)?;
        Ok(Self {
            kid: jwk.common.key_id.clone(),
            kind,
            alg,
            key,
        })
    }

    /// With `kid` set (a PEM file named by its `kid`).
    pub fn with_kid(mut self, kid: Option<String>) -> Self {
        self.kid = kid;
        self
    }

    /// The key for `jsonwebtoken::decode`.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// Whether a token with `alg` may be checked against this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

/// Whether an EC PEM key is on P-256 (the only curve of ES256): its DER carries the
/// curve's OID, 1.2.840.10045.3.1.7.
fn ec_is_p256(pem: &[u8]) -> bool {
    const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let Ok(text) = std::str::from_utf8(pem) else {
        return false;
    };
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .is_ok_and(|der| der.windows(P256_OID.len()).any(|w| w == P256_OID))
}

/// Why no key of a set fits a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection {
    /// No key has the token's `kid` (and no key without a `kid` stands in): a key set
    /// fetched again may have it.
    UnknownKid,
    /// Keys match the `kid`, but none of a type that fits the token's `alg`.
    WrongAlgorithm,
}

/// The public keys of one issuer: several while it rotates.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

impl KeySet {
    /// A set of `keys`.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self { keys }
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys a token with `kid` and `alg` is checked against, in order: those whose
    /// `kid` is the token's, else those without a `kid` (a PEM file matches any `kid`);
    /// a token without a `kid` is checked against keys without one, or the only key of
    /// a set of one. Of those, only keys whose type fits `alg` (and whose pinned `alg`,
    /// if any, is it). HMAC algorithms fit no key here.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<&PublicKey>, Selection> {
        let by_kid: Vec<&PublicKey> = match kid {
            Some(kid) => {
                let named: Vec<_> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    self.keys.iter().filter(|k| k.kid.is_none()).collect()
                } else {
                    named
                }
            }
            None if self.keys.len() == 1 => self.keys.iter().collect(),
            None => self.keys.iter().filter(|k| k.kid.is_none()).collect(),
        };
        if by_kid.is_empty() {
            return Err(Selection::UnknownKid);
        }
        let fitting: Vec<&PublicKey> = by_kid.into_iter().filter(|k| k.accepts(alg)).collect();
        if fitting.is_empty() {
            return Err(Selection::WrongAlgorithm);
        }
        Ok(fitting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(json: serde_json::Value) -> Jwk {
        serde_json::from_value(json).unwrap()
    }

    /// An Ed25519 JWK (the x of RFC 8037's example) with `kid`.
    fn ed(kid: &str) -> PublicKey {
        PublicKey::from_jwk(&jwk(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        })))
        .unwrap()
    }

    #[test]
    fn each_key_type_fits_its_own_algorithms_only() {
        use Algorithm::*;
        let table = [
            (KeyKind::Rsa, vec![RS256, PS256]),
            (KeyKind::EcP256, vec![ES256]),
            (KeyKind::Ed25519, vec![EdDSA]),
        ];
        let all = [
            HS256, HS384, HS512, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA,
        ];
        for (kind, fitting) in table {
            for alg in all {
                assert_eq!(kind.fits(alg), fitting.contains(&alg), "{kind:?} {alg:?}");
            }
        }
    }

    #[test]
    fn keys_are_picked_by_kid_and_a_kidless_key_matches_any() {
        let set = KeySet::new(vec![ed("a"), ed("b")]);
        let picked = set.select(Some("b"), Algorithm::EdDSA).unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].kid.as_deref(), Some("b"));
        assert_eq!(
            set.select(Some("c"), Algorithm::EdDSA).unwrap_err(),
            Selection::UnknownKid
        );
        // Two keys and a token without kid: no guessing.
        assert_eq!(
            set.select(None, Algorithm::EdDSA).unwrap_err(),
            Selection::UnknownKid
        );
        let one = KeySet::new(vec![ed("a")]);
        assert_eq!(one.select(None, Algorithm::EdDSA).unwrap().len(), 1);
        let file = KeySet::new(vec![ed("x").with_kid(None)]);
        assert_eq!(
            file.select(Some("anything"), Algorithm::EdDSA)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn an_alg_that_does_not_fit_the_key_is_refused() {
        let set = KeySet::new(vec![ed("a")]);
        for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
            assert_eq!(
                set.select(Some("a"), alg).unwrap_err(),
                Selection::WrongAlgorithm,
                "{alg:?}"
            );
        }
    }

    #[test]
    fn a_jwk_pinning_an_alg_accepts_only_that_one() {
        let rsa = |alg: &str| {
            jwk(serde_json::json!({
                "kty": "RSA", "kid": "r", "alg": alg,
                "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
                "e": "AQAB"
            }))
        };
        let key = PublicKey::from_jwk(&rsa("PS256")).unwrap();
        assert!(key.accepts(Algorithm::PS256));
        assert!(!key.accepts(Algorithm::RS256));
        // An RSA key that claims an EC algorithm is not a key to use at all.
        assert_eq!(
            PublicKey::from_jwk(&rsa("ES256")).unwrap_err(),
            KeyError::Unsupported
        );
    }

    #[test]
    fn hmac_and_encryption_keys_of_a_set_are_refused() {
        let oct = jwk(serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}));
        assert_eq!(
            PublicKey::from_jwk(&oct).unwrap_err(),
            KeyError::Unsupported
        );
        let enc = jwk(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "kid": "e", "use": "enc",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }));
        assert_eq!(
            PublicKey::from_jwk(&enc).unwrap_err(),
            KeyError::Unsupported
        );
    }

    #[test]
    fn a_private_key_or_garbage_is_not_a_public_key() {
        assert_eq!(
            PublicKey::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err(),
            KeyError::BadPem
        );
        assert_eq!(PublicKey::from_pem(b"hello").unwrap_err(), KeyError::BadPem);
    }
}

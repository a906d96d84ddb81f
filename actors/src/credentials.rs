//! The credentials of SPEC §1: backend API keys and device JWTs.
//! (Session tokens are [`crate::ids::SessionToken`].)

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::{DeviceId, UserId};

/// Accepted clock skew on a device JWT's `exp` (SPEC §5).
pub const JWT_LEEWAY_SECS: u64 = 60;

/// Parses `NAME=VALUE` as given to `--api-key` and `--issuer`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() && !value.is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got {:?}", redact(s))),
    }
}

fn redact(s: &str) -> String {
    match s.split_once('=') {
        Some((name, _)) => format!("{name}=…"),
        None => "…".into(),
    }
}

/// The configured backend API keys. Keys are kept as SHA-256 hashes and compared in
/// constant time.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl ApiKeys {
    /// Adds a key under `name` (the name devices see as `requester.name`).
    pub fn add(&mut self, name: &str, key: &str) {
        self.keys
            .push((name.to_owned(), Sha256::digest(key.as_bytes()).into()));
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The name of the key presented, if it is one of ours.
    pub fn authenticate(&self, presented: &str) -> Option<&str> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Check every key, so timing does not tell which one came close.
        let mut found = None;
        for (name, key) in &self.keys {
            if bool::from(key.ct_eq(&hash)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(n, _)| n))
            .finish()
    }
}

/// The claims of a device JWT.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceClaims {
    /// The trusted issuer.
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
}

/// Why a device token was refused (all `401`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Not a JWT, or not HS256.
    #[error("the device token is malformed")]
    Malformed,
    /// `iss` is not a configured issuer.
    #[error("the device token's issuer is not trusted")]
    UnknownIssuer,
    /// Signature, expiry or claims failed.
    #[error("the device token is invalid or expired")]
    Invalid,
    /// `sub` is not a valid user id.
    #[error("the device token's sub is not a valid user id")]
    BadSubject,
}

/// The trusted device-token issuers, each with its own HS256 secret.
#[derive(Clone, Default)]
pub struct Issuers {
    issuers: Vec<(String, DecodingKey)>,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.issuers.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Issuers {
    /// Trusts `iss`, with tokens signed by `secret`.
    pub fn add(&mut self, iss: &str, secret: &str) {
        self.issuers
            .push((iss.to_owned(), DecodingKey::from_secret(secret.as_bytes())));
    }

    /// Verifies a device JWT: HS256 only (the header's `alg` is pinned, `none` refused),
    /// a trusted `iss` checked with that issuer's secret, `exp` required (60 s leeway),
    /// and a `sub` that is a valid user id. The device is the issuer and `sub` together.
    pub fn verify(&self, token: &str) -> Result<DeviceId, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(JwtError::Malformed);
        }
        // The issuer is read unverified only to pick the key; the signature is then
        // checked with that issuer's key and `iss` is validated again.
        let unverified: DeviceClaims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| JwtError::Invalid)?;
        let (iss, key) = self
            .issuers
            .iter()
            .find(|(iss, _)| *iss == unverified.iss)
            .ok_or(JwtError::UnknownIssuer)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.set_issuer(&[iss]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<DeviceClaims>(token, key, &validation)
            .map_err(|_| JwtError::Invalid)?;
        let user_id = UserId::parse(&data.claims.sub).ok_or(JwtError::BadSubject)?;
        Ok(DeviceId::new(iss.as_str(), user_id))
    }

    /// Whether `iss` is trusted.
    pub fn trusts(&self, iss: &str) -> bool {
        self.issuers.iter().any(|(i, _)| i == iss)
    }

    /// The names of the trusted issuers.
    pub fn names(&self) -> HashSet<&str> {
        self.issuers.iter().map(|(i, _)| i.as_str()).collect()
    }
}

/// Signs a device JWT (for the `token` subcommand, the demo and tests).
pub fn mint_device_jwt(
    iss: &str,
    secret: &str,
    sub: &str,
    ttl_secs: u64,
) -> Result<String, String> {
    let exp = jsonwebtoken::get_current_timestamp() + ttl_secs;
    let claims = DeviceClaims {
        iss: iss.to_owned(),
        sub: sub.to_owned(),
        exp,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn issuers() -> Issuers {
        let mut i = Issuers::default();
        i.add("phone-app", "s3cret");
        i.add("other", "other-secret");
        i
    }

    #[test]
    fn a_token_from_a_trusted_issuer_yields_its_sub() {
        let jwt = mint_device_jwt("phone-app", "s3cret", "alice", 60).unwrap();
        let device = issuers().verify(&jwt).unwrap();
        assert_eq!(
            (device.issuer.as_str(), device.user_id.as_str()),
            ("phone-app", "alice")
        );
        let jwt = mint_device_jwt("other", "other-secret", "alice", 60).unwrap();
        let device = issuers().verify(&jwt).unwrap();
        assert_eq!(
            (device.issuer.as_str(), device.user_id.as_str()),
            ("other", "alice")
        );
    }

    #[test]
    fn untrusted_issuers_wrong_secrets_and_expired_tokens_are_refused() {
        let i = issuers();
        let jwt = mint_device_jwt("stranger", "s3cret", "alice", 60).unwrap();
        assert_eq!(i.verify(&jwt), Err(JwtError::UnknownIssuer));
        // Signed with the other issuer's secret: the key is picked by `iss`.
        let jwt = mint_device_jwt("phone-app", "other-secret", "alice", 60).unwrap();
        assert_eq!(i.verify(&jwt), Err(JwtError::Invalid));
        let claims = DeviceClaims {
            iss: "phone-app".into(),
            sub: "alice".into(),
            exp: jsonwebtoken::get_current_timestamp() - 120,
        };
        let jwt = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(i.verify(&jwt), Err(JwtError::Invalid));
        assert_eq!(i.verify("not.a.jwt"), Err(JwtError::Malformed));
    }

    #[test]
    fn expiry_within_the_leeway_is_accepted() {
        let claims = DeviceClaims {
            iss: "phone-app".into(),
            sub: "alice".into(),
            exp: jsonwebtoken::get_current_timestamp() - 30,
        };
        let jwt = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(issuers().verify(&jwt).is_ok());
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let body = b64.encode(format!(
            r#"{{"iss":"phone-app","sub":"alice","exp":{exp}}}"#
        ));
        let none = format!("{}.{body}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(issuers().verify(&none).is_err());
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &DeviceClaims {
                iss: "phone-app".into(),
                sub: "alice".into(),
                exp,
            },
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(issuers().verify(&hs512), Err(JwtError::Malformed));
    }

    #[test]
    fn a_sub_outside_the_user_id_alphabet_is_refused() {
        let jwt = mint_device_jwt("phone-app", "s3cret", "al ice", 60).unwrap();
        assert_eq!(issuers().verify(&jwt), Err(JwtError::BadSubject));
    }

    #[test]
    fn api_keys_authenticate_by_value_and_name_the_requester() {
        let mut keys = ApiKeys::default();
        keys.add("Acme Bank", "k1");
        keys.add("Other", "k2");
        assert_eq!(keys.authenticate("k1"), Some("Acme Bank"));
        assert_eq!(keys.authenticate("k2"), Some("Other"));
        assert_eq!(keys.authenticate("k3"), None);
        assert_eq!(
            parse_pair("Acme=abc=def"),
            Ok(("Acme".into(), "abc=def".into()))
        );
        assert!(parse_pair("nokey").is_err());
        assert!(parse_pair("=x").is_err());
    }
}

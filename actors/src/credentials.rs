//! The credentials of SPEC §1: backend API keys and device JWTs, and the lane the
//! demo's own credentials are kept in ([`issuer_may_touch`]).
//! (Session tokens are [`crate::ids::SessionToken`].)

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::{DeviceId, UserId};

/// Accepted clock skew on a device JWT's `exp` and `nbf` (SPEC §5).
pub const JWT_LEEWAY_SECS: u64 = 60;

/// The name of the API key that demo mode makes for itself (`requester.name` on the
/// device page): the owner of every demo session. Reserved: no configured key may
/// take it, with or without `--demo`.
pub const DEMO_API_KEY_NAME: &str = "idv-broker demo";

/// The device issuer that demo mode makes for itself. Reserved like
/// [`DEMO_API_KEY_NAME`]: its tokens touch only that key's sessions.
pub const DEMO_ISSUER: &str = "idv-demo";

/// Whether a device token of `issuer` may touch a session that the API key `owner`
/// created (SPEC §1): the demo's issuer only the demo's own sessions, since its tokens
/// are handed to anyone who opens the demo; every other trusted issuer any session
/// (the session's binding and state decide the rest). The one place this is decided:
/// every device command asks it before anything else
/// ([`admit_device`](crate::commands::admit_device)).
pub fn issuer_may_touch(issuer: &str, owner: &str) -> bool {
    issuer != DEMO_ISSUER || owner == DEMO_API_KEY_NAME
}

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

/// The claims of a device JWT that the broker reads or mints.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceClaims {
    /// The trusted issuer.
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds: with `exp`, the token's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The audience: one name or a list (RFC 7519 §4.1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// A JWT's `aud`: one name, or a list of names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "name"`.
    One(String),
    /// `"aud": ["name", …]`.
    Many(Vec<String>),
}

/// Longest a device token may be valid (SPEC §1): `exp − iat`, or `exp − now`.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 60 * 60;

/// Why a device token was refused (all `401`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Not a JWT, or not HS256.
    #[error("the device token is malformed")]
    Malformed,
    /// `iss` is not a configured issuer.
    #[error("the device token's issuer is not trusted")]
    UnknownIssuer,
    /// The signature or a claim's format failed.
    #[error("the device token is invalid (bad signature or claims)")]
    Invalid,
    /// `exp` passed (beyond the leeway).
    #[error("the device token has expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("the device token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// Valid for longer than [`MAX_TOKEN_LIFETIME_SECS`].
    #[error("the device token is valid for more than 24 hours; device tokens must be short-lived")]
    TooLong,
    /// `--audience` is set and `aud` is missing or does not contain it.
    #[error("the device token's aud does not name this broker's audience")]
    WrongAudience,
    /// `sub` is not a valid user id.
    #[error("the device token's sub is not a valid user id")]
    BadSubject,
}

/// The trusted device-token issuers, each with its own HS256 secret, and the audience
/// tokens must name, if any.
#[derive(Clone, Default)]
pub struct Issuers {
    issuers: Vec<(String, DecodingKey)>,
    audience: Option<String>,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuers")
            .field(
                "issuers",
                &self.issuers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("audience", &self.audience)
            .finish()
    }
}

impl Issuers {
    /// Trusts `iss`, with tokens signed by `secret`.
    pub fn add(&mut self, iss: &str, secret: &str) {
        self.issuers
            .push((iss.to_owned(), DecodingKey::from_secret(secret.as_bytes())));
    }

    /// The audience every token's `aud` must contain, if one is required.
    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// Requires every token's `aud` to contain `audience` (`--audience`).
    pub fn require_audience(&mut self, audience: &str) {
        self.audience = Some(audience.to_owned());
    }

    /// Verifies a device JWT: HS256 only (the header's `alg` is pinned, `none` refused),
    /// a trusted `iss` checked with that issuer's secret, `exp` required and `nbf`
    /// honoured (60 s leeway on both), valid for at most 24 h, `aud` containing the
    /// audience when one is configured, and a `sub` that is a valid user id.
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
        validation.validate_nbf = true;
        validation.set_issuer(&[iss]);
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
            }
            None => {
                validation.set_required_spec_claims(&["exp", "iss", "sub"]);
                validation.validate_aud = false;
            }
        }
        // The signature is checked before any claim: these errors speak of a token
        // the issuer really signed.
        let claims = jsonwebtoken::decode::<DeviceClaims>(token, key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                ErrorKind::InvalidAudience => JwtError::WrongAudience,
                ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => JwtError::WrongAudience,
                _ => JwtError::Invalid,
            })?
            .claims;
        check_lifetime(&claims, jsonwebtoken::get_current_timestamp())?;
        let user_id = UserId::parse(&claims.sub).ok_or(JwtError::BadSubject)?;
        Ok(DeviceId::new(iss.as_str(), user_id))
    }
}

/// Refuses a token valid for more than 24 h: `exp − iat` when it says when it was
/// issued, and in any case `exp − now` (with the leeway for clock skew), so a token
/// cannot claim a recent `iat` to stretch its life.
fn check_lifetime(claims: &DeviceClaims, now: u64) -> Result<(), JwtError> {
    let by_iat = claims
        .iat
        .is_some_and(|iat| claims.exp.saturating_sub(iat) > MAX_TOKEN_LIFETIME_SECS);
    let by_now = claims.exp.saturating_sub(now) > MAX_TOKEN_LIFETIME_SECS + JWT_LEEWAY_SECS;
    if by_iat || by_now {
        return Err(JwtError::TooLong);
    }
    Ok(())
}

/// Signs a device JWT with `iat` and `exp` `ttl_secs` later (for the `token` subcommand,
/// the demo and tests).
pub fn mint_device_jwt(
    iss: &str,
    secret: &str,
    sub: &str,
    ttl_secs: u64,
) -> Result<String, String> {
    mint_device_jwt_for(iss, secret, sub, ttl_secs, None)
}

/// As [`mint_device_jwt`], with `aud` set to `audience` when one is given.
pub fn mint_device_jwt_for(
    iss: &str,
    secret: &str,
    sub: &str,
    ttl_secs: u64,
    audience: Option<&str>,
) -> Result<String, String> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = DeviceClaims {
        iss: iss.to_owned(),
        sub: sub.to_owned(),
        exp: now + ttl_secs,
        iat: Some(now),
        nbf: None,
        aud: audience.map(|a| Audience::One(a.to_owned())),
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

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    /// Claims of `alice` from `phone-app`, expiring `exp` (unix seconds).
    fn claims(exp: u64) -> DeviceClaims {
        DeviceClaims {
            iss: "phone-app".into(),
            sub: "alice".into(),
            exp,
            iat: None,
            nbf: None,
            aud: None,
        }
    }

    fn sign(claims: &DeviceClaims) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
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
        let jwt = sign(&claims(now() - 120));
        assert_eq!(i.verify(&jwt), Err(JwtError::Expired));
        assert_eq!(i.verify("not.a.jwt"), Err(JwtError::Malformed));
    }

    #[test]
    fn expiry_within_the_leeway_is_accepted() {
        let jwt = sign(&claims(now() - 30));
        assert!(issuers().verify(&jwt).is_ok());
    }

    #[test]
    fn nbf_is_honoured_with_the_leeway() {
        let ahead = |secs| {
            sign(&DeviceClaims {
                nbf: Some(now() + secs),
                ..claims(now() + 600)
            })
        };
        assert_eq!(issuers().verify(&ahead(300)), Err(JwtError::NotYetValid));
        assert!(issuers().verify(&ahead(30)).is_ok(), "within the leeway");
        let past = sign(&DeviceClaims {
            nbf: Some(now() - 10),
            ..claims(now() + 600)
        });
        assert!(issuers().verify(&past).is_ok());
    }

    #[test]
    fn a_token_valid_for_more_than_24_hours_is_refused() {
        let day = MAX_TOKEN_LIFETIME_SECS;
        // By `exp − iat`.
        let long = sign(&DeviceClaims {
            iat: Some(now() - 3600),
            ..claims(now() - 3600 + day + 1)
        });
        assert_eq!(issuers().verify(&long), Err(JwtError::TooLong));
        let full_day = sign(&DeviceClaims {
            iat: Some(now()),
            ..claims(now() + day)
        });
        assert!(issuers().verify(&full_day).is_ok());
        // By `exp − now` without `iat`, with the leeway for skew.
        let long = sign(&claims(now() + day + JWT_LEEWAY_SECS + 60));
        assert_eq!(issuers().verify(&long), Err(JwtError::TooLong));
        assert!(issuers().verify(&sign(&claims(now() + day))).is_ok());
        // A recent `iat` does not stretch a token that runs for a year from now.
        let stretched = sign(&DeviceClaims {
            iat: Some(now() + 365 * day - 60),
            ..claims(now() + 365 * day)
        });
        assert_eq!(issuers().verify(&stretched), Err(JwtError::TooLong));
        // The subcommand's tokens pass.
        let minted = mint_device_jwt("phone-app", "s3cret", "alice", day).unwrap();
        assert!(issuers().verify(&minted).is_ok());
    }

    #[test]
    fn with_an_audience_aud_is_required_and_must_contain_it() {
        let mut i = issuers();
        let aud = |aud: Option<Audience>| {
            sign(&DeviceClaims {
                aud,
                ..claims(now() + 600)
            })
        };
        let one = |a: &str| Some(Audience::One(a.into()));
        let many = |a: &[&str]| Some(Audience::Many(a.iter().map(|s| (*s).into()).collect()));
        // Without --audience, `aud` is neither required nor checked.
        assert!(i.verify(&aud(None)).is_ok());
        assert!(i.verify(&aud(one("anyone"))).is_ok());
        i.require_audience("idv-broker");
        assert_eq!(i.verify(&aud(None)), Err(JwtError::WrongAudience));
        assert_eq!(i.verify(&aud(one("other"))), Err(JwtError::WrongAudience));
        assert_eq!(
            i.verify(&aud(many(&["a", "b"]))),
            Err(JwtError::WrongAudience)
        );
        assert!(i.verify(&aud(one("idv-broker"))).is_ok());
        assert!(i.verify(&aud(many(&["a", "idv-broker"]))).is_ok());
        let minted =
            mint_device_jwt_for("phone-app", "s3cret", "alice", 60, Some("idv-broker")).unwrap();
        assert!(i.verify(&minted).is_ok());
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
            &claims(exp),
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
    fn the_demo_issuer_touches_only_the_demo_keys_sessions_and_other_issuers_any() {
        assert!(issuer_may_touch(DEMO_ISSUER, DEMO_API_KEY_NAME));
        assert!(!issuer_may_touch(DEMO_ISSUER, "Acme Bank"));
        assert!(!issuer_may_touch(DEMO_ISSUER, ""));
        assert!(issuer_may_touch("phone-app", "Acme Bank"));
        assert!(issuer_may_touch("phone-app", DEMO_API_KEY_NAME));
        // Exact names: a look-alike issuer is not the demo's.
        assert!(issuer_may_touch("idv-demo2", "Acme Bank"));
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

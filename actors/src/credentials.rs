//! The credentials of SPEC §1: backend API keys and device JWTs, and the lane the
//! demo's own credentials are kept in ([`issuer_may_touch`]).
//! (Session tokens are [`crate::ids::SessionToken`].)

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::{DeviceId, UserId};
use crate::jwks::JwksCell;
use crate::keys::{KeySet, Selection};

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
    /// Not a JWT, or not HS256 for an issuer with a secret.
    #[error("the device token is malformed")]
    Malformed,
    /// No key of the issuer has the token's `kid` (nor, for a JWKS issuer, after a fetch).
    #[error("the device token's kid names no key of its issuer")]
    UnknownKey,
    /// The token's `alg` does not fit the type of its issuer's key (an HMAC `alg`
    /// against a public key, RS256 against an EC key, …).
    #[error("the device token's alg does not fit its issuer's key")]
    WrongAlgorithm,
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

/// How one issuer's tokens are checked.
#[derive(Clone)]
enum Trust {
    /// `--issuer ISS=SECRET`: HS256 with a shared secret.
    Secret(DecodingKey),
    /// `--issuer-key ISS=PATH`: PEM public keys (several while rotating).
    Keys(Arc<KeySet>),
    /// `--issuer-jwks ISS=URL`: the key set fetched in the background.
    Jwks(Arc<JwksCell>),
}

/// The trusted device-token issuers, each with an HS256 secret or public keys, and the
/// audience tokens must name, if any.
#[derive(Clone, Default)]
pub struct Issuers {
    issuers: Vec<(String, Trust)>,
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
    /// Trusts `iss`, with tokens signed by `secret` (HS256).
    pub fn add(&mut self, iss: &str, secret: &str) {
        self.issuers.push((
            iss.to_owned(),
            Trust::Secret(DecodingKey::from_secret(secret.as_bytes())),
        ));
    }

    /// Trusts `iss`, with tokens signed by one of `keys` (`--issuer-key`).
    pub fn add_keys(&mut self, iss: &str, keys: KeySet) {
        self.issuers
            .push((iss.to_owned(), Trust::Keys(Arc::new(keys))));
    }

    /// Trusts `iss`, with tokens signed by a key of the set `cell` holds (`--issuer-jwks`).
    pub fn add_jwks(&mut self, cell: Arc<JwksCell>) {
        self.issuers
            .push((cell.issuer().to_owned(), Trust::Jwks(cell)));
    }

    /// The JWKS cells of these issuers (a reload keeps the ones whose issuer and URL
    /// stay, so their sets are not fetched again).
    pub fn jwks_cells(&self) -> impl Iterator<Item = &Arc<JwksCell>> {
        self.issuers.iter().filter_map(|(_, t)| match t {
            Trust::Jwks(cell) => Some(cell),
            _ => None,
        })
    }

    /// The JWKS issuers that have no key set yet: while there is one, the broker is
    /// not ready (`/readyz` 503).
    pub fn pending_jwks(&self) -> Vec<&str> {
        self.jwks_cells()
            .filter(|c| c.current().is_none())
            .map(|c| c.issuer())
            .collect()
    }

    /// The audience every token's `aud` must contain, if one is required.
    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// Requires every token's `aud` to contain `audience` (`--audience`).
    pub fn require_audience(&mut self, audience: &str) {
        self.audience = Some(audience.to_owned());
    }

    /// As [`Issuers::verify`]; when the token names a `kid` that its JWKS issuer's set
    /// lacks (or the issuer has no set yet), asks for a fetch (at most once per
    /// [`JwksConfig::min_refresh_gap`](crate::jwks::JwksConfig::min_refresh_gap)),
    /// waits for it briefly and verifies again.
    pub async fn verify_fresh(&self, token: &str) -> Result<DeviceId, JwtError> {
        match self.verify(token) {
            Err(JwtError::UnknownKey) => {
                let cell = self.unverified_issuer(token).and_then(|(_, t)| match t {
                    Trust::Jwks(cell) => Some(cell.clone()),
                    _ => None,
                });
                match cell {
                    Some(cell) if cell.refresh_and_wait().await => self.verify(token),
                    _ => Err(JwtError::UnknownKey),
                }
            }
            other => other,
        }
    }

    /// The issuer a token claims, read unverified, only to pick the key.
    fn unverified_issuer(&self, token: &str) -> Option<&(String, Trust)> {
        let unverified: DeviceClaims =
            jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
        self.issuers.iter().find(|(iss, _)| *iss == unverified.iss)
    }

    /// Verifies a device JWT: a trusted `iss`, checked with that issuer's key: HS256
    /// with a secret; with public keys, the key picked by `kid` and an `alg` that fits
    /// its type (RS256, PS256, ES256, EdDSA; `none` and HMAC refused). `exp` required
    /// and `nbf` honoured (60 s leeway on both), valid for at most 24 h, `aud`
    /// containing the audience when one is configured, and a `sub` that is a valid
    /// user id.
    pub fn verify(&self, token: &str) -> Result<DeviceId, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        // The issuer is read unverified only to pick the key; the signature is then
        // checked with that issuer's key and `iss` is validated again.
        let unverified: DeviceClaims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| JwtError::Invalid)?;
        let (iss, trust) = self
            .issuers
            .iter()
            .find(|(iss, _)| *iss == unverified.iss)
            .ok_or(JwtError::UnknownIssuer)?;
        let claims = match trust {
            Trust::Secret(key) => {
                if header.alg != Algorithm::HS256 {
                    return Err(JwtError::Malformed);
                }
                self.decode(token, iss, key, Algorithm::HS256)?
            }
            Trust::Keys(set) => self.decode_with_set(token, iss, set, &header)?,
            Trust::Jwks(cell) => {
                let set = cell.current().ok_or(JwtError::UnknownKey)?;
                self.decode_with_set(token, iss, &set, &header)?
            }
        };
        check_lifetime(&claims, jsonwebtoken::get_current_timestamp())?;
        let user_id = UserId::parse(&claims.sub).ok_or(JwtError::BadSubject)?;
        Ok(DeviceId::new(iss.as_str(), user_id))
    }

    fn decode_with_set(
        &self,
        token: &str,
        iss: &str,
        set: &KeySet,
        header: &Header,
    ) -> Result<DeviceClaims, JwtError> {
        let keys = set
            .select(header.kid.as_deref(), header.alg)
            .map_err(|e| match e {
                Selection::UnknownKid => JwtError::UnknownKey,
                Selection::WrongAlgorithm => JwtError::WrongAlgorithm,
            })?;
        // Several keys only without a `kid` match (PEM files while rotating): the first
        // whose signature holds; a claim error of a good signature is final.
        let mut last = JwtError::Invalid;
        for key in keys {
            match self.decode(token, iss, key.decoding_key(), header.alg) {
                Ok(claims) => return Ok(claims),
                Err(JwtError::Invalid) => last = JwtError::Invalid,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn decode(
        &self,
        token: &str,
        iss: &str,
        key: &DecodingKey,
        alg: Algorithm,
    ) -> Result<DeviceClaims, JwtError> {
        let mut validation = Validation::new(alg);
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
        Ok(
            jsonwebtoken::decode::<DeviceClaims>(token, key, &validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => JwtError::Expired,
                    ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                    ErrorKind::InvalidAudience => JwtError::WrongAudience,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                        JwtError::WrongAudience
                    }
                    _ => JwtError::Invalid,
                })?
                .claims,
        )
    }
}

/// The credentials in use: API keys and issuers, replaced as a whole by a reload.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Backend API keys.
    pub api_keys: ApiKeys,
    /// Trusted device-token issuers.
    pub issuers: Issuers,
}

/// The credentials in use, swappable at run time (`--credentials` and `SIGHUP`).
///
/// Every request reads the current set once ([`SharedCredentials::load`]) and keeps that
/// `Arc` to its end: a key removed by a reload stops working for the next request,
/// while requests in flight finish with the set they began with. The lock is held
/// only to clone or replace the `Arc`, never across an await.
#[derive(Clone, Default)]
pub struct SharedCredentials(Arc<RwLock<Arc<Credentials>>>);

impl std::fmt::Debug for SharedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.load().fmt(f)
    }
}

impl SharedCredentials {
    /// Holds `credentials`.
    pub fn new(credentials: Credentials) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(credentials))))
    }

    /// The set in use now.
    pub fn load(&self) -> Arc<Credentials> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `credentials` in use for every later request.
    pub fn replace(&self, credentials: Credentials) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(credentials);
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

/// Signs a device JWT with a PEM private key (the `token` subcommand, for issuers
/// trusted by public keys): RSA (`alg` RS256 by default, or PS256), EC P-256 (ES256)
/// or Ed25519 (EdDSA); `kid` in the header when given.
pub fn mint_device_jwt_with_key(
    iss: &str,
    private_pem: &[u8],
    alg: Option<Algorithm>,
    kid: Option<&str>,
    sub: &str,
    ttl_secs: u64,
    audience: Option<&str>,
) -> Result<String, String> {
    let (key, default_alg) = if let Ok(k) = EncodingKey::from_rsa_pem(private_pem) {
        (k, Algorithm::RS256)
    } else if let Ok(k) = EncodingKey::from_ec_pem(private_pem) {
        (k, Algorithm::ES256)
    } else if let Ok(k) = EncodingKey::from_ed_pem(private_pem) {
        (k, Algorithm::EdDSA)
    } else {
        return Err("the key is not a PEM private key (RSA, EC P-256 or Ed25519)".into());
    };
    let alg = alg.unwrap_or(default_alg);
    if alg.family() != default_alg.family() {
        return Err(format!(
            "{alg:?} does not fit this key (use {default_alg:?})"
        ));
    }
    let now = jsonwebtoken::get_current_timestamp();
    let claims = DeviceClaims {
        iss: iss.to_owned(),
        sub: sub.to_owned(),
        exp: now + ttl_secs,
        iat: Some(now),
        nbf: None,
        aud: audience.map(|a| Audience::One(a.to_owned())),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
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

    mod public_keys {
        use super::*;
        use crate::keys::PublicKey;

        const RSA_KEY: &str = include_str!("../testdata/rsa.key");
        const RSA_PUB: &str = include_str!("../testdata/rsa.pub");
        const EC_KEY: &str = include_str!("../testdata/ec.key");
        const EC_PUB: &str = include_str!("../testdata/ec.pub");
        const ED_KEY: &str = include_str!("../testdata/ed.key");
        const ED_PUB: &str = include_str!("../testdata/ed.pub");
        const EC384_PUB: &str = include_str!("../testdata/ec384.pub");

        fn public(pem: &str) -> PublicKey {
            PublicKey::from_pem(pem.as_bytes()).unwrap()
        }

        /// `mobile` trusted by the three public keys, `phone-app` by a secret.
        fn issuers() -> Issuers {
            let mut i = Issuers::default();
            i.add("phone-app", "s3cret");
            i.add_keys(
                "mobile",
                KeySet::new(vec![
                    public(RSA_PUB).with_kid(Some("rsa".into())),
                    public(EC_PUB).with_kid(Some("ec".into())),
                    public(ED_PUB).with_kid(Some("ed".into())),
                ]),
            );
            i
        }

        fn mint(key: &str, alg: Option<Algorithm>, kid: Option<&str>) -> String {
            mint_device_jwt_with_key("mobile", key.as_bytes(), alg, kid, "alice", 60, None).unwrap()
        }

        #[test]
        fn tokens_of_each_key_type_are_accepted_under_their_kid() {
            let i = issuers();
            for (key, alg, kid) in [
                (RSA_KEY, Algorithm::RS256, "rsa"),
                (RSA_KEY, Algorithm::PS256, "rsa"),
                (EC_KEY, Algorithm::ES256, "ec"),
                (ED_KEY, Algorithm::EdDSA, "ed"),
            ] {
                let device = i.verify(&mint(key, Some(alg), Some(kid))).unwrap();
                assert_eq!(
                    (device.issuer.as_str(), device.user_id.as_str()),
                    ("mobile", "alice"),
                    "{alg:?}"
                );
            }
        }

        #[test]
        fn an_unknown_kid_a_wrong_key_and_a_mismatched_alg_are_refused() {
            let i = issuers();
            assert_eq!(
                i.verify(&mint(ED_KEY, None, Some("nope"))),
                Err(JwtError::UnknownKey)
            );
            // The Ed25519 key's token under the EC key's kid: EdDSA does not fit EC.
            assert_eq!(
                i.verify(&mint(ED_KEY, None, Some("ec"))),
                Err(JwtError::WrongAlgorithm)
            );
            // A token for the Ed25519 key carrying another signature: refused.
            let ed = mint(ED_KEY, None, Some("ed"));
            let ec = mint(EC_KEY, None, Some("ec"));
            let (signed, _) = ed.rsplit_once('.').unwrap();
            let (_, other_sig) = ec.rsplit_once('.').unwrap();
            let bad = format!("{signed}.{other_sig}");
            assert_eq!(i.verify(&bad), Err(JwtError::Invalid));
        }

        #[test]
        fn hmac_with_the_public_key_as_secret_and_alg_none_are_refused() {
            let i = issuers();
            // Algorithm confusion: HS256 "signed" with the public key's PEM bytes.
            for (kid, pem) in [("rsa", RSA_PUB), ("ec", EC_PUB), ("ed", ED_PUB)] {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = Some(kid.into());
                let claims = DeviceClaims {
                    iss: "mobile".into(),
                    ..claims(now() + 60)
                };
                let confused = jsonwebtoken::encode(
                    &header,
                    &claims,
                    &EncodingKey::from_secret(pem.as_bytes()),
                )
                .unwrap();
                assert_eq!(i.verify(&confused), Err(JwtError::WrongAlgorithm), "{kid}");
            }
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let body = b64.encode(format!(
                r#"{{"iss":"mobile","sub":"alice","exp":{}}}"#,
                now() + 60
            ));
            let none = format!(
                "{}.{body}.",
                b64.encode(r#"{"alg":"none","kid":"ed","typ":"JWT"}"#)
            );
            assert_eq!(i.verify(&none), Err(JwtError::Malformed));
            // A public-key token for an issuer of a secret is refused too.
            let rs = mint_device_jwt_with_key(
                "phone-app",
                RSA_KEY.as_bytes(),
                None,
                None,
                "alice",
                60,
                None,
            )
            .unwrap();
            assert_eq!(i.verify(&rs), Err(JwtError::Malformed));
        }

        #[test]
        fn every_claim_rule_holds_for_public_keys_too() {
            let mut i = issuers();
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some("ed".into());
            let sign = |c: &DeviceClaims| {
                jsonwebtoken::encode(
                    &header,
                    c,
                    &EncodingKey::from_ed_pem(ED_KEY.as_bytes()).unwrap(),
                )
                .unwrap()
            };
            let old = DeviceClaims {
                iss: "mobile".into(),
                ..claims(now() - 120)
            };
            assert_eq!(i.verify(&sign(&old)), Err(JwtError::Expired));
            let long = DeviceClaims {
                iss: "mobile".into(),
                ..claims(now() + 2 * MAX_TOKEN_LIFETIME_SECS)
            };
            assert_eq!(i.verify(&sign(&long)), Err(JwtError::TooLong));
            i.require_audience("idv-broker");
            let fresh = DeviceClaims {
                iss: "mobile".into(),
                ..claims(now() + 60)
            };
            assert_eq!(i.verify(&sign(&fresh)), Err(JwtError::WrongAudience));
        }

        #[test]
        fn a_key_file_without_kid_matches_any_kid_and_rotation_tries_each() {
            let mut i = Issuers::default();
            i.add_keys("mobile", KeySet::new(vec![public(EC_PUB), public(ED_PUB)]));
            assert!(i.verify(&mint(ED_KEY, None, Some("whatever"))).is_ok());
            assert!(i.verify(&mint(EC_KEY, None, None)).is_ok());
            assert_eq!(
                i.verify(&mint(RSA_KEY, None, None)),
                Err(JwtError::WrongAlgorithm)
            );
        }

        #[test]
        fn an_ec_key_on_another_curve_is_not_taken() {
            assert!(PublicKey::from_pem(EC384_PUB.as_bytes()).is_err());
            for pem in [RSA_PUB, EC_PUB, ED_PUB] {
                assert!(PublicKey::from_pem(pem.as_bytes()).is_ok());
            }
        }

        #[test]
        fn the_token_command_refuses_an_alg_that_does_not_fit_its_key() {
            assert!(mint_device_jwt_with_key(
                "mobile",
                EC_KEY.as_bytes(),
                Some(Algorithm::RS256),
                None,
                "alice",
                60,
                None
            )
            .is_err());
        }
    }
}

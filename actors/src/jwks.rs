//! Issuers trusted by a JSON Web Key Set (SPEC §6 `--issuer-jwks`): the key set in use
//! ([`JwksCell`]) and the supervised background task that fetches it ([`spawn_fetcher`]).
//!
//! Life cycle: fetched at start, then every [`JwksConfig::refresh_every`]; after a
//! failed fetch, again after [`JwksConfig::min_refresh_gap`]; and when a token names an
//! unknown `kid`, at most once per `min_refresh_gap`. A failed fetch keeps the last good
//! set. The fetch never runs on a request's path: a request may only ask for one and
//! wait for it, bounded ([`JwksCell::refresh_and_wait`]).

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;

use crate::keys::{KeySet, PublicKey};

/// The bounds and timings of JWKS fetching.
#[derive(Clone, Copy, Debug)]
pub struct JwksConfig {
    /// Time between fetches of a set that works (10 min).
    pub refresh_every: Duration,
    /// Least time between two fetches asked for by unknown `kid`s, and between retries
    /// after a failure (30 s; tests shrink it).
    pub min_refresh_gap: Duration,
    /// How long one fetch may take, connect and body included (5 s).
    pub timeout: Duration,
    /// Largest response accepted (256 KiB).
    pub max_bytes: usize,
    /// Most keys taken from one set (100); the rest are ignored.
    pub max_keys: usize,
    /// How long a request with an unknown `kid` waits for the fetch it asked for (2 s).
    pub unknown_kid_wait: Duration,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            refresh_every: Duration::from_secs(600),
            min_refresh_gap: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            max_bytes: 256 * 1024,
            max_keys: 100,
            unknown_kid_wait: Duration::from_secs(2),
        }
    }
}

/// Whether a JWKS URL may be used: `https`, or `http` on a loopback host only (a key
/// set fetched in clear text over a network could be replaced by anyone on the path).
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match (parsed.scheme(), parsed.host()) {
        ("https", Some(_)) => Ok(()),
        ("http", Some(url::Host::Domain(d))) if d.eq_ignore_ascii_case("localhost") => Ok(()),
        ("http", Some(url::Host::Ipv4(ip))) if ip.is_loopback() => Ok(()),
        ("http", Some(url::Host::Ipv6(ip))) if ip.is_loopback() => Ok(()),
        _ => Err(format!(
            "{url:?}: a JWKS URL must be https (http only on a loopback host)"
        )),
    }
}

/// The key set of one JWKS issuer, shared by the verifier (reads) and its fetcher
/// (writes).
pub struct JwksCell {
    /// The issuer (`iss`), for logs and metric labels.
    issuer: String,
    /// Where the set is fetched.
    url: String,
    /// The last good set and when it was fetched; `None` until the first success.
    /// Read per request, written once per successful fetch.
    set: RwLock<Option<(Arc<KeySet>, Instant)>>,
    /// When the last fetch began: the rate limit of fetches asked for by requests.
    last_attempt: Mutex<Option<Instant>>,
    /// Wakes the fetcher for a fetch a request asked for.
    wake: Arc<tokio::sync::Notify>,
    /// Counts finished fetches (success or not), so a waiting request learns that the
    /// fetch it asked for is done.
    done: tokio::sync::watch::Sender<u64>,
    config: JwksConfig,
}

impl std::fmt::Debug for JwksCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCell")
            .field("issuer", &self.issuer)
            .field("url", &self.url)
            .finish()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl JwksCell {
    /// A cell for `issuer`'s set at `url`, empty until its fetcher runs.
    pub fn new(issuer: &str, url: &str, config: JwksConfig) -> Arc<Self> {
        Arc::new(Self {
            issuer: issuer.to_owned(),
            url: url.to_owned(),
            set: RwLock::new(None),
            last_attempt: Mutex::new(None),
            wake: Arc::new(tokio::sync::Notify::new()),
            done: tokio::sync::watch::channel(0).0,
            config,
        })
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The set in use; `None` before the first successful fetch.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        read(&self.set).as_ref().map(|(set, _)| set.clone())
    }

    /// Asks the fetcher for a fetch now, unless one began less than
    /// [`JwksConfig::min_refresh_gap`] ago, and waits for it to finish, at most
    /// [`JwksConfig::unknown_kid_wait`]. Returns whether a fetch finished meanwhile
    /// (so the caller may look again).
    pub async fn refresh_and_wait(&self) -> bool {
        let mut done = self.done.subscribe();
        done.mark_unchanged();
        {
            let last = lock(&self.last_attempt);
            if last.is_some_and(|at| at.elapsed() < self.config.min_refresh_gap) {
                return false;
            }
        }
        self.wake.notify_one();
        matches!(
            tokio::time::timeout(self.config.unknown_kid_wait, done.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Takes the right to fetch now if none began within the gap (`forced` skips the
    /// gap: the periodic fetch).
    fn begin_attempt(&self, forced: bool) -> bool {
        let mut last = lock(&self.last_attempt);
        if !forced && last.is_some_and(|at| at.elapsed() < self.config.min_refresh_gap) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn install(&self, set: KeySet) {
        *self
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Arc::new(set), Instant::now()));
    }

    fn age(&self) -> Option<Duration> {
        read(&self.set).as_ref().map(|(_, at)| at.elapsed())
    }
}

/// Why a fetch failed; its metric `outcome` is [`FetchError::outcome`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer: connect, TLS or timeout.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An answer other than 200.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// Larger than [`JwksConfig::max_bytes`].
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    /// Not a JWKS, or no usable key in it.
    #[error("not a usable JSON Web Key Set: {0}")]
    Invalid(String),
}

impl FetchError {
    /// The `outcome` label of [`crate::metrics::JWKS_FETCHES`].
    pub fn outcome(&self) -> &'static str {
        match self {
            FetchError::Unreachable(_) => "unreachable",
            FetchError::Status(_) => "bad_status",
            FetchError::TooLarge(_) | FetchError::Invalid(_) => "invalid",
        }
    }
}

/// The HTTP client of JWKS fetches: rustls with `ring` and the platform's roots, no
/// redirects (a redirect could lead to `http`), no cookies, the fetch timeout.
pub fn http_client(config: &JwksConfig) -> Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_platform_verifier()
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .user_agent(concat!("idv-broker-jwks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// Parses a JWKS body: its usable keys (at most `max_keys`); keys of other types are
/// skipped, and a set with none usable is an error.
pub fn parse_set(body: &[u8], max_keys: usize) -> Result<KeySet, FetchError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| FetchError::Invalid(e.to_string()))?;
    let keys: Vec<PublicKey> = raw
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(|jwk| PublicKey::from_jwk(&jwk).ok())
        .take(max_keys)
        .collect();
    if keys.is_empty() {
        return Err(FetchError::Invalid(
            "no RSA, P-256 or Ed25519 signing key".into(),
        ));
    }
    Ok(KeySet::new(keys))
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    config: &JwksConfig,
) -> Result<KeySet, FetchError> {
    let mut res = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| FetchError::Unreachable(e.to_string()))?;
    if res.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Status(res.status().as_u16()));
    }
    if res
        .content_length()
        .is_some_and(|n| n > config.max_bytes as u64)
    {
        return Err(FetchError::TooLarge(config.max_bytes));
    }
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| FetchError::Unreachable(e.to_string()))?
    {
        if body.len() + chunk.len() > config.max_bytes {
            return Err(FetchError::TooLarge(config.max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    parse_set(&body, config.max_keys)
}

/// One fetch for `cell`: the set replaced on success, kept on failure; counted and
/// logged either way; waiting requests told.
async fn fetch_into(cell: &JwksCell, client: &reqwest::Client) -> bool {
    let result = fetch(client, &cell.url, &cell.config).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    metrics::counter!(crate::metrics::JWKS_FETCHES, "issuer" => cell.issuer.clone(), "outcome" => outcome)
        .increment(1);
    let ok = match result {
        Ok(set) => {
            tracing::debug!(issuer = %cell.issuer, keys = set.len(), "JWKS fetched");
            cell.install(set);
            true
        }
        Err(e) => {
            let kept = cell.current().is_some();
            tracing::warn!(issuer = %cell.issuer, url = %cell.url, error = %e, kept_last_good_set = kept, "JWKS fetch failed");
            false
        }
    };
    cell.done.send_modify(|n| *n += 1);
    ok
}

/// How often the fetcher wakes to publish the age of its set and to notice that its
/// cell is gone.
const TICK: Duration = Duration::from_secs(5);

/// The fetch loop of one cell: runs until the cell is dropped (its issuer removed by a
/// reload, or the broker stopped). Holds only a weak reference between fetches.
async fn fetch_loop(cell: Weak<JwksCell>, wake: Arc<tokio::sync::Notify>, client: reqwest::Client) {
    let mut next_periodic = Instant::now();
    loop {
        let Some(strong) = cell.upgrade() else {
            return;
        };
        if Instant::now() >= next_periodic && strong.begin_attempt(true) {
            // A failed fetch is retried after the gap, a good one after the period.
            let ok = fetch_into(&strong, &client).await;
            next_periodic = Instant::now()
                + if ok {
                    strong.config.refresh_every
                } else {
                    strong.config.min_refresh_gap
                };
        }
        if let Some(age) = strong.age() {
            metrics::gauge!(crate::metrics::JWKS_AGE, "issuer" => strong.issuer.clone())
                .set(age.as_secs_f64());
        }
        drop(strong);
        let until_periodic = next_periodic.saturating_duration_since(Instant::now());
        tokio::select! {
            () = wake.notified() => {
                if let Some(strong) = cell.upgrade() {
                    if strong.begin_attempt(false) {
                        fetch_into(&strong, &client).await;
                    } else {
                        // Within the gap: tell the waiter there is nothing newer.
                        strong.done.send_modify(|n| *n += 1);
                    }
                }
            }
            () = tokio::time::sleep(until_periodic.min(TICK)) => {}
        }
    }
}

/// Makes JWKS cells and starts their fetchers, all with one HTTP client.
#[derive(Clone)]
pub struct JwksFetcher {
    client: reqwest::Client,
    config: JwksConfig,
}

impl std::fmt::Debug for JwksFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksFetcher")
            .field("config", &self.config)
            .finish()
    }
}

impl JwksFetcher {
    /// A fetcher with `config`'s bounds; fails only if the TLS client cannot be built.
    pub fn new(config: JwksConfig) -> Result<Self, String> {
        Ok(Self {
            client: http_client(&config)?,
            config,
        })
    }

    /// A cell for `issuer`'s set at `url`, its fetcher started on the current Tokio
    /// runtime (the first fetch at once).
    pub fn start(&self, issuer: &str, url: &str) -> Arc<JwksCell> {
        let cell = JwksCell::new(issuer, url, self.config);
        spawn_fetcher(&cell, self.client.clone());
        cell
    }
}

/// Starts the supervised fetcher of `cell` on the current Tokio runtime (see
/// [`crate::supervise`]: a panic in the loop is logged, counted and the loop restarted);
/// the fetcher ends when the cell is dropped.
pub fn spawn_fetcher(cell: &Arc<JwksCell>, client: reqwest::Client) {
    let weak = Arc::downgrade(cell);
    let wake = cell.wake.clone();
    tokio::spawn(crate::supervise::run_loop(
        crate::supervise::Tasks::default(),
        crate::supervise::Task::JwksFetcher,
        move |_| fetch_loop(weak.clone(), wake.clone(), client.clone()),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwks_url_is_https_or_loopback_http() {
        assert!(check_url("https://sso.example/realms/r/protocol/openid-connect/certs").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://[::1]:9/jwks").is_ok());
        assert!(check_url("http://sso.example/jwks").is_err());
        assert!(check_url("http://10.0.0.1/jwks").is_err());
        assert!(check_url("ftp://127.0.0.1/jwks").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn a_set_keeps_its_usable_keys_within_the_bound() {
        let ed = |kid: usize| {
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid.to_string(),
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
        };
        let mut keys: Vec<_> = (0..150).map(ed).collect();
        keys.push(serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}));
        let body = serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap();
        assert_eq!(parse_set(&body, 100).unwrap().len(), 100);
        let only_hmac = br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#;
        assert!(parse_set(only_hmac, 100).is_err());
        assert!(parse_set(b"<html>", 100).is_err());
    }
}

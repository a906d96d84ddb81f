//! Credentials put in use, at start and again on `SIGHUP` (SPEC §6 `--credentials`):
//! the flags and the file are read and checked as a whole, then swapped in at once for
//! every later request; a file that does not parse or breaks a rule keeps the set in
//! use, and the reason is logged on one line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use idv_actors::credentials::{ApiKeys, Credentials, Issuers, SharedCredentials};
use idv_actors::jwks::{JwksCell, JwksFetcher};
use idv_actors::keys::{KeySet, PublicKey};
use idv_actors::webhooks::Signer;

use crate::credentials_file::CredentialSources;
use crate::demo::DemoSecrets;
use crate::settings::{DEMO_API_KEY_NAME, DEMO_ISSUER};

/// Reads the credentials of the flags and, if there is one, of the file, and checks
/// them together.
pub fn read_sources(
    flags: &CredentialSources,
    file: Option<&std::path::Path>,
) -> Result<CredentialSources, String> {
    let sources = match file {
        Some(path) => CredentialSources::merged(flags, CredentialSources::read_file(path)?),
        None => flags.clone(),
    };
    sources.check().map_err(|e| match file {
        // The rule names the flag of its kind; the value may come from the file.
        Some(path) => format!("{e} (flags and --credentials {})", path.display()),
        None => e,
    })?;
    Ok(sources)
}

/// Builds the credentials of `sources`: key files read now, JWKS cells taken over from
/// `previous` when their issuer and URL stay (so the set in use is not fetched again),
/// new ones started with `fetcher`. Nothing is started before every key file is read,
/// so a refused set leaves no fetcher behind.
pub fn build_credentials(
    sources: &CredentialSources,
    audience: Option<&str>,
    demo: Option<&DemoSecrets>,
    fetcher: &JwksFetcher,
    previous: Option<&Credentials>,
) -> Result<Credentials, String> {
    let mut api_keys = ApiKeys::default();
    for (name, key) in &sources.api_keys {
        api_keys.add(name, key);
    }
    let mut issuers = Issuers::default();
    for (iss, secret) in &sources.issuers {
        issuers.add(iss, secret);
    }
    let mut key_sets: Vec<(String, Vec<PublicKey>)> = Vec::new();
    for (iss, path) in &sources.issuer_keys {
        let pem = std::fs::read(path)
            .map_err(|e| format!("--issuer-key {iss}: {}: {e}", path.display()))?;
        let key = PublicKey::from_pem(&pem)
            .map_err(|e| format!("--issuer-key {iss}: {}: {e}", path.display()))?;
        match key_sets.iter_mut().find(|(name, _)| name == iss) {
            Some((_, keys)) => keys.push(key),
            None => key_sets.push((iss.clone(), vec![key])),
        }
    }
    for (iss, keys) in key_sets {
        issuers.add_keys(&iss, KeySet::new(keys));
    }
    let running: HashMap<(&str, &str), &Arc<JwksCell>> = previous
        .map(|p| {
            p.issuers
                .jwks_cells()
                .map(|c| ((c.issuer(), c.url()), c))
                .collect()
        })
        .unwrap_or_default();
    for (iss, url) in &sources.issuer_jwks {
        let cell = match running.get(&(iss.as_str(), url.as_str())) {
            Some(cell) => Arc::clone(cell),
            None => fetcher.start(iss, url),
        };
        issuers.add_jwks(cell);
    }
    if let Some(demo) = demo {
        api_keys.add(DEMO_API_KEY_NAME, &demo.api_key);
        issuers.add(DEMO_ISSUER, &demo.issuer_secret);
    }
    if let Some(audience) = audience {
        issuers.require_audience(audience);
    }
    Ok(Credentials { api_keys, issuers })
}

/// Puts the credentials file in use again (on `SIGHUP`).
#[derive(Clone, Debug)]
pub struct CredentialsReloader {
    /// What every request reads.
    pub(crate) shared: SharedCredentials,
    /// The flags' credentials: they stay whatever the file says.
    pub(crate) flags: CredentialSources,
    /// The file, if any.
    pub(crate) file: Option<PathBuf>,
    pub(crate) audience: Option<String>,
    pub(crate) demo: Option<DemoSecrets>,
    /// The webhook signer, shared with the dispatcher; `None` without webhooks.
    pub(crate) signer: Option<Signer>,
    pub(crate) fetcher: JwksFetcher,
}

impl CredentialsReloader {
    /// Reads the file again and puts flags and file in use for every later request;
    /// on any error nothing changes and the error says why. Webhooks cannot be turned
    /// on or off by a reload (the store decides at start whether transitions are sent).
    pub fn reload(&self) -> Result<String, String> {
        let Some(file) = &self.file else {
            return Err("no --credentials file to read again".into());
        };
        let sources = read_sources(&self.flags, Some(file))?;
        match (&self.signer, sources.webhook_secrets.is_empty()) {
            (None, false) => {
                return Err(
                    "webhook secrets cannot be added by a reload to a broker started without any; restart it"
                        .into(),
                )
            }
            (Some(_), true) => {
                return Err(
                    "the reload leaves no webhook secret; the broker sends nothing unsigned".into(),
                )
            }
            _ => {}
        }
        let current = self.shared.load();
        let credentials = build_credentials(
            &sources,
            self.audience.as_deref(),
            self.demo.as_ref(),
            &self.fetcher,
            Some(&current),
        )?;
        if let Some(signer) = &self.signer {
            signer
                .replace(&sources.webhook_secrets)
                .map_err(str::to_owned)?;
        }
        self.shared.replace(credentials);
        Ok(format!(
            "{} API keys, {} issuers (secret), {} (JWKS), {} key files, {} webhook secrets",
            sources.api_keys.len(),
            sources.issuers.len(),
            sources.issuer_jwks.len(),
            sources.issuer_keys.len(),
            sources.webhook_secrets.len()
        ))
    }
}

//! The credentials of SPEC §6 from every source: the flags, and the TOML file of
//! `--credentials` (read at start and on `SIGHUP`). They add up into one
//! [`CredentialSources`], checked as a whole ([`CredentialSources::check`]) before
//! anything is put in use.
//!
//! The file (docs/api.md, "The credentials file"):
//!
//! ```toml
//! [[api_key]]
//! name = "Acme Bank"
//! key = "…"
//!
//! [[issuer]]
//! name = "phone-app"
//! secret = "…"            # or jwks_url = "https://…", or key_files = ["….pem"]
//!
//! [webhooks]
//! secrets = ["new", "old"]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::settings::{check_credentials, Credential, DEMO_ISSUER};

/// Every credential of one configuration: flags and file together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialSources {
    /// (name, key) pairs.
    pub api_keys: Vec<(String, String)>,
    /// (issuer, HS256 secret) pairs.
    pub issuers: Vec<(String, String)>,
    /// (issuer, JWKS URL) pairs.
    pub issuer_jwks: Vec<(String, String)>,
    /// (issuer, PEM public key file) pairs; an issuer may have several (rotation).
    pub issuer_keys: Vec<(String, PathBuf)>,
    /// Webhook signing secrets, newest first.
    pub webhook_secrets: Vec<String>,
}

/// The file's layout.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    api_key: Vec<ApiKeyEntry>,
    #[serde(default)]
    issuer: Vec<IssuerEntry>,
    #[serde(default)]
    webhooks: Option<WebhooksEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyEntry {
    name: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerEntry {
    name: String,
    secret: Option<String>,
    jwks_url: Option<String>,
    key_files: Option<Vec<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhooksEntry {
    #[serde(default)]
    secrets: Vec<String>,
}

impl CredentialSources {
    /// Reads the credentials file at `path`. Errors name the file and what is wrong,
    /// never a secret (TOML's own messages quote the line, so only its position is
    /// kept).
    pub fn read_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--credentials {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--credentials {}: {e}", path.display()))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| {
            // The message of a TOML error may quote the offending line (a secret);
            // keep where it is and the first line of what is wrong only.
            let what = e.message().lines().next().unwrap_or("invalid").to_owned();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {what}")
                }
                None => what,
            }
        })?;
        let mut out = Self::default();
        for k in file.api_key {
            out.api_keys.push((k.name.trim().to_owned(), k.key));
        }
        for i in file.issuer {
            let name = i.name.trim().to_owned();
            match (i.secret, i.jwks_url, i.key_files) {
                (Some(secret), None, None) => out.issuers.push((name, secret)),
                (None, Some(url), None) => out.issuer_jwks.push((name, url)),
                (None, None, Some(files)) if !files.is_empty() => {
                    out.issuer_keys
                        .extend(files.into_iter().map(|f| (name.clone(), f)));
                }
                _ => {
                    return Err(format!(
                        "issuer {name:?}: give exactly one of secret, jwks_url or key_files (not empty)"
                    ))
                }
            }
        }
        if let Some(w) = file.webhooks {
            out.webhook_secrets = w.secrets;
        }
        Ok(out)
    }

    /// Flags and file together: the file's webhook secrets come first (the file is
    /// what rotates them), then the flags'.
    pub fn merged(flags: &Self, file: Self) -> Self {
        let join = |a: &[(String, String)], b: Vec<(String, String)>| {
            a.iter().cloned().chain(b).collect::<Vec<_>>()
        };
        Self {
            api_keys: join(&flags.api_keys, file.api_keys),
            issuers: join(&flags.issuers, file.issuers),
            issuer_jwks: join(&flags.issuer_jwks, file.issuer_jwks),
            issuer_keys: flags
                .issuer_keys
                .iter()
                .cloned()
                .chain(file.issuer_keys)
                .collect(),
            webhook_secrets: file
                .webhook_secrets
                .into_iter()
                .chain(flags.webhook_secrets.iter().cloned())
                .collect(),
        }
    }

    /// The rules of SPEC §6 over the whole set: keys and secrets of at least 16 bytes,
    /// no name twice, no key under two names, the demo's names reserved; one issuer
    /// name for one kind of trust (several key files of one issuer are fine); JWKS URLs
    /// `https` (or loopback `http`); at most two webhook secrets, none empty. Errors
    /// never carry a secret.
    pub fn check(&self) -> Result<(), String> {
        check_credentials(Credential::ApiKey, &self.api_keys)?;
        check_credentials(Credential::Issuer, &self.issuers)?;
        let mut kinds = std::collections::HashMap::new();
        let named = self
            .issuers
            .iter()
            .map(|(n, _)| (n, "--issuer"))
            .chain(self.issuer_jwks.iter().map(|(n, _)| (n, "--issuer-jwks")))
            .chain(self.issuer_keys.iter().map(|(n, _)| (n, "--issuer-key")));
        for (name, kind) in named {
            if name.is_empty() {
                return Err(format!("{kind}: an issuer needs a name"));
            }
            if name == DEMO_ISSUER {
                return Err(format!(
                    "{kind}: the name {name:?} is reserved for the demo's own credentials (--demo)"
                ));
            }
            match kinds.insert(name.as_str(), kind) {
                Some(other) if other != kind || kind == "--issuer-jwks" => {
                    return Err(format!(
                        "the issuer {name:?} is given twice ({other} and {kind}); give it one way"
                    ))
                }
                _ => {}
            }
        }
        for (_, url) in &self.issuer_jwks {
            idv_actors::jwks::check_url(url).map_err(|e| format!("--issuer-jwks {e}"))?;
        }
        if self.webhook_secrets.iter().any(String::is_empty) {
            return Err("--webhook-secret must not be empty".into());
        }
        if self.webhook_secrets.len() > 2 {
            return Err(
                "--webhook-secret takes at most two secrets (the new one, then the old one)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[api_key]]
name = "Acme Bank"
key = "acme-key-0123456789"

[[issuer]]
name = "phone-app"
secret = "phone-secret-0123456789"

[[issuer]]
name = "https://sso.example/realms/r"
jwks_url = "https://sso.example/realms/r/protocol/openid-connect/certs"

[[issuer]]
name = "mobile"
key_files = ["/etc/a.pem", "/etc/b.pem"]

[webhooks]
secrets = ["new-webhook-secret", "old-webhook-secret"]
"#;

    #[test]
    fn the_file_gives_keys_issuers_of_each_kind_and_webhook_secrets() {
        let c = CredentialSources::parse(FILE).unwrap();
        assert_eq!(
            c.api_keys,
            vec![("Acme Bank".into(), "acme-key-0123456789".into())]
        );
        assert_eq!(c.issuers.len(), 1);
        assert_eq!(c.issuer_jwks.len(), 1);
        assert_eq!(
            c.issuer_keys,
            vec![
                ("mobile".into(), PathBuf::from("/etc/a.pem")),
                ("mobile".into(), PathBuf::from("/etc/b.pem"))
            ]
        );
        assert_eq!(
            c.webhook_secrets,
            vec!["new-webhook-secret", "old-webhook-secret"]
        );
        assert!(c.check().is_ok());
    }

    #[test]
    fn a_broken_file_is_refused_without_echoing_a_secret() {
        let err = CredentialSources::parse(
            "[[api_key]]\nname = \"A\"\nkey = \"topsecret-value-123\"\nextra = 1\n",
        )
        .unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
        let err =
            CredentialSources::parse("[[api_key]\nkey = \"topsecret-value-123\"").unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
        let err = CredentialSources::parse(
            "[[issuer]]\nname = \"x\"\nsecret = \"s-0123456789abcdef\"\njwks_url = \"https://a/\"\n",
        )
        .unwrap_err();
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn flags_and_file_add_up_and_are_checked_together() {
        let flags = CredentialSources {
            api_keys: vec![("Acme Bank".into(), "flag-key-0123456789".into())],
            ..Default::default()
        };
        let both = CredentialSources::merged(&flags, CredentialSources::parse(FILE).unwrap());
        assert_eq!(both.api_keys.len(), 2);
        assert!(both.check().unwrap_err().contains("given twice"));
        let flags = CredentialSources {
            issuers: vec![("mobile".into(), "a-secret-0123456789".into())],
            ..Default::default()
        };
        let both = CredentialSources::merged(&flags, CredentialSources::parse(FILE).unwrap());
        assert!(both.check().unwrap_err().contains("\"mobile\""));
        let short =
            CredentialSources::parse("[[api_key]]\nname = \"A\"\nkey = \"short\"\n").unwrap();
        assert!(short.check().unwrap_err().contains("at least 16"));
        let twice = CredentialSources::parse(
            "[[api_key]]\nname = \"A\"\nkey = \"same-key-0123456789\"\n[[api_key]]\nname = \"B\"\nkey = \"same-key-0123456789\"\n",
        )
        .unwrap();
        assert!(twice.check().unwrap_err().contains("same key"));
    }

    #[test]
    fn a_jwks_url_must_be_https_or_loopback() {
        let bad = CredentialSources {
            issuer_jwks: vec![("sso".into(), "http://sso.example/certs".into())],
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("https"));
        let local = CredentialSources {
            issuer_jwks: vec![("sso".into(), "http://127.0.0.1:9/certs".into())],
            ..Default::default()
        };
        assert!(local.check().is_ok());
    }
}

//! The connection to NATS (SPEC §7): credentials in the URL or a credentials file, TLS
//! with a CA of the operator's and, for mutual TLS, a client certificate.
//!
//! async-nats parses `nats://user:password@host` but never sends that user and
//! password: its CONNECT carries only what [`async_nats::ConnectOptions`] holds. So
//! the userinfo is taken out of the URL here and given as options, and async-nats only
//! ever sees URLs without secrets (its errors and logs cannot echo one).
//!
//! The files are read here, before anything connects: an unreadable or malformed CA,
//! certificate, key or credentials file is an error that names the flag and the path
//! at start, not a TLS failure at the first connect or reconnect.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls_platform_verifier::BuilderVerifierExt as _;

use crate::redact::redact_url;

/// What a node needs besides the URL to reach NATS; all optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsOptions {
    /// The CA the server's certificate must chain to (`--nats-tls-ca`), instead of the
    /// platform's roots. Implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate for mutual TLS (`--nats-tls-cert`); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert` (`--nats-tls-key`).
    pub tls_key: Option<PathBuf>,
    /// A NATS credentials file: a user JWT and its nkey seed (`--nats-creds`).
    pub creds: Option<PathBuf>,
}

impl NatsOptions {
    /// Whether any of the TLS files is given (then TLS is required whatever the scheme).
    pub fn wants_tls(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_key.is_some()
    }
}

/// Why NATS could not be reached. The messages hold no secret.
#[derive(Debug, thiserror::Error)]
pub enum NatsLinkError {
    /// A file given by a flag cannot be read or holds nothing usable.
    #[error("{flag} {path}: {reason}")]
    File {
        /// The flag that named it.
        flag: &'static str,
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The flags do not fit together or the URL is not one.
    #[error("{0}")]
    Config(String),
    /// The connection or the login failed.
    #[error("{0}")]
    Connect(String),
}

/// How the URL authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlAuth {
    /// `nats://user:password@host`.
    UserPassword {
        /// The user, percent-decoded.
        user: String,
        /// The password, percent-decoded.
        password: String,
    },
    /// `nats://token@host`.
    Token(String),
}

impl std::fmt::Debug for UrlAuth {
    /// Never the secret: a `{:?}` in a log must not leak it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlAuth::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: *** }}")
            }
            UrlAuth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// The servers of `url` (one or several, comma-separated) without userinfo, and the
/// credentials it held: the first server's that has any (NATS clients take the
/// credentials of the URL they connect to; one node uses one identity).
pub fn split_credentials(url: &str) -> Result<(Vec<String>, Option<UrlAuth>), NatsLinkError> {
    let mut servers = Vec::new();
    let mut auth = None;
    for server in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        // As async-nats reads a server without a scheme.
        let server = if server.contains("://") {
            server.to_owned()
        } else {
            format!("nats://{server}")
        };
        let mut parsed = url::Url::parse(&server)
            .map_err(|e| NatsLinkError::Config(format!("--nats {}: {e}", redact_url(&server))))?;
        let user = decode(parsed.username())?;
        let password = parsed.password().map(decode).transpose()?;
        if auth.is_none() && !user.is_empty() {
            auth = Some(match password {
                Some(password) => UrlAuth::UserPassword { user, password },
                None => UrlAuth::Token(user),
            });
        }
        // Both succeed on a URL with a host, which every nats:// and tls:// URL has.
        let _ = parsed.set_password(None);
        let _ = parsed.set_username("");
        servers.push(parsed.to_string());
    }
    if servers.is_empty() {
        return Err(NatsLinkError::Config("--nats: no server given".into()));
    }
    Ok((servers, auth))
}

/// Percent-decodes a part of the userinfo (`p%40ss` → `p@ss`), as NATS clients do.
fn decode(s: &str) -> Result<String, NatsLinkError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            NatsLinkError::Config("--nats: the URL's user or password is not UTF-8".into())
        })
}

/// Reads a file a flag names, whole.
async fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, NatsLinkError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| NatsLinkError::File {
            flag,
            path: path.display().to_string(),
            reason: format!("cannot read it: {e}"),
        })
}

/// A file error for `flag` with `reason`.
fn bad_file(flag: &'static str, path: &Path, reason: impl Into<String>) -> NatsLinkError {
    NatsLinkError::File {
        flag,
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The TLS client configuration the options ask for, with the `ring` provider; `None`
/// when they give no TLS file (a `tls://` URL then uses the platform's roots, which is
/// async-nats's own default).
async fn tls_config(options: &NatsOptions) -> Result<Option<rustls::ClientConfig>, NatsLinkError> {
    if !options.wants_tls() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NatsLinkError::Config(format!("TLS: {e}")))?;
    let builder = match &options.tls_ca {
        Some(path) => {
            const FLAG: &str = "--nats-tls-ca";
            let pem = read(FLAG, path).await?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad_file(FLAG, path, format!("not PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad_file(FLAG, path, format!("not a CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(bad_file(FLAG, path, "holds no PEM certificate"));
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .with_platform_verifier()
            .map_err(|e| NatsLinkError::Config(format!("TLS: the platform's roots: {e}")))?,
    };
    let config = match (&options.tls_cert, &options.tls_key) {
        (Some(cert_path), Some(key_path)) => {
            let pem = read("--nats-tls-cert", cert_path).await?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad_file("--nats-tls-cert", cert_path, format!("not PEM: {e}")))?;
            if chain.is_empty() {
                return Err(bad_file(
                    "--nats-tls-cert",
                    cert_path,
                    "holds no PEM certificate",
                ));
            }
            let pem = read("--nats-tls-key", key_path).await?;
            // The parse error says what is wrong with the PEM, never the key's bytes.
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                bad_file("--nats-tls-key", key_path, format!("no private key: {e}"))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                bad_file(
                    "--nats-tls-key",
                    key_path,
                    format!("does not fit --nats-tls-cert: {e}"),
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(NatsLinkError::Config(
                "--nats-tls-cert and --nats-tls-key go together".into(),
            ))
        }
    };
    Ok(Some(config))
}

/// The connect options for `auth` (from the URL) and `options`, every file read.
async fn connect_options(
    auth: Option<UrlAuth>,
    options: &NatsOptions,
) -> Result<async_nats::ConnectOptions, NatsLinkError> {
    let mut connect = async_nats::ConnectOptions::new();
    match (auth, &options.creds) {
        (Some(_), Some(_)) => {
            return Err(NatsLinkError::Config(
                "--nats-creds and credentials in the --nats URL: give one".into(),
            ))
        }
        (Some(UrlAuth::UserPassword { user, password }), None) => {
            connect = connect.user_and_password(user, password);
        }
        (Some(UrlAuth::Token(token)), None) => connect = connect.token(token),
        (None, Some(path)) => {
            const FLAG: &str = "--nats-creds";
            let bytes = read(FLAG, path).await?;
            let text = String::from_utf8(bytes).map_err(|_| bad_file(FLAG, path, "is not text"))?;
            // async-nats's parse errors name what is missing, not the file's content.
            connect = connect
                .credentials(&text)
                .map_err(|e| bad_file(FLAG, path, e.to_string()))?;
        }
        (None, None) => {}
    }
    if let Some(config) = tls_config(options).await? {
        connect = connect.tls_client_config(config).require_tls(true);
    }
    Ok(connect)
}

/// Connects to the NATS server(s) of `url` as client `name`, with `options`; requests
/// wait `request_timeout` for their reply. Every file is read first.
pub async fn connect(
    url: &str,
    options: &NatsOptions,
    name: String,
    request_timeout: Duration,
) -> Result<async_nats::Client, NatsLinkError> {
    let (servers, auth) = split_credentials(url)?;
    let connect = connect_options(auth, options).await?;
    connect
        .name(name)
        .request_timeout(Some(request_timeout))
        .connect(servers)
        .await
        // The URL given to async-nats has no secret; redacted anyway, should a
        // future version quote something else.
        .map_err(|e| NatsLinkError::Connect(redact_url(&e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_the_url_and_decoded() {
        let (servers, auth) = split_credentials("nats://app:p%40ss%3Aw0rd@127.0.0.1:4222").unwrap();
        assert_eq!(servers, ["nats://127.0.0.1:4222"]);
        assert_eq!(
            auth,
            Some(UrlAuth::UserPassword {
                user: "app".into(),
                password: "p@ss:w0rd".into()
            })
        );
        let (servers, auth) = split_credentials("tls://s3cret-token@nats.example:4443").unwrap();
        assert_eq!(servers, ["tls://nats.example:4443"]);
        assert_eq!(auth, Some(UrlAuth::Token("s3cret-token".into())));
        assert!(!format!("{auth:?}").contains("s3cret"));
        let (servers, auth) =
            split_credentials("nats://a:one@h1:4222, nats://h2:4222,nats://b:two@h3:4222").unwrap();
        assert_eq!(
            servers,
            ["nats://h1:4222", "nats://h2:4222", "nats://h3:4222"]
        );
        assert_eq!(
            auth,
            Some(UrlAuth::UserPassword {
                user: "a".into(),
                password: "one".into()
            })
        );
        let (servers, auth) = split_credentials("127.0.0.1:4222").unwrap();
        assert_eq!(
            (servers, auth),
            (vec!["nats://127.0.0.1:4222".to_owned()], None)
        );
        let err = split_credentials("nats://app:s3cret@[::1")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--nats ") && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[actix_rt::test]
    async fn unreadable_or_unfit_files_are_refused_naming_the_flag_and_never_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "SUAIO3FHUX5PNV2LQ secret seed\n").unwrap();
        let with = |f: fn(&mut NatsOptions, PathBuf), path: &Path| {
            let mut o = NatsOptions::default();
            f(&mut o, path.to_owned());
            o
        };
        let cases: [(NatsOptions, &str); 6] = [
            (with(|o, p| o.tls_ca = Some(p), &missing), "--nats-tls-ca"),
            (with(|o, p| o.tls_ca = Some(p), &garbage), "--nats-tls-ca"),
            (with(|o, p| o.creds = Some(p), &missing), "--nats-creds"),
            (with(|o, p| o.creds = Some(p), &garbage), "--nats-creds"),
            (
                NatsOptions {
                    tls_cert: Some(garbage.clone()),
                    tls_key: Some(garbage.clone()),
                    ..NatsOptions::default()
                },
                "--nats-tls-cert",
            ),
            (with(|o, p| o.tls_cert = Some(p), &garbage), "go together"),
        ];
        for (options, expected) in cases {
            let err = connect_options(None, &options)
                .await
                .err()
                .unwrap_or_else(|| panic!("{options:?} accepted"))
                .to_string();
            assert!(err.contains(expected), "{options:?}: {err}");
            assert!(!err.contains("SUAIO3") && !err.contains('\n'), "{err}");
        }
        // A well-formed file is taken (the server checks the JWT; the seed signs its nonce).
        let good = dir.path().join("node.creds");
        std::fs::write(
            &good,
            "-----BEGIN NATS USER JWT-----\n\
             eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln\n\
             ------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n\
             SUAIO3FHUX5PNV2LQIIP7TZ3N4L7TX3W53MQGEIVYFIGA635OZCKEYHFLM\n\
             ------END USER NKEY SEED------\n",
        )
        .unwrap();
        let creds = NatsOptions {
            creds: Some(good),
            ..NatsOptions::default()
        };
        assert!(connect_options(None, &creds).await.is_ok());
        let both = NatsOptions {
            creds: Some(garbage.clone()),
            ..NatsOptions::default()
        };
        let auth = Some(UrlAuth::Token("t".into()));
        let err = connect_options(auth, &both)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("give one"), "{err}");
    }
}

//! TLS to PostgreSQL as its URL asks (SPEC §7), with libpq's meanings of `sslmode`:
//!
//! | `sslmode` | encrypts | verifies the chain | verifies the host name |
//! |---|---|---|---|
//! | `disable` | no | – | – |
//! | `prefer` (default) | if the server offers it | no | no |
//! | `require` | yes | only if `sslrootcert` is given | no |
//! | `verify-ca` | yes | yes (`sslrootcert`) | no |
//! | `verify-full` | yes | yes (`sslrootcert`) | yes |
//!
//! tokio-postgres parses `disable`, `prefer` and `require` only, and no `sslrootcert`:
//! [`split_url`] takes both parameters out of the URL before it is parsed, and the
//! verification is this module's, through rustls with the `ring` provider.
//!
//! Channel binding (`SCRAM-SHA-256-PLUS`) is not offered: tokio-postgres then logs in
//! with plain `SCRAM-SHA-256`, which every server that asks for SCRAM accepts.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text.
    Disable,
    /// TLS if the server offers it, unverified; plain text otherwise.
    Prefer,
    /// TLS; the chain is verified only when `sslrootcert` is given.
    Require,
    /// TLS, the chain verified against `sslrootcert`; any host name.
    VerifyCa,
    /// TLS, the chain verified against `sslrootcert` and the host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // `allow` (plain first, TLS on refusal) is libpq's too, but tokio-postgres
            // has no such order: refused rather than silently taken as another mode.
            other => {
                return Err(format!(
                    "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    /// What tokio-postgres is told: whether TLS is tried, and whether it is required.
    fn to_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// The TLS a PostgreSQL URL asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTls {
    /// `sslmode`; `prefer` when the URL says nothing, as libpq.
    pub mode: SslMode,
    /// `sslrootcert`: the CA file the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
}

/// The parameters this module reads, taken out of the URL before tokio-postgres parses
/// it (its parser refuses `verify-ca`, `verify-full` and `sslrootcert`).
const OURS: [&str; 2] = ["sslmode", "sslrootcert"];

/// Splits `url` into the URL tokio-postgres parses (without `sslmode` and
/// `sslrootcert`, every other part as given) and the TLS it asks for. A verifying mode
/// without `sslrootcert` is refused: libpq would look for `~/.postgresql/root.crt`,
/// and a node should not depend on a home directory.
pub fn split_url(url: &str) -> Result<(String, PgTls), String> {
    let (base, query, fragment) = match url.split_once('?') {
        Some((base, rest)) => match rest.split_once('#') {
            Some((query, fragment)) => (base, query, Some(fragment)),
            None => (base, rest, None),
        },
        None => (url, "", None),
    };
    let mut mode = None;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key)?;
        if !OURS.contains(&key.as_str()) {
            kept.push(pair);
            continue;
        }
        let value = decode(value)?;
        if key == "sslmode" {
            mode = Some(SslMode::parse(&value)?);
        } else if value.is_empty() {
            return Err("sslrootcert=: expected the path of a CA file".into());
        } else {
            root_cert = Some(PathBuf::from(value));
        }
    }
    let tls = PgTls {
        mode: mode.unwrap_or(SslMode::Prefer),
        root_cert,
    };
    if matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull) && tls.root_cert.is_none() {
        return Err(format!(
            "sslmode={}: needs sslrootcert=PATH (the CA the server's certificate chains to)",
            if tls.mode == SslMode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            }
        ));
    }
    let mut out = base.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Ok((out, tls))
}

/// Percent-decodes a URL parameter's key or value, as tokio-postgres does.
fn decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "a URL parameter is not UTF-8".to_owned())
}

impl PgTls {
    /// Sets tokio-postgres's own `ssl_mode` and answers the connector that verifies as
    /// this asks. Reads `sslrootcert` now: a missing or unusable file fails the start.
    pub fn apply(&self, config: &mut tokio_postgres::Config) -> Result<MakeRustls, String> {
        config.ssl_mode(self.mode.to_tokio_postgres());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verify_chain = match self.mode {
            SslMode::Disable | SslMode::Prefer => false,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.root_cert, verify_chain) {
            (Some(path), true) => {
                let chain = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(read_roots(path)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                if self.mode == SslMode::VerifyFull {
                    chain
                } else {
                    Arc::new(ChainOnly(chain))
                }
            }
            // `split_url` refuses a verifying mode without a root, so this is
            // disable, prefer or require: encrypted, not authenticated.
            _ => Arc::new(Unverified(provider.clone())),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustls(Arc::new(tls)))
    }
}

/// The CA certificates of `path`.
fn read_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    let what = |reason: String| format!("sslrootcert {}: {reason}", path.display());
    let pem = std::fs::read(path).map_err(|e| what(format!("cannot read it: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| what(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| what(format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(what("holds no PEM certificate".into()));
    }
    Ok(roots)
}

/// `verify-ca` (and `require` with a root): the chain must lead to the root, the name
/// may be any. rustls checks the chain before the name, so a name error means the chain
/// passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root: any certificate, as libpq. The handshake's
/// signatures are still checked, so the session is encrypted to whoever holds the
/// certificate's key, only nobody says who that is.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS through rustls: one per pool, cloned per connection.
#[derive(Clone)]
pub struct MakeRustls(Arc<rustls::ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            name,
            connector: tokio_rustls::TlsConnector::from(self.0.clone()),
        })
    }
}

/// One connection's handshake.
pub struct RustlsConnect {
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S> AsyncRead for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> Result<(String, PgTls), String> {
        split_url(url)
    }

    fn tls(mode: SslMode, root: Option<&str>) -> PgTls {
        PgTls {
            mode,
            root_cert: root.map(PathBuf::from),
        }
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url_and_the_rest_kept_as_given() {
        let cases = [
            (
                "postgres://u:p@db/idv",
                "postgres://u:p@db/idv",
                tls(SslMode::Prefer, None),
            ),
            (
                "postgres://u@db/idv?sslmode=disable",
                "postgres://u@db/idv",
                tls(SslMode::Disable, None),
            ),
            (
                "postgres://u@db/idv?application_name=a%20b&sslmode=require&connect_timeout=3",
                "postgres://u@db/idv?application_name=a%20b&connect_timeout=3",
                tls(SslMode::Require, None),
            ),
            (
                "postgres://u@db/idv?sslmode=require&sslrootcert=%2Fetc%2Fca.pem",
                "postgres://u@db/idv",
                tls(SslMode::Require, Some("/etc/ca.pem")),
            ),
            (
                "postgresql://u@db:5433/idv?sslrootcert=/tmp/ca.pem&sslmode=verify-ca",
                "postgresql://u@db:5433/idv",
                tls(SslMode::VerifyCa, Some("/tmp/ca.pem")),
            ),
            (
                "postgres://u@h1,h2/idv?sslmode=verify-full&sslrootcert=ca.pem&target_session_attrs=read-write",
                "postgres://u@h1,h2/idv?target_session_attrs=read-write",
                tls(SslMode::VerifyFull, Some("ca.pem")),
            ),
            (
                "postgres://u@db/idv?sslmode=prefer",
                "postgres://u@db/idv",
                tls(SslMode::Prefer, None),
            ),
        ];
        for (given, url, expected) in cases {
            assert_eq!(split(given), Ok((url.to_owned(), expected)), "{given}");
            // What is left is something tokio-postgres parses.
            assert!(url.parse::<tokio_postgres::Config>().is_ok(), "{url}");
        }
    }

    #[test]
    fn unknown_modes_and_verifying_modes_without_a_root_are_refused() {
        for (url, says) in [
            ("postgres://u@db/idv?sslmode=allow", "sslmode=allow"),
            (
                "postgres://u@db/idv?sslmode=verify_full",
                "sslmode=verify_full",
            ),
            ("postgres://u@db/idv?sslmode=verify-ca", "needs sslrootcert"),
            (
                "postgres://u@db/idv?sslmode=verify-full",
                "needs sslrootcert",
            ),
            (
                "postgres://u@db/idv?sslmode=verify-full&sslrootcert=",
                "sslrootcert=",
            ),
        ] {
            let err = split(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn each_mode_sets_what_tokio_postgres_tries_and_an_unreadable_root_fails_at_once() {
        use tokio_postgres::config::SslMode as Tp;
        for (mode, expected) in [
            (SslMode::Disable, Tp::Disable),
            (SslMode::Prefer, Tp::Prefer),
            (SslMode::Require, Tp::Require),
        ] {
            let mut config = tokio_postgres::Config::new();
            assert!(tls(mode, None).apply(&mut config).is_ok());
            assert_eq!(config.get_ssl_mode(), expected);
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            for path in [&missing, &not_pem] {
                let mut config = tokio_postgres::Config::new();
                let err = tls(mode, path.to_str())
                    .apply(&mut config)
                    .err()
                    .unwrap_or_else(|| panic!("{mode:?} {path:?} accepted"));
                assert!(err.starts_with("sslrootcert "), "{err}");
            }
        }
    }
}

//! TLS and credentials to both engines (SPEC §7, issue 21), against the real binary: a
//! nats-server of this test's own that requires TLS, a client certificate and a
//! password, and the test PostgreSQL's TLS role (`scripts/services.sh` gives it a CA,
//! a server certificate and a role that logs in by password over TLS only).
//!
//! The certificates are made here with the `openssl` CLI: a CA, a server certificate
//! for 127.0.0.1 and localhost, a client certificate, and a second CA that signed
//! neither, for the "wrong CA" cases.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// The NATS user of the test's nats-server, and its password.
const NATS_USER: &str = "idvb-node";
const NATS_PASSWORD: &str = "nats-pw-5e3c1a9f0d";
/// What the runs that must fail give instead of the right passwords.
const WRONG_NATS_PASSWORD: &str = "nats-wrong-pw-77b2";
const WRONG_PG_PASSWORD: &str = "pg-wrong-pw-41d8";

/// Runs `openssl` with `args` in `dir`; panics with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's certificates, all in one directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// `ca`, `other-ca`, `server` (127.0.0.1, localhost; signed by `ca`) and `client`
    /// (signed by `ca`), each as `NAME.crt` and `NAME.key`. EC P-256: quick to make.
    fn make(dir: &Path) -> Pki {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            std::fs::write(
                dir.join(format!("{ca}.cnf")),
                format!(
                    "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
                     [dn]\nCN = idvb test {ca}\n\
                     [ext]\nbasicConstraints = critical,CA:TRUE\n\
                     keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
                ),
            )
            .expect("write the CA's config");
            let (cnf, key, crt) = (
                format!("{ca}.cnf"),
                format!("{ca}.key"),
                format!("{ca}.crt"),
            );
            let mut args = vec!["req", "-x509", "-config", cnf.as_str(), "-days", "2"];
            args.extend(ec);
            args.extend(["-keyout", key.as_str(), "-out", crt.as_str()]);
            openssl(dir, &args);
        }
        for (leaf, usage, names) in [
            ("server", "serverAuth", "DNS:localhost,IP:127.0.0.1"),
            ("client", "clientAuth", "DNS:idvb-node"),
        ] {
            std::fs::write(
                dir.join(format!("{leaf}.ext")),
                format!(
                    "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n\
                     extendedKeyUsage = {usage}\nsubjectAltName = {names}\n"
                ),
            )
            .expect("write the extensions");
            let (key, csr, crt, ext) = (
                format!("{leaf}.key"),
                format!("{leaf}.csr"),
                format!("{leaf}.crt"),
                format!("{leaf}.ext"),
            );
            let subject = format!("/CN={leaf}");
            let mut args = vec!["req", "-new", "-subj", subject.as_str()];
            args.extend(ec);
            args.extend(["-keyout", key.as_str(), "-out", csr.as_str()]);
            openssl(dir, &args);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                    "-out",
                    &crt,
                ],
            );
        }
        Pki {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// A nats-server of this test's own: TLS with the test CA's server certificate, client
/// certificates required (signed by that CA), and one user with a password.
struct TlsNats {
    port: u16,
    _child: tokio::process::Child,
}

impl TlsNats {
    async fn start(pki: &Pki) -> TlsNats {
        let port = free_port();
        let config = pki.dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\n\
                 tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  \
                 verify: true\n  timeout: 2\n}}\n\
                 authorization {{\n  user: \"{NATS_USER}\"\n  password: \"{NATS_PASSWORD}\"\n}}\n",
                pki.path("server.crt"),
                pki.path("server.key"),
                pki.path("ca.crt"),
            ),
        )
        .expect("write the nats-server config");
        let child = nats_server(
            port,
            &["-c", config.to_str().expect("a UTF-8 path")],
            &[],
            Some(&pki.dir.join("nats.log")),
        )
        .await;
        TlsNats {
            port,
            _child: child,
        }
    }

    /// `tls://USER:password@127.0.0.1:PORT`.
    fn url(&self, password: &str) -> String {
        format!("tls://{NATS_USER}:{password}@127.0.0.1:{}", self.port)
    }
}

/// `db`'s URL as the TLS role, with `password`, `sslmode` and `sslrootcert`.
fn tls_store(db: &Db, password: &str, sslmode: &str, root: &str) -> String {
    let mut url = url::Url::parse(&db.url).expect("the database URL");
    url.set_username(&required_env("IDVB_TEST_PG_TLS_USER"))
        .expect("a user");
    url.set_password(Some(password)).expect("a password");
    url.query_pairs_mut()
        .clear()
        .append_pair("sslmode", sslmode)
        .append_pair("sslrootcert", root);
    url.to_string()
}

/// Asserts that none of the passwords of this test is in `log`.
fn assert_no_secret(what: &str, log: &str) {
    let pg_password = required_env("IDVB_TEST_PG_TLS_PASSWORD");
    for secret in [
        NATS_PASSWORD,
        WRONG_NATS_PASSWORD,
        WRONG_PG_PASSWORD,
        pg_password.as_str(),
    ] {
        assert!(
            !log.contains(secret),
            "{what}: the node's stderr holds a password:\n{log}"
        );
    }
}

#[actix_web::test]
async fn a_node_reaches_both_engines_over_verified_tls_with_passwords_and_never_prints_them() {
    let _turn = one_at_a_time().await;
    let pg_ca = required_env("IDVB_TEST_PG_CA");
    let pg_password = required_env("IDVB_TEST_PG_TLS_PASSWORD");
    let db = Db::fresh_owned_by(&required_env("IDVB_TEST_PG_TLS_USER")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::make(dir.path());
    let nats = TlsNats::start(&pki).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mtls = |ca: &str| -> Vec<String> {
        [
            "--nats-tls-ca",
            &pki.path(ca),
            "--nats-tls-cert",
            &pki.path("client.crt"),
            "--nats-tls-key",
            &pki.path("client.key"),
        ]
        .map(String::from)
        .to_vec()
    };
    let good_store = tls_store(&db, &pg_password, "verify-full", &pg_ca);
    let suffix = &db.url[db.url.len() - 8..];

    // Everything right: ready, and it serves. At trace level, the most a node logs.
    let options = Options {
        extra: mtls("ca.crt"),
        rust_log: Some("trace".into()),
        ..Options::default()
    };
    let mut node = try_start_node(
        &format!("tls-{suffix}"),
        &good_store,
        &nats.url(NATS_PASSWORD),
        &options,
        dir.path(),
    )
    .await
    .unwrap_or_else(|e| panic!("the node with TLS did not start: {e:?}"));
    eventually(Duration::from_secs(20), "the node is ready", || async {
        let res = http.get(node.url("/readyz")).send().await.ok()?;
        (res.status() == 200).then_some(())
    })
    .await;
    let res = http
        .post(node.url("/v1/sessions"))
        .header("X-Api-Key", API_KEY)
        .json(&json!({"scopes": ["full_name"]}))
        .send()
        .await
        .expect("create");
    assert_eq!(res.status(), 201);
    let created = Created::from(res.json::<Value>().await.expect("json"));
    let res = http
        .get(node.url(&format!("/v1/sessions/{}/status", created.id)))
        .bearer_auth(&created.token)
        .send()
        .await
        .expect("status");
    assert_eq!(res.status(), 200);
    let status: Value = res.json().await.expect("json");
    assert_eq!(status["status"], "initialized", "{status}");
    assert_eq!(
        db.session(&created.id).await.map(|s| s.status),
        Some("initialized".to_owned())
    );
    assert_eq!(node.sigterm(Duration::from_secs(20)).await, Some(0));
    let log = node.log();
    assert!(
        log.contains("TRACE"),
        "the node logged at trace level:\n{log}"
    );
    assert_no_secret("the node that started", &log);

    // Each wrong in one way: the node never serves. It says why on stderr and exits 2
    // at start (SPEC §6), naming the engine, and holds no password.
    let cases = [
        (
            "a NATS certificate from another CA",
            good_store.clone(),
            nats.url(NATS_PASSWORD),
            mtls("other-ca.crt"),
            "cannot connect to NATS",
        ),
        (
            "a wrong NATS password",
            good_store.clone(),
            nats.url(WRONG_NATS_PASSWORD),
            mtls("ca.crt"),
            "cannot connect to NATS",
        ),
        (
            "no client certificate where NATS requires one",
            good_store.clone(),
            nats.url(NATS_PASSWORD),
            vec!["--nats-tls-ca".into(), pki.path("ca.crt")],
            "cannot connect to NATS",
        ),
        (
            "a PostgreSQL certificate from another CA",
            tls_store(&db, &pg_password, "verify-ca", &pki.path("other-ca.crt")),
            nats.url(NATS_PASSWORD),
            mtls("ca.crt"),
            "cannot use the database",
        ),
        (
            "a wrong PostgreSQL password",
            tls_store(&db, WRONG_PG_PASSWORD, "verify-full", &pg_ca),
            nats.url(NATS_PASSWORD),
            mtls("ca.crt"),
            "cannot use the database",
        ),
    ];
    for (n, (what, store, nats_url, extra, says)) in cases.into_iter().enumerate() {
        let options = Options {
            extra,
            ..Options::default()
        };
        let id = format!("tls{n}-{suffix}");
        let outcome = try_start_node(&id, &store, &nats_url, &options, dir.path()).await;
        let failed = match outcome {
            Ok(node) => panic!("{what}: the node started:\n{}", node.log()),
            Err(failed) => failed,
        };
        assert_eq!(failed.code, Some(2), "{what}: {}", failed.log);
        assert!(failed.log.contains(says), "{what}: {}", failed.log);
        // The URL it names is there, with its password masked.
        assert!(failed.log.contains(":***@"), "{what}: {}", failed.log);
        assert_no_secret(what, &failed.log);
    }
}

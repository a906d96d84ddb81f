//! Where webhooks may go: the guard against server-side request forgery through a
//! session's `callback_url` (SPEC §3, §4).
//!
//! A backend chooses its sessions' `callback_url`. Unguarded, it could point the broker
//! at `127.0.0.1`, `169.254.169.254` or `10.x` and learn from the webhook counts whether
//! a port answered: an internal port scanner. So, unless the operator allows it
//! (`--webhook-allow-private`, [`WebhookConfig::allow_private`]):
//!
//! - at creation, [`CallbackGuard::check`] refuses a URL whose host is, or resolves to,
//!   an address that [`is_refused`] names;
//! - at delivery, the dispatcher's client for callback URLs resolves names through a
//!   [`Resolver`] that drops such addresses (a name left with none fails like a network
//!   error), and an IP literal, which no resolver sees, is checked by
//!   [`refused_literal`] before connecting. So a DNS answer that changes after creation
//!   (rebinding) cannot reach such an address either.
//!
//! The operator's own `--webhook-url` is trusted configuration: it is checked neither at
//! start nor at connect.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::WebhookConfig;

/// Longest the creation check waits for DNS. A name that does not resolve in time is
/// let through: the connect-time check still guards every delivery.
pub const CHECK_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether webhooks to `ip` are refused: anything that is not a public unicast address.
///
/// IPv4: this network `0/8`, private `10/8`, `172.16/12`, `192.168/16`, shared (CGNAT)
/// `100.64/10`, loopback `127/8`, link-local `169.254/16`, IETF protocol assignments
/// `192.0.0/24`, documentation `192.0.2/24`, `198.51.100/24`, `203.0.113/24`,
/// benchmarking `198.18/15`, multicast `224/4`, reserved `240/4` and broadcast.
/// IPv6: unspecified, loopback, the IPv4-compatible `::/96`, discard-only `100::/64`,
/// documentation `2001:db8::/32` and `3fff::/20`, benchmarking `2001:2::/48`,
/// unique-local `fc00::/7`, link-local `fe80::/10`, site-local `fec0::/10`, multicast
/// `ff00::/8`, local-use NAT64 `64:ff9b:1::/48`; and the IPv6 forms that carry an IPv4
/// address (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are
/// judged by that IPv4 address.
pub fn is_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_refused(v4),
        IpAddr::V6(v6) => v6_refused(v6),
    }
}

fn v4_refused(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (b & 0xc0) == 64)
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
}

fn v6_refused(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_refused(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        // NAT64 (RFC 6052): the last 32 bits are the IPv4 address reached.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return v4_refused(embedded(hi, lo)),
        // 6to4 (RFC 3056): bits 16..48 are the IPv4 address.
        [0x2002, hi, lo, ..] => return v4_refused(embedded(hi, lo)),
        _ => {}
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        // IPv4-compatible (deprecated) ::/96, which also holds :: and ::1.
        || s[..6] == [0; 6]
        || (s[0] & 0xffc0) == 0xfec0
        || s[..4] == [0x100, 0, 0, 0]
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] == 0x3fff && (s[1] & 0xf000) == 0)
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0)
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
}

/// Names that are loopback by definition (RFC 6761), refused without asking DNS.
fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The IP address of a URL whose host is an IP literal, if it is one that
/// [`is_refused`] names. No resolver sees a literal, so the dispatcher checks it before
/// it connects. The URL is parsed the way the HTTP client parses it, so forms such as
/// `http://2130706433/` or `http://0x7f.1/` are the addresses they mean.
pub fn refused_literal(url: &str) -> Option<IpAddr> {
    let url = reqwest::Url::parse(url).ok()?;
    let ip = match url.host()? {
        url::Host::Ipv4(v4) => IpAddr::V4(v4),
        url::Host::Ipv6(v6) => IpAddr::V6(v6),
        url::Host::Domain(_) => return None,
    };
    is_refused(ip).then_some(ip)
}

/// What a [`Lookup`] answers.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves a host name to addresses. The broker uses [`SystemLookup`]; tests inject
/// answers (a name that changes its answer, to act out DNS rebinding).
pub trait Lookup: Send + Sync {
    /// The addresses of `host` (a name, not an IP literal).
    fn lookup(&self, host: &str) -> LookupFuture;
}

/// The operating system's resolver (`getaddrinfo`), on tokio's blocking pool so that
/// it never blocks an event loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// A shared [`Lookup`], cloned into the creation check and both HTTP clients.
#[derive(Clone)]
pub struct SharedLookup(pub Arc<dyn Lookup>);

impl Default for SharedLookup {
    fn default() -> Self {
        Self(Arc::new(SystemLookup))
    }
}

impl fmt::Debug for SharedLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedLookup(..)")
    }
}

/// Why a delivery's host was not connected to.
#[derive(Debug, thiserror::Error)]
#[error("the host resolves only to loopback, private or other non-public addresses")]
pub struct OnlyRefusedAddresses;

/// The webhook clients' DNS resolver: the [`Lookup`] of the configuration, and, for
/// session callbacks (`guard`), without the addresses that [`is_refused`] names.
#[derive(Clone, Debug)]
pub struct Resolver {
    lookup: SharedLookup,
    guard: bool,
}

impl Resolver {
    /// A resolver that drops refused addresses (for sessions' callback URLs).
    pub fn guarded(lookup: SharedLookup) -> Self {
        Self {
            lookup,
            guard: true,
        }
    }

    /// A resolver that keeps every address (for the operator's `--webhook-url`).
    pub fn trusting(lookup: SharedLookup) -> Self {
        Self {
            lookup,
            guard: false,
        }
    }

    /// Whether this resolver drops refused addresses.
    pub fn is_guarded(&self) -> bool {
        self.guard
    }

    /// The addresses a connection may use; an error when none is left.
    pub async fn addresses(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        if self.guard && is_local_name(host) {
            return Err(io::Error::other(OnlyRefusedAddresses));
        }
        let mut found = self.lookup.0.lookup(host).await?;
        if self.guard {
            found.retain(|ip| !is_refused(*ip));
            if found.is_empty() {
                return Err(io::Error::other(OnlyRefusedAddresses));
            }
        }
        Ok(found)
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the client puts the URL's port in.
            let addrs = resolver.addresses(&host).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Why a `callback_url` was refused at creation.
#[derive(Debug, thiserror::Error)]
#[error(
    "callback_url: its host is, or resolves to, a loopback, private, link-local or other \
     non-public address; this broker sends webhooks to public addresses only"
)]
pub struct RefusedCallback;

/// The creation-time check of a session's `callback_url` (SPEC §3).
#[derive(Clone, Debug)]
pub struct CallbackGuard {
    allow_private: bool,
    lookup: SharedLookup,
}

impl CallbackGuard {
    /// The guard the webhook configuration asks for.
    pub fn new(config: &WebhookConfig) -> Self {
        Self {
            allow_private: config.allow_private,
            lookup: config.lookup.clone(),
        }
    }

    /// Refuses `url` (an absolute http(s) URL, already checked as such) if its host is
    /// or resolves to a refused address; any one such address refuses it. A name that
    /// cannot be resolved now, or not within [`CHECK_LOOKUP_TIMEOUT`], is let through:
    /// DNS may be briefly down, and every delivery is checked again when it connects.
    pub async fn check(&self, url: &str) -> Result<(), RefusedCallback> {
        if self.allow_private {
            return Ok(());
        }
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Ok(());
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(_) => {
                return match refused_literal(url) {
                    Some(_) => Err(RefusedCallback),
                    None => Ok(()),
                }
            }
            None => return Ok(()),
        };
        if is_local_name(&host) {
            return Err(RefusedCallback);
        }
        match tokio::time::timeout(CHECK_LOOKUP_TIMEOUT, self.lookup.0.lookup(&host)).await {
            Ok(Ok(found)) if found.iter().any(|ip| is_refused(*ip)) => Err(RefusedCallback),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "callback_url host does not resolve now; checked again at delivery");
                Ok(())
            }
            Err(_) => {
                tracing::debug!(
                    "callback_url host did not resolve in time; checked again at delivery"
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::str::FromStr as _;

    use reqwest::dns::Resolve as _;

    use super::*;

    #[test]
    fn every_non_public_address_is_refused_and_public_ones_are_not() {
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001:db8::1",
            "2001:2::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ];
        for ip in refused {
            assert!(is_refused(ip.parse().unwrap()), "{ip} should be refused");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
        ];
        for ip in public {
            assert!(!is_refused(ip.parse().unwrap()), "{ip} should be allowed");
        }
    }

    #[test]
    fn ip_literals_are_judged_in_every_form_the_http_client_accepts() {
        for url in [
            "http://127.0.0.1/hook",
            "http://127.1/hook",
            "http://2130706433/hook",
            "http://0x7f.0.0.1/hook",
            "http://0177.0.0.1/hook",
            "https://[::1]:8443/hook",
            "http://[::ffff:7f00:1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0:8080/",
        ] {
            assert!(refused_literal(url).is_some(), "{url}");
        }
        for url in [
            "http://93.184.216.34/hook",
            "https://[2606:4700:4700::1111]/hook",
            "https://hooks.example/hook",
            "not a url",
        ] {
            assert_eq!(refused_literal(url), None, "{url}");
        }
    }

    /// Fixed answers by name.
    struct Fixed(HashMap<&'static str, Vec<IpAddr>>);

    impl Lookup for Fixed {
        fn lookup(&self, host: &str) -> LookupFuture {
            let found = self.0.get(host).cloned();
            Box::pin(async move {
                found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"))
            })
        }
    }

    fn fixed() -> SharedLookup {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        SharedLookup(Arc::new(Fixed(HashMap::from([
            ("public.test", vec![ip("93.184.216.34")]),
            ("mixed.test", vec![ip("10.0.0.7"), ip("93.184.216.34")]),
            ("internal.test", vec![ip("10.0.0.7"), ip("fd00::7")]),
            ("mapped.test", vec![ip("::ffff:127.0.0.1")]),
        ]))))
    }

    fn guard(allow_private: bool) -> CallbackGuard {
        CallbackGuard::new(&WebhookConfig {
            allow_private,
            lookup: fixed(),
            ..WebhookConfig::default()
        })
    }

    #[tokio::test]
    async fn the_creation_check_refuses_a_host_with_any_non_public_address() {
        let g = guard(false);
        for url in [
            "http://internal.test/hook",
            "http://mixed.test/hook",
            "http://mapped.test/hook",
            "http://localhost:8080/hook",
            "http://LOCALHOST./hook",
            "http://api.localhost/hook",
            "http://127.0.0.1:9/hook",
            "http://[::1]/hook",
            "http://10.1.2.3/hook",
        ] {
            assert!(g.check(url).await.is_err(), "{url}");
        }
        for url in [
            "https://public.test/hook",
            "https://93.184.216.34/hook",
            // Unresolvable now: checked again when a delivery connects.
            "https://unknown.test/hook",
        ] {
            assert!(g.check(url).await.is_ok(), "{url}");
        }
        let open = guard(true);
        for url in ["http://internal.test/hook", "http://127.0.0.1:9/hook"] {
            assert!(open.check(url).await.is_ok(), "{url}");
        }
    }

    async fn resolve(r: &Resolver, name: &str) -> Result<Vec<SocketAddr>, String> {
        let name = reqwest::dns::Name::from_str(name).unwrap();
        r.resolve(name)
            .await
            .map(Iterator::collect)
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn the_guarded_resolver_keeps_public_addresses_only() {
        let guarded = Resolver::guarded(fixed());
        assert_eq!(
            resolve(&guarded, "mixed.test").await.unwrap(),
            vec!["93.184.216.34:0".parse::<SocketAddr>().unwrap()]
        );
        for name in ["internal.test", "mapped.test", "localhost"] {
            let err = resolve(&guarded, name).await.unwrap_err();
            assert!(err.contains("non-public"), "{name}: {err}");
        }
        assert!(resolve(&guarded, "unknown.test").await.is_err());

        let trusting = Resolver::trusting(fixed());
        assert_eq!(resolve(&trusting, "internal.test").await.unwrap().len(), 2);
    }
}

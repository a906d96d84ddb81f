//! Limits of the HTTP front (SPEC §6): counted resources refused with
//! `503 unavailable` and `Retry-After` when full, and who the client is.
//!
//! - [`Gauge`]: a broker-wide count with a ceiling (WebSockets, waiting long-polls); a
//!   [`Permit`] holds one unit and gives it back when dropped.
//! - [`ConnectionsPerIp`]: open TCP connections per client address, counted when a
//!   connection opens (`HttpServer::on_connect`) by a [`Connection`] guard kept in the
//!   connection's extensions, so it is given back when the connection closes.
//! - [`Cidr`], [`client_ip`] and [`limiter_key`]: the client address behind trusted
//!   proxies, and the key the per-IP limits use (an IPv6 client by its /64).
//! - [`PerMinute`]: a count of events per client address per minute (new demo
//!   sessions), refused with `429` past it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Default of `--max-websockets`.
pub const DEFAULT_MAX_WEBSOCKETS: usize = 100_000;
/// Default of `--max-long-polls`.
pub const DEFAULT_MAX_LONG_POLLS: usize = 100_000;

/// `Retry-After` of a refusal at a limit, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A count with a ceiling, shared across workers; cheap to clone.
#[derive(Clone, Debug)]
pub struct Gauge {
    count: Arc<AtomicUsize>,
    max: usize,
}

impl Gauge {
    /// An empty gauge holding at most `max`.
    pub fn new(max: usize) -> Self {
        Self {
            count: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// One unit, or `None` when `max` are held.
    pub fn try_acquire(&self) -> Option<Permit> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                count: self.count.clone(),
            })
    }

    /// How many units are held.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// One unit of a [`Gauge`], given back on drop.
#[derive(Debug)]
pub struct Permit {
    count: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// At most `n` events a minute per client address (its [`limiter_key`]), in bursts of
/// up to `n`: a governor token bucket refilled one event every `60/n` seconds.
#[derive(Clone)]
pub struct PerMinute {
    inner: Arc<governor::DefaultKeyedRateLimiter<IpAddr>>,
}

impl std::fmt::Debug for PerMinute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerMinute").finish_non_exhaustive()
    }
}

impl PerMinute {
    /// A limiter of `n` events a minute per address.
    pub fn new(n: std::num::NonZeroU32) -> Self {
        Self {
            inner: Arc::new(governor::RateLimiter::keyed(
                governor::Quota::per_minute(n).allow_burst(n),
            )),
        }
    }

    /// Counts one event of `ip`; `Err(seconds to wait)`, at least 1, if it is over.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        use governor::clock::{Clock as _, DefaultClock};
        self.inner.check_key(&limiter_key(ip)).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }

    /// Drops the state of addresses back to a full bucket. Call it periodically.
    pub fn shrink(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

/// Open connections per client address (its [`limiter_key`]), with a ceiling each;
/// `None` is off.
#[derive(Clone, Debug, Default)]
pub struct ConnectionsPerIp {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: Option<usize>,
}

impl ConnectionsPerIp {
    /// A tracker allowing `max` connections per address; `None` counts nothing.
    pub fn new(max: Option<usize>) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    /// Counts a connection from `peer`; the guard tells whether it is over the limit
    /// (its requests are then refused) and uncounts it when dropped.
    pub fn open(&self, peer: IpAddr) -> Option<Connection> {
        let max = self.max?;
        let key = limiter_key(peer);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        *n += 1;
        Some(Connection {
            over: *n > max,
            key,
            open: self.open.clone(),
        })
    }

    /// How many addresses have connections open.
    pub fn addresses(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One open connection, counted against its address until dropped.
#[derive(Debug)]
pub struct Connection {
    /// Whether the address had more connections open than allowed when this one opened.
    pub over: bool,
    key: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The key per-IP limits count under: an IPv4 address as is (also when written as an
/// IPv4-mapped IPv6 address), an IPv6 address by its /64, the smallest block a site
/// is given, so one client cannot dodge its limit by cycling through its own block.
pub fn limiter_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// An address block (`10.0.0.0/8`, `fd00::/8`, or one address), for `--trusted-proxy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net = IpAddr::from_str(addr).map_err(|_| format!("{s:?} is not an address block"))?;
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Self { net, prefix })
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy (each
/// proxy appends the address it was reached from, so the entries left of the first
/// untrusted one are the client's to write). `forwarded` is every `X-Forwarded-For`
/// header, in order. An unparsable entry stops the walk at the last good address.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for header in forwarded.rev() {
        for entry in header.rsplit(',') {
            match parse_forwarded(entry) {
                Some(ip) => {
                    client = ip;
                    if !is_trusted(ip) {
                        return ip;
                    }
                }
                None => return client,
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly `[v6]` or with a port.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = IpAddr::from_str(entry) {
        return Some(ip);
    }
    if let Ok(sock) = std::net::SocketAddr::from_str(entry) {
        return Some(sock.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| IpAddr::from_str(e).ok())
}

/// New demo sessions a minute per client address (SPEC §6); past it `429`. Here, with
/// the limiter that counts them, so the state that holds the limiter needs no route.
pub const DEMO_SESSIONS_PER_MINUTE: std::num::NonZeroU32 = match std::num::NonZeroU32::new(10) {
    Some(n) => n,
    None => std::num::NonZeroU32::MIN,
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_ipv4_by_their_address() {
        assert_eq!(
            limiter_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            limiter_key(ip("2001:db8:1:2::1")),
            limiter_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            limiter_key(ip("2001:db8:1:2::1")),
            limiter_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(limiter_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(limiter_key(ip("192.0.2.7")), limiter_key(ip("192.0.2.8")));
        assert_eq!(limiter_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn address_blocks_parse_and_contain_what_they_should() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.3.4")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")));
        let one: Cidr = "192.0.2.1".parse().unwrap();
        assert!(one.contains(ip("192.0.2.1")) && !one.contains(ip("192.0.2.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("proxy.internal".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy_and_takes_the_rightmost_untrusted_entry() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let proxy = ip("10.0.0.1");
        // From a trusted proxy: the right-most entry that is not a proxy.
        assert_eq!(
            client_ip(proxy, ["203.0.113.5"].into_iter(), &trusted),
            ip("203.0.113.5")
        );
        // A client-written entry on the left is not believed.
        assert_eq!(
            client_ip(
                proxy,
                ["1.2.3.4, 203.0.113.5, 10.0.0.2"].into_iter(),
                &trusted
            ),
            ip("203.0.113.5")
        );
        // Several headers are one list, in order.
        assert_eq!(
            client_ip(
                proxy,
                ["1.2.3.4", "198.51.100.1, 10.0.0.9"].into_iter(),
                &trusted
            ),
            ip("198.51.100.1")
        );
        // Ports and brackets are dropped.
        assert_eq!(
            client_ip(proxy, ["[2001:db8::1]:443"].into_iter(), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(proxy, ["203.0.113.5:8443"].into_iter(), &trusted),
            ip("203.0.113.5")
        );
        // Every entry a proxy: the left-most of them; none at all: the peer.
        assert_eq!(
            client_ip(proxy, ["10.0.0.3, 10.0.0.2"].into_iter(), &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(client_ip(proxy, std::iter::empty(), &trusted), proxy);
        // Garbage stops the walk at the last good address.
        assert_eq!(
            client_ip(proxy, ["evil, 10.0.0.2"].into_iter(), &trusted),
            ip("10.0.0.2")
        );
        // From anyone else, or with no proxy trusted, the header is ignored.
        let stranger = ip("198.51.100.7");
        assert_eq!(
            client_ip(stranger, ["203.0.113.5"].into_iter(), &trusted),
            stranger
        );
        assert_eq!(client_ip(proxy, ["203.0.113.5"].into_iter(), &[]), proxy);
    }

    #[test]
    fn per_minute_counts_each_address_on_its_own_and_says_how_long_to_wait() {
        let limit = PerMinute::new(std::num::NonZeroU32::new(3).unwrap());
        for _ in 0..3 {
            assert_eq!(limit.check(ip("192.0.2.1")), Ok(()));
        }
        let wait = limit.check(ip("192.0.2.1")).unwrap_err();
        // One event back every 20 s.
        assert!((1..=20).contains(&wait), "{wait}");
        assert_eq!(limit.check(ip("192.0.2.2")), Ok(()));
        // The same /64 is the same client.
        for _ in 0..3 {
            assert_eq!(limit.check(ip("2001:db8::1")), Ok(()));
        }
        assert!(limit.check(ip("2001:db8::2")).is_err());
    }

    #[test]
    fn a_gauge_refuses_past_its_ceiling_and_permits_give_back_on_drop() {
        let g = Gauge::new(2);
        let a = g.try_acquire().unwrap();
        let _b = g.try_acquire().unwrap();
        assert!(g.try_acquire().is_none());
        drop(a);
        assert_eq!(g.current(), 1);
        assert!(g.try_acquire().is_some());
    }

    #[test]
    fn connections_are_counted_per_address_and_uncounted_when_closed() {
        let c = ConnectionsPerIp::new(Some(1));
        let first = c.open(ip("2001:db8::1")).unwrap();
        assert!(!first.over);
        // Same /64: the same address for the limit.
        let second = c.open(ip("2001:db8::2")).unwrap();
        assert!(second.over);
        assert!(!c.open(ip("192.0.2.1")).unwrap().over);
        drop(second);
        drop(first);
        assert_eq!(c.addresses(), 0);
        assert!(ConnectionsPerIp::new(None).open(ip("192.0.2.1")).is_none());
    }
}

//! Signed, durable webhooks (SPEC §4).
//!
//! Layout:
//! - [`dispatcher`]: the actor that delivers the outbox, and its messages.
//! - [`signature`]: the `X-Idv-Signature` HMAC.
//! - [`ssrf`]: where webhooks may go (sessions' `callback_url`s reach public addresses
//!   only, checked at creation and again at connect).
//!
//! Events are not made here: the store enqueues one in the transaction of every
//! transition (see `store::outbox`), so the dispatcher only ever reads what is
//! durable, and an acknowledged transition always has its event.

pub mod dispatcher;
pub mod signature;
pub mod ssrf;

use std::time::Duration;

pub use dispatcher::{Dispatcher, Shutdown};
pub use signature::Signer;
pub use ssrf::{CallbackGuard, SharedLookup};

/// How the dispatcher delivers and retries. The defaults are SPEC §4's; tests shrink them.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The first retry comes about this long after the first failure.
    pub first_retry: Duration,
    /// Retries double up to this gap.
    pub max_backoff: Duration,
    /// An event still failing this long after its first attempt is marked failed.
    pub give_up_after: Duration,
    /// Longest a single POST may take, connect to last byte read.
    pub timeout: Duration,
    /// Most deliveries in flight at once (to different sessions).
    pub max_in_flight: usize,
    /// `--webhook-allow-private`: sessions' `callback_url`s may point at loopback,
    /// private and other non-public addresses (development, tests). Off: such URLs are
    /// refused at creation and never connected to (see [`ssrf`]).
    pub allow_private: bool,
    /// How webhook host names are resolved, at creation and at connect: the system
    /// resolver; tests inject answers.
    pub lookup: SharedLookup,
}

/// Makes `ring` the process's rustls crypto provider, if none is yet.
///
/// reqwest is built with `rustls-no-provider` (aws-lc-rs needs cmake and clang), and
/// Cargo unifies that feature for every reqwest client in the process: one built
/// without a provider installed panics. The dispatcher passes its own TLS
/// configuration and does not need this; other clients in the same process (tests,
/// tools) do. Idempotent.
pub fn install_crypto_provider() {
    // An error only says a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            first_retry: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5 * 60),
            give_up_after: Duration::from_secs(24 * 60 * 60),
            timeout: Duration::from_secs(5),
            max_in_flight: 64,
            allow_private: false,
            lookup: SharedLookup::default(),
        }
    }
}

impl WebhookConfig {
    /// The wait before retry number `failures` (1 after the first failure): doubling
    /// from `first_retry`, capped at `max_backoff`, then jittered by ±20 % with `unit`
    /// (a number in `0.0..1.0`) so that a receiver coming back is not hit by every
    /// event at the same instant.
    pub fn backoff(&self, failures: u32, unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        let nominal = self
            .first_retry
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_backoff);
        let factor = 0.8 + 0.4 * unit.clamp(0.0, 1.0);
        nominal.mul_f64(factor).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_near_one_second_doubles_and_is_capped_at_five_minutes() {
        let c = WebhookConfig::default();
        assert_eq!(c.backoff(1, 0.5), Duration::from_secs(1));
        assert_eq!(c.backoff(2, 0.5), Duration::from_secs(2));
        assert_eq!(c.backoff(5, 0.5), Duration::from_secs(16));
        assert_eq!(c.backoff(9, 0.5), Duration::from_secs(256));
        assert_eq!(c.backoff(10, 0.5), Duration::from_secs(300));
        assert_eq!(c.backoff(1_000, 0.5), Duration::from_secs(300));
        assert_eq!(c.backoff(1_000, 1.0), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_a_fifth_of_the_nominal_wait() {
        let c = WebhookConfig::default();
        assert_eq!(c.backoff(1, 0.0), Duration::from_millis(800));
        assert_eq!(c.backoff(1, 1.0), Duration::from_millis(1200));
        assert_eq!(c.backoff(3, 0.0), Duration::from_millis(3200));
    }
}

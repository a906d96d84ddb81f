//! The heart of idv-broker: verification sessions as supervised actors over SQLite.
//!
//! Layout:
//! - [`status`]: the state machine of SPEC §2: [`status::next`] is the one place a
//!   status changes.
//! - [`commands`]: the rules that plan each command from `next` into a write.
//! - [`session`]: the session actor (state, seq, expiry timer, audience), with its
//!   messages beside it in [`session::messages`] (fault injection for tests too).
//! - [`delivery`]: a session's subscribers and long-poll waiters; push after commit.
//! - [`registry`]: live actors by session id; rehydration and replacement; the web
//!   crate's only way to the store.
//! - `live`: the narrow handle a session actor has on the registry.
//! - [`cluster`]: several nodes over NATS: the router, the lease, the takeover.
//! - [`seal`]: messages between nodes sealed under the cluster key, replays dropped.
//! - [`at_rest`]: the person's data sealed in the store under a data key per session,
//!   itself sealed by the operator's `--data-key`; both engines use it.
//! - [`nats_link`]: the connection to NATS: credentials, TLS and mutual TLS.
//! - [`route`]: how the registry reaches sessions owned by another node ([`route::Router`]).
//! - [`session_store`]: the store as the actors see it, one object-safe trait.
//! - [`staging`]: uploads held in memory until approve, under a broker-wide budget.
//! - [`retention`]: the sweeper that purges confirmed sessions' data after retention,
//!   and deletes ended sessions' records after record retention.
//! - [`store_api`]: the store's vocabulary for every engine: errors, outcomes, rows and
//!   the decisions (idempotency, retention, where a webhook goes), written once.
//! - [`store`]: SQLite with a group-committing writer thread, and the webhook outbox.
//! - [`pg`]: the PostgreSQL store for several nodes, with session ownership and leases.
//! - [`webhooks`]: the dispatcher that delivers the outbox, signed.
//! - [`write`]: what a transition writes, as planned (the store decides nothing).
//! - [`credentials`]: API keys, session tokens and device JWTs, swappable at run time.
//! - [`keys`]: issuers' public keys and the rules that pick one for a token.
//! - [`jwks`]: issuers' JSON Web Key Sets, fetched by a supervised background task.
//! - [`metrics`]: the Prometheus metrics' names, the recorder and `/metrics`' text.
//! - [`supervise`]: long-lived loops and actors restarted after a panic, and counted.
//! - [`redact`]: secrets out of connection strings before they are printed or logged.
//! - [`ids`], [`model`], [`clock`], [`error`]: the vocabulary.

pub mod at_rest;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod credentials;
pub mod delivery;
pub mod error;
pub mod ids;
pub mod jwks;
pub mod keys;
mod live;
pub mod metrics;
pub mod model;
pub mod nats_link;
pub mod pg;
pub mod redact;
pub mod registry;
pub mod retention;
pub mod route;
pub mod seal;
pub mod session;
pub mod session_store;
pub mod staging;
pub mod status;
pub mod store;
pub mod store_api;
pub mod supervise;
pub mod webhooks;
pub mod write;

pub use error::SessionError;

#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Several nodes (SPEC §7, issue 12): three real `idv-broker` processes on a fresh
//! PostgreSQL database and NATS, driven only through HTTP and WebSocket, and audited
//! with SQL against what they committed.
//!
//! Needs `IDVB_TEST_PG` (an admin URL; each test creates its own database) and
//! `IDVB_TEST_NATS`: `eval "$(scripts/services.sh start)"` exports both, and the CI
//! command (`bash .ci/test.sh`) does it itself. Without them every test fails and says so.
//!
//! Layout:
//! - `helpers`: the cluster (nodes, the database, requests), and bounded polling;
//! - `watch`: WebSocket subscribers, including one that reconnects elsewhere;
//! - `load`: clients that keep sessions moving and remember what was acknowledged;
//! - `receiver`: a webhook receiver that checks order and signatures;
//! - the tests: `routing` (any node answers, pushes reach every node), `expiry`,
//!   `webhooks`, `failover` (`kill -9` of an owner), `handover` (SIGTERM) and
//!   `readiness` (NATS lost and back), `sealing` (what NATS sees, and forged messages),
//!   `tls` (TLS and passwords to both engines, and none of them in a node's logs),
//!   `accounts` (NATS set up as docs/examples/nats-server.conf shows), `pauses` (an owner
//!   frozen past its lease, and a second process with a live node's id), `outage`
//!   (PostgreSQL cut off for 5 s); `announcements` (a node that hears none follows by
//!   its sweep); `binding` (a binding code across nodes, counted
//!   through the hand-over, folded into `handover`).

mod helpers;
mod load;
mod receiver;
mod takeover;
mod watch;

mod accounts;
mod announcements;
mod binding;
mod expiry;
mod failover;
mod handover;
mod outage;
mod pauses;
mod readiness;
mod routing;
mod sealing;
mod tls;
mod webhooks;

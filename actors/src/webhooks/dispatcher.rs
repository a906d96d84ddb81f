//! The webhook dispatcher: one actor that delivers the outbox at-least-once.
//!
//! It scans the store for the *head* of each session's outbox (its lowest
//! undelivered seq) that is due, POSTs those concurrently (at most one per
//! session, at most [`WebhookConfig::max_in_flight`] in all), and records each
//! outcome in the store before the session's next event may go. So a failing
//! event holds back the later events of its own session only.
//!
//! It scans when started (resuming what a previous run left pending), when the
//! store signals a committed event, when a retry falls due, and after every
//! recorded outcome. The receiver's answer is trusted for its status code alone:
//! at most [`EXCERPT_BYTES`] of its body are read, for the log.
//!
//! Two HTTP clients: one for the operator's `--webhook-url` (trusted configuration),
//! and one for sessions' `callback_url`s that, unless `allow_private` is set, never
//! connects to a non-public address (see [`super::ssrf`]).

use std::collections::HashSet;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use rustls_platform_verifier::BuilderVerifierExt as _;
use tokio::sync::oneshot;

use super::ssrf::{refused_literal, Resolver};
use super::{Signer, WebhookConfig};
use crate::clock::SharedClock;
use crate::ids::SessionId;
use crate::session_store::SessionStore;
use crate::store::{DeliveryRecord, OutboxEvent};
use crate::supervise::{start_actor, Lifeline, Supervised, Task, Tasks};

/// Most bytes of a receiver's answer kept, for diagnosis only.
pub const EXCERPT_BYTES: usize = 200;

/// Longest timer the dispatcher sets; a longer wait re-arms, so a moved clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How long to wait before touching the store again after it failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Why the dispatcher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// The TLS configuration (platform roots) could not be set up.
    #[error("TLS setup for webhooks: {0}")]
    Tls(#[from] rustls::Error),
    /// The HTTP client could not be built.
    #[error("HTTP client for webhooks: {0}")]
    Client(#[from] reqwest::Error),
}

/// Stops the dispatcher once its in-flight deliveries are recorded; answers then.
/// Events not yet attempted stay pending in the store for the next start.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The store committed a new event (an item of the wake-up stream).
struct Wake;

/// The webhook dispatcher.
pub struct Dispatcher {
    /// The outbox, whichever engine holds it.
    store: Arc<dyn SessionStore>,
    clock: SharedClock,
    /// For the operator's `--webhook-url`.
    client: reqwest::Client,
    /// For sessions' `callback_url`s: with the guarded resolver and no proxy, unless
    /// private addresses are allowed (then the same as `client`).
    callbacks: reqwest::Client,
    signer: Signer,
    config: WebhookConfig,
    /// Sessions with a delivery in flight or not yet recorded: their later events wait.
    in_flight: HashSet<SessionId>,
    /// A scan is reading the store; wake-ups meanwhile set `rescan` instead of
    /// starting a second one.
    scanning: bool,
    rescan: bool,
    /// Sessions whose outcome was recorded while a scan was reading. That scan may have
    /// read before the record committed and would send the old head again, so they stay
    /// in `in_flight` until its result is handled.
    held: Vec<SessionId>,
    /// The timer for the next retry that falls due.
    timer: Option<SpawnHandle>,
    /// `Shutdown` was received: no new deliveries start.
    stopping: bool,
    /// Answers to `Shutdown`, sent once nothing is in flight.
    drained: Vec<oneshot::Sender<()>>,
    /// Its supervision ([`Dispatcher::supervised`]); a scan is one round.
    life: Lifeline,
    /// Whether this is the broker's first dispatcher, which adds what a previous run
    /// left in the outbox to the depth gauge; one that replaces a dead one does not
    /// (the gauge still counts those events).
    first: bool,
}

/// An HTTP client for webhooks: TLS with the `ring` provider and the platform's roots
/// (passed in, not installed process-wide), no redirects, a total timeout, names
/// resolved by `resolver`.
///
/// A guarded client uses no proxy: through a proxy, the resolver would see the proxy's
/// name and not the receiver's, and the check would be void.
fn http_client(timeout: Duration, resolver: Resolver) -> Result<reqwest::Client, DispatcherError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    let builder = reqwest::Client::builder();
    let builder = if resolver.is_guarded() {
        builder.no_proxy()
    } else {
        builder
    };
    Ok(builder
        .tls_backend_preconfigured(tls)
        .dns_resolver(resolver)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("idv-broker-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

impl Dispatcher {
    /// A dispatcher over `store`'s outbox, signing with `signer`.
    pub fn new(
        store: Arc<dyn SessionStore>,
        clock: SharedClock,
        signer: Signer,
        config: WebhookConfig,
    ) -> Result<Self, DispatcherError> {
        let client = http_client(config.timeout, Resolver::trusting(config.lookup.clone()))?;
        let callbacks = if config.allow_private {
            client.clone()
        } else {
            http_client(config.timeout, Resolver::guarded(config.lookup.clone()))?
        };
        Ok(Self {
            client,
            callbacks,
            store,
            clock,
            signer,
            config,
            in_flight: HashSet::new(),
            scanning: false,
            rescan: false,
            held: Vec::new(),
            timer: None,
            stopping: false,
            drained: Vec::new(),
            life: Tasks::default().lifeline(Task::Webhooks),
            first: true,
        })
    }

    /// Starts this dispatcher under supervision: a dispatcher that dies (a panic) is
    /// replaced by a new one with the same clients and settings, which reads the outbox
    /// afresh (every event is in the store until recorded, so none is lost; one in
    /// flight at the death may be sent twice, which webhooks allow: SPEC §4).
    pub fn supervised(self, tasks: &Tasks) -> Supervised<Dispatcher> {
        let mut first = true;
        start_actor(tasks, Task::Webhooks, move |life| Self {
            first: std::mem::take(&mut first),
            client: self.client.clone(),
            callbacks: self.callbacks.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            signer: self.signer.clone(),
            config: self.config.clone(),
            in_flight: HashSet::new(),
            scanning: false,
            rescan: false,
            held: Vec::new(),
            timer: None,
            stopping: false,
            drained: Vec::new(),
            life,
        })
    }

    /// Reads what is due and starts delivering it.
    fn scan(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        if self.scanning {
            self.rescan = true;
            return;
        }
        if self.in_flight.len() >= self.config.max_in_flight {
            // Every completion scans again.
            return;
        }
        self.life.round();
        self.scanning = true;
        let store = self.store.clone();
        let now = self.clock.now();
        // Heads of in-flight sessions may come back too; ask for enough to fill the room.
        let limit = self.config.max_in_flight;
        ctx.spawn(
            async move { store.due_webhooks(now, limit).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.scanning = false;
                    match res {
                        _ if act.stopping => {}
                        Ok(found) => {
                            for event in found.due {
                                if act.in_flight.len() >= act.config.max_in_flight {
                                    break;
                                }
                                if !act.in_flight.contains(&event.session_id) {
                                    act.deliver(event, ctx);
                                }
                            }
                            act.arm_timer(found.next_at, ctx);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read the webhook outbox; retrying");
                            act.arm_timer(Some(now + chrono::Duration::seconds(1)), ctx);
                        }
                    }
                    for id in std::mem::take(&mut act.held) {
                        act.in_flight.remove(&id);
                    }
                    act.check_drained(ctx);
                    if std::mem::take(&mut act.rescan) {
                        act.scan(ctx);
                    }
                }),
        );
    }

    fn arm_timer(&mut self, at: Option<DateTime<Utc>>, ctx: &mut Context<Self>) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let Some(at) = at else { return };
        let wait = (at - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
        self.timer = Some(ctx.run_later(wait.min(MAX_SLEEP), |act, ctx| {
            act.timer = None;
            act.scan(ctx);
        }));
    }

    /// POSTs one event, then records the outcome; the session is held back meanwhile.
    fn deliver(&mut self, event: OutboxEvent, ctx: &mut Context<Self>) {
        self.in_flight.insert(event.session_id);
        // An IP literal reaches no resolver: a session's callback is checked here too.
        let guarded = !event.operator_url && !self.config.allow_private;
        let client = if event.operator_url {
            self.client.clone()
        } else {
            self.callbacks.clone()
        };
        let signer = self.signer.clone();
        let at = self.clock.now();
        ctx.spawn(
            async move {
                let outcome = match guarded.then(|| refused_literal(&event.url)).flatten() {
                    Some(_) => Err("not sent: the callback URL's host is a loopback, private \
                                    or other non-public address"
                        .to_owned()),
                    None => post(&client, &signer, &event, at).await,
                };
                (event, outcome)
            }
            .into_actor(self)
            .map(move |(event, outcome), act, ctx| act.settle(event, at, outcome, ctx)),
        );
    }

    /// Decides what an attempt means (done, retry when, or give up) and records it.
    fn settle(
        &mut self,
        event: OutboxEvent,
        at: DateTime<Utc>,
        outcome: Result<(), String>,
        ctx: &mut Context<Self>,
    ) {
        let attempts = event.attempts.saturating_add(1);
        let record = match outcome {
            Ok(()) => {
                tracing::debug!(session = %event.session_id, seq = %event.seq, attempts, "webhook delivered");
                DeliveryRecord::Delivered
            }
            Err(error) => {
                let since_first = (at - event.first_attempt_at.unwrap_or(at))
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                if since_first >= self.config.give_up_after {
                    tracing::error!(session = %event.session_id, seq = %event.seq, attempts,
                        error = %error, "webhook given up");
                    DeliveryRecord::Failed { error }
                } else {
                    let wait = self.config.backoff(attempts, rand::random::<f64>());
                    tracing::warn!(session = %event.session_id, seq = %event.seq, attempts,
                        retry_in_ms = wait.as_millis() as u64, error = %error, "webhook not accepted");
                    let wait = chrono::Duration::from_std(wait)
                        .unwrap_or_else(|_| chrono::Duration::seconds(300));
                    DeliveryRecord::Retry {
                        next_attempt_at: at + wait,
                        error,
                    }
                }
            }
        };
        let outcome = match &record {
            DeliveryRecord::Delivered => "delivered",
            DeliveryRecord::Failed { .. } => "failed",
            DeliveryRecord::Retry { .. } => "retry",
        };
        let store = self.store.clone();
        let (id, seq) = (event.session_id, event.seq);
        ctx.spawn(
            async move { store.record_delivery(id, seq, at, record).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(()) => {
                        crate::metrics::webhook_delivery(outcome);
                        if outcome != "retry" {
                            crate::metrics::outbox_moved(-1.0);
                        }
                        act.release(id, ctx)
                    }
                    Err(e) => {
                        // The row still says "due": hold the session back for a moment,
                        // or a failing store would turn into a tight resend loop.
                        tracing::error!(session = %id, seq = %seq, error = %e,
                            "cannot record a webhook attempt; it will be sent again");
                        ctx.run_later(STORE_RETRY, move |act, ctx| act.release(id, ctx));
                    }
                }),
        );
    }

    /// The session's attempt is recorded: its next event may go.
    fn release(&mut self, id: SessionId, ctx: &mut Context<Self>) {
        if self.scanning {
            self.held.push(id);
            self.rescan = true;
            return;
        }
        self.in_flight.remove(&id);
        self.check_drained(ctx);
        self.scan(ctx);
    }

    fn check_drained(&mut self, ctx: &mut Context<Self>) {
        if self.stopping && self.in_flight.is_empty() {
            for tx in self.drained.drain(..) {
                let _ = tx.send(());
            }
            ctx.stop();
        }
    }
}

/// One POST of SPEC §4. `Ok` on a 2xx; otherwise a short description of what happened.
async fn post(
    client: &reqwest::Client,
    signer: &Signer,
    event: &OutboxEvent,
    at: DateTime<Utc>,
) -> Result<(), String> {
    let timestamp = at.timestamp();
    let sent = client
        .post(&event.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Idv-Timestamp", timestamp.to_string())
        .header("X-Idv-Signature", signer.sign(timestamp, &event.body))
        .header("X-Idv-Event-Id", &event.event_id)
        .body(event.body.to_vec())
        .send()
        .await;
    match sent {
        Ok(res) if res.status().is_success() => Ok(()),
        Ok(res) => {
            let status = res.status();
            Err(format!("HTTP {status}: {}", excerpt(res).await))
        }
        Err(e) => Err(describe(&e)),
    }
}

/// The start of the receiver's body, printable, for the log; never more than
/// [`EXCERPT_BYTES`] are read.
async fn excerpt(mut res: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < EXCERPT_BYTES {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(EXCERPT_BYTES - buf.len());
                buf.extend_from_slice(&chunk[..take]);
            }
            _ => break,
        }
    }
    printable(&String::from_utf8_lossy(&buf))
}

/// A network error with its causes, without the URL (a callback URL may carry a
/// credential in its query).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    printable(&text)
}

fn printable(s: &str) -> String {
    s.chars()
        .take(EXCERPT_BYTES)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.life.stopped();
    }

    fn started(&mut self, ctx: &mut Self::Context) {
        let wake = self.store.webhook_wake();
        ctx.add_stream(futures_util::stream::unfold(wake, |wake| async move {
            wake.notified().await;
            Some((Wake, wake))
        }));
        // Resume whatever a previous run left pending.
        self.scan(ctx);
        // The outbox depth gauge starts from what a previous run left.
        if !self.first {
            return;
        }
        let store = self.store.clone();
        actix::spawn(async move {
            match store.pending_webhooks().await {
                Ok(n) => crate::metrics::outbox_moved(n as f64),
                Err(e) => tracing::warn!(error = %e, "cannot count the webhook outbox"),
            }
        });
    }
}

impl StreamHandler<Wake> for Dispatcher {
    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.scan(ctx);
    }
}

impl Handler<Shutdown> for Dispatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        self.check_drained(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

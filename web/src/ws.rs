//! WebSocket subscriptions (`GET /v1/sessions/{id}/ws`): the only module of the web
//! crate that speaks WebSocket. It talks to the session actor only through the
//! registry's messages, so the transport can change without touching `actors/`.
//!
//! Order on the wire: the snapshot, the replay of `after_seq` (from the events log,
//! up to the snapshot's seq), then live pushes (seq above the snapshot's). Pushes
//! that arrive before the handler hands over the snapshot wait in `pending`.
//!
//! Closing (RFC 6455 §7): a client's close frame is answered with a close frame
//! carrying its code, and the connection ends at once. When the server closes (the
//! session ended, shutdown, a slow reader), it sends its close frame, sends nothing
//! more, and ends the connection as soon as the client's close frame arrives (also
//! when the two crossed), or after [`WsConfig::close_timeout`] without one. Ending
//! the connection closes the TCP stream right away: the HTTP layer does not linger
//! on an upgraded connection.
//!
//! Supervision: if the session's actor dies with this subscription ([`AudienceLost`]),
//! the connection re-subscribes through the registry (which starts a replacement)
//! with `after_seq` = the last seq it wrote, exactly as a resuming client would: the
//! replay fills the gap, nothing is written twice, and the client notices nothing. If
//! that fails, it closes with `1012` and a reason naming the `after_seq` to reconnect
//! with.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use idv_actors::clock::rfc3339;
use idv_actors::ids::{Seq, SessionId};
use idv_actors::model::{SessionEvent, SessionRecord};
use idv_actors::registry::Registry;
use idv_actors::session::messages::Caller;
use idv_actors::session::messages::{AudienceLost, Push, SubscriberId};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::auth::BrowserClient;
use crate::error::ApiError;
use crate::routes::session_id;
use crate::state::{AppState, WsConfig};

/// How often one connection re-subscribes after its session's actor died; past that
/// it closes with `1012` (reconnect with `after_seq`).
const MAX_RESUBSCRIBES: usize = 3;

/// `?after_seq=N` (and the `token` the auth extractor reads).
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// Replay every transition after this seq.
    pub after_seq: Option<u64>,
}

/// The server → client frames of SPEC §3.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Frame<'a> {
    Snapshot {
        session_id: String,
        status: &'a str,
        seq: u64,
        expires_at: String,
        /// A session with a binding, once `retrieved`: the number to show (SPEC §2).
        #[serde(skip_serializing_if = "Option::is_none")]
        binding_code: Option<String>,
    },
    Status {
        session_id: String,
        status: &'a str,
        seq: u64,
        at: String,
        /// On the `retrieved` frame of a session with a binding (SPEC §2).
        #[serde(skip_serializing_if = "Option::is_none")]
        binding_code: Option<String>,
    },
}

/// Hands the subscription to the connection once the session accepted it.
#[derive(Message)]
#[rtype(result = "()")]
struct Begin {
    id: Option<SubscriberId>,
    snapshot: SessionRecord,
    replay: Vec<SessionEvent>,
}

/// One WebSocket connection subscribed to one session.
pub struct Subscriber {
    session_id: SessionId,
    registry: Registry,
    /// Who subscribed: a re-subscription after [`AudienceLost`] asks as them.
    caller: Caller,
    config: WsConfig,
    /// The subscription, to remove on disconnect; `None` for an ended session.
    subscription: Option<SubscriberId>,
    /// Whether the snapshot (or a re-subscription's replay) went out; pushes before
    /// that wait in `pending`.
    begun: bool,
    /// Whether [`AudienceLost`] came before [`Begin`]: re-subscribe once begun.
    lost_early: bool,
    /// How often this connection re-subscribed after its session's actor died.
    resubscribed: usize,
    pending: Vec<Push>,
    /// The last seq written to the client.
    last_seq: Seq,
    last_heard: Instant,
    /// Set by the session when it dropped this subscriber for not keeping up.
    evicted: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
    /// Whether the server sent its close frame: nothing is sent after it, and the
    /// client's close frame ends the connection.
    closing: bool,
    /// This WebSocket's unit of `--max-websockets`, given back when the actor goes.
    _permit: crate::limits::Permit,
}

impl Subscriber {
    /// Sends the server's close frame (once), then waits for the client's, at most
    /// `close_timeout`.
    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: ws::CloseCode, why: &str) {
        if self.closing {
            return;
        }
        self.closing = true;
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(why.to_owned()),
        }));
        ctx.run_later(self.config.close_timeout, |_, ctx| ctx.stop());
    }

    /// Sends the server's close frame (unless sent) and ends the connection without
    /// waiting: the peer is gone or broke the protocol.
    fn abort(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: ws::CloseCode, why: &str) {
        self.close(ctx, code, why);
        ctx.stop();
    }

    fn send(&mut self, ctx: &mut ws::WebsocketContext<Self>, frame: &Frame<'_>) {
        if self.closing {
            return;
        }
        match serde_json::to_string(frame) {
            Ok(text) => ctx.text(text),
            Err(e) => tracing::error!(error = %e, "cannot encode a frame"),
        }
    }

    /// Writes one transition unless already written; closes after a terminal one.
    fn deliver(&mut self, ctx: &mut ws::WebsocketContext<Self>, event: &SessionEvent) {
        if event.seq <= self.last_seq {
            return;
        }
        self.last_seq = event.seq;
        let frame = Frame::Status {
            session_id: self.session_id.to_string(),
            status: event.status.as_str(),
            seq: event.seq.0,
            at: rfc3339(event.at),
            binding_code: event.binding_code.map(|c| c.to_string()),
        };
        self.send(ctx, &frame);
        if event.status.is_terminal() {
            self.close(ctx, ws::CloseCode::Normal, "the session is over");
        }
    }

    /// Writes a pushed transition, and records its latency from the commit.
    fn deliver_push(&mut self, ctx: &mut ws::WebsocketContext<Self>, push: &Push) {
        let before = (self.last_seq, self.closing);
        self.deliver(ctx, &push.event);
        if !before.1 && self.last_seq != before.0 {
            idv_actors::metrics::push_written(push.committed_at.elapsed());
        }
    }

    fn check_evicted(&mut self, ctx: &mut ws::WebsocketContext<Self>) -> bool {
        if self.evicted.load(Ordering::Acquire) {
            let why = format!(
                "too slow to read; reconnect with after_seq={}",
                self.last_seq
            );
            self.subscription = None;
            self.close(ctx, ws::CloseCode::Policy, &why);
            return true;
        }
        false
    }
}

impl Actor for Subscriber {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!(idv_actors::metrics::WS_SUBSCRIBERS).increment(1.0);
        ctx.set_mailbox_capacity(self.config.mailbox);
        ctx.run_interval(self.config.ping_interval, |act, ctx| {
            if act.closing || act.check_evicted(ctx) {
                return;
            }
            let silent = act.last_heard.elapsed();
            if silent >= act.config.client_timeout {
                act.abort(ctx, ws::CloseCode::Policy, "no answer to pings");
                return;
            }
            // If the deadline falls before the next tick, check exactly at it, so a dead
            // peer goes at the timeout and not up to one ping interval later.
            let left = act.config.client_timeout - silent;
            if left < act.config.ping_interval {
                ctx.run_later(left, |act, ctx| {
                    if act.last_heard.elapsed() >= act.config.client_timeout {
                        act.abort(ctx, ws::CloseCode::Policy, "no answer to pings");
                    }
                });
            }
            ctx.ping(b"");
        });
        let mut shutdown = self.shutdown.clone();
        ctx.spawn(
            async move {
                let _ = shutdown.wait_for(|stopping| *stopping).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| act.close(ctx, ws::CloseCode::Away, "the broker is shutting down")),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::gauge!(idv_actors::metrics::WS_SUBSCRIBERS).decrement(1.0);
        if let Some(id) = self.subscription.take() {
            self.registry.unsubscribe(self.session_id, id);
        }
    }
}

impl Subscriber {
    /// Writes the replay, then the pushes that waited for it; the subscription is
    /// `msg.id` from now on.
    fn resume(&mut self, msg: Begin, ctx: &mut ws::WebsocketContext<Self>) {
        self.subscription = msg.id;
        self.begun = true;
        for event in &msg.replay {
            // The events log keeps no code; the session has it.
            let event = SessionEvent {
                binding_code: msg
                    .snapshot
                    .binding_code
                    .filter(|_| event.status == idv_actors::status::Status::Retrieved),
                ..event.clone()
            };
            self.deliver(ctx, &event);
        }
        // Replay covers up to the snapshot; pushes cover what came after it.
        let s = &msg.snapshot;
        self.last_seq = self.last_seq.max(s.seq);
        if s.status.is_terminal() {
            self.close(ctx, ws::CloseCode::Normal, "the session is over");
            return;
        }
        for push in std::mem::take(&mut self.pending) {
            self.deliver_push(ctx, &push);
        }
        if std::mem::take(&mut self.lost_early) {
            self.resubscribe(ctx);
        }
    }

    /// The session's actor died with this subscription: subscribe again, through the
    /// registry, from the last seq written. Pushes wait in `pending` meanwhile.
    fn resubscribe(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.subscription = None;
        if self.resubscribed == MAX_RESUBSCRIBES {
            // An actor that keeps dying: let the client come back later instead.
            let why = format!(
                "service restart; reconnect with after_seq={}",
                self.last_seq
            );
            self.close(ctx, ws::CloseCode::Restart, &why);
            return;
        }
        self.resubscribed += 1;
        self.begun = false;
        let registry = self.registry.clone();
        let (id, caller, after) = (self.session_id, self.caller.clone(), self.last_seq);
        let evicted = self.evicted.clone();
        let addr = ctx.address();
        ctx.spawn(
            async move {
                let (push, lost) = (addr.clone().recipient(), addr.recipient());
                registry
                    .subscribe(id, caller, Some(after), push, lost, evicted)
                    .await
            }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok((subscribed, replay)) => act.resume(
                    Begin {
                        id: subscribed.id,
                        snapshot: subscribed.snapshot,
                        replay,
                    },
                    ctx,
                ),
                Err(e) => {
                    tracing::warn!(session = %act.session_id, error = %e, "cannot re-subscribe after the session restarted");
                    let why = format!("service restart; reconnect with after_seq={}", act.last_seq);
                    act.close(ctx, ws::CloseCode::Restart, &why);
                }
            }),
        );
    }
}

impl Handler<Begin> for Subscriber {
    type Result = ();

    fn handle(&mut self, msg: Begin, ctx: &mut Self::Context) {
        let s = &msg.snapshot;
        let frame = Frame::Snapshot {
            session_id: s.id.to_string(),
            status: s.status.as_str(),
            seq: s.seq.0,
            expires_at: rfc3339(s.expires_at),
            binding_code: s
                .binding_code
                .filter(|_| s.status == idv_actors::status::Status::Retrieved)
                .map(|c| c.to_string()),
        };
        self.send(ctx, &frame);
        self.resume(msg, ctx);
    }
}

impl Handler<AudienceLost> for Subscriber {
    type Result = ();

    fn handle(&mut self, _: AudienceLost, ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        if self.begun {
            self.resubscribe(ctx);
        } else {
            self.lost_early = true;
        }
    }
}

impl Handler<Push> for Subscriber {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        if self.check_evicted(ctx) {
            return;
        }
        if self.begun {
            self.deliver_push(ctx, &msg);
        } else {
            self.pending.push(msg);
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Subscriber {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Close(reason)) => {
                // Echo the client's code (RFC 6455 §5.5.1), unless the server's close
                // frame went first (the two crossed); either way the handshake is
                // complete, so the connection ends now.
                if !self.closing {
                    self.closing = true;
                    ctx.close(reason.map(|r| ws::CloseReason {
                        code: r.code,
                        description: None,
                    }));
                }
                ctx.stop();
            }
            // After the server's close frame only the client's close frame matters.
            _ if self.closing => {}
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            // Client text frames carry nothing the broker acts on.
            Ok(ws::Message::Text(_)) => {}
            Ok(ws::Message::Binary(_)) | Ok(ws::Message::Continuation(_)) => {
                self.close(ctx, ws::CloseCode::Policy, "binary frames are not accepted")
            }
            Err(ws::ProtocolError::Overflow) => self.abort(
                ctx,
                ws::CloseCode::Policy,
                &format!(
                    "frames from clients are at most {} bytes",
                    self.config.max_frame
                ),
            ),
            Err(e) => self.abort(ctx, ws::CloseCode::Protocol, &e.to_string()),
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/ws",
    tag = "client",
    security(("session_token" = []), ("session_token_query" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
        ("after_seq" = Option<u64>, Query, description = "Replay every transition with seq above this (at most the current seq)."),
        ("token" = Option<String>, Query, description = "The session token: a browser cannot set headers on a WebSocket."),
    ),
    responses(
        (status = 101, description = "Switching to WebSocket: text frames {\"type\": \"snapshot\", …} then {\"type\": \"status\", …}; closed with 1000 once the session is terminal."),
        (status = 400, description = "Not a WebSocket handshake, a bad id, or after_seq above the current seq.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing session token, or not this session's.", body = crate::error::ErrorBody),
        (status = 403, description = "The token may not read this session, or the handshake's Origin is neither the broker's own nor an --allowed-origin.", body = crate::error::ErrorBody),
        (status = 404, description = "No such session.", body = crate::error::ErrorBody),
        (status = 503, description = "unavailable: too many WebSockets in all, or subscribers on this session; see Retry-After.", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait."))),
    )
)]
/// `GET /v1/sessions/{id}/ws`. Authentication, the session and `after_seq` are all
/// checked before the upgrade, so a refusal is a plain HTTP error (SPEC §5).
pub async fn subscribe(
    state: web::Data<AppState>,
    client: BrowserClient,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<WsQuery>,
    stream: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    req.app_data::<web::Data<crate::origins::Origins>>()
        .ok_or_else(|| ApiError::internal("the admitted origins are missing"))?
        .check_handshake(&req)?;
    let permit = state.websockets.try_acquire().ok_or_else(|| {
        ApiError::unavailable(
            "too many WebSocket connections; try again later",
            crate::limits::RETRY_AFTER_SECS,
        )
    })?;
    let evicted = Arc::new(AtomicBool::new(false));
    let actor = Subscriber {
        session_id: id,
        registry: state.registry.clone(),
        caller: client.caller.clone(),
        config: state.ws,
        subscription: None,
        begun: false,
        lost_early: false,
        resubscribed: 0,
        pending: Vec::new(),
        last_seq: Seq(query.after_seq.unwrap_or(0)),
        last_heard: Instant::now(),
        evicted: evicted.clone(),
        shutdown: state.shutdown.clone(),
        closing: false,
        _permit: permit,
    };
    let (addr, response) = ws::WsResponseBuilder::new(actor, &req, stream)
        .frame_size(state.ws.max_frame)
        .start_with_addr()
        .map_err(|e| ApiError::invalid(format!("not a WebSocket handshake: {e}")))?;
    // If this fails, the response (and with it the connection's actor) is dropped
    // and the client gets the HTTP error instead of an upgrade.
    let (subscribed, replay) = state
        .registry
        .subscribe(
            id,
            client.caller.clone(),
            query.after_seq.map(Seq),
            addr.clone().recipient(),
            addr.clone().recipient(),
            evicted,
        )
        .await?;
    crate::shown_on::record(&state, &req, id, client.caller, &subscribed.snapshot).await;
    addr.do_send(Begin {
        id: subscribed.id,
        snapshot: subscribed.snapshot,
        replay,
    });
    Ok(response)
}

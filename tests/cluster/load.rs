//! Clients that keep sessions moving across the nodes, as a backend and phones behind
//! a plain load balancer would: each request of a session goes to the next node; a node
//! that refuses the connection is skipped (the balancer's health check); a `503` is
//! retried after its `Retry-After`. Every answer is classified, and every acknowledged
//! transition remembered for the audit against the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{device_token, StoredSession, API_KEY};

/// Clients at once (issue 12: 8 clients spread over the 3 nodes).
pub const CLIENTS: usize = 8;
/// How long one request may keep being retried (503s while a takeover runs).
const RETRY_FOR: Duration = Duration::from_secs(30);

/// What the clients were told, shared by them and the test.
#[derive(Default)]
pub struct Load {
    /// Session id → the last transition acknowledged (seq, status).
    pub acked: Mutex<BTreeMap<String, (u64, String)>>,
    /// Answers no client may get: anything but 2xx, and `503` without `Retry-After`.
    pub unexpected: Mutex<Vec<String>>,
    /// Requests whose connection broke after it was accepted (no answer): the node
    /// index and what happened. Allowed only towards a node killed by the test.
    pub cut: Mutex<Vec<(usize, String)>>,
    /// `409 invalid_state` answers to a step of a session: (session id, the seq the step
    /// makes). Right only when the step had in fact been committed by an attempt whose
    /// answer was lost: its owner died after the commit, the forwarding node answered
    /// `503` ("read the session before trying again"), and this client, which retries
    /// every `503`, sent it again to the adopter. The audit checks that in the store.
    pub conflicts: Mutex<Vec<(String, u64)>>,
    /// `503` + `Retry-After` answers (retried).
    pub unavailable: AtomicUsize,
    /// Connections refused (a node that is gone; the request went elsewhere).
    pub refused: AtomicUsize,
    /// Set by the test: finish the session in hand, then stop.
    pub stop: AtomicBool,
}

impl Load {
    /// Acknowledged approvals so far.
    pub fn confirmed(&self) -> usize {
        self.acked
            .lock()
            .expect("acked")
            .values()
            .filter(|(_, s)| s == "confirmed")
            .count()
    }

    fn ack(&self, id: &str, seq: u64, status: &str) {
        self.acked
            .lock()
            .expect("acked")
            .insert(id.to_owned(), (seq, status.to_owned()));
    }

    /// Asserts what every load of the suite must hold, whatever it went through: no
    /// answer but 2xx or 503 + Retry-After, no request left without an answer (except
    /// towards node `killed`), every acknowledged transition stored, every `409` for a
    /// step the store holds (an earlier attempt committed it and its answer was lost),
    /// and every session's events gap-free.
    pub fn audit(
        &self,
        sessions: &BTreeMap<String, StoredSession>,
        events: &BTreeMap<String, Vec<(u64, String)>>,
        killed: Option<usize>,
    ) {
        let unexpected = self.unexpected.lock().expect("unexpected").clone();
        assert!(
            unexpected.is_empty(),
            "answers other than 2xx or 503 + Retry-After:\n{}",
            unexpected.join("\n")
        );
        let cut = self.cut.lock().expect("cut").clone();
        let cut_elsewhere: Vec<_> = cut.iter().filter(|(n, _)| Some(*n) != killed).collect();
        assert!(
            cut_elsewhere.is_empty(),
            "requests cut off without an answer: {cut_elsewhere:?}"
        );
        self.assert_all_acknowledged_committed(sessions, events);
        for (id, seq) in self.conflicts.lock().expect("conflicts").iter() {
            let stored = sessions.get(id);
            assert!(
                stored.is_some_and(|s| s.seq >= *seq),
                "session {id}: 409 for the step to seq {seq}, but the store has {stored:?}"
            );
        }
        crate::helpers::assert_events_gap_free(sessions, events);
    }

    /// Asserts that every acknowledged transition is committed (acknowledged =
    /// committed): the session's row is at that seq or later, and the event of that seq
    /// carries the acknowledged status.
    pub fn assert_all_acknowledged_committed(
        &self,
        sessions: &BTreeMap<String, StoredSession>,
        events: &BTreeMap<String, Vec<(u64, String)>>,
    ) {
        let acked = self.acked.lock().expect("acked").clone();
        assert!(!acked.is_empty(), "the load acknowledged nothing");
        let mut lost = Vec::new();
        for (id, (seq, status)) in &acked {
            let row_ok = sessions.get(id).is_some_and(|s| s.seq >= *seq);
            let event_ok = events
                .get(id)
                .is_some_and(|e| e.iter().any(|(s, st)| s == seq && st == status));
            if !row_ok || !event_ok {
                lost.push(format!(
                    "{id}: acknowledged seq {seq} {status}, stored {:?}, events {:?}",
                    sessions.get(id),
                    events.get(id)
                ));
            }
        }
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged transitions are not in the store:\n{}",
            lost.len(),
            acked.len(),
            lost.join("\n")
        );
    }
}

/// A request of the load: its name, and for a transition its session and the seq it
/// makes.
struct Step<'a> {
    name: &'a str,
    session: Option<&'a str>,
    seq: u64,
}

/// What one request came to.
enum Outcome {
    Ok(Value),
    /// Not acknowledged, or not known to be (a cut, an unexpected answer): the client
    /// leaves this session and starts another.
    Unknown,
}

/// Sends the request `make` builds for a node, to node `*turn % n` and on: skips
/// refused connections, retries `503`s after their `Retry-After` (at most 1 s here).
async fn send(
    load: &Load,
    nodes: &[String],
    turn: &mut usize,
    step: Step<'_>,
    make: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Outcome {
    let what = step.name;
    let until = tokio::time::Instant::now() + RETRY_FOR;
    while tokio::time::Instant::now() < until {
        let n = *turn % nodes.len();
        let res = make(&nodes[n]).send().await;
        let res = match res {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                load.refused.fetch_add(1, Ordering::Relaxed);
                *turn += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => {
                load.cut
                    .lock()
                    .expect("cut")
                    .push((n, format!("{what}: {e}")));
                return Outcome::Unknown;
            }
        };
        let status = res.status().as_u16();
        if res.status().is_success() {
            return match res.json::<Value>().await {
                Ok(v) => Outcome::Ok(v),
                Err(e) => {
                    load.cut
                        .lock()
                        .expect("cut")
                        .push((n, format!("{what}: body: {e}")));
                    Outcome::Unknown
                }
            };
        }
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = res.text().await.unwrap_or_default();
        match (status, retry_after) {
            (409, _) if body.contains("\"invalid_state\"") && step.session.is_some() => {
                let id = step.session.unwrap_or_default().to_owned();
                load.conflicts
                    .lock()
                    .expect("conflicts")
                    .push((id, step.seq));
                return Outcome::Unknown;
            }
            (503, Some(secs)) => {
                load.unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(secs).min(Duration::from_secs(1))).await;
                *turn += 1;
            }
            _ => {
                load.unexpected.lock().expect("unexpected").push(format!(
                    "{what} via node {n}: {status} (Retry-After {retry_after:?}) {body}"
                ));
                return Outcome::Unknown;
            }
        }
    }
    load.unexpected
        .lock()
        .expect("unexpected")
        .push(format!("{what}: still 503 after {RETRY_FOR:?}"));
    Outcome::Unknown
}

/// One client: creates a session through one node, opens it through the next, and
/// approves or denies it (alternately) through the next, until told to stop.
pub async fn client(
    load: Arc<Load>,
    nodes: Arc<Vec<String>>,
    index: usize,
    callback: Option<String>,
) {
    // A connection per request: a pooled keep-alive connection that a stopping node
    // closes would be a client-side race, not an answer of the cluster.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(40))
        .build()
        .expect("client");
    let sub = format!("load-user-{index}");
    let device = device_token(&sub);
    let mut turn = index;
    let mut round = 0usize;
    while !load.stop.load(Ordering::Acquire) {
        round += 1;
        let mut body =
            json!({"scopes": ["full_name"], "vendor_data": format!("load-{index}-{round}")});
        if let Some(cb) = &callback {
            body["callback_url"] = json!(cb);
        }
        let create = Step {
            name: "create",
            session: None,
            seq: 1,
        };
        let Outcome::Ok(created) = send(&load, &nodes, &mut turn, create, |base| {
            http.post(format!("{base}/v1/sessions"))
                .header("X-Api-Key", API_KEY)
                .json(&body)
        })
        .await
        else {
            continue;
        };
        let id = created["session_id"]
            .as_str()
            .expect("session_id")
            .to_owned();
        load.ack(&id, 1, "initialized");
        turn += 1;
        let Outcome::Ok(_) = send(
            &load,
            &nodes,
            &mut turn,
            Step {
                name: "information",
                session: Some(&id),
                seq: 2,
            },
            |base| {
                http.get(format!("{base}/v1/sessions/{id}/information"))
                    .bearer_auth(&device)
            },
        )
        .await
        else {
            continue;
        };
        load.ack(&id, 2, "retrieved");
        turn += 1;
        let decision = if round.is_multiple_of(2) {
            json!({"decision": "deny"})
        } else {
            json!({"decision": "approve", "shared_data": {"full_name": "Load Test"}})
        };
        if let Outcome::Ok(v) = send(
            &load,
            &nodes,
            &mut turn,
            Step {
                name: "update",
                session: Some(&id),
                seq: 3,
            },
            |base| {
                http.post(format!("{base}/v1/sessions/{id}/update"))
                    .bearer_auth(&device)
                    .json(&decision)
            },
        )
        .await
        {
            let seq = v["seq"].as_u64().unwrap_or(0);
            let status = v["status"].as_str().unwrap_or("");
            load.ack(&id, seq, status);
        }
        turn += 1;
    }
}

/// Starts [`CLIENTS`] clients over `nodes`.
pub fn start(
    load: &Arc<Load>,
    nodes: Vec<String>,
    callback: Option<String>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let nodes = Arc::new(nodes);
    (0..CLIENTS)
        .map(|i| tokio::spawn(client(load.clone(), nodes.clone(), i, callback.clone())))
        .collect()
}

/// Tells the clients to stop and waits for them (bounded).
pub async fn stop(load: &Load, clients: Vec<tokio::task::JoinHandle<()>>) {
    load.stop.store(true, Ordering::Release);
    for c in clients {
        tokio::time::timeout(RETRY_FOR + Duration::from_secs(15), c)
            .await
            .expect("a client stops in time")
            .expect("a client task");
    }
}

/// Waits (bounded) until the clients have `n` acknowledged approvals.
pub async fn wait_confirmed(load: &Load, n: usize, within: Duration) {
    crate::helpers::eventually(within, "the load gets going", || async {
        (load.confirmed() >= n).then_some(())
    })
    .await;
}

//! A webhook receiver on loopback (an actix-web server started by the test) that
//! records every delivery, checks its signature as docs/webhooks.md tells customers to,
//! and can refuse the first few to make the nodes retry.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::helpers::{eventually, WEBHOOK_SECRET};

/// One delivery as it arrived.
#[derive(Clone, Debug)]
pub struct Hit {
    pub session_id: String,
    pub seq: u64,
    pub status: String,
    pub event_id: String,
    /// `X-Idv-Event-Id` equals the body's `event_id`.
    pub event_id_header_matches: bool,
    /// A `v1=` signature over `timestamp.body` with the nodes' secret.
    pub signed: bool,
    /// What the receiver answered.
    pub answered: u16,
}

#[derive(Default)]
struct Recorded {
    /// In arrival order.
    hits: Mutex<Vec<Hit>>,
    /// Answer 500 to this many deliveries first.
    fail_first: AtomicUsize,
}

pub struct Receiver {
    base: String,
    recorded: Arc<Recorded>,
    handle: ServerHandle,
}

fn signed(req: &HttpRequest, body: &[u8]) -> bool {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let timestamp = header("x-idv-timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("hmac key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    header("x-idv-signature").split(',').any(|s| s == expected)
}

async fn receive(req: HttpRequest, body: web::Bytes, rec: web::Data<Recorded>) -> HttpResponse {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let refuse = rec
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let event_id = v["event_id"].as_str().unwrap_or("").to_owned();
    rec.hits.lock().expect("hits").push(Hit {
        session_id: v["session_id"].as_str().unwrap_or("").to_owned(),
        seq: v["seq"].as_u64().unwrap_or(0),
        status: v["status"].as_str().unwrap_or("").to_owned(),
        event_id_header_matches: req
            .headers()
            .get("x-idv-event-id")
            .and_then(|h| h.to_str().ok())
            == Some(event_id.as_str()),
        event_id,
        signed: signed(&req, &body),
        answered: if refuse { 500 } else { 200 },
    });
    if refuse {
        HttpResponse::InternalServerError().body("not now")
    } else {
        HttpResponse::Ok().body("thanks")
    }
}

impl Receiver {
    /// Starts on a free loopback port; refuses the first `fail_first` deliveries.
    pub async fn start(fail_first: usize) -> Receiver {
        let recorded = Arc::new(Recorded {
            fail_first: AtomicUsize::new(fail_first),
            ..Recorded::default()
        });
        let data = web::Data::from(recorded.clone());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Receiver {
            base,
            recorded,
            handle,
        }
    }

    /// A callback URL on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.recorded.hits.lock().expect("hits").clone()
    }

    /// Accepted deliveries per session, in arrival order.
    pub fn accepted_by_session(&self) -> BTreeMap<String, Vec<Hit>> {
        let mut out: BTreeMap<String, Vec<Hit>> = BTreeMap::new();
        for h in self.hits().into_iter().filter(|h| h.answered == 200) {
            out.entry(h.session_id.clone()).or_default().push(h);
        }
        out
    }

    /// Waits until every event of `expected` (session id → [(seq, status)], seq ≥ 2) has
    /// been accepted at least once, then checks what at-least-once in `seq` order means
    /// to a customer: per session the accepted seqs never go back (a repeat may follow
    /// its own first delivery, nothing older may come after something newer), a repeat
    /// carries the same `event_id`, every status is the committed one, and every
    /// delivery is signed.
    pub async fn assert_delivered_in_order(
        &self,
        expected: &BTreeMap<String, Vec<(u64, String)>>,
        within: Duration,
    ) {
        eventually(within, "every committed event delivered", || async {
            let got = self.accepted_by_session();
            let missing: Vec<String> = expected
                .iter()
                .flat_map(|(id, events)| {
                    let got = got.get(id);
                    events
                        .iter()
                        .filter(move |(seq, _)| {
                            !got.is_some_and(|hits| hits.iter().any(|h| h.seq == *seq))
                        })
                        .map(move |(seq, _)| format!("{id}#{seq}"))
                })
                .collect();
            if missing.is_empty() {
                Some(())
            } else {
                eprintln!(
                    "waiting for {} webhook(s), e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(3)]
                );
                None
            }
        })
        .await;
        let hits = self.hits();
        assert!(
            hits.iter().all(|h| h.signed && h.event_id_header_matches),
            "every delivery is signed and names its event: {:?}",
            hits.iter()
                .find(|h| !h.signed || !h.event_id_header_matches)
        );
        let got = self.accepted_by_session();
        for (id, events) in expected {
            let hits = got.get(id).map(Vec::as_slice).unwrap_or_default();
            let seqs: Vec<u64> = hits.iter().map(|h| h.seq).collect();
            assert!(
                seqs.windows(2).all(|w| w[0] <= w[1]),
                "session {id}: webhooks out of order: {seqs:?}"
            );
            for (seq, status) in events {
                let of_seq: Vec<&Hit> = hits.iter().filter(|h| h.seq == *seq).collect();
                assert!(
                    of_seq.iter().all(|h| &h.status == status),
                    "session {id} seq {seq}: committed {status}, delivered {of_seq:?}"
                );
                assert!(
                    of_seq.windows(2).all(|w| w[0].event_id == w[1].event_id),
                    "session {id} seq {seq}: a repeat with another event_id: {of_seq:?}"
                );
            }
            let unknown: Vec<u64> = seqs
                .iter()
                .copied()
                .filter(|s| !events.iter().any(|(e, _)| e == s))
                .collect();
            assert!(
                unknown.is_empty(),
                "session {id}: delivered seqs {unknown:?} that were never committed"
            );
        }
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

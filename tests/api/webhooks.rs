//! Webhooks (SPEC §4) against real receivers: actix-web servers on loopback started
//! by the tests, which record what arrives and verify it as a customer would.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::{Hmac, Mac};
use idv_actors::webhooks::ssrf::{Lookup, LookupFuture};
use idv_actors::webhooks::{SharedLookup, WebhookConfig};
use idv_broker::Settings;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::*;

pub(crate) const SECRET: &str = "whsec-test-current";

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    path: String,
    headers: BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
    /// The status the receiver answered.
    pub(crate) answered: u16,
}

impl Hit {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Default)]
struct Recorded {
    hits: Mutex<Vec<Hit>>,
    /// Answer 500 to this many requests first, then 200.
    fail_first: AtomicUsize,
}

/// A webhook receiver on loopback. Paths starting with `/fail` always answer 500,
/// `/redirect` answers 307 to `/ok`; anything else answers 200 (after `fail_first`).
pub(crate) struct Receiver {
    base: String,
    recorded: Arc<Recorded>,
    handle: ServerHandle,
}

async fn receive(req: HttpRequest, body: web::Bytes, rec: web::Data<Recorded>) -> HttpResponse {
    let path = req.path().to_owned();
    let answered = if path.starts_with("/fail") {
        500
    } else if path.starts_with("/redirect") {
        307
    } else if rec
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        500
    } else {
        200
    };
    rec.hits.lock().unwrap().push(Hit {
        path,
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.to_vec(),
        answered,
    });
    match answered {
        200 => HttpResponse::Ok().body("thanks"),
        307 => HttpResponse::TemporaryRedirect()
            .insert_header(("Location", "/ok"))
            .finish(),
        _ => HttpResponse::InternalServerError().body("receiver is having a bad day"),
    }
}

/// A free loopback address with nothing listening on it (yet).
pub(crate) fn reserve_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        Self::start_on(reserve_addr(), 0).await
    }

    pub(crate) async fn start_on(addr: SocketAddr, fail_first: usize) -> Receiver {
        let recorded = Arc::new(Recorded {
            fail_first: AtomicUsize::new(fail_first),
            ..Recorded::default()
        });
        let data = web::Data::from(recorded.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .bind(addr)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Receiver {
            base: format!("http://{addr}"),
            recorded,
            handle,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn hits(&self) -> Vec<Hit> {
        self.recorded.hits.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests were answered 200; returns every hit so far.
    pub(crate) async fn wait_accepted(&self, n: usize) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let hits = self.hits();
            if hits.iter().filter(|h| h.answered == 200).count() >= n {
                return hits;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} webhooks not accepted in time; got {hits:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

pub(crate) fn accepted(hits: &[Hit]) -> Vec<Value> {
    hits.iter()
        .filter(|h| h.answered == 200)
        .map(Hit::json)
        .collect()
}

fn hmac_hex(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Verifies a hit the way docs/webhooks.md tells receivers to: any `v1=` signature
/// matching HMAC-SHA256(secret, timestamp + "." + body).
pub(crate) fn verifies(hit: &Hit, secret: &str) -> bool {
    let expected = format!(
        "v1={}",
        hmac_hex(secret, hit.header("x-idv-timestamp"), &hit.body)
    );
    hit.header("x-idv-signature")
        .split(',')
        .any(|s| s == expected)
}

/// Webhooks on, with a signing secret and retries fast enough for tests; callback URLs
/// may point at the loopback receivers (`--webhook-allow-private`).
pub(crate) fn with_webhooks(s: &mut Settings) {
    s.webhook_secrets = vec![SECRET.into()];
    s.webhooks = WebhookConfig {
        first_retry: Duration::from_millis(30),
        max_backoff: Duration::from_millis(120),
        give_up_after: Duration::from_secs(3600),
        timeout: Duration::from_secs(2),
        max_in_flight: 16,
        allow_private: true,
        ..WebhookConfig::default()
    };
}

async fn create_with_callback(app: &TestApp, callback_url: &str) -> String {
    let res = app
        .post_session(&json!({
            "scopes": ["full_name"],
            "vendor_data": "user-42",
            "external_reference_id": "ref-1",
            "callback_url": callback_url
        }))
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["session_id"].as_str().unwrap().to_owned()
}

async fn webhook_counts(app: &TestApp, id: &str) -> Value {
    let body: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    body["webhooks"].clone()
}

/// Polls the session's webhook counts until they equal `want` (bounded).
async fn wait_for_counts(app: &TestApp, id: &str, want: Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let counts = webhook_counts(app, id).await;
        if counts == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhooks of {id} stayed {counts}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn every_transition_is_posted_signed_in_seq_order_with_the_documented_payload() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(with_webhooks).await;
    let id = create_with_callback(&app, &receiver.url("/hooks")).await;

    assert_eq!(app.information(&id, "alice").await.status(), 200);
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "John Adam Johnson"}}),
        )
        .await;
    assert_eq!(res.status(), 200);

    let hits = receiver.wait_accepted(2).await;
    assert_eq!(hits.len(), 2, "nothing else was sent: {hits:#?}");
    let session: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    for (hit, (status, seq)) in hits.iter().zip([("retrieved", 2), ("confirmed", 3)]) {
        assert_eq!(hit.path, "/hooks");
        assert_eq!(hit.header("content-type"), "application/json");
        assert!(hit.header("x-idv-timestamp").parse::<i64>().is_ok());
        assert!(verifies(hit, SECRET), "signature does not verify: {hit:#?}");
        assert!(!verifies(hit, "some-other-secret"));
        let body = hit.json();
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys.len(),
            8,
            "exactly the fields of SPEC §4, nothing personal: {body}"
        );
        assert_eq!(body["event"], "session.status_changed");
        assert_eq!(body["session_id"], id);
        assert_eq!(body["status"], status);
        assert_eq!(body["seq"], seq);
        assert_eq!(body["vendor_data"], "user-42");
        assert_eq!(body["external_reference_id"], "ref-1");
        let event_id = body["event_id"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(event_id).is_ok());
        assert_eq!(hit.header("x-idv-event-id"), event_id);
    }
    assert_ne!(hits[0].json()["event_id"], hits[1].json()["event_id"]);
    assert_eq!(
        hits[1].json()["at"],
        session["updated_at"],
        "at is the time of the transition"
    );
    wait_for_counts(&app, &id, json!({"pending": 0, "failed": 0})).await;
}

#[actix_web::test]
async fn a_refused_event_is_sent_again_unchanged_and_holds_back_the_next_one() {
    let receiver = Receiver::start_on(reserve_addr(), 2).await;
    let app = spawn_app_with(with_webhooks).await;
    let id = create_with_callback(&app, &receiver.url("/hooks")).await;
    assert_eq!(app.information(&id, "alice").await.status(), 200);
    assert_eq!(app.cancel(&id).await.status(), 200);

    let hits = receiver.wait_accepted(2).await;
    let answered: Vec<u16> = hits.iter().map(|h| h.answered).collect();
    let seqs: Vec<u64> = hits
        .iter()
        .map(|h| h.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(answered, [500, 500, 200, 200]);
    assert_eq!(seqs, [2, 2, 2, 3], "seq 3 waits until seq 2 is accepted");
    // The retries are the same event, byte for byte, each signed afresh.
    assert_eq!(hits[0].body, hits[1].body);
    assert_eq!(hits[0].body, hits[2].body);
    assert_eq!(
        hits[0].header("x-idv-event-id"),
        hits[2].header("x-idv-event-id")
    );
    assert!(hits.iter().all(|h| verifies(h, SECRET)));
    assert_eq!(accepted(&hits)[1]["status"], "cancelled");
    wait_for_counts(&app, &id, json!({"pending": 0, "failed": 0})).await;
}

#[actix_web::test]
async fn a_failing_receiver_holds_back_its_own_session_only() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(with_webhooks).await;
    let stuck = create_with_callback(&app, &receiver.url("/fail")).await;
    let fine = create_with_callback(&app, &receiver.url("/ok")).await;
    assert_eq!(app.cancel(&stuck).await.status(), 200);
    assert_eq!(app.cancel(&fine).await.status(), 200);

    let hits = receiver.wait_accepted(1).await;
    let delivered = accepted(&hits);
    assert_eq!(delivered[0]["session_id"], fine);
    assert!(
        hits.iter().any(|h| h.path == "/fail"),
        "the stuck session was tried too"
    );
    assert_eq!(
        webhook_counts(&app, &stuck).await,
        json!({"pending": 1, "failed": 0})
    );
    wait_for_counts(&app, &fine, json!({"pending": 0, "failed": 0})).await;
}

#[actix_web::test]
async fn a_redirect_is_not_followed_and_counts_as_not_delivered() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(with_webhooks).await;
    let id = create_with_callback(&app, &receiver.url("/redirect")).await;
    assert_eq!(app.cancel(&id).await.status(), 200);

    // Bounded wait for a couple of attempts (30 ms backoff).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while receiver.hits().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retry after a 307"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(receiver.hits().iter().all(|h| h.path == "/redirect"));
    assert_eq!(
        webhook_counts(&app, &id).await,
        json!({"pending": 1, "failed": 0})
    );
}

#[actix_web::test]
async fn an_event_for_a_receiver_that_is_down_arrives_once_it_is_up() {
    let addr = reserve_addr();
    let app = spawn_app_with(with_webhooks).await;
    let id = create_with_callback(&app, &format!("http://{addr}/hooks")).await;
    assert_eq!(app.cancel(&id).await.status(), 200);
    // Connection refused, attempt after attempt: wait until a few were recorded.
    wait_for_attempts(&app, &id, 3).await;
    assert_eq!(
        webhook_counts(&app, &id).await,
        json!({"pending": 1, "failed": 0})
    );

    let receiver = Receiver::start_on(addr, 0).await;
    let hits = receiver.wait_accepted(1).await;
    let body = hits[0].json();
    assert_eq!(
        (body["seq"].as_u64(), body["status"].as_str()),
        (Some(2), Some("cancelled"))
    );
    assert!(verifies(&hits[0], SECRET));
    wait_for_counts(&app, &id, json!({"pending": 0, "failed": 0})).await;
}

#[actix_web::test]
async fn events_committed_while_the_receiver_was_down_are_delivered_after_a_broker_restart() {
    let addr = reserve_addr();
    let default_url = format!("http://{addr}/default");
    let settings = |s: &mut Settings| {
        with_webhooks(s);
        s.webhook_url = Some(default_url.clone());
    };
    let app = spawn_app_with(settings).await;
    // Both go to the broker's default URL: neither has a callback_url.
    let cancelled = app.create_session(&["full_name"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .post_session(&json!({"scopes": ["full_name"], "ttl_seconds": 30}))
        .await;
    let expiring = res.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.cancel(&cancelled).await.status(), 200);

    // Down for a minute: the second session expires while the broker is stopped, and
    // is expired by the next start before it listens.
    let app = app
        .restart_with(chrono::Duration::seconds(60), settings)
        .await;
    let receiver = Receiver::start_on(addr, 0).await;
    let hits = receiver.wait_accepted(2).await;
    let mut got: Vec<(String, String, u64)> = accepted(&hits)
        .iter()
        .map(|b| {
            (
                b["session_id"].as_str().unwrap().to_owned(),
                b["status"].as_str().unwrap().to_owned(),
                b["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (cancelled.clone(), "cancelled".to_owned(), 2),
        (expiring.clone(), "expired".to_owned(), 2),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(hits
        .iter()
        .all(|h| h.path == "/default" && verifies(h, SECRET)));
    wait_for_counts(&app, &cancelled, json!({"pending": 0, "failed": 0})).await;
    receiver.stop().await;
}

#[actix_web::test]
async fn while_a_secret_is_rotated_both_signatures_are_sent_new_first() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|s| {
        with_webhooks(s);
        s.webhook_secrets = vec!["whsec-new".into(), "whsec-old".into()];
    })
    .await;
    let id = create_with_callback(&app, &receiver.url("/hooks")).await;
    assert_eq!(app.cancel(&id).await.status(), 200);

    let hits = receiver.wait_accepted(1).await;
    let hit = &hits[0];
    let ts = hit.header("x-idv-timestamp");
    assert_eq!(
        hit.header("x-idv-signature"),
        format!(
            "v1={},v1={}",
            hmac_hex("whsec-new", ts, &hit.body),
            hmac_hex("whsec-old", ts, &hit.body)
        )
    );
    assert!(verifies(hit, "whsec-new") && verifies(hit, "whsec-old"));
    assert!(!verifies(hit, SECRET));
}

#[actix_web::test]
async fn an_event_still_refused_after_the_give_up_time_is_counted_as_failed() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|s| {
        with_webhooks(s);
        s.webhooks.give_up_after = Duration::from_millis(150);
    })
    .await;
    let id = create_with_callback(&app, &receiver.url("/fail")).await;
    assert_eq!(app.cancel(&id).await.status(), 200);

    wait_for_counts(&app, &id, json!({"pending": 0, "failed": 1})).await;
    let tries = receiver.hits().len();
    assert!(
        tries >= 2,
        "it was retried before giving up ({tries} tries)"
    );
    // A negative: nothing may arrive during a window several retry periods long
    // (the backoff here is 30 to 120 ms). The window observes; it synchronizes nothing.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        receiver.hits().len(),
        tries,
        "nothing is sent once given up"
    );
}

#[actix_web::test]
async fn a_callback_url_is_refused_when_the_broker_has_no_webhook_secret() {
    let app = spawn_app().await;
    let res = app
        .post_session(
            &json!({"scopes": ["full_name"], "callback_url": "https://app.example/hooks"}),
        )
        .await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("callback_url"), "{message}");

    // Without a URL there is nothing to sign, and the session reports no webhooks.
    let id = app.create_session(&["full_name"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.cancel(&id).await.status(), 200);
    assert_eq!(
        webhook_counts(&app, &id).await,
        json!({"pending": 0, "failed": 0})
    );
}

// --- Where webhooks may go (SSRF, SPEC §3): without `--webhook-allow-private`. ---
//
// No test here sends a packet to a non-loopback address: public addresses are only
// ever answers of an injected resolver, and no event is made for a session whose
// callback would really go to one.

/// A resolver for tests that answers every name with one address, which the test may
/// change (DNS rebinding), and counts its lookups.
struct Rebinding {
    answer: Mutex<std::net::IpAddr>,
    lookups: AtomicUsize,
}

impl Rebinding {
    fn new(first: &str) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(first.parse().unwrap()),
            lookups: AtomicUsize::new(0),
        })
    }

    fn answer_now(&self, ip: &str) {
        *self.answer.lock().unwrap() = ip.parse().unwrap();
    }
}

impl Lookup for Rebinding {
    fn lookup(&self, _host: &str) -> LookupFuture {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let ip = *self.answer.lock().unwrap();
        Box::pin(async move { Ok(vec![ip]) })
    }
}

/// Webhooks on (secret, fast retries) with private addresses refused, names resolved by
/// `lookup`.
fn guarded_webhooks(lookup: Arc<Rebinding>) -> impl Fn(&mut Settings) + Clone {
    move |s: &mut Settings| {
        with_webhooks(s);
        s.webhooks.allow_private = false;
        s.webhooks.lookup = SharedLookup(lookup.clone());
    }
}

/// The outbox row of the session's first event: (attempts, last_error), once it has
/// at least `attempts` attempts (bounded wait).
async fn wait_for_attempts(app: &TestApp, id: &str, attempts: i64) -> (i64, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let row: Option<(i64, Option<String>)> = app
            .sql(
                "SELECT attempts, last_error FROM webhook_outbox WHERE session_id = ?1 \
                 ORDER BY seq LIMIT 1",
                &[id],
            )
            .await
            .first()
            .map(|r| (i64::from_cell(&r[0]), Option::<String>::from_cell(&r[1])));
        if let Some((n, Some(error))) = &row {
            if *n >= attempts {
                return (*n, error.clone());
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {attempts} attempts on {id}: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn a_callback_url_at_a_loopback_private_or_link_local_address_is_refused() {
    // Names resolve to a private address here, unless they are loopback by definition.
    let app = spawn_app_with(guarded_webhooks(Rebinding::new("10.0.0.7"))).await;
    for url in [
        "http://127.0.0.1:8080/hooks",
        "http://127.1/hooks",
        "http://2130706433/hooks",
        "http://[::1]:8080/hooks",
        "http://10.1.2.3/hooks",
        "http://172.16.5.4/hooks",
        "http://192.168.1.10/hooks",
        "http://100.64.0.1/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0:8080/hooks",
        "http://224.0.0.1/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://[::ffff:a9fe:a9fe]/hooks",
        "http://[fd00::1]/hooks",
        "http://[fe80::1]/hooks",
        "http://localhost:8080/hooks",
        "https://hooks.internal.test/idv",
    ] {
        let res = app
            .post_session(&json!({"scopes": ["full_name"], "callback_url": url}))
            .await;
        let message = assert_error(res, 400, "invalid_request").await;
        assert!(message.contains("callback_url"), "{url}: {message}");
    }
    let sessions: i64 = app.sql_one("SELECT COUNT(*) FROM sessions", &[]).await;
    assert_eq!(sessions, 0, "nothing was created");
}

#[actix_web::test]
async fn a_callback_url_at_a_public_address_is_accepted_without_the_flag() {
    let app = spawn_app_with(guarded_webhooks(Rebinding::new("93.184.216.34"))).await;
    // Neither session makes a transition, so no event exists and nothing is sent.
    for url in [
        "https://93.184.216.34/hooks",
        "https://hooks.public.test/idv",
    ] {
        let id = create_with_callback(&app, url).await;
        assert_eq!(
            webhook_counts(&app, &id).await,
            json!({"pending": 0, "failed": 0})
        );
    }
    let events: i64 = app
        .sql_one("SELECT COUNT(*) FROM webhook_outbox", &[])
        .await;
    assert_eq!(events, 0);
}

#[actix_web::test]
async fn a_callback_name_that_resolves_to_loopback_at_delivery_is_never_connected_to() {
    let receiver = Receiver::start().await;
    let port = receiver.base.rsplit(':').next().unwrap().to_owned();
    let url = format!("http://rebind.test:{port}/hooks");

    // Control: allowed to reach loopback, the same name and resolver deliver, so the
    // receiver would see an event that got through.
    let dns = Rebinding::new("127.0.0.1");
    let allowed = spawn_app_with({
        let dns = dns.clone();
        move |s: &mut Settings| {
            guarded_webhooks(dns)(s);
            s.webhooks.allow_private = true;
        }
    })
    .await;
    let id = create_with_callback(&allowed, &url).await;
    assert_eq!(allowed.cancel(&id).await.status(), 200);
    assert_eq!(receiver.wait_accepted(1).await.len(), 1);

    // Without the flag: public when the session is created, loopback when it delivers.
    let dns = Rebinding::new("93.184.216.34");
    let app = spawn_app_with(guarded_webhooks(dns.clone())).await;
    let id = create_with_callback(&app, &url).await;
    assert_eq!(dns.lookups.load(Ordering::SeqCst), 1, "checked at creation");
    dns.answer_now("127.0.0.1");
    assert_eq!(app.cancel(&id).await.status(), 200);

    let (_, error) = wait_for_attempts(&app, &id, 2).await;
    assert!(error.contains("non-public"), "{error}");
    assert!(
        dns.lookups.load(Ordering::SeqCst) >= 3,
        "resolved per attempt"
    );
    assert_eq!(receiver.hits().len(), 1, "only the control's event arrived");
    assert_eq!(
        webhook_counts(&app, &id).await,
        json!({"pending": 1, "failed": 0})
    );
}

#[actix_web::test]
async fn a_loopback_callback_stored_while_allowed_is_not_sent_once_the_flag_is_off() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(with_webhooks).await;
    let id = create_with_callback(&app, &receiver.url("/hooks")).await;

    let app = app
        .restart_with(
            chrono::Duration::zero(),
            guarded_webhooks(Rebinding::new("10.0.0.7")),
        )
        .await;
    assert_eq!(app.cancel(&id).await.status(), 200);
    let (_, error) = wait_for_attempts(&app, &id, 2).await;
    assert!(error.contains("non-public"), "{error}");
    assert!(receiver.hits().is_empty(), "{:#?}", receiver.hits());
}

#[actix_web::test]
async fn the_operators_webhook_url_is_trusted_even_at_a_loopback_address() {
    let receiver = Receiver::start().await;
    let port = receiver.base.rsplit(':').next().unwrap().to_owned();
    let app = spawn_app_with(move |s: &mut Settings| {
        guarded_webhooks(Rebinding::new("127.0.0.1"))(s);
        s.webhook_url = Some(format!("http://operator.test:{port}/default"));
    })
    .await;
    let id = app.create_session(&["full_name"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.cancel(&id).await.status(), 200);
    let hits = receiver.wait_accepted(1).await;
    assert_eq!(hits[0].path, "/default");
    assert_eq!(hits[0].json()["session_id"], id);
}

#[actix_web::test]
async fn webhook_metrics_count_retries_and_deliveries_and_the_outbox_depth_follows_the_backlog() {
    use crate::metrics::{scrape, scrape_until};
    const DELIVERIES: &str = "idv_webhook_deliveries_total";
    const DEPTH: &str = "idv_webhook_outbox_depth";
    /// Sessions whose event waits for the receiver: more than other tests leave pending.
    const N: usize = 6;
    let addr = reserve_addr();
    let app = spawn_app_with(with_webhooks).await;
    let before = scrape(&app).await;
    let mut ids = Vec::new();
    for _ in 0..N {
        let id = create_with_callback(&app, &format!("http://{addr}/hooks")).await;
        assert_eq!(app.cancel(&id).await.status(), 200);
        ids.push(id);
    }
    for id in &ids {
        wait_for_attempts(&app, id, 2).await;
    }
    let retried = |s: &crate::metrics::Scrape| {
        s.sum(DELIVERIES, &[("outcome", "retry")]) - before.sum(DELIVERIES, &[("outcome", "retry")])
    };
    let backlog = scrape_until(&app, |s| retried(s) >= (2 * N) as f64).await;
    assert!(retried(&backlog) >= (2 * N) as f64, "retries counted");
    let depth = backlog.sum(DEPTH, &[]);
    assert!(
        depth >= N as f64,
        "outbox depth with the receiver down: {depth}"
    );

    let receiver = Receiver::start_on(addr, 0).await;
    receiver.wait_accepted(N).await;
    for id in &ids {
        wait_for_counts(&app, id, json!({"pending": 0, "failed": 0})).await;
    }
    let drained = scrape_until(&app, |s| s.sum(DEPTH, &[]) <= depth - N as f64).await;
    assert!(
        drained.sum(DEPTH, &[]) <= depth - N as f64,
        "outbox depth once delivered: {} (was {depth})",
        drained.sum(DEPTH, &[])
    );
    assert!(
        drained.sum(DELIVERIES, &[("outcome", "delivered")])
            - before.sum(DELIVERIES, &[("outcome", "delivered")])
            >= N as f64,
        "deliveries counted"
    );
}

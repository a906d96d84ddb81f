//! `GET /metrics` (issue 11): the Prometheus text exposition.
//!
//! The recorder is one per process (see `idv_actors::metrics`) and the tests of this
//! binary run many brokers at once, so every figure here is the sum over them: the
//! tests read the figures before and after what they do and assert on the difference
//! (counters and histograms only grow), and on gauges only what the other tests cannot
//! undo (at least this many while ours are open).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a condition may take to hold on a loaded machine.
const WITHIN: Duration = Duration::from_secs(10);

/// One sample: the metric's name, its labels, its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition strictly: every line is empty, a `#` comment, or
/// `name{label="value",...} value`, with a well-formed name and labels.
fn parse(text: &str) -> Vec<Sample> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                let mut labels = BTreeMap::new();
                // Label values here never hold `",`, so splitting on it is exact.
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(name_ok(k), "bad label name in {line:?}");
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name, labels)
            }
        };
        assert!(name_ok(name), "bad metric name in {line:?}");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// The figures at one moment.
pub struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include `labels`; 0 if none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

pub async fn scrape(app: &TestApp) -> Scrape {
    let res = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "text/plain; version=0.0.4"
    );
    let text = res.text().await.unwrap();
    let samples = parse(&text);
    Scrape { text, samples }
}

/// Scrapes until `ok` holds, for up to [`WITHIN`]; the last scrape either way.
pub async fn scrape_until(app: &TestApp, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let s = scrape(app).await;
        if ok(&s) || tokio::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(app: &TestApp, id: &str, token: &str) -> Ws {
    let url = format!(
        "{}/v1/sessions/{id}/ws?token={token}",
        app.address.replace("http", "ws")
    );
    let (ws, res) = tokio_tungstenite::connect_async(url)
        .await
        .expect("handshake");
    assert_eq!(res.status(), 101);
    ws
}

/// The next text frame as JSON; `None` once the server closed.
async fn next_frame(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(WITHIN, ws.next())
            .await
            .expect("a frame in time");
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => continue,
        }
    }
}

const CREATED: &str = "idv_sessions_created_total";
const TRANSITIONS: &str = "idv_session_transitions_total";
const PUSH: &str = "idv_push_latency_seconds";
const COMMIT: &str = "idv_store_commit_seconds";
const STAGES: &str = "idv_transition_stage_seconds";
const BATCH: &str = "idv_store_batch_size";
const HTTP: &str = "idv_http_requests_total";
const SUBSCRIBERS: &str = "idv_ws_subscribers";
const LIVE: &str = "idv_live_sessions";
const LONG_POLLS: &str = "idv_waiting_long_polls";

#[actix_web::test]
async fn after_a_journey_metrics_parse_as_prometheus_text_and_count_it_by_route_template_and_status(
) {
    let app = spawn_app().await;
    let before = scrape(&app).await;

    let created = app.create_session(&["full_name"]).await;
    let id = created["session_id"].as_str().unwrap().to_owned();
    let token = created["session_token"].as_str().unwrap().to_owned();
    let mut ws = connect(&app, &id, &token).await;
    assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "snapshot");
    assert_eq!(app.information(&id, "alice").await.status(), 200);
    assert_eq!(next_frame(&mut ws).await.unwrap()["status"], "retrieved");
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "A"}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(next_frame(&mut ws).await.unwrap()["status"], "confirmed");
    assert!(next_frame(&mut ws).await.is_none(), "closed after the end");

    // Both pushes are timed once written; the last one may land just after the frame.
    let after = scrape_until(&app, |s| {
        s.sum(&format!("{PUSH}_count"), &[]) >= before.sum(&format!("{PUSH}_count"), &[]) + 2.0
    })
    .await;
    let grew =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);

    assert!(grew(CREATED, &[]) >= 1.0, "sessions created");
    for status in ["retrieved", "confirmed"] {
        assert!(
            grew(TRANSITIONS, &[("status", status)]) >= 1.0,
            "transitions to {status}"
        );
    }
    assert!(
        !after.samples.iter().any(|s| s.name == TRANSITIONS
            && s.labels.get("status").map(String::as_str) == Some("initialized")),
        "creation is not a transition"
    );
    // Histograms, with buckets (not summaries): the push, the store's commits and batches.
    assert!(grew(&format!("{PUSH}_count"), &[]) >= 2.0, "push latency");
    assert!(after.has(&format!("{PUSH}_bucket")));
    assert!(grew(&format!("{COMMIT}_count"), &[]) >= 3.0, "commits");
    assert!(after.sum(&format!("{COMMIT}_bucket"), &[("le", "+Inf")]) >= 3.0);
    assert!(grew(&format!("{BATCH}_sum"), &[]) >= 3.0, "jobs in batches");
    // HTTP requests by route template: the path's id never shows.
    assert!(grew(HTTP, &[("route", "/v1/sessions"), ("status", "201")]) >= 1.0);
    assert!(
        grew(
            HTTP,
            &[
                ("route", "/v1/sessions/{id}/information"),
                ("status", "200")
            ]
        ) >= 1.0
    );
    assert!(
        grew(
            HTTP,
            &[("route", "/v1/sessions/{id}/ws"), ("status", "101")]
        ) >= 1.0
    );
    assert!(after.has("idv_http_request_duration_seconds_bucket"));
    // The stages of both transitions: the token check and the session's round trip
    // always; the writer's stages on SQLite, whose writer thread stamps them.
    let stages: &[&str] = if on_postgres() {
        &["auth", "session"]
    } else {
        &["auth", "queue", "statements", "commit", "wake", "session"]
    };
    for stage in stages {
        assert!(
            grew(&format!("{STAGES}_count"), &[("stage", stage)]) >= 2.0,
            "stage {stage}"
        );
    }
    assert!(!after.text.contains(&id), "a session id is never a label");
    assert!(!after.text.contains("alice"), "a user id is never a label");
    // Every family is there, with its help line.
    for name in [
        CREATED,
        TRANSITIONS,
        LIVE,
        SUBSCRIBERS,
        PUSH,
        STAGES,
        COMMIT,
        BATCH,
        HTTP,
        "idv_http_request_duration_seconds",
        LONG_POLLS,
        "idv_webhook_deliveries_total",
        "idv_webhook_outbox_depth",
        "idv_staged_upload_bytes",
        "idv_rate_limited_requests_total",
    ] {
        assert!(
            after.text.contains(&format!("# HELP {name} ")),
            "{name} described"
        );
    }
}

#[actix_web::test]
async fn an_unrouted_path_is_counted_under_a_fixed_word_not_its_text() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    let res = app
        .client
        .get(app.url("/no/such/place-7f3a9c"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let after = scrape_until(&app, |s| {
        s.sum(HTTP, &[("route", "(no route)"), ("status", "404")])
            > before.sum(HTTP, &[("route", "(no route)"), ("status", "404")])
    })
    .await;
    assert!(
        after.sum(HTTP, &[("route", "(no route)"), ("status", "404")])
            > before.sum(HTTP, &[("route", "(no route)"), ("status", "404")])
    );
    assert!(!after.text.contains("place-7f3a9c"));
}

#[actix_web::test]
async fn the_subscriber_and_long_poll_gauges_count_what_is_open_and_let_go_when_it_closes() {
    /// More sockets than the other tests hold at once, so the gauge must count ours.
    const SOCKETS: usize = 12;
    let app = spawn_app().await;
    let created = app.create_session(&["full_name"]).await;
    let id = created["session_id"].as_str().unwrap().to_owned();
    let token = created["session_token"].as_str().unwrap().to_owned();
    assert!(
        scrape(&app).await.sum(LIVE, &[]) >= 1.0,
        "a live session actor"
    );

    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        let mut ws = connect(&app, &id, &token).await;
        assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "snapshot");
        sockets.push(ws);
    }
    let open = scrape_until(&app, |s| s.sum(SUBSCRIBERS, &[]) >= SOCKETS as f64).await;
    let during = open.sum(SUBSCRIBERS, &[]);
    assert!(during >= SOCKETS as f64, "subscribers while open: {during}");

    for mut ws in sockets {
        ws.close(None).await.unwrap();
        while next_frame(&mut ws).await.is_some() {}
    }
    let closed = scrape_until(&app, |s| s.sum(SUBSCRIBERS, &[]) <= during - SOCKETS as f64).await;
    assert!(
        closed.sum(SUBSCRIBERS, &[]) <= during - SOCKETS as f64,
        "subscribers after closing: {} (were {during})",
        closed.sum(SUBSCRIBERS, &[])
    );

    // A long-poll parks until the device's information request moves the session.
    let polls: Vec<_> = (0..SOCKETS)
        .map(|_| {
            let (client, url, token) = (
                app.client.clone(),
                app.url(&format!("/v1/sessions/{id}/status?after_seq=1&wait=30")),
                token.clone(),
            );
            tokio::spawn(async move { client.get(url).bearer_auth(token).send().await })
        })
        .collect();
    let parked = scrape_until(&app, |s| s.sum(LONG_POLLS, &[]) >= SOCKETS as f64).await;
    let waiting = parked.sum(LONG_POLLS, &[]);
    assert!(waiting >= SOCKETS as f64, "waiting long-polls: {waiting}");
    assert_eq!(app.information(&id, "alice").await.status(), 200);
    for poll in polls {
        assert_eq!(poll.await.unwrap().unwrap().status(), 200);
    }
    let answered = scrape_until(&app, |s| s.sum(LONG_POLLS, &[]) <= waiting - SOCKETS as f64).await;
    assert!(answered.sum(LONG_POLLS, &[]) <= waiting - SOCKETS as f64);
}

#[actix_web::test]
async fn staged_upload_bytes_rise_with_an_upload_and_fall_when_the_session_ends() {
    const SIZE: usize = 2 * 1024 * 1024;
    const STAGED: &str = "idv_staged_upload_bytes";
    let app = spawn_app().await;
    let (id, _) = app.retrieved_session(&["selfie"], "alice").await;
    let mut body = vec![0u8; SIZE];
    body[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    let res = app
        .client
        .put(app.url(&format!("/v1/sessions/{id}/files/selfie")))
        .bearer_auth(app.device_token("alice"))
        .header("Content-Type", "image/png")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let held = scrape(&app).await.sum(STAGED, &[]);
    assert!(held >= SIZE as f64, "staged bytes while held: {held}");

    assert_eq!(app.cancel(&id).await.status(), 200);
    let after = scrape_until(&app, |s| s.sum(STAGED, &[]) <= held - SIZE as f64).await;
    assert!(
        after.sum(STAGED, &[]) <= held - SIZE as f64,
        "staged bytes after the end: {} (were {held})",
        after.sum(STAGED, &[])
    );
}

#[actix_web::test]
async fn a_request_refused_by_the_rate_limit_is_counted_and_metrics_are_never_refused() {
    const LIMITED: &str = "idv_rate_limited_requests_total";
    let app = spawn_app_with(|s| s.rate_limit = 1).await;
    let before = scrape(&app).await.sum(LIMITED, &[]);
    let mut refused = 0;
    for _ in 0..5 {
        let res = app.backend_get("/v1/users/someone").await;
        if res.status() == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 1, "the limit refused something");
    // Scraped past the limit, as often as a scraper likes.
    let mut last = 0.0;
    for _ in 0..3 {
        last = scrape(&app).await.sum(LIMITED, &[]);
    }
    assert!(last - before >= f64::from(refused), "rate-limited counted");
}

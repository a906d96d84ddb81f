//! Limits (SPEC §6): each refused with `503 unavailable` and `Retry-After` when
//! reached, and free again once what held it is gone; the client address behind a
//! trusted proxy.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// How long a freed unit may take to be given back on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// A `503 unavailable` with `Retry-After`.
async fn assert_unavailable(res: reqwest::Response) -> String {
    assert!(
        res.headers().contains_key("retry-after"),
        "no Retry-After on a 503"
    );
    assert_error(res, 503, "unavailable").await
}

/// Retries `attempt` until it answers `want`, within [`DEADLINE`].
async fn eventually<F, Fut>(want: u16, mut attempt: F) -> reqwest::Response
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let res = attempt().await;
        if res.status() == want || tokio::time::Instant::now() > deadline {
            assert_eq!(res.status(), want, "never answered {want}");
            return res;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post_with(app: &TestApp, key: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/sessions"))
        .header("X-Api-Key", key)
        .json(&json!({ "scopes": ["name"] }))
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn sessions_past_the_live_limit_are_refused_until_one_ends() {
    let app = spawn_app_with(|s| s.max_live_sessions = 2).await;
    let first = app.create_session(&["name"]).await;
    app.create_session(&["name"]).await;
    let msg = assert_unavailable(post_with(&app, API_KEY).await).await;
    assert!(msg.contains("live sessions"), "{msg}");
    // Ending one frees its place.
    let id = first["session_id"].as_str().unwrap();
    assert_eq!(app.cancel(id).await.status(), 200);
    eventually(201, || post_with(&app, API_KEY)).await;
}

#[actix_web::test]
async fn one_api_key_cannot_take_more_live_sessions_than_its_quota_and_a_restart_counts_them_again()
{
    let quota = |s: &mut idv_broker::Settings| s.max_live_sessions_per_key = Some(2);
    let app = spawn_app_with(quota).await;
    let first = app.create_session(&["name"]).await;
    app.create_session(&["name"]).await;
    let msg = assert_unavailable(post_with(&app, API_KEY).await).await;
    assert!(msg.contains("API key"), "{msg}");
    // Another tenant is not held back by this one.
    assert_eq!(post_with(&app, OTHER_API_KEY).await.status(), 201);
    let idempotent = |key: &'static str| {
        app.client
            .post(app.url("/v1/sessions"))
            .header("X-Api-Key", API_KEY)
            .header("Idempotency-Key", key)
            .json(&json!({ "scopes": ["name"] }))
            .send()
    };
    // The quota is full: an idempotent create is refused too (and claims nothing).
    assert_unavailable(idempotent("k-1").await.unwrap()).await;
    // A session that ends leaves the quota.
    let id = first["session_id"].as_str().unwrap();
    assert_eq!(app.cancel(id).await.status(), 200);
    eventually(201, || post_with(&app, API_KEY)).await;
    assert_unavailable(post_with(&app, API_KEY).await).await;

    // After a restart the restored sessions count again.
    let app = app.restart_with(chrono::Duration::zero(), quota).await;
    assert_eq!(app.registry.live_count_of(API_KEY_NAME), 2);
    assert_unavailable(post_with(&app, API_KEY).await).await;
    assert_eq!(post_with(&app, OTHER_API_KEY).await.status(), 201);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws`; the HTTP answer when the handshake is refused.
async fn open_ws(app: &TestApp, id: &str, token: &str) -> Result<Ws, (u16, bool)> {
    let url = format!(
        "{}/v1/sessions/{id}/ws?token={token}",
        app.address.replace("http", "ws")
    );
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err((
            res.status().as_u16(),
            res.headers().contains_key("retry-after"),
        )),
        Err(e) => panic!("handshake: {e}"),
    }
}

async fn open_ws_eventually(app: &TestApp, id: &str, token: &str) -> Ws {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match open_ws(app, id, token).await {
            Ok(ws) => return ws,
            Err(refused) => assert!(
                tokio::time::Instant::now() < deadline,
                "never accepted again: {refused:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(created: &Value) -> (String, String) {
    (
        created["session_id"].as_str().unwrap().to_owned(),
        created["session_token"].as_str().unwrap().to_owned(),
    )
}

#[actix_web::test]
async fn websockets_past_the_broker_wide_limit_are_refused_until_one_closes() {
    let app = spawn_app_with(|s| s.max_websockets = 1).await;
    let (a, a_token) = ids(&app.create_session(&["name"]).await);
    let (b, b_token) = ids(&app.create_session(&["name"]).await);
    let first = open_ws(&app, &a, &a_token).await.expect("the first opens");
    assert_eq!(open_ws(&app, &b, &b_token).await.err(), Some((503, true)));
    drop(first);
    open_ws_eventually(&app, &b, &b_token).await;
}

#[actix_web::test]
async fn subscribers_past_the_per_session_limit_are_refused_while_other_sessions_take_theirs() {
    let app = spawn_app_with(|s| s.max_subscribers_per_session = 1).await;
    let (a, a_token) = ids(&app.create_session(&["name"]).await);
    let (b, b_token) = ids(&app.create_session(&["name"]).await);
    let first = open_ws(&app, &a, &a_token).await.expect("the first opens");
    assert_eq!(open_ws(&app, &a, &a_token).await.err(), Some((503, true)));
    let _other = open_ws(&app, &b, &b_token)
        .await
        .expect("another session has its own limit");
    drop(first);
    open_ws_eventually(&app, &a, &a_token).await;
}

async fn long_poll(app: &TestApp, id: &str, token: &str, wait: u32) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/v1/sessions/{id}/status?after_seq=1&wait={wait}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn long_polls_past_the_limit_are_refused_while_a_plain_status_read_still_answers() {
    let app = spawn_app_with(|s| s.max_long_polls = 1).await;
    let (a, a_token) = ids(&app.create_session(&["name"]).await);
    let (b, b_token) = ids(&app.create_session(&["name"]).await);
    let waiting = long_poll(&app, &a, &a_token, 30);
    let check = async {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while app.registry.waiter_count(session_id(&a)).await.unwrap() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never parked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_unavailable(long_poll(&app, &b, &b_token, 30).await).await;
        // Reads that do not wait are not long-polls.
        assert_eq!(app.status(&b, &b_token).await.status(), 200);
        assert_eq!(long_poll(&app, &b, &b_token, 0).await.status(), 200);
        // The parked poll answers on the transition, and gives its place back.
        app.information(&a, "alice").await;
    };
    let (res, ()) = tokio::join!(waiting, check);
    assert_eq!(res.status(), 200);
    // Its place is free again.
    let res = eventually(200, || async {
        app.client
            .get(app.url(&format!("/v1/sessions/{b}/status?after_seq=0&wait=1")))
            .bearer_auth(&b_token)
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(res.status(), 200);
}

/// Sends one request on an open raw connection and reads its whole answer (headers
/// and a `Content-Length` body); returns the status.
async fn request_on(conn: &mut tokio::net::TcpStream, path: &str) -> u16 {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + length {
                assert_eq!(got.len(), end + 4 + length, "one answer only");
                return head.split(' ').nth(1).unwrap().parse().unwrap();
            }
        }
        let n = tokio::time::timeout(DEADLINE, conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
}

#[actix_web::test]
async fn connections_from_one_address_past_the_limit_are_refused_and_closed() {
    let app = spawn_app_with(|s| s.max_connections_per_ip = Some(1)).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let path = "/v1/sessions/00000000-0000-4000-8000-000000000000";
    let mut first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Answered (401: no key): this connection is open and counted.
    assert_eq!(request_on(&mut first, path).await, 401);
    let res = app
        .client
        .get(app.url(path))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let msg = assert_unavailable(res).await;
    assert!(msg.contains("connections"), "{msg}");
    // Probes are not refused: a load balancer keeps seeing the broker up.
    let probe = reqwest::Client::new();
    assert_eq!(
        probe
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The first connection still works; once it closes, others are served.
    assert_eq!(request_on(&mut first, path).await, 401);
    drop(first);
    eventually(404, || async {
        reqwest::Client::new()
            .get(app.url(path))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .unwrap()
    })
    .await;
}

async fn get_as(app: &TestApp, forwarded_for: &str) -> reqwest::Response {
    app.client
        .get(app.url("/v1/sessions/00000000-0000-4000-8000-000000000000"))
        .header("X-Api-Key", API_KEY)
        .header("X-Forwarded-For", forwarded_for)
        .send()
        .await
        .unwrap()
}

/// Sends as `forwarded_for` until the rate limiter refuses (1 request per second, so
/// within a few requests).
async fn exhaust(app: &TestApp, forwarded_for: &str) {
    for _ in 0..20 {
        if get_as(app, forwarded_for).await.status() == 429 {
            return;
        }
    }
    panic!("never rate limited");
}

#[actix_web::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate_limit() {
    let app = spawn_app_with(|s| {
        s.rate_limit = 1;
        s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    exhaust(&app, "203.0.113.1").await;
    // Another client behind the same proxy starts with a full bucket.
    assert_eq!(get_as(&app, "203.0.113.2").await.status(), 404);
    // A client cannot escape its bucket by writing a fake address on the left.
    assert_eq!(
        get_as(&app, "198.51.100.9, 203.0.113.1").await.status(),
        429
    );
}

#[actix_web::test]
async fn without_a_trusted_proxy_x_forwarded_for_is_ignored() {
    let app = spawn_app_with(|s| s.rate_limit = 1).await;
    exhaust(&app, "203.0.113.1").await;
    // The same peer, whatever it claims: the same bucket.
    assert_eq!(get_as(&app, "203.0.113.2").await.status(), 429);
}

/// The broker's open descriptors.
#[cfg(target_os = "linux")]
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// (soft, hard) open-file limits of `pid`.
#[cfg(target_os = "linux")]
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut words = line.split_whitespace().skip(3);
    (
        words.next().unwrap().to_owned(),
        words.next().unwrap().to_owned(),
    )
}

/// The real binary, its soft open-file limit lowered under it with `prlimit`
/// (util-linux): actix-server pauses accepting on `EMFILE` instead of spinning.
#[cfg(target_os = "linux")]
#[actix_web::test]
async fn out_of_descriptors_the_broker_keeps_serving_what_it_holds_and_recovers_when_they_close() {
    let dir = tempfile::tempdir().unwrap();
    let broker = crate::restart::start_broker(&dir.path().join("broker.db")).await;
    let pid = broker.child.id().unwrap();
    // It raised its soft limit to the hard one at start.
    let (soft, hard) = nofile(pid);
    assert_eq!(soft, hard, "the open-file limit was not raised");
    let addr = broker.address.trim_start_matches("http://").to_owned();
    // Warm: both workers have served (what they set up on their first connection is
    // in place), then every connection is closed again.
    for _ in 0..4 {
        let warm: Vec<_> =
            futures_util::future::join_all((0..4).map(|_| tokio::net::TcpStream::connect(&addr)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        for mut c in warm {
            assert_eq!(request_on(&mut c, "/healthz").await, 200);
        }
    }
    // The broker sees them close: its count stops moving.
    let (mut last, mut same) = (open_fds(pid), 0);
    while same < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = open_fds(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    // Now leave it room for a few connections only.
    let room = 4;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={}:", open_fds(pid) + room))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit failed");

    let total = room + 8;
    let mut conns = Vec::new();
    for _ in 0..total {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        conns.push(c);
    }
    // The connections it could accept are answered; the others wait in the backlog
    // (the broker holds every answered one open: keep-alive).
    let window = tokio::time::Instant::now() + Duration::from_secs(3);
    let reads = conns.iter_mut().map(|c| async move {
        let mut buf = [0u8; 12];
        match tokio::time::timeout_at(window, c.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {
                assert_eq!(&buf, b"HTTP/1.1 200");
                true
            }
            _ => false,
        }
    });
    let answered = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .filter(|a| *a)
        .count();
    assert!(answered >= 1, "nothing was served");
    assert!(answered < total, "the descriptors never ran out");
    // Once they close, the broker serves again: it did not die or stop accepting.
    drop(conns);
    let client = {
        idv_actors::webhooks::install_crypto_provider();
        reqwest::Client::new()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match client
            .get(format!("{}/readyz", broker.address))
            .send()
            .await
        {
            Ok(res) if res.status() == 200 => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "not serving again: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The broker's stderr from its start to its exit, with `--max-websockets` given.
#[cfg(target_os = "linux")]
async fn start_log_with_max_websockets(dir: &std::path::Path, max: u64) -> String {
    let db = dir.join(format!("ws-{max}.db"));
    let (mut child, _) = spawn_binary(
        &[
            "--db",
            db.to_str().unwrap(),
            "--max-websockets",
            &max.to_string(),
        ],
        &[],
        std::process::Stdio::piped(),
    )
    .await;
    // Everything at start is logged before `listening on`; the rest is read to the end.
    let mut stderr = child.stderr.take().unwrap();
    child.kill().await.unwrap();
    let mut log = String::new();
    stderr.read_to_string(&mut log).await.unwrap();
    log
}

/// An open-file limit too small for `--max-websockets` (and a margin for everything
/// else) is said at start, with what to set; one large enough says nothing.
#[cfg(target_os = "linux")]
#[actix_web::test]
async fn the_broker_warns_at_start_when_its_open_file_limit_cannot_hold_max_websockets() {
    let dir = tempfile::tempdir().unwrap();
    // The broker inherits the hard limit of this process and raises its soft one to it.
    let (_, hard) = nofile(std::process::id());
    let hard: u64 = hard.parse().expect("a finite hard open-file limit");
    let margin = 1024;
    assert!(hard > margin + 16, "hard open-file limit {hard}");

    let log = start_log_with_max_websockets(dir.path(), hard - margin + 1).await;
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("--max-websockets"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(warning.contains(&format!("open_files={hard}")), "{warning}");
    assert!(
        warning.contains(&format!("wanted={}", hard + 1)),
        "{warning}"
    );
    assert!(warning.contains("LimitNOFILE"), "{warning}");

    let log = start_log_with_max_websockets(dir.path(), hard - margin).await;
    assert!(log.contains("open-file limit raised"), "{log}");
    assert!(!log.contains("--max-websockets"), "{log}");
}

/// The listener takes as long a queue of connections waiting to be accepted as the
/// kernel allows (`net.core.somaxconn`), not `std`'s 128: a burst of subscribers
/// reconnecting at once waits there instead of being refused.
#[cfg(target_os = "linux")]
#[actix_web::test]
async fn the_listener_backlog_is_as_long_as_the_kernel_allows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("backlog.db");
    let (_child, address) = spawn_binary(
        &["--db", db.to_str().unwrap()],
        &[],
        std::process::Stdio::null(),
    )
    .await;
    let port = address.rsplit(':').next().unwrap();
    // `ss` (iproute2) shows a listening socket's backlog as its Send-Q.
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let listing = String::from_utf8_lossy(&out.stdout);
    let backlog: u32 = listing
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no listener on {port}: {listing:?}"))
        .parse()
        .unwrap();
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let want = somaxconn.min(u32::try_from(idv_web::LISTEN_BACKLOG).unwrap());
    assert!(want > 128, "somaxconn {somaxconn}: nothing to tell apart");
    assert_eq!(backlog, want, "{listing}");
}

/// Threads of `pid` whose name starts with `prefix`.
#[cfg(target_os = "linux")]
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// `--workers N` starts N HTTP worker threads (actix names them `actix-rt|system:N`,
/// which `/proc` cuts to 15 characters), and the broker serves with them.
#[cfg(target_os = "linux")]
#[actix_web::test]
async fn workers_sets_how_many_http_worker_threads_serve() {
    let dir = tempfile::tempdir().unwrap();
    for n in [1usize, 3] {
        let db = dir.path().join(format!("broker-{n}.db"));
        let workers = n.to_string();
        let (child, address) = spawn_binary(
            &["--db", db.to_str().unwrap(), "--workers", &workers],
            &[],
            std::process::Stdio::null(),
        )
        .await;
        let pid = child.id().unwrap();
        let mut conn = tokio::net::TcpStream::connect(address.trim_start_matches("http://"))
            .await
            .unwrap();
        assert_eq!(request_on(&mut conn, "/healthz").await, 200);
        // The workers start beside the listener; a request served means one runs, and
        // the rest follow within moments.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while threads_named(pid, "actix-rt|system") < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(threads_named(pid, "actix-rt|system"), n, "--workers {n}");
        drop(child);
    }
}

//! Data custody (SPEC §2): uploads stay in memory until approve, are stored with it,
//! and every byte about the person leaves the disk once a session ends without consent
//! or its retention passes.

use std::path::{Path, PathBuf};

use std::time::Duration;

use idv_actors::ids::SessionId;
use idv_actors::retention::Sweep;
use idv_actors::session::messages::InjectFault;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::*;

/// SPEC §2: deleted data is gone from every file within 5 seconds.
const SCRUB_DEADLINE: Duration = Duration::from_secs(5);

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_MAGIC: &[u8] = b"\xff\xd8\xff\xe0";

/// A unique string to look for on disk.
fn marker(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

/// A body with a valid PNG signature, then `marker`.
fn png(marker: &str) -> Vec<u8> {
    [PNG_MAGIC, b"\0\0\0\rIHDR ", marker.as_bytes()].concat()
}

/// A body with a valid JPEG signature, then `marker`.
fn jpeg(marker: &str) -> Vec<u8> {
    [JPEG_MAGIC, b"\0\x10JFIF ", marker.as_bytes()].concat()
}

/// Every file under `dir` (database, WAL, shared memory, anything) containing `needle`.
pub(crate) fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_holding(dir, needle.as_bytes())
}

/// Polls until nothing of the broker holds `needle` (SQLite: no file; PostgreSQL: no
/// row of any table), failing after SPEC §2's 5 seconds.
async fn assert_scrubbed(app: &TestApp, needle: &str) {
    let deadline = tokio::time::Instant::now() + SCRUB_DEADLINE;
    loop {
        let left = app.stored_holders(needle.as_bytes()).await;
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle} still on disk after {SCRUB_DEADLINE:?} in {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_on_disk(app: &TestApp, needle: &str) {
    assert!(
        !app.stored_holders(needle.as_bytes()).await.is_empty(),
        "{needle} should be in the store"
    );
}

async fn assert_not_on_disk(app: &TestApp, needle: &str) {
    let found = app.stored_holders(needle.as_bytes()).await;
    assert!(found.is_empty(), "{needle} must not be on disk: {found:?}");
}

/// Creates a session with `scopes` and a registration prefill holding `prefill`.
async fn session_with_prefill(app: &TestApp, scopes: &[&str], prefill: &str) -> String {
    let res = app
        .post_session(&json!({
            "scopes": scopes,
            "registration": {"first_name": prefill},
            "ttl_seconds": 60
        }))
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["session_id"].as_str().unwrap().to_owned()
}

/// A session asking for `scopes`, opened by device `alice`.
async fn retrieved_session(app: &TestApp, scopes: &[&str]) -> String {
    let id = app.create_session(scopes).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.information(&id, "alice").await.status(), 200);
    id
}

async fn upload(
    app: &TestApp,
    id: &str,
    sub: &str,
    kind: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/v1/sessions/{id}/files/{kind}")))
        .bearer_auth(app.device_token(sub))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn decision(app: &TestApp, id: &str) -> Value {
    let res = app
        .backend_get(&format!("/v1/sessions/{id}/decision"))
        .await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn approve(app: &TestApp, id: &str, shared: Value) -> reqwest::Response {
    app.update(
        id,
        "alice",
        &json!({"decision": "approve", "shared_data": shared}),
    )
    .await
}

/// Sends a raw HTTP/1.1 request head (and optionally body bytes, never finishing a
/// chunked body) and returns the response's status code, read while the request is
/// still open: proof that the server answered without waiting for the whole body.
async fn raw_put_status(app: &TestApp, head: String, body: Vec<u8>) -> u16 {
    let addr = app.address.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&body).await?;
        // Keep the request open (the body is never completed) until the test aborts this.
        std::future::pending::<()>().await;
        std::io::Result::Ok(wr)
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let status = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed without a response");
            got.extend_from_slice(&buf[..n]);
            if let Some(line_end) = got.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&got[..line_end]).to_string();
                return line.split(' ').nth(1).unwrap().parse::<u16>().unwrap();
            }
        }
    })
    .await
    .expect("the server answered while the body was still open");
    writer.abort();
    status
}

fn put_head(app: &TestApp, id: &str, extra: &str) -> String {
    format!(
        "PUT /v1/sessions/{id}/files/selfie HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {}\r\nContent-Type: image/png\r\n{extra}\r\n",
        app.device_token("alice")
    )
}

#[actix_web::test]
async fn uploads_stay_off_disk_until_approve_and_are_stored_with_it() {
    let app = spawn_app().await;
    let prefill = marker("prefill");
    let selfie_marker = marker("selfie");
    let id = session_with_prefill(&app, &["full_name", "selfie", "document_front"], &prefill).await;
    assert_eq!(app.information(&id, "alice").await.status(), 200);

    let selfie = png(&selfie_marker);
    let front = jpeg(&marker("front"));
    let res = upload(&app, &id, "alice", "selfie", "image/png", selfie.clone()).await;
    assert_eq!(res.status(), 201);
    let staged: Value = res.json().await.unwrap();
    assert_eq!(staged["kind"], "selfie");
    assert_eq!(staged["size"], selfie.len());
    let selfie_id = staged["file_id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&selfie_id).is_ok());
    let res = upload(
        &app,
        &id,
        "alice",
        "document_front",
        "image/jpeg",
        front.clone(),
    )
    .await;
    assert_eq!(res.status(), 201);

    // The scan sees what is stored (the prefill), and the upload is not among it.
    assert_on_disk(&app, &prefill).await;
    assert_not_on_disk(&app, &selfie_marker).await;

    let res = approve(&app, &id, json!({"full_name": "John Adam Johnson"})).await;
    assert_eq!(res.status(), 200);
    assert_on_disk(&app, &selfie_marker).await;
    assert_eq!(
        app.registry.staging_budget().used(),
        0,
        "committed uploads leave memory"
    );

    let d = decision(&app, &id).await;
    assert_eq!(d["shared_data"]["full_name"], "John Adam Johnson");
    assert_eq!(d["purged_at"], Value::Null);
    let files = d["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{d}");
    let listed = files.iter().find(|f| f["kind"] == "selfie").unwrap();
    assert_eq!(listed["file_id"], selfie_id.as_str());
    assert_eq!(listed["content_type"], "image/png");
    assert_eq!(listed["size"], selfie.len());

    for f in files {
        let res = app
            .backend_get(&format!(
                "/v1/sessions/{id}/files/{}",
                f["file_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["content-type"],
            f["content_type"].as_str().unwrap()
        );
        let want = if f["kind"] == "selfie" {
            &selfie
        } else {
            &front
        };
        assert_eq!(&res.bytes().await.unwrap()[..], &want[..]);
    }

    // Another API key, or an unknown file: as if it did not exist.
    let res = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}/files/{selfie_id}")))
        .header("X-Api-Key", OTHER_API_KEY)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
    let res = app
        .backend_get(&format!("/v1/sessions/{id}/files/{}", uuid::Uuid::new_v4()))
        .await;
    assert_error(res, 404, "not_found").await;
    let res = app
        .backend_get(&format!("/v1/sessions/{id}/files/not-a-uuid"))
        .await;
    assert_error(res, 400, "invalid_request").await;
}

#[actix_web::test]
async fn deny_leaves_no_byte_of_the_prefill_or_the_upload_on_disk() {
    let app = spawn_app().await;
    let prefill = marker("prefill");
    let image = marker("image");
    let id = session_with_prefill(&app, &["full_name", "selfie"], &prefill).await;
    assert_eq!(app.information(&id, "alice").await.status(), 200);
    let res = upload(&app, &id, "alice", "selfie", "image/png", png(&image)).await;
    assert_eq!(res.status(), 201);
    assert_on_disk(&app, &prefill).await;

    let res = app.update(&id, "alice", &json!({"decision": "deny"})).await;
    assert_eq!(res.status(), 200);

    assert_scrubbed(&app, &prefill).await;
    assert_not_on_disk(&app, &image).await;
    assert_eq!(app.registry.staging_budget().used(), 0);
    let d = decision(&app, &id).await;
    assert_eq!(d["status"], "declined");
    assert_eq!(d["shared_data"], Value::Null);
    assert_eq!(d["files"], json!([]));
}

#[actix_web::test]
async fn cancel_leaves_no_byte_of_the_prefill_or_the_upload_on_disk() {
    let app = spawn_app().await;
    let prefill = marker("prefill");
    let image = marker("image");
    let id = session_with_prefill(&app, &["selfie"], &prefill).await;
    assert_eq!(app.information(&id, "alice").await.status(), 200);
    let res = upload(&app, &id, "alice", "selfie", "image/jpeg", jpeg(&image)).await;
    assert_eq!(res.status(), 201);

    assert_eq!(app.cancel(&id).await.status(), 200);

    assert_scrubbed(&app, &prefill).await;
    assert_not_on_disk(&app, &image).await;
    assert_eq!(app.registry.staging_budget().used(), 0);
    assert_eq!(decision(&app, &id).await["files"], json!([]));
}

#[actix_web::test]
async fn expiry_leaves_no_byte_of_the_prefill_or_the_upload_on_disk() {
    let app = spawn_app().await;
    let prefill = marker("prefill");
    let image = marker("image");
    let id = session_with_prefill(&app, &["selfie"], &prefill).await;
    assert_eq!(app.information(&id, "alice").await.status(), 200);
    let res = upload(&app, &id, "alice", "selfie", "image/png", png(&image)).await;
    assert_eq!(res.status(), 201);

    app.clock.advance(chrono::Duration::seconds(61));
    app.registry.tick_all();
    let s = app.wait_for_status(&id, "expired", SCRUB_DEADLINE).await;
    assert_eq!(s["status"], "expired");

    assert_scrubbed(&app, &prefill).await;
    assert_not_on_disk(&app, &image).await;
    assert_eq!(app.registry.staging_budget().used(), 0);
}

#[actix_web::test]
async fn retention_purges_a_confirmed_sessions_data_and_files_from_disk() {
    let app = spawn_app().await;
    let prefill = marker("prefill");
    let image = marker("image");
    let id = session_with_prefill(&app, &["full_name", "selfie"], &prefill).await;
    assert_eq!(app.information(&id, "alice").await.status(), 200);
    let res = upload(&app, &id, "alice", "selfie", "image/png", png(&image)).await;
    assert_eq!(res.status(), 201);
    let file_id = res.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        approve(&app, &id, json!({"full_name": "John"}))
            .await
            .status(),
        200
    );
    assert_on_disk(&app, &image).await;

    // 29 days on: still kept.
    app.clock.advance(chrono::Duration::days(29));
    assert_eq!(app.sweeper.send(Sweep).await.unwrap().unwrap(), 0);
    let d = decision(&app, &id).await;
    assert_eq!(d["shared_data"]["full_name"], "John");
    assert_eq!(d["files"].as_array().unwrap().len(), 1);

    // Past the default 30 days: purged, and the decision says when.
    app.clock.advance(chrono::Duration::days(2));
    assert_eq!(app.sweeper.send(Sweep).await.unwrap().unwrap(), 1);
    let d = decision(&app, &id).await;
    assert_eq!(d["status"], "confirmed");
    assert_eq!(d["shared_data"], Value::Null);
    assert_eq!(d["files"], json!([]));
    assert!(d["purged_at"].is_string(), "{d}");
    assert_eq!(
        d["consent"]["is_consented"], true,
        "the decision itself stays"
    );
    let res = app
        .backend_get(&format!("/v1/sessions/{id}/files/{file_id}"))
        .await;
    assert_error(res, 404, "not_found").await;

    assert_scrubbed(&app, &image).await;
    assert_scrubbed(&app, &prefill).await;
    assert_eq!(
        app.sweeper.send(Sweep).await.unwrap().unwrap(),
        0,
        "purged once"
    );
}

#[actix_web::test]
async fn a_second_upload_of_a_kind_replaces_the_first() {
    let app = spawn_app().await;
    let id = retrieved_session(&app, &["selfie"]).await;
    let first = upload(&app, &id, "alice", "selfie", "image/png", png("first")).await;
    let first: Value = first.json().await.unwrap();
    let second_body = jpeg("the second, longer upload");
    let second = upload(
        &app,
        &id,
        "alice",
        "selfie",
        "image/jpeg",
        second_body.clone(),
    )
    .await;
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await.unwrap();
    assert_ne!(first["file_id"], second["file_id"]);
    assert_eq!(
        app.registry.staging_budget().used(),
        second_body.len(),
        "the replaced upload left memory"
    );

    assert_eq!(approve(&app, &id, json!({})).await.status(), 200);
    let d = decision(&app, &id).await;
    let files = d["files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["file_id"], second["file_id"]);
    assert_eq!(files[0]["content_type"], "image/jpeg");
    let res = app
        .backend_get(&format!(
            "/v1/sessions/{id}/files/{}",
            second["file_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(&res.bytes().await.unwrap()[..], &second_body[..]);
    let res = app
        .backend_get(&format!(
            "/v1/sessions/{id}/files/{}",
            first["file_id"].as_str().unwrap()
        ))
        .await;
    assert_error(res, 404, "not_found").await;
}

#[actix_web::test]
async fn approve_without_an_upload_for_every_file_scope_is_incomplete() {
    let app = spawn_app().await;
    let id = retrieved_session(&app, &["full_name", "selfie", "document_back"]).await;
    let res = upload(&app, &id, "alice", "selfie", "image/png", png("x")).await;
    assert_eq!(res.status(), 201);
    let res = approve(&app, &id, json!({"full_name": "John"})).await;
    let message = assert_error(res, 422, "incomplete").await;
    assert!(message.contains("document_back"), "{message}");
    // Refused, not ended: the upload is still staged and the session still open.
    assert_eq!(app.registry.staging_budget().used(), png("x").len());
    let res = upload(&app, &id, "alice", "document_back", "image/png", png("y")).await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        approve(&app, &id, json!({"full_name": "John"}))
            .await
            .status(),
        200
    );
}

#[actix_web::test]
async fn staged_uploads_are_gone_after_the_session_actor_restarts() {
    let app = spawn_app().await;
    let id = retrieved_session(&app, &["selfie"]).await;
    let res = upload(&app, &id, "alice", "selfie", "image/png", png("x")).await;
    assert_eq!(res.status(), 201);

    let sid = SessionId::parse(&id).unwrap();
    app.registry
        .call(sid, InjectFault { contained: true })
        .await
        .unwrap();

    let res = approve(&app, &id, json!({})).await;
    assert_error(res, 422, "incomplete").await;
    assert_eq!(app.registry.staging_budget().used(), 0);
    // The session itself survived the restart: the device can upload again.
    let res = upload(&app, &id, "alice", "selfie", "image/png", png("x")).await;
    assert_eq!(res.status(), 201);
    assert_eq!(approve(&app, &id, json!({})).await.status(), 200);
}

#[actix_web::test]
async fn uploads_of_another_type_or_with_other_magic_bytes_are_unsupported() {
    let app = spawn_app().await;
    let id = retrieved_session(&app, &["selfie"]).await;
    let res = upload(
        &app,
        &id,
        "alice",
        "selfie",
        "image/gif",
        b"GIF89a....".to_vec(),
    )
    .await;
    assert_error(res, 415, "unsupported_media_type").await;
    let res = upload(
        &app,
        &id,
        "alice",
        "selfie",
        "application/json",
        b"{}".to_vec(),
    )
    .await;
    assert_error(res, 415, "unsupported_media_type").await;
    // The header says PNG, the bytes say JPEG (or nothing at all).
    let res = upload(&app, &id, "alice", "selfie", "image/png", jpeg("x")).await;
    let message = assert_error(res, 415, "unsupported_media_type").await;
    assert!(
        message.contains("PNG"),
        "says what the bytes should be: {message}"
    );
    let res = upload(
        &app,
        &id,
        "alice",
        "selfie",
        "image/jpeg",
        b"plain text".to_vec(),
    )
    .await;
    assert_error(res, 415, "unsupported_media_type").await;
    let res = upload(&app, &id, "alice", "selfie", "image/png", Vec::new()).await;
    assert_error(res, 415, "unsupported_media_type").await;
    assert_eq!(app.registry.staging_budget().used(), 0);
    let res = approve(&app, &id, json!({})).await;
    assert_error(res, 422, "incomplete").await;
}

#[actix_web::test]
async fn an_announced_oversized_upload_is_refused_before_its_body() {
    let app = spawn_app().await;
    let id = retrieved_session(&app, &["selfie"]).await;
    let head = put_head(
        &app,
        &id,
        &format!("Content-Length: {}\r\n", 6 * 1024 * 1024),
    );
    assert_eq!(raw_put_status(&app, head, PNG_MAGIC.to_vec()).await, 413);
}

#[actix_web::test]
async fn a_streamed_upload_is_refused_once_it_passes_5_mib() {
    let app = spawn_app().await;
    let id = retrieved_session(&app, &["selfie"]).await;
    let head = put_head(&app, &id, "Transfer-Encoding: chunked\r\n");
    // 5 MiB + 64 KiB in 64 KiB chunks, with no terminating chunk.
    let mut body = Vec::new();
    for i in 0..81 {
        let mut chunk = vec![0u8; 64 * 1024];
        if i == 0 {
            chunk[..PNG_MAGIC.len()].copy_from_slice(PNG_MAGIC);
        }
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    assert_eq!(raw_put_status(&app, head, body).await, 413);
    assert_eq!(
        app.registry.staging_budget().used(),
        0,
        "the partial body was let go"
    );

    // Exactly 5 MiB is fine.
    let mut max = vec![0u8; 5 * 1024 * 1024];
    max[..PNG_MAGIC.len()].copy_from_slice(PNG_MAGIC);
    let res = upload(&app, &id, "alice", "selfie", "image/png", max).await;
    assert_eq!(res.status(), 201);
}

#[actix_web::test]
async fn a_kind_that_is_not_a_file_scope_of_the_session_is_a_bad_request() {
    let app = spawn_app().await;
    let id = retrieved_session(&app, &["full_name", "selfie"]).await;
    let res = upload(&app, &id, "alice", "full_name", "image/png", png("x")).await;
    assert_error(res, 400, "invalid_request").await;
    let res = upload(&app, &id, "alice", "document_front", "image/png", png("x")).await;
    assert_error(res, 400, "invalid_request").await;
}

#[actix_web::test]
async fn only_the_bound_device_may_upload_and_only_while_retrieved() {
    let app = spawn_app().await;
    let id = app.create_session(&["selfie"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Not yet retrieved.
    let res = upload(&app, &id, "alice", "selfie", "image/png", png("x")).await;
    assert_error(res, 409, "invalid_state").await;

    assert_eq!(app.information(&id, "alice").await.status(), 200);
    let res = upload(&app, &id, "bob", "selfie", "image/png", png("x")).await;
    assert_error(res, 403, "forbidden").await;
    let res = app
        .client
        .put(app.url(&format!("/v1/sessions/{id}/files/selfie")))
        .header("Content-Type", "image/png")
        .body(png("x"))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;

    // Ended.
    assert_eq!(
        app.update(&id, "alice", &json!({"decision": "deny"}))
            .await
            .status(),
        200
    );
    let res = upload(&app, &id, "alice", "selfie", "image/png", png("x")).await;
    assert_error(res, 409, "invalid_state").await;
    assert_eq!(app.registry.staging_budget().used(), 0);
}

#[actix_web::test]
async fn a_full_staging_budget_refuses_uploads_until_staged_data_is_let_go() {
    let app = spawn_app_with(|s| s.max_staged_bytes = 1000).await;
    let first = retrieved_session(&app, &["selfie"]).await;
    let second = retrieved_session(&app, &["selfie"]).await;
    let body = [PNG_MAGIC, &[0u8; 592]].concat();
    assert_eq!(
        upload(&app, &first, "alice", "selfie", "image/png", body.clone())
            .await
            .status(),
        201
    );
    let res = upload(&app, &second, "alice", "selfie", "image/png", body.clone()).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_error(res, 503, "unavailable").await;

    assert_eq!(
        app.update(&first, "alice", &json!({"decision": "deny"}))
            .await
            .status(),
        200
    );
    let res = upload(&app, &second, "alice", "selfie", "image/png", body).await;
    assert_eq!(res.status(), 201);
}

#[actix_web::test]
async fn an_upload_to_a_session_the_device_may_not_use_is_refused_before_its_body_is_read() {
    let app = spawn_app().await;
    let id = retrieved_session(&app, &["selfie"]).await;
    let big = format!("Content-Length: {}\r\n", 5 * 1024 * 1024);

    // Another device's session: 403 while the 5 MiB body is still unsent, and none of
    // it was reserved from the staging budget.
    let head = format!(
        "PUT /v1/sessions/{id}/files/selfie HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {}\r\nContent-Type: image/png\r\n{big}\r\n",
        app.device_token("mallory")
    );
    assert_eq!(raw_put_status(&app, head, PNG_MAGIC.to_vec()).await, 403);
    assert_eq!(app.registry.staging_budget().used(), 0);

    // An unknown session: 404, unread.
    let head = put_head(&app, &uuid::Uuid::new_v4().to_string(), &big);
    assert_eq!(raw_put_status(&app, head, PNG_MAGIC.to_vec()).await, 404);
    assert_eq!(app.registry.staging_budget().used(), 0);

    // Not retrieved yet: 409; a kind the session does not ask for: 400. Both unread.
    let fresh = app.create_session(&["selfie"]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let head = put_head(&app, &fresh, &big);
    assert_eq!(raw_put_status(&app, head, PNG_MAGIC.to_vec()).await, 409);
    let head = put_head(&app, &id, &big).replace("/files/selfie", "/files/document_front");
    assert_eq!(raw_put_status(&app, head, PNG_MAGIC.to_vec()).await, 400);
    assert_eq!(app.registry.staging_budget().used(), 0);

    // The bound device's upload still goes through.
    let res = upload(&app, &id, "alice", "selfie", "image/png", png("ok")).await;
    assert_eq!(res.status(), 201);
}

//! The person's data sealed at rest (SPEC §2 "At rest", §6 `--data-key`, `rekey`) and
//! record retention (SPEC §2 "Records"), on either engine.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use idv_actors::at_rest::{DataKeys, OperatorKey};
use idv_actors::retention::Sweep;
use serde_json::{json, Value};

use crate::helpers::*;

const K1: &str = "k1=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K1_BYTES: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "k2=ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

fn keys(pairs: &[&str]) -> std::sync::Arc<DataKeys> {
    std::sync::Arc::new(
        DataKeys::new(
            pairs
                .iter()
                .map(|p| OperatorKey::parse(p).unwrap())
                .collect(),
        )
        .unwrap(),
    )
}

fn marker(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

/// The forms a marker could be stored in: raw, hex (both cases) and base64 at each of
/// the three alignments (the inner characters, which do not depend on what surrounds it).
fn forms(marker: &str) -> Vec<String> {
    let mut out = vec![
        marker.to_owned(),
        hex::encode(marker),
        hex::encode_upper(marker),
    ];
    for pad in 0..3 {
        let text = base64::engine::general_purpose::STANDARD
            .encode(format!("{}{marker}", "x".repeat(pad)));
        out.push(text[4..text.len() - 4].to_owned());
    }
    out
}

async fn assert_nowhere_stored(app: &TestApp, markers: &[&str]) {
    for m in markers {
        for form in forms(m) {
            let found = app.stored_holders(form.as_bytes()).await;
            assert!(found.is_empty(), "{m} stored as {form} in {found:?}");
        }
    }
}

/// A confirmed session whose every personal field holds a marker of its own.
struct Journey {
    id: String,
    file_id: String,
    vendor: String,
    reference: String,
    prefill: String,
    shared: String,
    image: String,
}

async fn journey(app: &TestApp) -> Journey {
    let (vendor, reference, prefill) = (marker("vendor"), marker("ref"), marker("prefill"));
    let (shared, image) = (marker("shared"), marker("image"));
    let res = app
        .post_session(&json!({
            "scopes": ["full_name", "selfie"],
            "vendor_data": vendor,
            "external_reference_id": reference,
            "registration": {"first_name": prefill},
        }))
        .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let info: Value = app.information(&id, "alice").await.json().await.unwrap();
    assert_eq!(info["registration"]["first_name"], prefill.as_str());
    let res = app
        .client
        .put(app.url(&format!("/v1/sessions/{id}/files/selfie")))
        .bearer_auth(app.device_token("alice"))
        .header("Content-Type", "image/png")
        .body([&b"\x89PNG\r\n\x1a\n"[..], image.as_bytes()].concat())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let file_id = res.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .update(
            &id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": shared}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    Journey {
        id,
        file_id,
        vendor,
        reference,
        prefill,
        shared,
        image,
    }
}

/// What the API answers holds every marker of `j`, intact.
async fn assert_api_returns(app: &TestApp, j: &Journey) {
    let s: Value = app
        .backend_get(&format!("/v1/sessions/{}", j.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["vendor_data"], j.vendor.as_str(), "{s}");
    assert_eq!(s["external_reference_id"], j.reference.as_str());
    let d: Value = app
        .backend_get(&format!("/v1/sessions/{}/decision", j.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["shared_data"]["full_name"], j.shared.as_str(), "{d}");
    assert_eq!(d["vendor_data"], j.vendor.as_str());
    let file = app
        .backend_get(&format!("/v1/sessions/{}/files/{}", j.id, j.file_id))
        .await;
    assert_eq!(file.status(), 200);
    let bytes = file.bytes().await.unwrap();
    assert!(bytes.ends_with(j.image.as_bytes()));
}

#[actix_web::test]
async fn with_a_data_key_no_byte_of_the_person_is_stored_readable_and_the_api_still_returns_it_all()
{
    let app = spawn_app_with(|s| s.data_keys = keys(&[K1])).await;
    let j = journey(&app).await;
    assert_api_returns(&app, &j).await;
    let markers = [
        j.vendor.as_str(),
        &j.reference,
        &j.prefill,
        &j.shared,
        &j.image,
    ];
    assert_nowhere_stored(&app, &markers).await;

    let app = app
        .restart_with(chrono::Duration::zero(), |s| s.data_keys = keys(&[K1]))
        .await;
    assert_api_returns(&app, &j).await;
    assert_nowhere_stored(&app, &markers).await;
    // The scan can fail: without a key the same journey is found.
    let plain = spawn_app().await;
    let p = journey(&plain).await;
    assert!(!plain.stored_holders(p.shared.as_bytes()).await.is_empty());
}

#[actix_web::test]
async fn a_cancel_destroys_the_data_key_that_sealed_the_prefill_and_keeps_the_references() {
    let app = spawn_app_with(|s| s.data_keys = keys(&[K1])).await;
    let vendor = marker("vendor");
    let res = app
        .post_session(&json!({"scopes": ["full_name"], "vendor_data": vendor,
                               "registration": {"first_name": "x"}}))
        .await;
    let id = res.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before: Vec<u8> = app
        .sql_one("SELECT data_key FROM sessions WHERE id = ?1", &[&id])
        .await;
    assert_eq!(app.cancel(&id).await.status(), 200);
    let after: Option<Vec<u8>> = app
        .sql_one("SELECT data_key FROM sessions WHERE id = ?1", &[&id])
        .await;
    assert_ne!(
        after,
        Some(before),
        "the key that sealed the prefill is gone"
    );
    let s: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["vendor_data"], vendor.as_str());
    assert_eq!(s["status"], "cancelled");
}

#[actix_web::test]
async fn a_flipped_byte_in_a_sealed_field_is_a_clean_500_and_never_garbage() {
    let app = spawn_app_with(|s| s.data_keys = keys(&[K1])).await;
    let j = journey(&app).await;
    let sealed: String = app
        .sql_one("SELECT shared_data FROM sessions WHERE id = ?1", &[&j.id])
        .await;
    // One base64 character in the middle changed: a byte of the ciphertext flips.
    let mut chars: Vec<char> = sealed.chars().collect();
    chars[30] = if chars[30] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    app.sql(
        "UPDATE sessions SET shared_data = ?1 WHERE id = ?2",
        &[&tampered, &j.id],
    )
    .await;
    let res = app
        .backend_get(&format!("/v1/sessions/{}/decision", j.id))
        .await;
    let message = assert_error(res, 500, "internal").await;
    assert!(!message.contains(&j.shared), "{message}");
}

#[actix_web::test]
async fn record_retention_zero_deletes_an_ended_session_and_keeps_the_live_one() {
    let app = spawn_app_with(|s| s.record_retention = Duration::ZERO).await;
    let ended = app.create_session(&["full_name"]).await;
    let live = app.create_session(&["full_name"]).await;
    let (ended_id, ended_token) = (
        ended["session_id"].as_str().unwrap(),
        ended["session_token"].as_str().unwrap(),
    );
    let (live_id, live_token) = (
        live["session_id"].as_str().unwrap(),
        live["session_token"].as_str().unwrap(),
    );
    assert_eq!(app.cancel(ended_id).await.status(), 200);
    app.sweeper.send(Sweep).await.unwrap().unwrap();

    for path in ["", "/decision"] {
        let res = app
            .backend_get(&format!("/v1/sessions/{ended_id}{path}"))
            .await;
        assert_error(res, 404, "not_found").await;
    }
    assert_error(app.status(ended_id, ended_token).await, 401, "unauthorized").await;
    let events: i64 = app
        .sql_one(
            "SELECT count(*) FROM session_events WHERE session_id = ?1",
            &[ended_id],
        )
        .await;
    assert_eq!(events, 0);

    assert_eq!(app.status(live_id, live_token).await.status(), 200);
    let res = app.backend_get(&format!("/v1/sessions/{live_id}")).await;
    assert_eq!(res.status(), 200);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("idv_records_deleted_total{what=\"sessions\"}"),
        "{metrics}"
    );
}

#[actix_web::test]
async fn the_default_record_retention_keeps_an_ended_session() {
    let app = spawn_app().await;
    let s = app.create_session(&["full_name"]).await;
    let id = s["session_id"].as_str().unwrap();
    assert_eq!(app.cancel(id).await.status(), 200);
    app.clock.advance(chrono::Duration::days(89));
    app.sweeper.send(Sweep).await.unwrap().unwrap();
    assert_eq!(
        app.backend_get(&format!("/v1/sessions/{id}"))
            .await
            .status(),
        200
    );
    app.clock.advance(chrono::Duration::days(2));
    app.sweeper.send(Sweep).await.unwrap().unwrap();
    assert_error(
        app.backend_get(&format!("/v1/sessions/{id}")).await,
        404,
        "not_found",
    )
    .await;
}

// ---- the real binary: rotation, and what it says ---------------------------------

fn flags<'a>(db: &'a str, keys: &[&'a str]) -> Vec<&'a str> {
    let mut out = vec![
        "--db",
        db,
        "--api-key",
        "acme=test-key-1-acme-bank",
        "--issuer",
        "phone-app=issuer-secret-for-tests",
    ];
    for k in keys {
        out.extend(["--data-key", k]);
    }
    out
}

/// Creates and confirms a session on the broker at `base`; answers its id.
async fn confirm_on(client: &reqwest::Client, base: &str, vendor: &str, shared: &str) -> String {
    let res = client
        .post(format!("{base}/v1/sessions"))
        .header("X-Api-Key", API_KEY)
        .json(&json!({"scopes": ["full_name"], "vendor_data": vendor}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let device = jwt(ISSUER, ISSUER_SECRET, "alice", 600);
    let res = client
        .get(format!("{base}/v1/sessions/{id}/information"))
        .bearer_auth(&device)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = client
        .post(format!("{base}/v1/sessions/{id}/update"))
        .bearer_auth(&device)
        .json(&json!({"decision": "approve", "shared_data": {"full_name": shared}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    id
}

async fn decision_on(client: &reqwest::Client, base: &str, id: &str) -> reqwest::Response {
    client
        .get(format!("{base}/v1/sessions/{id}/decision"))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap()
}

async fn shared_on(client: &reqwest::Client, base: &str, id: &str) -> String {
    let d: Value = decision_on(client, base, id).await.json().await.unwrap();
    d["shared_data"]["full_name"].as_str().unwrap().to_owned()
}

async fn rekey(db: &str, keys: &[&str]) -> String {
    let mut args = vec!["rekey"];
    args.extend(flags(db, keys));
    let out = binary_command(&args).await.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[actix_web::test]
async fn keys_rotate_online_with_rekey_and_a_broker_without_the_sealing_key_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let db = db.to_str().unwrap();
    idv_actors::webhooks::install_crypto_provider();
    let client = reqwest::Client::new();
    let null = std::process::Stdio::null;

    // k1 seals.
    let (mut broker, base) = spawn_binary(&flags(db, &[K1]), &[], null()).await;
    let before = confirm_on(&client, &base, "v-before", "s-before").await;
    broker.kill().await.unwrap();

    // k2 added first: it seals the new, both open; rekey runs while the broker serves.
    let (mut broker, base) = spawn_binary(&flags(db, &[K2, K1]), &[], null()).await;
    let during = confirm_on(&client, &base, "v-during", "s-during").await;
    let said = rekey(db, &[K2, K1]).await;
    assert!(said.contains("rekey: 1 data keys"), "{said}");
    assert_eq!(shared_on(&client, &base, &before).await, "s-before");
    let again = rekey(db, &[K2, K1]).await;
    assert!(
        again.contains("rekey: 0 data keys"),
        "resumes where it was: {again}"
    );
    broker.kill().await.unwrap();

    // k2 alone opens everything.
    let (mut broker, base) = spawn_binary(&flags(db, &[K2]), &[], null()).await;
    assert_eq!(shared_on(&client, &base, &before).await, "s-before");
    assert_eq!(shared_on(&client, &base, &during).await, "s-during");
    broker.kill().await.unwrap();

    // k1 alone: exit 2, naming k2, never a key's bytes.
    let out = binary_command(&flags(db, &[K1]))
        .await
        .args(["--bind", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`k2`"), "{stderr}");
    assert!(!stderr.contains(K1_BYTES), "{stderr}");
    assert!(!stderr.contains(&K2[3..]), "{stderr}");
}

#[actix_web::test]
async fn a_tampered_field_is_logged_naming_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let log = dir.path().join("stderr.log");
    idv_actors::webhooks::install_crypto_provider();
    let client = reqwest::Client::new();
    let (_broker, base) = spawn_binary(
        &flags(db.to_str().unwrap(), &[K1]),
        &[],
        std::fs::File::create(&log).unwrap().into(),
    )
    .await;
    let id = confirm_on(&client, &base, "v", "s").await;
    flip_shared_data(&db, &id).await;
    assert_eq!(decision_on(&client, &base, &id).await.status(), 500);
    // The log line is written as the request fails; wait for it to reach the file.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text
            .lines()
            .any(|l| l.contains(&id) && l.contains("does not open"))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line names {id}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Flips one byte of the sealed `shared_data` of session `id`, in the binary's store.
async fn flip_shared_data(db: &Path, id: &str) {
    let flip = |sealed: String| {
        let mut chars: Vec<char> = sealed.chars().collect();
        chars[30] = if chars[30] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    if on_postgres() {
        let pg = pg_for_path(db.to_str().unwrap()).await;
        let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let sealed: String = client
            .query_one("SELECT shared_data FROM sessions WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        client
            .execute(
                "UPDATE sessions SET shared_data = $1 WHERE id = $2",
                &[&flip(sealed), &id],
            )
            .await
            .unwrap();
        drop(client);
        let _ = conn.await;
    } else {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let sealed: String = conn
            .query_row(
                "SELECT shared_data FROM sessions WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(
            "UPDATE sessions SET shared_data = ?1 WHERE id = ?2",
            [flip(sealed), id.to_owned()],
        )
        .unwrap();
    }
}

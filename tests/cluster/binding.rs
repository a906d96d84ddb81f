//! Binding the phone to the screen across nodes (SPEC §2, §7), folded into the
//! SIGTERM hand-over test: a session with a binding is opened, shown and tried through
//! nodes that do not own it, and its count of wrong codes goes on after another node
//! took it over, up to the end it makes.

use serde_json::{json, Value};

use crate::helpers::*;

/// A session with `"binding": "code"` and what the test learned of it.
pub struct Bound {
    pub created: Created,
    /// The code its client is shown.
    pub code: String,
}

/// A two-digit code that is not `code`.
fn wrong(code: &str) -> &'static str {
    if code == "42" {
        "43"
    } else {
        "42"
    }
}

async fn approve_with(cluster: &Cluster, n: usize, id: &str, code: &str) -> reqwest::Response {
    cluster
        .update(
            n,
            id,
            "alice",
            &json!({"decision": "approve", "shared_data": {"full_name": "Ada"}, "binding_code": code}),
        )
        .await
}

/// `422 binding_mismatch`; its `tries_left`.
async fn tries_left(res: reqwest::Response) -> u64 {
    let body = assert_error(res, 422, "binding_mismatch").await;
    body["error"]["tries_left"].as_u64().expect("tries_left")
}

/// Creates a session with a binding on node `owner`, shows its QR through the next
/// node, opens it through the one after, and tries one wrong code through the next.
/// Its webhooks go to `callback` (the hand-over's audit expects every session's).
pub async fn open(cluster: &Cluster, owner: usize, callback: &str) -> Bound {
    let (next, after) = ((owner + 1) % 3, (owner + 2) % 3);
    let created = cluster
        .create(
            owner,
            &json!({"scopes": ["full_name"], "binding": "code", "callback_url": callback}),
        )
        .await;
    let id = created.id.clone();
    let res = cluster
        .http
        .get(cluster.nodes[next].url(&format!("/v1/sessions/{id}/qr.svg?token={}", created.token)))
        .header(
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/126.0.0.0 Safari/537.36",
        )
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);

    // The device, through a node that does not own the session, is told where the
    // session is shown and that it needs a code, never the code.
    let res = cluster.information(after, &id, "alice").await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("body");
    let info: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(info["binding"], "code");
    assert_eq!(
        (&info["shown_on"]["browser"], &info["shown_on"]["os"]),
        (&json!("Chrome"), &json!("Linux"))
    );
    assert!(!text.contains("binding_code"), "{text}");

    // Every node shows the client the same code.
    let mut codes = Vec::new();
    for n in 0..3 {
        let status: Value = cluster
            .status(n, &id, &created.token, "")
            .await
            .json()
            .await
            .expect("json");
        codes.push(status["binding_code"].as_str().expect("a code").to_owned());
    }
    assert!(codes.windows(2).all(|w| w[0] == w[1]), "{codes:?}");
    let code = codes.remove(0);

    assert_eq!(
        tries_left(approve_with(cluster, next, &id, wrong(&code)).await).await,
        2
    );
    Bound { created, code }
}

/// After the owner handed the session over: the count went on (one try fewer), and
/// the last wrong code ends it `declined` for every node.
pub async fn end_after_takeover(cluster: &Cluster, bound: &Bound, survivors: &[usize]) {
    let id = &bound.created.id;
    let wrong = wrong(&bound.code);
    assert_eq!(
        tries_left(approve_with(cluster, survivors[0], id, wrong).await).await,
        1
    );
    assert_eq!(
        tries_left(approve_with(cluster, survivors[1], id, wrong).await).await,
        0
    );
    for &n in survivors {
        let decision: Value = cluster
            .backend_get(n, &format!("/v1/sessions/{id}/decision"))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(
            (&decision["status"], &decision["reason"]),
            (&json!("declined"), &json!("binding_mismatch"))
        );
        let res = approve_with(cluster, n, id, &bound.code).await;
        assert_error(res, 409, "invalid_state").await;
    }
    let stored = cluster.db.session(id).await.expect("stored");
    assert_eq!((stored.seq, stored.status.as_str()), (3, "declined"));
}

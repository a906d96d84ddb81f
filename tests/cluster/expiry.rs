//! Expiry on time (SPEC §2) when the session's owner is one node and its watchers are on
//! the others: the owner's timer fires, and the push and the long-poll cross nodes.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::*;
use crate::watch::{self, Read};

#[actix_web::test]
async fn sessions_expire_on_time_while_watched_and_long_polled_from_other_nodes() {
    let cluster = Cluster::start(Options::default()).await;
    // Opened through B, watched on C.
    let opened = cluster
        .create(
            0,
            &json!({"scopes": ["full_name"], "ttl_seconds": MIN_TTL, "registration": {"first_name": "Exp"}}),
        )
        .await;
    assert_eq!(
        cluster.information(1, &opened.id, "alice").await.status(),
        200
    );
    let mut ws = watch::connect(&cluster.nodes[2].address, &opened.id, &opened.token, None).await;
    assert_eq!(watch::frame(&mut ws).await["seq"], 2);
    // Never opened, created on C, long-polled on A (a client's loop of long-polls).
    let idle = cluster
        .create(2, &json!({"scopes": ["full_name"], "ttl_seconds": MIN_TTL}))
        .await;
    let long_polls = {
        let (http, url, token) = (
            cluster.http.clone(),
            cluster.nodes[0].url(&format!(
                "/v1/sessions/{}/status?after_seq=1&wait=20",
                idle.id
            )),
            idle.token.clone(),
        );
        tokio::spawn(async move {
            loop {
                // Each poll answers after at most 20 s; the expiry lands in the second.
                let res = http
                    .get(&url)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(40))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                let v: Value = res.json().await.unwrap();
                if v["seq"].as_u64() != Some(1) {
                    return (v, chrono::Utc::now());
                }
            }
        })
    };

    // The expiry frame, on a node that is not the owner: SPEC §2's one second, both for
    // the transition's own time and for the frame's arrival.
    let within = Duration::from_secs(MIN_TTL + 10);
    let f = match watch::next_within(&mut ws, within).await {
        Read::Frame(f) => f,
        other => panic!("the subscriber lost its connection: {other:?}"),
    };
    let arrived = chrono::Utc::now();
    assert_eq!(
        (f["status"].as_str(), f["seq"].as_u64()),
        (Some("expired"), Some(3))
    );
    let at = time(&f["at"]);
    assert!(
        at >= opened.expires_at && at <= opened.expires_at + EXPIRY_GRACE,
        "expired at {at}, due {}",
        opened.expires_at
    );
    assert!(
        arrived <= opened.expires_at + EXPIRY_GRACE * 2,
        "pushed across nodes at {arrived}, due {}",
        opened.expires_at
    );
    let (rest, end) = watch::drain(&mut ws).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        matches!(end, Read::Closed(Some(CloseCode::Normal))),
        "{end:?}"
    );

    let (polled, arrived) = tokio::time::timeout(within, long_polls)
        .await
        .expect("the long-poll sees the expiry")
        .unwrap();
    assert_eq!(
        (polled["status"].as_str(), polled["seq"].as_u64()),
        (Some("expired"), Some(2))
    );
    assert!(
        arrived <= idle.expires_at + EXPIRY_GRACE * 2,
        "long-poll answered at {arrived}, due {}",
        idle.expires_at
    );

    // Committed, with its personal data gone; every node tells the same decision.
    let stored = cluster.db.session(&opened.id).await.unwrap();
    assert_eq!((stored.seq, stored.status.as_str()), (3, "expired"));
    assert!(cluster.db.personal_data_is_gone(&opened.id).await);
    for n in 0..3 {
        let d: Value = cluster
            .backend_get(n, &format!("/v1/sessions/{}/decision", opened.id))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (
                d["status"].as_str(),
                d["consent"].clone(),
                d["shared_data"].clone()
            ),
            (Some("expired"), Value::Null, Value::Null)
        );
        assert_error(
            cluster.information(n, &idle.id, "bob").await,
            409,
            "invalid_state",
        )
        .await;
    }
}

//! Webhooks (SPEC §4) when each request of a session goes to another node: the owner
//! sends its sessions' events, at least once and in `seq` order, retries included.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::Receiver;

/// The committed events that have a webhook (creation has none: SPEC §4), per session.
pub async fn webhook_events(
    db: &Db,
    ids: impl IntoIterator<Item = String>,
) -> BTreeMap<String, Vec<(u64, String)>> {
    let events = db.events().await;
    ids.into_iter()
        .map(|id| {
            let mut e = events.get(&id).cloned().unwrap_or_default();
            e.retain(|(seq, _)| *seq >= 2);
            (id, e)
        })
        .collect()
}

#[actix_web::test]
async fn webhooks_arrive_in_order_whichever_node_takes_each_request() {
    let cluster = Cluster::start(Options {
        webhooks: true,
        ..Options::default()
    })
    .await;
    // The first deliveries fail: their retries must still come before what follows.
    let receiver = Receiver::start(3).await;
    let mut ids = Vec::new();
    for i in 0..6usize {
        let s = cluster
            .create(
                i % 3,
                &json!({"scopes": ["full_name"], "callback_url": receiver.url(&format!("/hooks/{i}"))}),
            )
            .await;
        assert_eq!(
            cluster
                .information((i + 1) % 3, &s.id, "alice")
                .await
                .status(),
            200
        );
        let last = (i + 2) % 3;
        let res = match i % 3 {
            0 => cluster.approve(last, &s.id, "alice").await,
            1 => {
                cluster
                    .update(last, &s.id, "alice", &json!({"decision": "deny"}))
                    .await
            }
            _ => cluster.cancel(last, &s.id).await,
        };
        assert_eq!(res.status(), 200);
        ids.push(s.id);
    }

    let expected = webhook_events(&cluster.db, ids.iter().cloned()).await;
    assert!(expected.values().all(|e| e.len() == 2), "{expected:?}");
    receiver
        .assert_delivered_in_order(&expected, Duration::from_secs(30))
        .await;
    assert!(
        receiver.hits().iter().any(|h| h.answered == 500),
        "the receiver refused some, so retries were exercised"
    );
    // Every node sees the outbox drained.
    for id in &ids {
        for n in 0..3 {
            eventually(Duration::from_secs(10), "no webhook pending", || async {
                let v: Value = cluster
                    .backend_get(n, &format!("/v1/sessions/{id}"))
                    .await
                    .json()
                    .await
                    .ok()?;
                (v["webhooks"] == json!({"pending": 0, "failed": 0})).then_some(())
            })
            .await;
        }
    }
    receiver.stop().await;
}

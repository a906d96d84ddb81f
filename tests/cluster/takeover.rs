//! What the `kill -9` and SIGTERM tests share: sessions owned by the node about to go,
//! subscribers on it and on the others, and the audit afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::load::Load;
use crate::receiver::Receiver;
use crate::watch::{self, Watched};
use crate::webhooks::webhook_events;

/// A session the test watches through the takeover.
pub struct Watchable {
    pub created: Created,
    /// Opened by device `alice` (retrieved), or left initialized.
    pub opened: bool,
}

/// Creates `count` sessions through node `via` (ttl `ttl`, webhooks to `callback`) and
/// opens every one but each fourth through another node; answers the node that owns
/// most of them (the one to stop) and the ones it owns.
pub async fn sessions_of_one_owner(
    cluster: &Cluster,
    via: usize,
    count: usize,
    ttl: u64,
    callback: &str,
) -> (usize, Vec<Watchable>) {
    let mut all = Vec::new();
    for i in 0..count {
        let created = cluster
            .create(
                via,
                &json!({"scopes": ["full_name"], "ttl_seconds": ttl, "callback_url": callback}),
            )
            .await;
        let opened = i % 4 != 3;
        if opened {
            let res = cluster
                .information((via + 1) % 3, &created.id, "alice")
                .await;
            assert_eq!(res.status(), 200);
        }
        let owner = cluster.owner_of(&created.id).await;
        all.push((owner, Watchable { created, opened }));
    }
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (owner, _) in &all {
        let owner = owner.clone().expect("an open session has an owner");
        *counts.entry(owner).or_default() += 1;
    }
    let (victim_id, owned) = counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .expect("some sessions");
    assert!(
        owned * 2 >= count,
        "sessions created through one node are mostly owned by one node ({owned} of {count} by {victim_id})"
    );
    let victim = cluster.index_of(&victim_id);
    let owned = all
        .into_iter()
        .filter(|(o, _)| o.as_deref() == Some(victim_id.as_str()))
        .map(|(_, w)| w)
        .collect();
    (victim, owned)
}

/// Subscribers of the watched sessions: one on `victim` per session (every other one
/// reconnects only once `gate` opens, so it has to catch up with `after_seq`), and one
/// on the next node.
pub struct Subscribers {
    pub on_victim: Vec<(String, tokio::task::JoinHandle<Watched>)>,
    pub elsewhere: Vec<(String, tokio::task::JoinHandle<Watched>)>,
}

pub async fn subscribe(
    cluster: &Cluster,
    victim: usize,
    sessions: &[Watchable],
    gate: tokio::sync::watch::Receiver<bool>,
    deadline: Duration,
) -> Subscribers {
    let ready = Arc::new(AtomicUsize::new(0));
    let addresses = cluster.addresses();
    let spawn = |node: usize, s: &Watchable, gate: Option<tokio::sync::watch::Receiver<bool>>| {
        let id = s.created.id.clone();
        let task = tokio::spawn(watch::follow(
            addresses.clone(),
            node,
            id.clone(),
            s.created.token.clone(),
            gate,
            ready.clone(),
            deadline,
        ));
        (id, task)
    };
    let on_victim: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| spawn(victim, s, (i % 2 == 0).then(|| gate.clone())))
        .collect();
    let elsewhere: Vec<_> = sessions
        .iter()
        .map(|s| spawn((victim + 1) % 3, s, None))
        .collect();
    let want = on_victim.len() + elsewhere.len();
    eventually(
        Duration::from_secs(20),
        "every subscriber has its snapshot",
        || async { (ready.load(Ordering::Acquire) == want).then_some(()) },
    )
    .await;
    Subscribers {
        on_victim,
        elsewhere,
    }
}

impl Subscribers {
    /// Waits for every subscriber and checks what each saw against the store: every
    /// transition once, in order; those on the victim were cut off (`interrupted_by`:
    /// the close code, `None` for a dropped connection) and resumed on another node,
    /// the others were never interrupted. Answers every subscriber's record.
    pub async fn assert_complete(
        self,
        cluster: &Cluster,
        victim: usize,
        interrupted_by: Option<u16>,
    ) -> Vec<(String, Watched)> {
        let mut all = Vec::new();
        for (id, task) in self.on_victim {
            let w = task.await.expect("subscriber task");
            let stored = cluster.db.session(&id).await.expect("stored");
            w.assert_complete(
                &format!("subscriber of {id} on the stopped node"),
                stored.seq,
            );
            assert_eq!(
                w.interruptions.first(),
                Some(&interrupted_by),
                "{id}: how the stopped node ended the subscription"
            );
            assert!(
                w.connections[1..].iter().all(|&n| n != victim),
                "{id}: resumed on another node: {:?}",
                w.connections
            );
            all.push((id, w));
        }
        for (id, task) in self.elsewhere {
            let w = task.await.expect("subscriber task");
            let stored = cluster.db.session(&id).await.expect("stored");
            w.assert_complete(
                &format!("subscriber of {id} on a surviving node"),
                stored.seq,
            );
            assert_eq!(
                w.connections.len(),
                1,
                "{id}: a subscriber on a surviving node keeps its connection: {w:?}"
            );
            all.push((id, w));
        }
        all
    }
}

/// After the load: nothing acknowledged is missing, no session has a gap or a
/// duplicate in its events, no client got an answer it should not have (requests cut
/// off are allowed only towards `killed`), and every committed event of every session
/// reached the receiver, in order.
pub async fn audit(cluster: &Cluster, load: &Load, receiver: &Receiver, killed: Option<usize>) {
    // One lock at a time: `confirmed` takes the same (not re-entrant) mutex.
    let sessions_driven = load.acked.lock().expect("acked").len();
    eprintln!(
        "load: {} sessions, {} confirmed, {} answers 503 + Retry-After, {} connections refused, {} cut by the kill, {} 409s for steps already committed",
        sessions_driven,
        load.confirmed(),
        load.unavailable.load(Ordering::Relaxed),
        load.refused.load(Ordering::Relaxed),
        load.cut.lock().expect("cut").len(),
        load.conflicts.lock().expect("conflicts").len()
    );
    let sessions = cluster.db.sessions().await;
    let events = cluster.db.events().await;
    load.audit(&sessions, &events, killed);
    // A 409 is right only for a step that an earlier, unanswered attempt had committed:
    // with a killed owner that can happen (it committed, died before answering, and the
    // node that forwarded the command sent it to the adopter); with a graceful stop, never.
    if killed.is_none() {
        let conflicts = load.conflicts.lock().expect("conflicts").clone();
        assert!(
            conflicts.is_empty(),
            "409s while a node stopped gracefully: {conflicts:?}"
        );
    }
    // Every session of these tests has the receiver as its callback.
    let expected = webhook_events(&cluster.db, sessions.keys().cloned()).await;
    receiver
        .assert_delivered_in_order(&expected, Duration::from_secs(60))
        .await;
}

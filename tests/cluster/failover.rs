//! `kill -9` of a node that owns many sessions, under load (SPEC §7): nothing
//! acknowledged is lost, its sessions are adopted within 10 s and still expire, its
//! subscribers resume elsewhere missing nothing, and its webhooks still arrive in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::load::{self, Load};
use crate::receiver::Receiver;
use crate::takeover;

#[actix_web::test]
async fn kill_9_of_an_owner_under_load_loses_nothing_acknowledged_and_its_sessions_live_on_elsewhere(
) {
    let mut cluster = Cluster::start(Options {
        webhooks: true,
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start(0).await;
    let callback = receiver.url("/hooks");

    let load = Arc::new(Load::default());
    let clients = load::start(&load, cluster.addresses(), Some(callback.clone()));
    load::wait_confirmed(&load, 30, Duration::from_secs(60)).await;

    // Sessions that must expire after the kill: created now with the shortest ttl,
    // through node c, mostly left open.
    let (victim, owned) =
        takeover::sessions_of_one_owner(&cluster, 2, 12, MIN_TTL, &callback).await;
    let victim_id = cluster.nodes[victim].id.clone();
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    let subscribers = takeover::subscribe(
        &cluster,
        victim,
        &owned,
        gate_rx,
        Duration::from_secs(MIN_TTL + 40),
    )
    .await;
    let live_before = cluster.db.open_sessions_owned_by(&victim_id).await;

    let killed_at = Instant::now();
    cluster.nodes[victim].kill_9().await;
    let adopted_in = eventually(
        TAKEOVER + Duration::from_secs(20),
        "the killed node's open sessions are adopted",
        || async {
            (cluster.db.open_sessions_owned_by(&victim_id).await == 0).then(|| killed_at.elapsed())
        },
    )
    .await;
    eprintln!(
        "{live_before} open sessions of node {victim_id} adopted {adopted_in:?} after kill -9"
    );
    assert!(
        adopted_in <= TAKEOVER,
        "adopted {adopted_in:?} after the kill; SPEC §7 says within {TAKEOVER:?}"
    );

    // They move on through the survivors: approve half of the opened ones while the
    // gated subscribers are away, so those have to catch up with after_seq.
    let survivors: Vec<usize> = (0..3).filter(|&n| n != victim).collect();
    let mut approved = Vec::new();
    for (k, w) in owned.iter().filter(|w| w.opened).step_by(2).enumerate() {
        let res = cluster
            .approve(survivors[k % 2], &w.created.id, "alice")
            .await;
        assert_eq!(res.status(), 200, "an adopted session moves on");
        approved.push(w.created.id.clone());
    }
    let _ = gate.send(true);

    // More load after the takeover, then stop it.
    let confirmed = load.confirmed();
    load::wait_confirmed(&load, confirmed + 10, Duration::from_secs(30)).await;
    load::stop(&load, clients).await;

    // Every subscriber sees every transition once, the approvals and the expiries.
    let seen = subscribers.assert_complete(&cluster, victim, None).await;
    // The rest expired on time: the adopter re-armed their timers.
    for w in owned.iter().filter(|w| !approved.contains(&w.created.id)) {
        let stored = cluster.db.session(&w.created.id).await.unwrap();
        assert_eq!(stored.status, "expired", "{}", w.created.id);
        let (_, watched) = seen
            .iter()
            .find(|(id, _)| id == &w.created.id)
            .expect("watched");
        let last = watched.seen.last().expect("the expiry was pushed");
        assert_eq!(last.status, "expired");
        let due = w.created.expires_at;
        assert!(
            last.at >= due && last.at <= due + EXPIRY_GRACE,
            "{}: expired at {}, due {due}",
            w.created.id,
            last.at
        );
        assert!(
            last.arrived <= due + EXPIRY_GRACE * 2,
            "{}: expiry pushed at {}, due {due}",
            w.created.id,
            last.arrived
        );
    }

    takeover::audit(&cluster, &load, &receiver, Some(victim)).await;
    receiver.stop().await;
}

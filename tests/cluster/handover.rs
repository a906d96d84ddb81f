//! SIGTERM of a node under load (SPEC §7): it hands its sessions to the others before
//! it exits, so no request fails other than by `503` + `Retry-After`, its sessions move
//! on at once (not after a lease lapses), and its subscribers resume elsewhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::binding;
use crate::helpers::*;
use crate::load::{self, Load};
use crate::receiver::Receiver;
use crate::takeover;

/// How long a handed-over session may take to answer on its new owner: far less than a
/// lease lapse (`TAKEOVER`), which is what a node that did not hand over would cost.
const PROMPT: Duration = Duration::from_secs(3);

#[actix_web::test]
async fn sigterm_under_load_hands_sessions_over_and_no_request_fails_but_with_503_and_retry_after()
{
    let mut cluster = Cluster::start(Options {
        webhooks: true,
        extra: vec!["--shutdown-timeout".into(), "10".into()],
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start(0).await;
    let callback = receiver.url("/hooks");

    let load = Arc::new(Load::default());
    let clients = load::start(&load, cluster.addresses(), Some(callback.clone()));
    load::wait_confirmed(&load, 20, Duration::from_secs(60)).await;

    let (victim, owned) = takeover::sessions_of_one_owner(&cluster, 1, 8, 600, &callback).await;
    let victim_id = cluster.nodes[victim].id.clone();
    // Subscribers on the stopping node reconnect at once.
    let (_gate, gate_rx) = tokio::sync::watch::channel(true);
    let subscribers =
        takeover::subscribe(&cluster, victim, &owned, gate_rx, Duration::from_secs(90)).await;

    // A session with a binding, owned by the node about to stop: opened and shown
    // through the others, one wrong code tried before the hand-over.
    let bound = binding::open(&cluster, victim, &callback).await;

    let code = cluster.nodes[victim].sigterm(Duration::from_secs(40)).await;
    assert_eq!(code, Some(0), "a SIGTERM'd node exits 0");
    let log = cluster.nodes[victim].log();
    assert!(
        !log.contains("panicked"),
        "a SIGTERM'd node stops without a panic:\n{}",
        cluster.nodes[victim].log_tail(12)
    );
    // Handed over, not left to lapse: the others hold every open session at once (a
    // lease lapse would take up to TAKEOVER).
    let exited = Instant::now();
    eventually(
        PROMPT,
        "the stopped node's open sessions are held by the others",
        || async { (cluster.db.open_sessions_owned_by(&victim_id).await == 0).then_some(()) },
    )
    .await;
    eprintln!(
        "node {victim_id}'s sessions held elsewhere {:?} after its exit",
        exited.elapsed()
    );

    // Its sessions move on through the others straight away.
    let survivors: Vec<usize> = (0..3).filter(|&n| n != victim).collect();
    // The wrong code counted before the hand-over still counts on the new owner.
    binding::end_after_takeover(&cluster, &bound, &survivors).await;
    for (k, w) in owned.iter().enumerate() {
        let via = survivors[k % 2];
        let started = Instant::now();
        let res = if w.opened {
            cluster.approve(via, &w.created.id, "alice").await
        } else {
            cluster.cancel(via, &w.created.id).await
        };
        assert_eq!(res.status(), 200, "a handed-over session moves on");
        assert!(
            started.elapsed() <= PROMPT,
            "a handed-over session answered after {:?}",
            started.elapsed()
        );
    }

    let confirmed = load.confirmed();
    load::wait_confirmed(&load, confirmed + 10, Duration::from_secs(30)).await;
    load::stop(&load, clients).await;

    subscribers
        .assert_complete(&cluster, victim, Some(1001))
        .await;
    // Not even requests in flight on the stopping node were cut off: it drained them.
    takeover::audit(&cluster, &load, &receiver, None).await;
    receiver.stop().await;
}

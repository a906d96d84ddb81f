//! The broker's long-lived tasks under supervision: a panic in the store's writer, the
//! expiry sweep, the retention sweeper, the webhook dispatcher, or (several nodes) the
//! lease, the adoption and the VACUUM loops is logged, counted in
//! `idv_task_restarts_total{task}`, and the task comes back and goes on working. No
//! half-alive broker: `/readyz` stays honest, and nothing acknowledged is lost.
//!
//! The panics are armed through [`Tasks::arm`], which exists only in the test build
//! (idv-actors' `fault-injection` feature).

use std::time::Duration;

use idv_actors::metrics::TASK_RESTARTS;
use idv_actors::retention::Sweep;
use idv_actors::session::messages::InjectFault;
use idv_actors::supervise::Task;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::metrics::scrape_until;
use crate::webhooks::{with_webhooks, Receiver};

/// Restarts of `task` so far (summed over the brokers of this test process; only the
/// test that arms a task moves its count).
async fn restarts(app: &TestApp, task: Task) -> f64 {
    crate::metrics::scrape(app)
        .await
        .sum(TASK_RESTARTS, &[("task", task.name())])
}

/// Waits until `task` was restarted once more than `before`.
async fn restarted(app: &TestApp, task: Task, before: f64) {
    let s = scrape_until(app, |s| {
        s.sum(TASK_RESTARTS, &[("task", task.name())]) > before
    })
    .await;
    assert!(
        s.sum(TASK_RESTARTS, &[("task", task.name())]) > before,
        "the {} task was not restarted",
        task.name()
    );
}

/// Waits (bounded) until `task` began `n` more rounds than it had at the call.
async fn goes_on(app: &TestApp, task: Task, n: u64) {
    let from = app.tasks.rounds(task);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.tasks.rounds(task) < from + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the {} task does not run any more",
            task.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready(app: &TestApp) -> u16 {
    app.client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[actix_web::test]
async fn a_store_writer_that_panics_is_restarted_and_loses_no_acknowledged_write() {
    if skip_on_postgres("the writer thread is SQLite's (PostgreSQL's own loop is tested below)") {
        return;
    }
    let app = spawn_app().await;
    let before = restarts(&app, Task::StoreWriter).await;
    let first = app.create_session(&["full_name"]).await;
    // The writer panics between two batches, outside any job: right after it answered
    // this create, which therefore stands.
    app.tasks.arm(Task::StoreWriter);
    let second = app.create_session(&["full_name"]).await;
    restarted(&app, Task::StoreWriter, before).await;
    let third = app.create_session(&["full_name"]).await;
    assert_eq!(
        ready(&app).await,
        200,
        "a restarted writer is a ready broker"
    );
    for created in [&first, &second, &third] {
        let id = created["session_id"].as_str().unwrap();
        let view: Value = app
            .backend_get(&format!("/v1/sessions/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(view["status"], "initialized", "{view}");
    }
    // And a transition after the restart commits and is pushed as ever.
    let id = third["session_id"].as_str().unwrap();
    assert_eq!(app.information(id, "alice").await.status(), 200);
    let app = app.restart(chrono::Duration::zero()).await;
    let view: Value = app
        .backend_get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["status"], "retrieved",
        "durable across a restart: {view}"
    );
}

#[actix_web::test]
async fn the_sweepers_and_the_webhook_dispatcher_come_back_after_a_panic_and_go_on_working() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(with_webhooks).await;
    let before = [Task::Webhooks, Task::ExpirySweep, Task::Retention];
    let mut counts = Vec::new();
    for task in before {
        counts.push(restarts(&app, task).await);
    }

    // The dispatcher dies at the scan that the first commit wakes, and the one that
    // replaces it finds the event in the outbox.
    app.tasks.arm(Task::Webhooks);
    let res = app
        .post_session(&json!({"scopes": ["full_name"], "callback_url": receiver.url("/hook")}))
        .await;
    assert_eq!(res.status(), 201);
    let hooked = res.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.information(&hooked, "alice").await.status(), 200);
    restarted(&app, Task::Webhooks, counts[0]).await;
    let hits = receiver.wait_accepted(1).await;
    assert!(
        hits.iter()
            .any(|h| h.json()["session_id"] == hooked.as_str()),
        "the event was delivered after the restart"
    );

    // A confirmed session, for the retention sweeper below.
    let (confirmed, _) = app.retrieved_session(&["full_name"], "bob").await;
    let res = app
        .update(
            &confirmed,
            "bob",
            &json!({"decision": "approve", "shared_data": {"full_name": "B"}}),
        )
        .await;
    assert_eq!(res.status(), 200);

    // The retention sweeper dies in a sweep: that caller hears of it at once.
    app.tasks.arm(Task::Retention);
    assert!(
        app.sweeper.send(Sweep).await.is_err(),
        "a sweep that panicked is not answered as done"
    );
    restarted(&app, Task::Retention, counts[2]).await;

    // The expiry sweep dies at its next round; once back, it expires a session whose
    // actor is dead and that nobody touches (only the sweep can find it).
    app.tasks.arm(Task::ExpirySweep);
    restarted(&app, Task::ExpirySweep, counts[1]).await;
    let (id, _) = app.retrieved_session(&["full_name"], "alice").await;
    let _ = app
        .registry
        .call(session_id(&id), InjectFault { contained: false })
        .await;
    app.clock.advance(chrono::Duration::days(31));
    let status = app
        .stored_status_becomes(&id, "expired", Duration::from_secs(10))
        .await;
    assert_eq!(status, "expired");

    // Past the retention, the sweeper that replaced the dead one purges.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(swept) = app.sweeper.send(Sweep).await {
            swept.expect("the sweep succeeds");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no sweeper answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d: Value = app
        .backend_get(&format!("/v1/sessions/{confirmed}/decision"))
        .await
        .json()
        .await
        .unwrap();
    assert!(d["purged_at"].is_string(), "purged after the restart: {d}");
    assert_eq!(ready(&app).await, 200);
}

#[actix_web::test]
async fn the_lease_adoption_watch_sweep_and_vacuum_loops_of_a_node_come_back_after_a_panic() {
    if !on_postgres() {
        eprintln!(
            "note: skipped on SQLite: the lease, adoption, watch sweep and VACUUM loops run on PostgreSQL only"
        );
        return;
    }
    let app = spawn_app().await;
    let tasks = [Task::Lease, Task::Adoption, Task::WatchSweep, Task::Vacuum];
    let mut before = Vec::new();
    for task in tasks {
        before.push(restarts(&app, task).await);
        app.tasks.arm(task);
    }
    // A deny purges, which wakes the VACUUM loop.
    let (id, _) = app.retrieved_session(&["full_name"], "alice").await;
    let res = app.update(&id, "alice", &json!({"decision": "deny"})).await;
    assert_eq!(res.status(), 200);
    for (task, before) in tasks.iter().zip(before) {
        restarted(&app, *task, before).await;
    }
    // Each loop runs again: the lease is renewed (else commits would be refused), the
    // orphans are looked for, and the next purge is vacuumed.
    goes_on(&app, Task::Lease, 2).await;
    goes_on(&app, Task::Adoption, 2).await;
    goes_on(&app, Task::WatchSweep, 2).await;
    let (id, _) = app.retrieved_session(&["full_name"], "bob").await;
    let vacuumed = app.tasks.rounds(Task::Vacuum);
    let res = app.update(&id, "bob", &json!({"decision": "deny"})).await;
    assert_eq!(res.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.tasks.rounds(Task::Vacuum) == vacuumed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no VACUUM after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready(&app).await, 200);
    let created = app.create_session(&["full_name"]).await;
    assert!(created["session_id"].is_string());
}

//! PgStore against a real server: `IDVB_TEST_PG` (a superuser URL; each test makes a
//! database of its own). Without it these tests print a note and pass: CI sets it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::ids::{DeviceId, SessionToken};
use crate::model::{Consent, SessionRequest};
use crate::status::Status;
use crate::write::{ImageType, NewFile, Upload};

/// The `store-io` runtime of a test, shut down without blocking when dropped.
struct Io(Option<tokio::runtime::Runtime>);

impl Io {
    fn new() -> Self {
        Self(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("store-io")
                .enable_all()
                .build()
                .unwrap(),
        ))
    }

    fn handle(&self) -> Handle {
        self.0.as_ref().unwrap().handle().clone()
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A fresh database on the test server, or `None` (with a note) without one.
async fn fresh_db(io: &Io) -> Option<String> {
    let Ok(server) = std::env::var("IDVB_TEST_PG") else {
        // Under CI a missing server is a broken set-up, never a pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "IDVB_TEST_PG is not set under CI: the PostgreSQL store tests need it \
             (`bash .ci/test.sh` starts PostgreSQL and exports it)"
        );
        eprintln!("SKIPPED: IDVB_TEST_PG is not set; this PostgreSQL store test did not run");
        return None;
    };
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    Some(
        io.handle()
            .spawn(async move { create_database(&server, &name).await })
            .await
            .unwrap()
            .unwrap(),
    )
}

/// A store as node `node`'s process, holding its lease (a minute): only a process that
/// holds one commits.
async fn open(io: &Io, url: &str, node: &str, webhooks: Option<&str>) -> Arc<PgStore> {
    let store = open_without_lease(io, url, node, webhooks).await;
    assert!(store.register_node(Duration::from_secs(60)).await.unwrap());
    store
}

/// A store as a process of node `node` that has not taken the node's lease.
async fn open_without_lease(
    io: &Io,
    url: &str,
    node: &str,
    webhooks: Option<&str>,
) -> Arc<PgStore> {
    let config = PgConfig {
        pool_size: 4,
        webhooks: webhooks.map(|u| WebhookRoute {
            default_url: Some(u.to_owned()),
        }),
        ..PgConfig::new(url, node)
    };
    PgStore::open(config, io.handle()).await.unwrap()
}

fn record(registration: Option<&str>) -> SessionRecord {
    SessionRecord::open(
        "acme",
        SessionRequest {
            scopes: vec!["full_name".into(), "selfie".into()],
            vendor_data: Some("v".into()),
            registration: registration.map(|r| RawValue::from_string(r.into()).unwrap()),
            ..SessionRequest::default()
        },
        Utc::now(),
        chrono::Duration::seconds(600),
    )
    .0
}

use serde_json::value::RawValue;

async fn create(store: &PgStore, registration: Option<&str>) -> SessionRecord {
    let r = record(registration);
    let out = SessionStore::create_session(store, NewSession { record: r.clone() }, None)
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created));
    r
}

fn step(s: &SessionRecord, from: u64, status: Status) -> TransitionWrite {
    let at = s.created_at + chrono::Duration::seconds(from as i64);
    TransitionWrite {
        id: s.id,
        from_seq: Seq(from),
        status,
        at,
        bind: (status == Status::Retrieved)
            .then(|| DeviceId::new("phone-app", UserId::parse("u1").unwrap())),
        consent: None,
        shared_data: None,
        files: Vec::new(),
        decided_at: status.is_terminal().then_some(at),
        purge: status.discards_personal_data(),
        registers_user: status.registers_user(),
        binding_code: None,
        binding_misses: None,
        reason: None,
    }
}

/// Runs `sql` on `url` and answers the first column of each row, as text.
async fn column(io: &Io, url: &str, sql: &str) -> Vec<Option<String>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    io.handle()
        .spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .simple_query(&sql)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
                    _ => None,
                })
                .collect()
        })
        .await
        .unwrap()
}

#[actix_rt::test]
async fn an_idempotent_create_replays_with_the_same_body_and_conflicts_with_another() {
    let io = Io::new();
    let Some(url) = fresh_db(&io).await else {
        return;
    };
    let store = open(&io, &url, "a", None).await;
    let claim = |hash: u8| IdempotencyClaim {
        key: "k1".into(),
        request_hash: [hash; 32],
    };
    let first = record(None);
    let out = store
        .create_session(
            NewSession {
                record: first.clone(),
            },
            Some(claim(1)),
        )
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created));
    assert_eq!(store.held_epoch(first.id), Some(1));

    let again = record(None);
    match store
        .create_session(NewSession { record: again }, Some(claim(1)))
        .await
        .unwrap()
    {
        CreateOutcome::Replayed(s, token) => {
            assert_eq!(s.id, first.id);
            assert!(
                s.token_hash.matches(&token.hash()),
                "the new token replaces the old"
            );
            assert!(!s.token_hash.matches(&first.token_hash));
            assert_eq!(
                token.claimed_session(),
                Some(first.id),
                "and names the session"
            );
        }
        other => panic!("{other:?}"),
    }
    let out = store
        .create_session(
            NewSession {
                record: record(None),
            },
            Some(claim(2)),
        )
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Conflict));

    // Concurrent creates with one key make one session.
    let key = IdempotencyClaim {
        key: "k2".into(),
        request_hash: [3; 32],
    };
    let outs = futures_util::future::join_all((0..8).map(|_| {
        store.create_session(
            NewSession {
                record: record(None),
            },
            Some(key.clone()),
        )
    }))
    .await;
    let created = outs
        .iter()
        .filter(|o| matches!(o, Ok(CreateOutcome::Created)))
        .count();
    let replayed = outs
        .iter()
        .filter(|o| matches!(o, Ok(CreateOutcome::Replayed(..))))
        .count();
    assert_eq!((created, replayed), (1, 7));
}

#[actix_rt::test]
async fn the_commit_guard_tells_a_moved_seq_from_a_lost_session() {
    let io = Io::new();
    let Some(url) = fresh_db(&io).await else {
        return;
    };
    let a = open(&io, &url, "a", None).await;
    let b = open(&io, &url, "b", None).await;
    let s = create(&a, Some(r#"{"first_name":"John"}"#)).await;
    let committed = a
        .commit_transition(step(&s, 1, Status::Retrieved))
        .await
        .unwrap();
    assert_eq!(
        (committed.status, committed.seq),
        (Status::Retrieved, Seq(2))
    );
    assert!(
        committed.device.is_some(),
        "RETURNING gives the committed row"
    );

    // Against an old seq: stale, whoever writes.
    assert!(matches!(
        a.commit_transition(step(&s, 1, Status::Cancelled)).await,
        Err(StoreError::Stale)
    ));
    // B never held it: not the owner, and nothing was written.
    assert!(matches!(
        b.commit_transition(step(&s, 2, Status::Cancelled)).await,
        Err(StoreError::NotOwner)
    ));
    // B may claim it once A's lease lapsed (renewed for no time at all: lapsed by the
    // database's clock, no waiting); A's next commit is refused.
    assert!(matches!(b.claim(s.id).await.unwrap(), Claim::Other(n) if n == "a"));
    assert!(a.renew_lease(Duration::ZERO).await.unwrap());
    assert!(matches!(b.claim(s.id).await.unwrap(), Claim::Mine(_)));
    assert_eq!(b.held_epoch(s.id), Some(2));
    assert!(matches!(
        a.commit_transition(step(&s, 2, Status::Cancelled)).await,
        Err(StoreError::NotOwner)
    ));
    assert!(matches!(
        a.commit_transitions(vec![step(&s, 2, Status::Cancelled)])
            .await,
        Err(StoreError::NotOwner)
    ));
    let done = b
        .commit_transition(step(&s, 2, Status::Cancelled))
        .await
        .unwrap();
    assert_eq!((done.status, done.seq), (Status::Cancelled, Seq(3)));
    assert!(
        done.request.registration.is_none(),
        "purged in the transition"
    );
    assert_eq!(
        b.held_epoch(s.id),
        None,
        "a terminal session is held by nobody"
    );
    assert_eq!(
        a.events_after(s.id, Seq(0)).await.unwrap().len(),
        3,
        "refused writes left no events"
    );
    assert!(matches!(a.claim(s.id).await.unwrap(), Claim::Ended(_)));
}

#[actix_rt::test]
async fn a_session_is_claimed_only_once_its_owner_s_lease_has_lapsed() {
    let io = Io::new();
    let Some(url) = fresh_db(&io).await else {
        return;
    };
    let a = open(&io, &url, "a", None).await;
    let b = open(&io, &url, "b", None).await;
    let s = create(&a, None).await;
    assert!(matches!(a.claim(s.id).await.unwrap(), Claim::Mine(_)));
    assert!(matches!(b.claim(s.id).await.unwrap(), Claim::Other(n) if n == "a"));
    assert_eq!(b.live_nodes().await.unwrap(), ["a", "b"]);
    // Renewed for no time at all: lapsed from now on, by the database's clock (no
    // waiting on the wall clock).
    assert!(a.renew_lease(Duration::ZERO).await.unwrap());
    assert_eq!(b.live_nodes().await.unwrap(), ["b"]);
    assert!(
        !a.renew_lease(Duration::from_secs(60)).await.unwrap(),
        "it had lapsed"
    );
    assert!(matches!(b.claim(s.id).await.unwrap(), Claim::Mine(_)));
    // Each take is a new epoch: a's claim above (1 → 2), b's (→ 3).
    assert_eq!(b.held_epoch(s.id), Some(3));
    // An old actor's late release lets go of its own epoch only.
    b.forget_held(s.id, 2);
    assert_eq!(b.held_epoch(s.id), Some(3));
    // a, without a lease, takes nothing and is sent to b.
    assert!(matches!(a.claim(s.id).await.unwrap(), Claim::Other(n) if n == "b"));
    assert!(a.register_node(Duration::from_secs(60)).await.unwrap());
    // Only b's live sessions come back to b, each with a new epoch; a sees none of
    // them as overdue.
    assert_eq!(b.load_live_sessions().await.unwrap().len(), 1);
    assert_eq!(b.held_epoch(s.id), Some(4));
    assert!(a.load_live_sessions().await.unwrap().is_empty());
    let later = Utc::now() + chrono::Duration::hours(1);
    assert!(a.overdue_live(later, 10).await.unwrap().is_empty());
    assert_eq!(b.overdue_live(later, 10).await.unwrap(), [s.id]);

    // A hand-over: b releases, a takes it at once.
    b.release_node().await.unwrap();
    assert_eq!(b.held_epoch(s.id), None);
    assert!(matches!(a.claim(s.id).await.unwrap(), Claim::Mine(_)));
    assert_eq!(a.held_epoch(s.id), Some(5));
}

#[actix_rt::test]
async fn two_processes_with_one_node_id_never_both_commit() {
    let io = Io::new();
    let Some(url) = fresh_db(&io).await else {
        return;
    };
    // The first process runs node "a"; a second starts with the same --node-id.
    let first = open(&io, &url, "a", None).await;
    let s = create(&first, None).await;
    let second = open_without_lease(&io, &url, "a", None).await;
    assert!(
        !second.register_node(Duration::from_secs(60)).await.unwrap(),
        "a live process's lease is not taken"
    );
    assert!(second.load_live_sessions().await.unwrap().is_empty());
    assert!(matches!(
        second
            .commit_transition(step(&s, 1, Status::Retrieved))
            .await,
        Err(StoreError::NotOwner)
    ));
    // The first pauses past its lease; the second takes the node id and its sessions
    // back with new epochs.
    assert!(first.renew_lease(Duration::ZERO).await.unwrap());
    assert!(second.register_node(Duration::from_secs(60)).await.unwrap());
    assert_eq!(second.load_live_sessions().await.unwrap().len(), 1);
    assert_eq!(second.held_epoch(s.id), Some(2));
    // The first wakes: its commit, its renewal and its registration are refused.
    assert!(matches!(
        first
            .commit_transition(step(&s, 1, Status::Retrieved))
            .await,
        Err(StoreError::NotOwner)
    ));
    assert!(!first.renew_lease(Duration::from_secs(60)).await.unwrap());
    assert!(!first.register_node(Duration::from_secs(60)).await.unwrap());
    assert!(matches!(first.claim(s.id).await, Err(StoreError::NoLease)));
    let done = second
        .commit_transition(step(&s, 1, Status::Retrieved))
        .await
        .unwrap();
    assert_eq!(done.seq, Seq(2));
    // Even a process holding the row's epoch commits nothing once its lease lapsed.
    assert!(second.renew_lease(Duration::ZERO).await.unwrap());
    assert!(matches!(
        second
            .commit_transition(step(&done, 2, Status::Cancelled))
            .await,
        Err(StoreError::NotOwner)
    ));
}

#[actix_rt::test]
async fn two_adopters_racing_take_every_orphan_once_in_batches() {
    let io = Io::new();
    let Some(url) = fresh_db(&io).await else {
        return;
    };
    let dead = open(&io, &url, "dead", Some("https://hooks.test/")).await;
    let mut live = Vec::new();
    for _ in 0..40 {
        live.push(create(&dead, None).await.id);
    }
    // A terminal session with a pending webhook moves too; one without does not.
    let ended = create(&dead, None).await;
    dead.commit_transition(step(&ended, 1, Status::Cancelled))
        .await
        .unwrap();
    let quiet_store = open(&io, &url, "dead-quiet", None).await;
    let quiet = create(&quiet_store, None).await;
    quiet_store
        .commit_transition(step(&quiet, 1, Status::Cancelled))
        .await
        .unwrap();
    // Both die: their leases lapse (by the database's clock, no waiting).
    assert!(dead.renew_lease(Duration::ZERO).await.unwrap());
    assert!(quiet_store.renew_lease(Duration::ZERO).await.unwrap());

    let x = open(&io, &url, "x", None).await;
    let y = open(&io, &url, "y", None).await;
    let wake = x.webhook_wake();
    let adopt = |store: Arc<PgStore>| async move {
        let mut mine = Vec::new();
        loop {
            let batch = store.adopt_orphans(7).await.unwrap();
            if batch.is_empty() {
                return mine;
            }
            mine.extend(batch.into_iter().map(|r| r.id));
        }
    };
    let (from_x, from_y) = futures_util::join!(adopt(x.clone()), adopt(y.clone()));
    let all: HashSet<SessionId> = from_x.iter().chain(&from_y).copied().collect();
    assert_eq!(from_x.len() + from_y.len(), 40, "no session adopted twice");
    assert_eq!(all, live.iter().copied().collect());
    for id in &from_x {
        assert!(x.held_epoch(*id) == Some(2) && y.held_epoch(*id).is_none());
    }
    // The ended session's outbox went to one adopter, the quiet one stayed.
    let owners = column(
        &io,
        &url,
        &format!(
            "SELECT owner_node FROM sessions WHERE id IN ('{}', '{}') ORDER BY id = '{}'",
            ended.id, quiet.id, quiet.id
        ),
    )
    .await;
    assert_ne!(owners[0].as_deref(), Some("dead"));
    assert_eq!(owners[1].as_deref(), Some("dead-quiet"));
    let woken = if owners[0].as_deref() == Some("x") {
        wake
    } else {
        y.webhook_wake()
    };
    tokio::time::timeout(Duration::from_secs(1), woken.notified())
        .await
        .expect("the adopter's dispatcher is woken");
    // The old owner can no longer commit to them.
    let s = dead.load_session(live[0]).await.unwrap().unwrap();
    assert!(matches!(
        dead.commit_transition(step(&s, 1, Status::Cancelled)).await,
        Err(StoreError::NotOwner)
    ));
}

#[actix_rt::test]
async fn the_outbox_row_commits_with_its_transition_and_is_due_only_to_the_owner() {
    let io = Io::new();
    let Some(url) = fresh_db(&io).await else {
        return;
    };
    let a = open(&io, &url, "a", Some("https://default.test/")).await;
    let b = open(&io, &url, "b", Some("https://default.test/")).await;
    let s = create(&a, None).await;
    let wake = a.webhook_wake();
    a.commit_transition(step(&s, 1, Status::Retrieved))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), wake.notified())
        .await
        .unwrap();
    // A refused write rolls back, its event with it.
    assert!(b
        .commit_transition(step(&s, 2, Status::Cancelled))
        .await
        .is_err());
    a.commit_transition(step(&s, 2, Status::Cancelled))
        .await
        .unwrap();
    let soon = Utc::now() + chrono::Duration::minutes(1);
    let due = a.due_webhooks(soon, 10).await.unwrap();
    assert_eq!(due.due.len(), 1, "seq 3 waits behind seq 2");
    let e = &due.due[0];
    assert_eq!((e.session_id, e.seq, e.operator_url), (s.id, Seq(2), true));
    let body: serde_json::Value = serde_json::from_slice(e.body.as_ref().unwrap()).unwrap();
    assert_eq!(
        (body["seq"].as_u64(), body["status"].as_str()),
        (Some(2), Some("retrieved"))
    );
    assert!(b.due_webhooks(soon, 10).await.unwrap().due.is_empty());
    assert_eq!(a.pending_webhooks().await.unwrap(), 2);

    a.record_delivery(s.id, Seq(2), Utc::now(), DeliveryRecord::Delivered)
        .await
        .unwrap();
    let later = Utc::now() + chrono::Duration::seconds(30);
    let next = a.due_webhooks(soon, 10).await.unwrap().due;
    assert_eq!(next[0].seq, Seq(3));
    a.record_delivery(
        s.id,
        Seq(3),
        Utc::now(),
        DeliveryRecord::Retry {
            next_attempt_at: later,
            error: "HTTP 500".into(),
        },
    )
    .await
    .unwrap();
    let found = a.due_webhooks(Utc::now(), 10).await.unwrap();
    assert!(found.due.is_empty());
    assert_eq!(
        found.next_at.map(|t| t.timestamp_millis()),
        Some(later.timestamp_millis())
    );
    a.record_delivery(
        s.id,
        Seq(3),
        Utc::now(),
        DeliveryRecord::Failed {
            error: "HTTP 500".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        a.webhook_counts(s.id).await.unwrap(),
        WebhookCounts {
            pending: 0,
            failed: 1
        }
    );
}

#[actix_rt::test]
async fn purges_delete_files_and_personal_data_in_their_transaction_and_vacuum_soon() {
    let io = Io::new();
    let Some(url) = fresh_db(&io).await else {
        return;
    };
    let store = open(&io, &url, "a", None).await;
    let s = create(&store, Some(r#"{"first_name":"Johnny-Marker"}"#)).await;
    store
        .commit_transition(step(&s, 1, Status::Retrieved))
        .await
        .unwrap();
    let mut approve = step(&s, 2, Status::Confirmed);
    approve.consent = Some(Consent {
        is_consented: true,
        consented_at: approve.at,
    });
    approve.shared_data = Some(serde_json::from_str(r#"{"full_name":"John"}"#).unwrap());
    let file_id = FileId::new();
    approve.files = vec![NewFile {
        file_id,
        kind: "selfie".into(),
        upload: Upload::new(ImageType::Jpeg, vec![0xFF, 0xD8, 0xFF, 1, 2, 3], ()),
    }];
    store.commit_transition(approve).await.unwrap();
    let decision = store.load_decision(s.id).await.unwrap().unwrap();
    assert_eq!(decision.files.len(), 1);
    assert!(decision.shared_data.is_some());
    assert_eq!(
        store.load_file(s.id, file_id).await.unwrap().unwrap().bytes,
        [0xFF, 0xD8, 0xFF, 1, 2, 3]
    );

    let cutoff = Utc::now() + chrono::Duration::hours(1);
    assert_eq!(store.purge_retained(cutoff, Utc::now()).await.unwrap(), 1);
    assert_eq!(store.purge_retained(cutoff, Utc::now()).await.unwrap(), 0);
    assert!(store.load_file(s.id, file_id).await.unwrap().is_none());
    let decision = store.load_decision(s.id).await.unwrap().unwrap();
    assert!(decision.files.is_empty() && decision.shared_data.is_none());
    assert!(decision.purged_at.is_some());
    assert_eq!(
        column(&io, &url, "SELECT count(*)::text FROM files").await,
        [Some("0".to_owned())]
    );
    // The scrubber vacuums the tables within a few seconds of the purge.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let vacuumed = column(
            &io,
            &url,
            "SELECT count(*)::text FROM pg_stat_user_tables \
             WHERE relname IN ('files', 'sessions') AND last_vacuum IS NOT NULL",
        )
        .await;
        if vacuumed == [Some("2".to_owned())] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no VACUUM after the purge"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[actix_rt::test]
async fn nodes_starting_together_migrate_once() {
    let io = Io::new();
    let Some(url) = fresh_db(&io).await else {
        return;
    };
    let stores = futures_util::future::join_all(
        (0..4).map(|i| open_without_lease(&io, &url, if i % 2 == 0 { "a" } else { "b" }, None)),
    )
    .await;
    assert_eq!(stores.len(), 4);
    assert_eq!(
        column(&io, &url, "SELECT count(*)::text FROM schema_migrations").await,
        [Some(super::schema::latest_version().to_string())]
    );
    stores[0].ping().await.unwrap();
    stores[0].close();
    assert!(matches!(stores[0].ping().await, Err(StoreError::Closed)));
}

#[actix_rt::test]
async fn a_token_is_known_by_the_session_it_names_or_as_a_legacy_hash() {
    let io = Io::new();
    let Some(url) = fresh_db(&io).await else {
        return;
    };
    let store = open(&io, &url, "n1", None).await;
    let s = create(&store, None).await;
    let other = SessionToken::generate(s.id).hash();
    assert!(
        SessionStore::token_in_use(&*store, s.token_hash, Some(s.id))
            .await
            .unwrap()
    );
    assert!(!SessionStore::token_in_use(&*store, other, Some(s.id))
        .await
        .unwrap());
    assert!(
        !SessionStore::token_in_use(&*store, s.token_hash, Some(SessionId::new()))
            .await
            .unwrap()
    );
    // Not named: only a hash issued before tokens named their session is looked up.
    assert!(!SessionStore::token_in_use(&*store, s.token_hash, None)
        .await
        .unwrap());
    column(
        &io,
        &url,
        "INSERT INTO legacy_session_tokens SELECT token_hash, id FROM sessions",
    )
    .await;
    assert!(SessionStore::token_in_use(&*store, s.token_hash, None)
        .await
        .unwrap());
    assert!(!SessionStore::token_in_use(&*store, other, None)
        .await
        .unwrap());
    assert_eq!(
        column(&io, &url, "SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%token_hash%' AND tablename = 'sessions'").await,
        Vec::<Option<String>>::new(),
        "no index over token hashes"
    );
}

//! A watching actor (the session's owner is another node) whose copy is behind the
//! store: it reads the store before it answers a caller that saw more than it has (a
//! later seq, or a token a replayed create rotated in), and refuses one still ahead
//! of the store as a single node would. The owner's announcements are never sent here,
//! so the only way the copy catches up within the test is that read.

use std::sync::Arc;

use actix::prelude::*;
use chrono::{Duration, Utc};

use super::SessionActor;
use crate::clock::{SharedClock, SystemClock};
use crate::error::SessionError;
use crate::ids::{DeviceId, Seq, SessionId, SessionToken, TokenHash, UserId};
use crate::live::{Generation, LiveSessions};
use crate::model::{SessionRecord, SessionRequest};
use crate::route::RouteFuture;
use crate::session::messages::{Caller, Cancel, Change, Refresh, Tick, WaitChange};
use crate::session_store::SessionStore;
use crate::status::Status;
use crate::store::{CreateOutcome, IdempotencyClaim, NewSession, Store, StoreConfig};
use crate::write::TransitionWrite;

/// A registry that never announces anything: the watcher learns only by reading.
struct Silent;

impl LiveSessions for Silent {
    fn forget(&self, _: SessionId, _: Generation) {}
    fn max_subscribers(&self, _: &str) -> usize {
        16
    }
    fn track_token(&self, _: SessionId, _: TokenHash) {}
    fn untrack_token(&self, _: SessionId, _: TokenHash) {}
    fn announce(&self, _: SessionId, _: Seq) {}
    fn watch(&self, _: SessionId, _: Recipient<Refresh>) -> RouteFuture<()> {
        Box::pin(async {})
    }
    fn unwatch(&self, _: SessionId, _: &Recipient<Refresh>) {}
}

const OWNER: &str = "acme";

fn claim() -> IdempotencyClaim {
    IdempotencyClaim {
        key: "order-1".into(),
        request_hash: [7; 32],
    }
}

/// A store of its own with one session of [`OWNER`] in it, created at `created_at`
/// to live 600 s (under `claim`, if given); the session as stored and its token.
async fn stored(
    created_at: chrono::DateTime<Utc>,
    claim: Option<IdempotencyClaim>,
) -> (tempfile::TempDir, Arc<Store>, SessionRecord, SessionToken) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&StoreConfig::new(dir.path().join("t.db"))).unwrap());
    let (record, token) = SessionRecord::open(
        OWNER,
        SessionRequest {
            scopes: vec!["full_name".into()],
            ..SessionRequest::default()
        },
        created_at,
        Duration::seconds(600),
    );
    let outcome = store
        .create_session(
            NewSession {
                record: record.clone(),
            },
            claim,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, CreateOutcome::Created));
    (dir, store, record, token)
}

/// A store with one session in it (created under an idempotency key), its token, and
/// an actor watching it.
async fn watched() -> (
    tempfile::TempDir,
    Arc<Store>,
    SessionRecord,
    SessionToken,
    Addr<SessionActor>,
) {
    let (dir, store, record, token) = stored(Utc::now(), Some(claim())).await;
    let clock: SharedClock = Arc::new(SystemClock);
    let store_dyn: Arc<dyn SessionStore> = store.clone();
    let addr = SessionActor::watching(record.id, store_dyn, clock, Arc::new(Silent), Generation(1))
        .start();
    // Loaded: it answers the backend from its copy.
    let first = wait(&addr, backend(), None).await.unwrap();
    assert_eq!(now_or_later(first).seq, record.seq);
    (dir, store, record, token, addr)
}

fn backend() -> Caller {
    Caller::Backend {
        owner: OWNER.into(),
    }
}

fn client(token: &SessionToken) -> Caller {
    Caller::Client {
        token: token.hash(),
        claims: token.claimed_session(),
    }
}

async fn wait(
    addr: &Addr<SessionActor>,
    caller: Caller,
    after: Option<Seq>,
) -> Result<Change, SessionError> {
    addr.send(WaitChange { caller, after }).await.unwrap()
}

/// The session as the answer shows it, whether it is past `after` or not yet.
fn now_or_later(change: Change) -> SessionRecord {
    match change {
        Change::Now(s) | Change::Never(s) => s,
        Change::Later { current, .. } => current,
    }
}

/// The owner (another node) commits `retrieved` for `record`, as the store's writer
/// does for it; answers the session as committed.
async fn retrieve(store: &Store, record: &SessionRecord) -> SessionRecord {
    let committed = store
        .commit_transition(TransitionWrite {
            id: record.id,
            from_seq: record.seq,
            status: Status::Retrieved,
            at: Utc::now(),
            bind: Some(DeviceId::new("issuer", UserId::parse("user-1").unwrap())),
            consent: None,
            shared_data: None,
            files: Vec::new(),
            decided_at: None,
            purge: false,
            registers_user: true,
            binding_code: None,
            binding_misses: None,
            reason: None,
        })
        .await
        .unwrap();
    assert!(committed.seq > record.seq);
    committed
}

#[actix_rt::test]
async fn a_watcher_reads_the_store_when_the_sweep_saw_it_behind_and_not_when_it_is_current() {
    let (_dir, store, record, _token, addr) = watched().await;
    // A long-poll here waits for the next transition.
    let Change::Later { next, .. } = wait(&addr, backend(), Some(record.seq)).await.unwrap() else {
        panic!("the session has not moved yet")
    };
    // The sweep saw the seq the watcher has: nothing is read.
    let reads = store.session_reads();
    for _ in 0..3 {
        addr.send(Refresh {
            stored: Some(record.seq),
        })
        .await
        .unwrap();
    }
    assert_eq!(
        store.session_reads(),
        reads,
        "a watcher that is current reads nothing"
    );

    // The owner commits, and its announcement is lost: the next sweep sees the store
    // ahead, and the watcher reads it and answers its long-poll.
    let committed = retrieve(&store, &record).await;
    addr.send(Refresh {
        stored: Some(committed.seq),
    })
    .await
    .unwrap();
    let pushed = tokio::time::timeout(std::time::Duration::from_secs(5), next)
        .await
        .expect("the long-poll is answered after the sweep")
        .expect("the session's next transition");
    assert_eq!(
        (pushed.seq, pushed.status),
        (committed.seq, Status::Retrieved)
    );
    assert!(store.session_reads() > reads, "the watcher read the store");
}

#[actix_rt::test]
async fn a_watcher_behind_the_store_reads_it_for_a_caller_ahead_of_it_and_refuses_one_ahead_of_the_store(
) {
    let (_dir, store, record, _token, addr) = watched().await;
    // The owner (another node) commits a transition; no announcement reaches here.
    let committed = retrieve(&store, &record).await;

    // A caller that saw the new seq elsewhere: the watcher reads the store first (its
    // answer asks for the request again, as the registry does) ...
    let res = wait(&addr, backend(), Some(committed.seq)).await;
    assert!(matches!(res, Err(SessionError::Restarted)), "{res:?}");
    // ... and then answers from what it read.
    let current = now_or_later(wait(&addr, backend(), Some(committed.seq)).await.unwrap());
    assert_eq!(current.seq, committed.seq);
    assert_eq!(current.status, Status::Retrieved);

    // A caller ahead of the store too: one more read, then refused as with one node.
    let beyond = Some(committed.seq.next());
    let res = wait(&addr, backend(), beyond).await;
    assert!(matches!(res, Err(SessionError::Restarted)), "{res:?}");
    let res = wait(&addr, backend(), beyond).await;
    assert!(matches!(res, Err(SessionError::Invalid(_))), "{res:?}");
}

#[actix_rt::test]
async fn a_watcher_reads_the_store_for_a_token_it_does_not_know_and_then_knows_only_the_new_one() {
    let (_dir, store, record, old, addr) = watched().await;
    let current = now_or_later(wait(&addr, client(&old), None).await.unwrap());
    assert_eq!(current.seq, record.seq, "the first token works");
    // A replayed create through another node rotates the token in the store.
    let (again, _) = SessionRecord::open(
        OWNER,
        SessionRequest::clone(&record.request),
        Utc::now(),
        Duration::seconds(600),
    );
    let outcome = store
        .create_session(NewSession { record: again }, Some(claim()))
        .await
        .unwrap();
    let CreateOutcome::Replayed(_, new) = outcome else {
        panic!("a replay, not {outcome:?}")
    };

    // The new token: unknown to the copy, so the store is read, and then it is known.
    let res = wait(&addr, client(&new), None).await;
    assert!(matches!(res, Err(SessionError::Restarted)), "{res:?}");
    let current = now_or_later(wait(&addr, client(&new), None).await.unwrap());
    assert_eq!(current.id, record.id);
    // The old token: unknown now too; one more read, then refused as with one node.
    let res = wait(&addr, client(&old), None).await;
    assert!(matches!(res, Err(SessionError::Restarted)), "{res:?}");
    let res = wait(&addr, client(&old), None).await;
    assert!(matches!(res, Err(SessionError::Unauthorized)), "{res:?}");
}

/// A session created 601 s ago (overdue from the start), in a store of its own, and
/// its owning actor under a supervisor, not yet run.
async fn overdue() -> (tempfile::TempDir, Arc<Store>, SessionId, Addr<SessionActor>) {
    let (dir, store, record, _) = stored(Utc::now() - Duration::seconds(601), None).await;
    let (id, clock): (SessionId, SharedClock) = (record.id, Arc::new(SystemClock));
    let store_dyn: Arc<dyn SessionStore> = store.clone();
    let addr = Supervisor::start(move |_| {
        SessionActor::new(
            id,
            Some(record),
            store_dyn,
            clock,
            Arc::new(Silent),
            Generation(1),
        )
    });
    (dir, store, id, addr)
}

fn cancel() -> Cancel {
    Cancel {
        owner: OWNER.into(),
    }
}

/// A command queued behind the expiry's commit is answered from the ended session: the
/// actor stops with the command still in its mailbox, and since its caller still holds
/// the address the supervisor starts it again, with its final state, to answer. (Were
/// it dropped instead, the caller would see `MailboxError::Closed`, which the registry
/// answers `503` for a command that commits.)
#[actix_rt::test]
async fn a_command_queued_behind_the_expiry_is_answered_from_the_ended_session() {
    let (_dir, store, id, addr) = overdue().await;
    // Both queued before the actor runs: the tick's expiry commits first (the actor
    // waits for it), and the cancel is taken from the mailbox after the actor stopped.
    addr.do_send(Tick);
    let res = addr.send(cancel()).await.expect("answered, not dropped");
    assert!(
        matches!(res, Err(SessionError::InvalidState(Status::Expired))),
        "{res:?}"
    );
    let stored = store.load_session(id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Expired);
}

/// A cancel refused at once (the session is past `expires_at`) in the same pass of
/// the actor as its expiry timer fires: the refusal is the answer. The timer's commit
/// runs ahead of anything queued to wait (newest first), ends the session and stops
/// the actor; a refusal that waited behind it was dropped with the context
/// (`MailboxError::Closed`, which the registry answers `503`: the flake of the API test
/// `a_session_past_expires_at_cannot_be_cancelled_any_more`). The thread is held for
/// 5 ms of wall time each round: the race needs the deadline to pass while the actor
/// cannot run, and tokio's paused clock (`advance`) yields to the actor first.
#[actix_rt::test]
async fn a_cancel_refused_as_the_expiry_timer_fires_gets_its_refusal() {
    for _ in 0..50 {
        let (_dir, _store, _id, addr) = overdue().await;
        // The actor's first pass arms its expiry timer, due at once. The thread is then
        // held (not awaited: the actor must not run) until that deadline is behind it,
        // and the cancel is queued. Whether the actor's next pass fires the timer
        // together with the cancel depends on when the runtime next turns its timer
        // driver: some passes do, so a few dozen rounds meet the race (before the fix,
        // every run of this test failed within its 50 rounds, six runs of six).
        tokio::task::yield_now().await;
        std::thread::sleep(std::time::Duration::from_millis(5));
        let res = addr.send(cancel()).await.expect("answered, not dropped");
        assert!(matches!(res, Err(SessionError::InvalidState(_))), "{res:?}");
    }
}

//! Real-time delivery: the subscribers and long-poll waiters of a session (the
//! messages that manage them are beside the actor, in
//! [`session::messages`](crate::session::messages)).
//!
//! The session actor owns an [`Audience`] and publishes to it after each commit,
//! never before. Subscribing happens inside the actor's mailbox, so the seq in the
//! [`Subscribed`] snapshot is exactly the last transition the subscriber will not
//! be pushed: everything up to it comes from the events log, everything after it
//! is pushed. That seam is what makes a resume gap-free and duplicate-free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::commands::{authorize, SessionCommand};
use crate::error::SessionError;
use crate::ids::{Seq, SessionId};
use crate::model::{SessionEvent, SessionRecord};
use crate::session::messages::{
    AudienceCount, AudienceLost, Change, CountAudience, Push, Subscribe, Subscribed, SubscriberId,
    Unsubscribe, WaitChange,
};

/// Most long-poll waiters one session holds; past it, `503`.
pub const MAX_WAITERS_PER_SESSION: usize = 10_000;
/// Default of `--max-subscribers-per-session`: most subscribers one session holds;
/// past it, `503`.
pub const MAX_SUBSCRIBERS_PER_SESSION: usize = 10_000;

/// Checks `after` against the current seq; `None` means the current seq.
pub fn check_after(after: Option<Seq>, current: Seq) -> Result<Seq, SessionError> {
    match after {
        Some(n) if n > current => Err(SessionError::Invalid(format!(
            "after_seq {n} is above the session's current seq {current}"
        ))),
        Some(n) => Ok(n),
        None => Ok(current),
    }
}

struct Subscriber {
    recipient: Recipient<Push>,
    lost: Recipient<AudienceLost>,
    evicted: Arc<AtomicBool>,
}

/// The subscribers and waiters a session actor owns.
///
/// Dropped unreleased (the actor died), it tells its subscribers (see [`AudienceLost`]).
#[derive(Default)]
pub(crate) struct Audience {
    /// The session, once known: named in [`AudienceLost`].
    session: Option<SessionId>,
    subscribers: HashMap<SubscriberId, Subscriber>,
    next_id: u64,
    waiters: Vec<oneshot::Sender<SessionRecord>>,
    /// The last seq subscribers were brought to (snapshot or push): after a restart
    /// the actor publishes whatever the store has beyond it.
    published: Option<Seq>,
}

impl Audience {
    /// Adds a subscriber that has everything up to `seq`.
    pub(crate) fn subscribe(
        &mut self,
        msg: &Subscribe,
        seq: Seq,
        max: usize,
    ) -> Result<SubscriberId, SessionError> {
        if self.subscribers.len() >= max {
            return Err(SessionError::Unavailable(
                "too many subscribers on this session",
            ));
        }
        self.next_id += 1;
        let id = SubscriberId(self.next_id);
        self.subscribers.insert(
            id,
            Subscriber {
                recipient: msg.subscriber.clone(),
                lost: msg.lost.clone(),
                evicted: msg.evicted.clone(),
            },
        );
        self.published = Some(self.published.map_or(seq, |p| p.max(seq)));
        Ok(id)
    }

    /// An audience for session `id`.
    pub(crate) fn new(id: SessionId) -> Self {
        let mut audience = Self::default();
        audience.session = Some(id);
        audience
    }

    /// Lets everyone go without telling them: the session ended normally and every
    /// subscriber had the terminal push (and closes itself), every waiter its answer.
    pub(crate) fn release(&mut self) {
        self.subscribers.clear();
        self.waiters.clear();
    }

    /// The session's actor stops here without the session ending (it moved to another
    /// node): every subscriber is told and re-subscribes through the registry, which
    /// finds the new owner; every waiter is woken and waits again.
    pub(crate) fn hand_off(&mut self) {
        if let Some(session_id) = self.session {
            for s in self.subscribers.values() {
                s.lost.do_send(AudienceLost { session_id });
            }
        }
        self.release();
    }

    pub(crate) fn unsubscribe(&mut self, id: SubscriberId) {
        self.subscribers.remove(&id);
    }

    /// A receiver for the next transition.
    pub(crate) fn wait(&mut self) -> Result<oneshot::Receiver<SessionRecord>, SessionError> {
        if self.waiters.len() >= MAX_WAITERS_PER_SESSION {
            // Timed-out polls leave closed senders behind; sweep them before refusing.
            self.waiters.retain(|w| !w.is_closed());
            if self.waiters.len() >= MAX_WAITERS_PER_SESSION {
                return Err(SessionError::Unavailable(
                    "too many waiting polls on this session",
                ));
            }
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        Ok(rx)
    }

    /// The seq subscribers were last brought to, if any subscriber is listening.
    pub(crate) fn published(&self) -> Option<Seq> {
        if self.subscribers.is_empty() {
            None
        } else {
            self.published
        }
    }

    /// Pushes a committed transition to every subscriber and wakes every waiter.
    pub(crate) fn publish(&mut self, session: &SessionRecord, seq: Seq, at: DateTime<Utc>) {
        if self.published.is_some_and(|p| p >= seq) {
            return;
        }
        self.published = Some(seq);
        let push = Push {
            session_id: session.id,
            event: SessionEvent {
                seq,
                status: session.status,
                at,
                // The `retrieved` frame carries the binding code to the client.
                binding_code: session
                    .binding_code
                    .filter(|_| session.status == crate::status::Status::Retrieved),
            },
            committed_at: std::time::Instant::now(),
        };
        self.subscribers
            .retain(|_, s| match s.recipient.try_send(push.clone()) {
                Ok(()) => true,
                Err(SendError::Full(_)) => {
                    // It is not reading: drop it rather than queue without bound. It closes
                    // itself when it sees the flag, and can resume with after_seq.
                    s.evicted.store(true, Ordering::Release);
                    false
                }
                Err(SendError::Closed(_)) => false,
            });
        for w in self.waiters.drain(..) {
            let _ = w.send(session.clone());
        }
    }

    /// Pushes a transition read back from the events log (after a restart).
    pub(crate) fn republish(&mut self, session: &SessionRecord, event: &SessionEvent) {
        // The session as it was at this transition, as far as a push and a long-poll
        // show it: a waiter woken by an earlier event of several read at once must not
        // see the earlier status with the later seq.
        let mut s = session.clone();
        s.status = event.status;
        s.seq = event.seq;
        s.updated_at = event.at;
        self.publish(&s, event.seq, event.at);
    }

    /// How many subscribers listen.
    pub(crate) fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// How many subscribers listen and how many long-polls wait (a timed-out poll is
    /// not counted, even before the next sweep drops its sender).
    pub(crate) fn count(&self) -> AudienceCount {
        AudienceCount {
            subscribers: self.subscriber_count(),
            waiters: self.waiters.iter().filter(|w| !w.is_closed()).count(),
        }
    }
}

impl Drop for Audience {
    /// Reached with subscribers only when the actor was dropped without finishing (a
    /// panic killed it): tell them, so they re-subscribe to its replacement. The
    /// waiters' senders drop with it, which wakes their long-polls.
    fn drop(&mut self) {
        let Some(session_id) = self.session else {
            return;
        };
        for s in self.subscribers.values() {
            // `do_send`: never refused for a full mailbox; this notice must arrive.
            s.lost.do_send(AudienceLost { session_id });
        }
    }
}

impl SessionCommand for Subscribe {
    type Output = Subscribed;
    fn retry_safe(&self) -> bool {
        true
    }
    fn on_ended(
        &self,
        session: &SessionRecord,
        _: DateTime<Utc>,
    ) -> Result<Subscribed, SessionError> {
        authorize(session, &self.caller)?;
        check_after(self.after, session.seq)?;
        Ok(Subscribed {
            id: None,
            snapshot: session.clone(),
        })
    }
}

impl SessionCommand for Unsubscribe {
    type Output = ();
    fn retry_safe(&self) -> bool {
        true
    }
    fn on_ended(&self, _: &SessionRecord, _: DateTime<Utc>) -> Result<(), SessionError> {
        Ok(())
    }
}

impl SessionCommand for WaitChange {
    type Output = Change;
    fn retry_safe(&self) -> bool {
        true
    }
    fn on_ended(&self, session: &SessionRecord, _: DateTime<Utc>) -> Result<Change, SessionError> {
        authorize(session, &self.caller)?;
        let after = check_after(self.after, session.seq)?;
        Ok(if session.seq > after {
            Change::Now(session.clone())
        } else {
            Change::Never(session.clone())
        })
    }
}

impl SessionCommand for CountAudience {
    type Output = AudienceCount;
    fn retry_safe(&self) -> bool {
        true
    }
    fn on_ended(&self, _: &SessionRecord, _: DateTime<Utc>) -> Result<AudienceCount, SessionError> {
        // An ended session has nobody left to tell.
        Ok(AudienceCount::default())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Mutex;

    use chrono::Utc;

    use super::*;
    use crate::model::SessionRequest;
    use crate::session::messages::Caller;
    use crate::status::Status;

    /// Records what it is pushed; can be told to block its thread.
    struct Probe {
        seen: Arc<Mutex<Vec<u64>>>,
        capacity: usize,
    }

    impl Probe {
        fn new(seen: &Arc<Mutex<Vec<u64>>>) -> Self {
            Probe {
                seen: seen.clone(),
                capacity: 64,
            }
        }
    }

    /// A probe's lost notice is recorded as seq 0.
    impl Handler<AudienceLost> for Probe {
        type Result = ();
        fn handle(&mut self, _: AudienceLost, _: &mut Context<Self>) {
            self.seen.lock().unwrap().push(0);
        }
    }

    fn subscribe(probe: &Addr<Probe>, evicted: &Arc<AtomicBool>) -> Subscribe {
        Subscribe {
            caller: Caller::Backend {
                owner: "owner".into(),
            },
            after: None,
            subscriber: probe.clone().recipient(),
            lost: probe.clone().recipient(),
            evicted: evicted.clone(),
        }
    }

    /// Waits (bounded) until `seen` holds `n` entries.
    async fn seen_len(seen: &Arc<Mutex<Vec<u64>>>, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while seen.lock().unwrap().len() < n && std::time::Instant::now() < deadline {
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[actix_rt::test]
    async fn an_audience_dropped_without_release_tells_its_subscribers_and_wakes_its_waiters() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe::new(&seen).start();
        let session = record();
        let mut audience = Audience::new(session.id);
        let flag = Arc::new(AtomicBool::new(false));
        audience
            .subscribe(
                &subscribe(&probe, &flag),
                session.seq,
                MAX_SUBSCRIBERS_PER_SESSION,
            )
            .unwrap();
        let waiter = audience.wait().unwrap();
        drop(audience);
        assert!(waiter.await.is_err(), "the long-poll was woken");
        seen_len(&seen, 1).await;
        assert_eq!(*seen.lock().unwrap(), vec![0], "the subscriber was told");
    }

    #[actix_rt::test]
    async fn a_released_audience_tells_nobody() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe::new(&seen).start();
        let mut session = record();
        let mut audience = Audience::new(session.id);
        let flag = Arc::new(AtomicBool::new(false));
        audience
            .subscribe(
                &subscribe(&probe, &flag),
                session.seq,
                MAX_SUBSCRIBERS_PER_SESSION,
            )
            .unwrap();
        audience.release();
        drop(audience);
        // A later push through a fresh audience is the only thing the probe sees.
        let mut other = Audience::new(session.id);
        other
            .subscribe(
                &subscribe(&probe, &flag),
                session.seq,
                MAX_SUBSCRIBERS_PER_SESSION,
            )
            .unwrap();
        session.seq = Seq(2);
        other.publish(&session, session.seq, Utc::now());
        other.release();
        seen_len(&seen, 1).await;
        assert_eq!(*seen.lock().unwrap(), vec![2]);
    }

    impl Actor for Probe {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Context<Self>) {
            ctx.set_mailbox_capacity(self.capacity);
        }
    }

    impl Handler<Push> for Probe {
        type Result = ();
        fn handle(&mut self, msg: Push, _: &mut Context<Self>) {
            self.seen.lock().unwrap().push(msg.event.seq.0);
        }
    }

    /// Blocks the probe's thread until the test lets go, like a peer that stopped reading.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Stall(Mutex<mpsc::Receiver<()>>);

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Ready;

    impl Handler<Ready> for Probe {
        type Result = ();
        fn handle(&mut self, _: Ready, _: &mut Context<Self>) {}
    }

    impl Handler<Stall> for Probe {
        type Result = ();
        fn handle(&mut self, msg: Stall, _: &mut Context<Self>) {
            let _ = msg.0.lock().unwrap().recv();
        }
    }

    fn record() -> SessionRecord {
        SessionRecord::open(
            "owner",
            SessionRequest {
                scopes: vec!["full_name".into()],
                ..SessionRequest::default()
            },
            Utc::now(),
            chrono::Duration::seconds(600),
        )
        .0
    }

    #[actix_rt::test]
    async fn a_subscriber_that_stops_reading_is_dropped_and_flagged_while_others_get_every_push() {
        let arbiter = actix::Arbiter::new();
        let slow_seen = Arc::new(Mutex::new(Vec::new()));
        let slow = {
            let seen = slow_seen.clone();
            Probe::start_in_arbiter(&arbiter.handle(), move |_| Probe { seen, capacity: 2 })
        };
        let fast_seen = Arc::new(Mutex::new(Vec::new()));
        let fast = Probe {
            seen: fast_seen.clone(),
            capacity: 64,
        }
        .start();

        // Started (so its small mailbox is in force), then stalled on its own thread.
        slow.send(Ready).await.unwrap();
        let (release, stalled) = mpsc::channel();
        slow.do_send(Stall(Mutex::new(stalled)));

        let mut session = record();
        let mut audience = Audience::default();
        let slow_flag = Arc::new(AtomicBool::new(false));
        let fast_flag = Arc::new(AtomicBool::new(false));
        audience
            .subscribe(
                &subscribe(&slow, &slow_flag),
                session.seq,
                MAX_SUBSCRIBERS_PER_SESSION,
            )
            .unwrap();
        audience
            .subscribe(
                &subscribe(&fast, &fast_flag),
                session.seq,
                MAX_SUBSCRIBERS_PER_SESSION,
            )
            .unwrap();

        for seq in 2..=10 {
            session.seq = Seq(seq);
            session.status = Status::Retrieved;
            audience.publish(&session, session.seq, Utc::now());
        }
        assert!(
            slow_flag.load(Ordering::Acquire),
            "the stalled subscriber was flagged"
        );
        assert!(!fast_flag.load(Ordering::Acquire));
        assert_eq!(
            audience.subscriber_count(),
            1,
            "the stalled subscriber was dropped"
        );
        release.send(()).unwrap();

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fast_seen.lock().unwrap().len() < 9 && std::time::Instant::now() < deadline {
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(*fast_seen.lock().unwrap(), (2..=10).collect::<Vec<_>>());
        arbiter.stop();
    }

    #[test]
    fn after_seq_above_the_current_seq_is_refused() {
        assert!(check_after(Some(Seq(3)), Seq(2)).is_err());
        assert_eq!(check_after(Some(Seq(2)), Seq(2)).unwrap(), Seq(2));
        assert_eq!(check_after(None, Seq(5)).unwrap(), Seq(5));
    }

    /// A watching node reads several transitions at once: a long-poll woken by the
    /// first is answered with the session as it was at that transition, never with the
    /// earlier status beside the later seq.
    #[test]
    fn a_waiter_woken_by_a_replayed_transition_gets_that_transition_s_seq_and_status() {
        let mut latest = record();
        latest.status = Status::Confirmed;
        latest.seq = Seq(3);
        let mut audience = Audience::new(latest.id);
        let mut rx = audience.wait().unwrap();
        let at = Utc::now();
        audience.republish(
            &latest,
            &SessionEvent {
                seq: Seq(2),
                status: Status::Retrieved,
                at,
                binding_code: None,
            },
        );
        let woken = rx.try_recv().unwrap();
        assert_eq!((woken.status, woken.seq), (Status::Retrieved, Seq(2)));
        assert_eq!(woken.updated_at, at);
    }
}

//! Long-lived work that cannot die quietly (STYLE: every long-lived task is supervised).
//!
//! A broker runs a few loops and actors for as long as it lives: the store's writer and
//! readers, the expiry sweep, the retention sweeper, the webhook dispatcher and, on
//! several nodes, the lease renewal and the adoption of orphans. Each of them ending
//! unnoticed leaves a half-alive broker: `/readyz` green while nothing expires, no
//! webhook leaves, or the node's lease lapses. So each runs under a supervisor here:
//! a panic is caught, logged with the task's name, counted in
//! `idv_task_restarts_total{task}`, and the task is started again after a backoff. A
//! task's own end (it returned, or the actor stopped) is its shutdown and is not restarted.
//!
//! Layout:
//! - [`Task`]: the supervised tasks, whose names are the metric's label.
//! - [`Tasks`]: a broker's handle on its tasks, given to everything that starts one
//!   (tests arm panics through it; release builds carry nothing in it).
//! - [`Lifeline`]: what a supervised loop or actor holds: its trip point in tests and,
//!   for an actor, how it tells a clean stop from a death.
//! - [`run_loop`]: a loop under supervision, as a future to spawn.
//! - [`start_actor`] and [`Supervised`]: an actor under supervision, and the handle
//!   that always reaches its current incarnation.
//! - [`Backoff`]: the delay before a restart, for threads too.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use futures_util::FutureExt;
use tokio::sync::oneshot;

/// The broker's supervised tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// The SQLite writer thread.
    StoreWriter,
    /// A SQLite reader thread.
    StoreReader,
    /// The net under the session actors' expiry timers ([`crate::registry`]).
    ExpirySweep,
    /// The retention sweeper ([`crate::retention`]).
    Retention,
    /// The webhook dispatcher ([`crate::webhooks`]).
    Webhooks,
    /// Several nodes: the renewal of this node's lease ([`crate::cluster`]).
    Lease,
    /// Several nodes: taking over the sessions of nodes that are gone.
    Adoption,
    /// Several nodes: the sweep of the seqs of the sessions this node watches.
    WatchSweep,
    /// PostgreSQL: the `VACUUM` after purges that keeps deleted data off the disk.
    Vacuum,
    /// An issuer's JWKS fetcher ([`crate::jwks`]).
    JwksFetcher,
}

impl Task {
    /// Every task, in the order of [`Task::index`].
    pub const ALL: [Task; 10] = [
        Task::StoreWriter,
        Task::StoreReader,
        Task::ExpirySweep,
        Task::Retention,
        Task::Webhooks,
        Task::Lease,
        Task::Adoption,
        Task::WatchSweep,
        Task::Vacuum,
        Task::JwksFetcher,
    ];

    /// The label of `idv_task_restarts_total` and of the log lines.
    pub fn name(self) -> &'static str {
        match self {
            Task::StoreWriter => "store_writer",
            Task::StoreReader => "store_reader",
            Task::ExpirySweep => "expiry_sweep",
            Task::Retention => "retention",
            Task::Webhooks => "webhooks",
            Task::Lease => "lease",
            Task::Adoption => "adoption",
            Task::WatchSweep => "watch_sweep",
            Task::Vacuum => "vacuum",
            Task::JwksFetcher => "jwks_fetcher",
        }
    }

    #[cfg(any(test, feature = "fault-injection"))]
    fn index(self) -> usize {
        Task::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// First wait before a restart; it doubles with each restart in a row.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A task that ran this long before it died starts again from [`FIRST_BACKOFF`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The wait before each restart: doubling from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`]
/// while the task keeps dying soon after it starts.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    /// The wait before the restart of a task that died after running `ran` this time.
    pub fn after(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.next = FIRST_BACKOFF;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }
}

/// Shows `idv_task_restarts_total` at zero for every task before the first restart (a
/// rate over a missing series is no rate). Called once the recorder is installed.
pub fn register_metrics() {
    for task in Task::ALL {
        metrics::counter!(crate::metrics::TASK_RESTARTS, "task" => task.name()).increment(0);
    }
}

/// Logs and counts the death of `task`, which restarts after `wait`.
pub fn restarting(task: Task, panic: &(dyn Any + Send), wait: Duration) {
    tracing::error!(
        task = task.name(),
        panic = panic_message(panic),
        restart_in = ?wait,
        "a long-lived task panicked (a bug); restarting it"
    );
    crate::metrics::task_restarted(task.name());
}

/// The text of a panic's payload, when it has one.
pub fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A broker's handle on its supervised tasks; cheap to clone. One per broker (tests
/// run many brokers in one process, so this is no global). Release builds carry
/// nothing in it: the fault table exists only with the `fault-injection` feature.
#[derive(Clone, Default)]
pub struct Tasks {
    #[cfg(any(test, feature = "fault-injection"))]
    faults: Arc<FaultTable>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tasks")
    }
}

impl Tasks {
    /// The lifeline of one incarnation of `task`.
    pub fn lifeline(&self, task: Task) -> Lifeline {
        Lifeline {
            task,
            tasks: self.clone(),
            ended: None,
        }
    }
}

/// Tests: a panic armed per task, and the rounds each task completed.
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Default)]
struct FaultTable {
    armed: [std::sync::atomic::AtomicBool; Task::ALL.len()],
    rounds: [std::sync::atomic::AtomicU64; Task::ALL.len()],
}

#[cfg(any(test, feature = "fault-injection"))]
impl Tasks {
    /// Makes `task` panic at its next round (once).
    pub fn arm(&self, task: Task) {
        self.faults.armed[task.index()].store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many rounds `task` began, over all its incarnations.
    pub fn rounds(&self, task: Task) -> u64 {
        self.faults.rounds[task.index()].load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What one incarnation of a supervised task holds.
pub struct Lifeline {
    task: Task,
    #[cfg_attr(not(any(test, feature = "fault-injection")), allow(dead_code))]
    tasks: Tasks,
    /// An actor's: sent on a clean stop; dropped unsent when the actor dies.
    ended: Option<oneshot::Sender<()>>,
}

impl Lifeline {
    /// Which task this is.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Marks the start of one round of the task's work (a sweep, a scan, a renewal, a
    /// batch). Does nothing in a release build; in tests it counts the round, and
    /// panics here if a fault was armed for this task.
    #[inline]
    pub fn round(&self) {
        #[cfg(any(test, feature = "fault-injection"))]
        {
            use std::sync::atomic::Ordering;
            let i = self.task.index();
            self.tasks.faults.rounds[i].fetch_add(1, Ordering::SeqCst);
            if self.tasks.faults.armed[i].swap(false, Ordering::SeqCst) {
                panic!("injected fault in the {} task", self.task.name());
            }
        }
    }

    /// An actor's clean end (its `stopped`): the supervisor does not restart it. Not
    /// while a panic unwinds: actix runs `stopped` when it drops a context that died
    /// in a panic, and that end is a death.
    pub fn stopped(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Some(ended) = self.ended.take() {
            let _ = ended.send(());
        }
    }
}

/// Runs the loop that `start` makes under supervision, until it returns: a panic is
/// logged and counted, and a new loop is started from `start` after a [`Backoff`].
/// Spawn the future on the runtime the loop belongs to.
pub async fn run_loop<F, Fut>(tasks: Tasks, task: Task, mut start: F)
where
    F: FnMut(Lifeline) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Backoff::default();
    loop {
        let began = Instant::now();
        match AssertUnwindSafe(start(tasks.lifeline(task)))
            .catch_unwind()
            .await
        {
            Ok(()) => return,
            Err(panic) => {
                let wait = backoff.after(began.elapsed());
                restarting(task, panic.as_ref(), wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Runs `body` on this thread under supervision until it returns: a panic is logged
/// and counted, and `body` runs again after a [`Backoff`] (the thread sleeps). For the
/// store's threads, whose state (a connection, a queue) outlives one run of `body`.
pub fn run_blocking(tasks: &Tasks, task: Task, mut body: impl FnMut(Lifeline)) {
    let mut backoff = Backoff::default();
    loop {
        let began = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(|| body(tasks.lifeline(task)))) {
            Ok(()) => return,
            Err(panic) => {
                let wait = backoff.after(began.elapsed());
                restarting(task, panic.as_ref(), wait);
                std::thread::sleep(wait);
            }
        }
    }
}

/// An actor under supervision: [`Supervised::addr`] is always its current incarnation.
pub struct Supervised<A: Actor> {
    current: Arc<Mutex<Addr<A>>>,
}

impl<A: Actor> Clone for Supervised<A> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

impl<A: Actor<Context = actix::Context<A>>> Supervised<A> {
    /// The actor's current address.
    pub fn addr(&self) -> Addr<A> {
        match self.current.lock() {
            Ok(addr) => addr.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sends `msg` to the current incarnation (see [`Addr::send`]).
    pub fn send<M>(&self, msg: M) -> actix::dev::Request<A, M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        self.addr().send(msg)
    }
}

/// Starts the actor `make` builds, under supervision: when it dies without a clean
/// stop (a panic in a handler drops it), it is logged and counted, and a new one is
/// built and started after a [`Backoff`]. The actor must call [`Lifeline::stopped`] in
/// its `stopped`. Call from within an actix system.
pub fn start_actor<A, F>(tasks: &Tasks, task: Task, mut make: F) -> Supervised<A>
where
    A: Actor<Context = actix::Context<A>>,
    F: FnMut(Lifeline) -> A + 'static,
{
    let incarnation = |make: &mut F| {
        let (tx, rx) = oneshot::channel();
        let mut life = tasks.lifeline(task);
        life.ended = Some(tx);
        (make(life).start(), rx)
    };
    let (addr, mut ended) = incarnation(&mut make);
    let current = Arc::new(Mutex::new(addr));
    let handle = Supervised {
        current: current.clone(),
    };
    let tasks = tasks.clone();
    actix::spawn(async move {
        let mut backoff = Backoff::default();
        let mut began = Instant::now();
        // A dropped sender without a send: the actor died.
        while ended.await.is_err() {
            let wait = backoff.after(began.elapsed());
            restarting(task, &"the actor died (a panic in a handler)", wait);
            actix::clock::sleep(wait).await;
            let (tx, rx) = oneshot::channel();
            let mut life = tasks.lifeline(task);
            life.ended = Some(tx);
            let addr = make(life).start();
            match current.lock() {
                Ok(mut c) => *c = addr,
                Err(poisoned) => *poisoned.into_inner() = addr,
            }
            ended = rx;
            began = Instant::now();
        }
    });
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_resets_after_a_healthy_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(5);
        let waits: Vec<_> = (0..12).map(|_| b.after(quick)).collect();
        assert_eq!(waits[0], Duration::from_millis(100));
        assert_eq!(waits[1], Duration::from_millis(200));
        assert_eq!(waits[2], Duration::from_millis(400));
        assert_eq!(waits[11], MAX_BACKOFF);
        assert_eq!(b.after(HEALTHY_RUN), FIRST_BACKOFF);
        assert_eq!(b.after(quick), Duration::from_millis(200));
    }

    #[test]
    fn every_task_has_its_own_name() {
        let names: std::collections::HashSet<_> = Task::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), Task::ALL.len());
        for (i, t) in Task::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
    }

    #[actix::test]
    async fn a_loop_that_panics_is_started_again_and_one_that_returns_is_not() {
        let tasks = Tasks::default();
        tasks.arm(Task::ExpirySweep);
        let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = starts.clone();
        run_loop(tasks.clone(), Task::ExpirySweep, move |life| {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                life.round();
                // The first incarnation panicked above; the second ends cleanly.
                assert_eq!(n, 1);
            }
        })
        .await;
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(tasks.rounds(Task::ExpirySweep), 2);
    }

    struct Echo {
        life: Lifeline,
    }

    impl Actor for Echo {
        type Context = actix::Context<Self>;
        fn stopped(&mut self, _: &mut Self::Context) {
            self.life.stopped();
        }
    }

    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Ping(u32);

    impl Handler<Ping> for Echo {
        type Result = u32;
        fn handle(&mut self, msg: Ping, _: &mut Self::Context) -> u32 {
            self.life.round();
            msg.0
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Stop;

    impl Handler<Stop> for Echo {
        type Result = ();
        fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
            actix::ActorContext::stop(ctx);
        }
    }

    #[actix::test]
    async fn an_actor_that_dies_is_replaced_and_one_that_stops_is_not() {
        let tasks = Tasks::default();
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = made.clone();
        let echo = start_actor(&tasks, Task::Retention, move |life| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Echo { life }
        });
        assert_eq!(echo.send(Ping(1)).await.unwrap(), 1);
        tasks.arm(Task::Retention);
        assert!(echo.send(Ping(2)).await.is_err(), "the armed round panics");
        let deadline = Instant::now() + Duration::from_secs(5);
        let answer = loop {
            if let Ok(n) = echo.send(Ping(3)).await {
                break n;
            }
            assert!(Instant::now() < deadline, "the actor was not replaced");
            actix::clock::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(answer, 3);
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 2);
        echo.send(Stop).await.unwrap();
        actix::clock::sleep(FIRST_BACKOFF * 3).await;
        assert!(echo.send(Ping(4)).await.is_err(), "a clean stop is final");
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}

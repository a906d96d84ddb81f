//! Start-up and the expiry sweep: the code that finds live sessions in the store
//! rather than being asked about one.
//!
//! - [`Registry::restore`], before the broker listens: expire what became overdue
//!   while it was down (planned by [`plan_expiry`], as the actors' own timers do, and
//!   committed together), then start an actor for every live session.
//! - [`Registry::start_expiry_sweep`]: the supervised net under the actors' timers, so
//!   a session expires with or without traffic, even when its actor died.

use super::Registry;
use crate::commands::plan_expiry;
use crate::registry::Lookup;
use crate::session::messages::Tick;
use crate::store::StoreError;
use crate::supervise::{self, Task};

impl Registry {
    /// On start, before listening: expires what became overdue while the broker was
    /// down, then starts an actor (and its expiry timer) for every live session.
    /// Returns (expired, restored).
    pub async fn restore(&self) -> Result<(usize, usize), StoreError> {
        let now = self.inner.clock.now();
        let live = self.inner.store.load_live_sessions().await?;
        // The same planning as the actors' own timers, committed in one transaction.
        let (overdue, live): (Vec<_>, Vec<_>) = live
            .into_iter()
            .map(|record| (plan_expiry(&record, now), record))
            .partition(|(expiry, _)| expiry.is_some());
        let writes: Vec<_> = overdue.into_iter().filter_map(|(w, _)| w).collect();
        let expired = match self.inner.store.commit_transitions(writes.clone()).await {
            Ok(committed) => committed.len(),
            // Several nodes: another node moved one of them meanwhile (it took the
            // session over, or expired it). Each on its own then, skipping those.
            Err(StoreError::Stale) | Err(StoreError::NotOwner) => {
                let mut expired = 0;
                for write in writes {
                    match self.inner.store.commit_transition(write).await {
                        Ok(_) => expired += 1,
                        Err(StoreError::Stale) | Err(StoreError::NotOwner) => {}
                        Err(e) => return Err(e),
                    }
                }
                expired
            }
            Err(e) => return Err(e),
        };
        let restored = live.len();
        for (_, record) in live {
            self.inner.directory.hold(record.id, &record.owner, None);
            self.spawn(record.id, Some(record));
        }
        Ok((expired, restored))
    }

    /// Every `every`, makes sure each overdue live session is expired: its actor (started
    /// again if it is gone, e.g. killed by a panic) re-checks its expiry. The actors'
    /// own timers do this within a second; this is the net under them, so a session
    /// expires "with or without traffic" even when its actor died. Stops once the store
    /// is closed.
    pub fn start_expiry_sweep(&self, every: std::time::Duration) {
        let registry = self.clone();
        actix::spawn(supervise::run_loop(
            self.tasks().clone(),
            Task::ExpirySweep,
            move |life| {
                let registry = registry.clone();
                async move {
                    let mut ticks = actix::clock::interval(every);
                    loop {
                        ticks.tick().await;
                        life.round();
                        match registry.sweep_overdue().await {
                            Ok(_) => {}
                            Err(StoreError::Closed) => break,
                            Err(e) => tracing::error!(error = %e, "expiry sweep failed"),
                        }
                    }
                }
            },
        ));
    }

    /// One pass of the expiry sweep; returns how many overdue sessions it nudged.
    pub async fn sweep_overdue(&self) -> Result<usize, StoreError> {
        let overdue = self
            .inner
            .store
            .overdue_live(self.inner.clock.now(), 1024)
            .await?;
        for id in &overdue {
            if let Some(Lookup::Live(addr)) = self.lookup(*id).await? {
                addr.do_send(Tick);
            }
        }
        Ok(overdue.len())
    }

    /// Asks every live session to re-check its expiry now (after the clock moved).
    pub fn tick_all(&self) {
        for addr in self.inner.directory.addresses() {
            addr.do_send(Tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Duration;

    use super::*;
    use crate::clock::{Clock, SharedClock};
    use crate::model::SessionRecord;
    use crate::registry::RegistryConfig;
    use crate::session_store::SessionStore;
    use crate::status::Status;
    use crate::store::{NewSession, Store, StoreConfig};

    /// A clock a test moves.
    struct Fixed(std::sync::Mutex<chrono::DateTime<chrono::Utc>>);

    impl Clock for Fixed {
        fn now(&self) -> chrono::DateTime<chrono::Utc> {
            *self.0.lock().unwrap()
        }
    }

    async fn session(store: &Store, now: chrono::DateTime<chrono::Utc>, ttl: i64) -> SessionRecord {
        let record = SessionRecord::open(
            "acme",
            crate::model::SessionRequest {
                scopes: vec!["full_name".into()],
                ..Default::default()
            },
            now,
            Duration::seconds(ttl),
        )
        .0;
        store
            .create_session(
                NewSession {
                    record: record.clone(),
                },
                None,
            )
            .await
            .unwrap();
        record
    }

    #[actix::test]
    async fn restore_expires_the_overdue_and_starts_the_live_and_the_sweep_finds_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(dir.path().join("r.db"))).unwrap();
        let start = chrono::Utc::now();
        let overdue = session(&store, start - Duration::seconds(700), 600).await;
        let live = session(&store, start, 600).await;
        let later = session(&store, start, 60).await;
        let clock = Arc::new(Fixed(std::sync::Mutex::new(start)));
        let shared: SharedClock = clock.clone();
        let store: Arc<dyn SessionStore> = Arc::new(store);
        let registry = Registry::new(store.clone(), shared, RegistryConfig::default());

        assert_eq!(registry.restore().await.unwrap(), (1, 2));
        let status = |r: Option<SessionRecord>| r.map(|r| r.status);
        assert_eq!(
            status(store.load_session(overdue.id).await.unwrap()),
            Some(Status::Expired)
        );
        assert_eq!(registry.live_count(), 2);
        assert_eq!(registry.live_count_of("acme"), 2);
        assert!(matches!(
            registry.lookup(live.id).await.unwrap(),
            Some(Lookup::Live(_))
        ));

        // Nothing is overdue yet; past the short session's expiry the sweep nudges it
        // (its actor expires it), and only it.
        assert_eq!(registry.sweep_overdue().await.unwrap(), 0);
        *clock.0.lock().unwrap() = start + Duration::seconds(61);
        assert_eq!(registry.sweep_overdue().await.unwrap(), 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while status(store.load_session(later.id).await.unwrap()) != Some(Status::Expired) {
            assert!(
                std::time::Instant::now() < deadline,
                "the nudged session did not expire"
            );
            actix::clock::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            status(store.load_session(live.id).await.unwrap()),
            Some(Status::Initialized)
        );
    }
}

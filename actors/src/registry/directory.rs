//! The local actor directory: which session actors run in this process, which start
//! of each, whether it owns or watches its session, the per-key quota of live
//! sessions and the live sessions' tokens. Bookkeeping only: it starts actors through
//! a closure it is given and never reads the store, so it is tested without either.
//!
//! Generic over the actor's handle ([`Handle`]) for those tests; the registry uses
//! `Addr<SessionActor>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;

use crate::ids::{SessionId, TokenHash};
use crate::live::Generation;

/// What the directory needs of an actor's address.
pub(crate) trait Handle: Clone + PartialEq {
    /// Whether the actor still runs (its mailbox is open).
    fn connected(&self) -> bool;
}

impl<A: actix::Actor> Handle for actix::Addr<A> {
    fn connected(&self) -> bool {
        actix::Addr::connected(self)
    }
}

/// A session's actor in this process, and which start of it this is.
#[derive(Clone)]
pub(crate) struct Live<H> {
    pub addr: H,
    pub generation: Generation,
    /// Whether the actor only watches a session owned by another node.
    pub watching: bool,
    /// With several nodes, the ownership epoch this owner actor runs under: when it
    /// stops, that epoch (and no newer one, taken for a new actor) is let go.
    pub epoch: Option<i64>,
}

/// What a lookup finds in the directory.
pub(crate) struct Found<H> {
    pub addr: H,
    pub watching: bool,
    /// An owner started before the last [`Directory::fence`]: it is letting its session
    /// go, and nothing may be answered from what it remembers.
    pub fenced: bool,
}

/// The directory. Every map is a `DashMap`: lookups from every worker thread proceed in
/// parallel, and no lock is held across an `.await` (none is taken in one).
pub(crate) struct Directory<H> {
    live: DashMap<SessionId, Live<H>>,
    /// Numbers the actors started (see [`Generation`]).
    generations: AtomicU64,
    /// Owner actors started before this generation were told to let their sessions go.
    fence: AtomicU64,
    /// The token hash of every live session whose record an actor holds, kept by the
    /// actors themselves: a token that is not the session's own is told apart here,
    /// without the store (another live session's: `403`; nobody's live one: `401`).
    /// Keyed by the SHA-256, so the lookup's timing says nothing about any token.
    tokens: DashMap<[u8; 32], SessionId>,
    /// The owner (API key name) of every live session counted against its key.
    owners: DashMap<SessionId, Arc<str>>,
    /// Live sessions per owner (entries at zero are removed); keyed by the same `Arc`
    /// every session of the owner holds in `owners`.
    per_owner: DashMap<Arc<str>, usize>,
    /// Set when this node hands its sessions over (SIGTERM): it takes none any more.
    handing_over: AtomicBool,
}

impl<H> Default for Directory<H> {
    fn default() -> Self {
        Self {
            live: DashMap::new(),
            generations: AtomicU64::new(0),
            fence: AtomicU64::new(0),
            tokens: DashMap::new(),
            owners: DashMap::new(),
            per_owner: DashMap::new(),
            handing_over: AtomicBool::new(false),
        }
    }
}

impl<H: Handle> Directory<H> {
    /// The actor registered for `id`, if any (it may have stopped: see `connected`).
    pub fn find(&self, id: SessionId) -> Option<Found<H>> {
        let fence = self.fence.load(Ordering::Acquire);
        self.live.get(&id).map(|l| Found {
            addr: l.addr.clone(),
            watching: l.watching,
            fenced: !l.watching && l.generation.0 < fence,
        })
    }

    /// The running actor for `id`, or a new one that `start` makes for the next
    /// generation (replacing a stopped one). A watching actor found running is handed
    /// out as it is: [`Directory::promote`] turns it into the owner.
    pub fn start(
        &self,
        id: SessionId,
        watching: bool,
        epoch: Option<i64>,
        start: impl FnOnce(Generation) -> H,
    ) -> H {
        match self.live.entry(id) {
            MapEntry::Occupied(e) if e.get().addr.connected() => e.get().addr.clone(),
            entry => {
                let generation = Generation(self.generations.fetch_add(1, Ordering::Relaxed));
                let addr = start(generation);
                entry.insert(Live {
                    addr: addr.clone(),
                    generation,
                    watching,
                    epoch,
                });
                addr
            }
        }
    }

    /// Makes the running watching actor of `id` its owner, under `epoch`; answers its
    /// address if one runs (a watcher that was promoted, or already an owner), `None`
    /// if none runs.
    pub fn promote(&self, id: SessionId, epoch: Option<i64>) -> Option<(H, bool)> {
        let mut live = self.live.get_mut(&id)?;
        if !live.addr.connected() {
            return None;
        }
        let promoted = live.watching;
        if promoted {
            live.watching = false;
            live.epoch = epoch;
        }
        Some((live.addr.clone(), promoted))
    }

    /// Removes `addr` for `id` if it is still the one registered (idempotent); answers
    /// the entry removed.
    pub fn remove_addr(&self, id: SessionId, addr: &H) -> Option<Live<H>> {
        self.live
            .remove_if(&id, |_, live| live.addr == *addr)
            .map(|(_, l)| l)
    }

    /// Removes the actor of start `generation` for `id`, if it is still the one
    /// registered (idempotent); answers the entry removed.
    pub fn remove_generation(&self, id: SessionId, generation: Generation) -> Option<Live<H>> {
        self.live
            .remove_if(&id, |_, live| live.generation == generation)
            .map(|(_, l)| l)
    }

    /// From now on, lookups pass by every owner actor started so far (this node's lease
    /// lapsed, or it hands its sessions over); answers their addresses, to be told.
    pub fn fence_owners(&self) -> Vec<H> {
        self.fence
            .store(self.generations.load(Ordering::Acquire), Ordering::Release);
        self.live
            .iter()
            .filter(|l| !l.watching)
            .map(|l| l.addr.clone())
            .collect()
    }

    /// This node takes no session any more (it hands them over).
    pub fn stop_taking(&self) {
        self.handing_over.store(true, Ordering::Release);
    }

    /// Whether this node hands its sessions over.
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    /// Every registered actor's address.
    pub fn addresses(&self) -> Vec<H> {
        self.live.iter().map(|l| l.addr.clone()).collect()
    }

    /// How many sessions have an actor here.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// How many sessions this node runs as their owner.
    pub fn owned(&self) -> usize {
        self.live.iter().filter(|l| !l.watching).count()
    }

    /// Counts session `id` against `owner`, unless that would take the owner past
    /// `quota`; answers whether it is counted. Idempotent.
    pub fn hold(&self, id: SessionId, owner: &str, quota: Option<usize>) -> bool {
        if self.owners.contains_key(&id) {
            // Already counted (a session taken over again, or an actor started again).
            return true;
        }
        let name = {
            // One copy of the owner's name, shared by all its sessions.
            let mut n = match self.per_owner.get_mut(owner) {
                Some(n) => n,
                None => self.per_owner.entry(Arc::from(owner)).or_insert(0),
            };
            if quota.is_some_and(|q| *n >= q) {
                return false;
            }
            *n += 1;
            n.key().clone()
        };
        self.owners.insert(id, name);
        true
    }

    /// Stops counting session `id` against its owner (idempotent).
    pub fn release(&self, id: SessionId) {
        if let Some((_, owner)) = self.owners.remove(&id) {
            if let MapEntry::Occupied(mut n) = self.per_owner.entry(owner) {
                *n.get_mut() = n.get().saturating_sub(1);
                if *n.get() == 0 {
                    n.remove();
                }
            }
        }
    }

    /// How many live sessions `owner` holds.
    pub fn held_by(&self, owner: &str) -> usize {
        self.per_owner.get(owner).map_or(0, |n| *n)
    }

    /// Live session `id` has the token `hash`.
    pub fn track_token(&self, id: SessionId, hash: TokenHash) {
        self.tokens.insert(hash.0, id);
    }

    /// `hash` is no longer `id`'s token (idempotent; another session's stays).
    pub fn untrack_token(&self, id: SessionId, hash: TokenHash) {
        self.tokens.remove_if(&hash.0, |_, owner| *owner == id);
    }

    /// Whether `hash` is the token of a session that has an actor here.
    pub fn is_live_token(&self, hash: TokenHash) -> bool {
        // The id is copied out first: no lock of one map is held while taking the other's.
        let owner = self.tokens.get(&hash.0).map(|id| *id);
        owner.is_some_and(|id| self.live.contains_key(&id))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// An actor's handle: a name, and whether it runs.
    #[derive(Clone)]
    struct Fake(&'static str, Arc<AtomicBool>);

    impl PartialEq for Fake {
        fn eq(&self, other: &Self) -> bool {
            Arc::ptr_eq(&self.1, &other.1)
        }
    }

    impl Handle for Fake {
        fn connected(&self) -> bool {
            self.1.load(Ordering::SeqCst)
        }
    }

    fn fake(name: &'static str) -> Fake {
        Fake(name, Arc::new(AtomicBool::new(true)))
    }

    fn id() -> SessionId {
        SessionId::new()
    }

    #[test]
    fn a_running_actor_is_handed_out_and_a_stopped_one_replaced_by_a_new_generation() {
        let d = Directory::default();
        let s = id();
        let first = d.start(s, false, None, |_| fake("first"));
        assert_eq!(d.start(s, false, None, |_| fake("second")).0, "first");
        first.1.store(false, Ordering::SeqCst);
        let second = d.start(s, false, None, |_| fake("second"));
        assert_eq!(second.0, "second");
        assert_eq!(d.len(), 1);
        // A late removal by the first actor's generation leaves its replacement.
        assert!(d.remove_generation(s, Generation(0)).is_none());
        assert!(d.remove_addr(s, &first).is_none());
        assert_eq!(d.find(s).map(|f| f.addr.0), Some("second"));
        assert!(d.remove_generation(s, Generation(1)).is_some());
        assert!(d.find(s).is_none());
    }

    #[test]
    fn a_watcher_is_promoted_in_place_and_counted_as_owned() {
        let d = Directory::default();
        let s = id();
        d.start(s, true, None, |_| fake("watcher"));
        assert_eq!(d.owned(), 0);
        let (addr, promoted) = d.promote(s, Some(7)).unwrap();
        assert_eq!((addr.0, promoted), ("watcher", true));
        assert_eq!(d.owned(), 1);
        assert!(!d.promote(s, Some(8)).unwrap().1, "already the owner");
        assert!(d.promote(id(), None).is_none(), "nothing runs");
    }

    #[test]
    fn fenced_owners_are_passed_by_and_later_ones_are_not() {
        let d = Directory::default();
        let (a, w, b) = (id(), id(), id());
        d.start(a, false, None, |_| fake("a"));
        d.start(w, true, None, |_| fake("w"));
        let told = d.fence_owners();
        assert_eq!(told.iter().map(|f| f.0).collect::<Vec<_>>(), ["a"]);
        assert!(d.find(a).unwrap().fenced);
        assert!(
            !d.find(w).unwrap().fenced,
            "a watcher remembers nothing to fence"
        );
        d.start(b, false, None, |_| fake("b"));
        assert!(!d.find(b).unwrap().fenced);
    }

    #[test]
    fn the_quota_counts_each_session_once_and_frees_on_release() {
        let d: Directory<Fake> = Directory::default();
        let (a, b, c) = (id(), id(), id());
        assert!(d.hold(a, "acme", Some(2)));
        assert!(d.hold(a, "acme", Some(2)), "idempotent");
        assert!(d.hold(b, "acme", Some(2)));
        assert!(!d.hold(c, "acme", Some(2)), "past the quota");
        assert!(d.hold(c, "other", Some(2)), "another key's own count");
        assert_eq!(d.held_by("acme"), 2);
        d.release(a);
        d.release(a);
        assert_eq!(d.held_by("acme"), 1);
        assert!(d.hold(c, "acme", Some(2)) || d.held_by("other") == 1);
        d.release(b);
        d.release(c);
        assert_eq!(d.held_by("acme"), 0);
        assert_eq!(d.held_by("other"), 0);
    }

    #[test]
    fn a_token_is_live_only_while_its_session_has_an_actor() {
        let d = Directory::default();
        let s = id();
        let token = crate::ids::SessionToken::generate(s);
        let hash = token.hash();
        d.track_token(s, hash);
        assert!(!d.is_live_token(hash), "no actor yet");
        d.start(s, false, None, |_| fake("a"));
        assert!(d.is_live_token(hash));
        d.untrack_token(id(), hash);
        assert!(d.is_live_token(hash), "another session cannot untrack it");
        d.untrack_token(s, hash);
        assert!(!d.is_live_token(hash));
    }
}

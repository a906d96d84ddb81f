//! The narrow handle a session actor has on the registry that started it: the only
//! registry calls it makes, behind a trait that depends on neither, so `session/mod.rs`
//! and `registry/` do not import each other in a cycle.

use actix::Recipient;

use crate::ids::{Seq, SessionId, TokenHash};
use crate::route::RouteFuture;
use crate::session::messages::Refresh;

/// Which start of a session's actor this is: the registry numbers every actor it
/// starts, so a late `forget` from an old actor never removes its replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation(pub(crate) u64);

/// What a session actor tells the registry of live sessions.
pub(crate) trait LiveSessions: Send + Sync + 'static {
    /// The actor of start `generation` for session `id` ended: remove it, if it is
    /// still the one registered (idempotent).
    fn forget(&self, id: SessionId, generation: Generation);

    /// Most subscribers a session of the API key `owner` holds at once.
    fn max_subscribers(&self, owner: &str) -> usize;

    /// Live session `id` has the token `hash` (its actor holds the record).
    fn track_token(&self, id: SessionId, hash: TokenHash);

    /// `hash` is no longer session `id`'s token (it ended, or its token was
    /// replaced); idempotent.
    fn untrack_token(&self, id: SessionId, hash: TokenHash);

    /// The owner committed transition `seq` of `id` (and pushed it here): the other
    /// nodes that watch the session are told. Nothing with one node.
    fn announce(&self, id: SessionId, seq: Seq);

    /// A watching actor (the session's owner is another node) wants [`Refresh`] at
    /// each of the owner's announcements; resolves once that is in place, so that what
    /// the actor reads from the store after it cannot miss a transition.
    fn watch(&self, id: SessionId, to: Recipient<Refresh>) -> RouteFuture<()>;

    /// The watching actor `to` of `id` stopped (idempotent; a newer watcher of `id`,
    /// started meanwhile, stays).
    fn unwatch(&self, id: SessionId, to: &Recipient<Refresh>);
}

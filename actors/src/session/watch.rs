//! The watching side of a session actor (SPEC §7): on a node that does not own the
//! session, an actor that holds this node's subscribers and long-polls for it. It
//! commits nothing and arms no timer: it hears of the owner's commits (announcements
//! over NATS, [`Refresh`](super::messages::Refresh)), reads the session from the store,
//! and pushes to its audience what it has not had, in order. Its own state is
//! [`Watch`]; the actor's [`Role`](super::Role) says it watches.

use std::time::Duration;

use actix::prelude::*;

use super::messages::Caller;
use super::{Role, SessionActor};
use crate::store::StoreError;

/// How often a watching actor counts its audience. (Reading the store unasked, the
/// safety net against a lost announcement, is the node's: one statement for every
/// session it watches, see `cluster::WATCH_SWEEP`.)
pub(super) const WATCH_POLL: Duration = Duration::from_secs(2);

/// A watching actor with nobody to tell for this many counts in a row stops (its NATS
/// subscription with it); the next subscriber starts another.
pub(super) const WATCH_IDLE_POLLS: u32 = 15;

/// What a watching actor keeps besides the session.
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// It re-read the store for a caller ahead of it (see [`SessionActor::lagging`]).
    caught_up: bool,
    /// Polls in a row it had nobody to tell.
    idle_polls: u32,
}

impl SessionActor {
    /// Starts watching: the owner's announcements (and the node's sweep) first, then
    /// the store (a transition committed in between is in what is read, or announced
    /// after); and every [`WATCH_POLL`], a count of the audience, stopping once nobody
    /// here listens.
    pub(super) fn start_watching(&mut self, ctx: &mut Context<Self>) {
        let watch = self.live.watch(self.id, ctx.address().recipient());
        ctx.wait(watch.into_actor(self).map(|(), act, ctx| act.load(ctx)));
        ctx.run_interval(WATCH_POLL, |act, ctx| {
            let audience = act.audience.count();
            let Role::Watcher(watch) = &mut act.role else {
                return;
            };
            if audience.subscribers + audience.waiters > 0 {
                watch.idle_polls = 0;
            } else {
                watch.idle_polls += 1;
                if watch.idle_polls >= WATCH_IDLE_POLLS {
                    // Nobody here listens any more: stop following the session.
                    act.relinquish(ctx);
                }
            }
        });
    }

    /// Whether a watching actor must read the store before it answers a caller that
    /// has a later seq than its copy, or a token it does not know (the caller saw the
    /// seq, or got the token, through another node: the owner's announcement is still
    /// on its way). It then reads the store, and the registry sends the request again,
    /// answered after the read; a caller still ahead of the store, or with a token
    /// that is not the session's, is refused as with one node.
    pub(super) fn lagging(
        &mut self,
        after: Option<crate::ids::Seq>,
        caller: &Caller,
        ctx: &mut Context<Self>,
    ) -> bool {
        if self.ended {
            return false;
        }
        let Role::Watcher(watch) = &mut self.role else {
            return false;
        };
        let Some(s) = &self.state else {
            return false;
        };
        let ahead = after.is_some_and(|after| after > s.seq);
        // A token this copy does not know may be one a replayed create just rotated in.
        let unknown_token =
            matches!(caller, Caller::Client { token, .. } if !token.matches(&s.token_hash));
        if !(ahead || unknown_token) || watch.caught_up {
            watch.caught_up = false;
            return false;
        }
        watch.caught_up = true;
        self.refresh(ctx);
        true
    }

    /// A watching actor reads its session from the store and pushes to its audience
    /// every transition it has not had, in order; then ends with the session.
    pub(super) fn refresh(&mut self, ctx: &mut Context<Self>) {
        if !self.role.is_watcher() || self.ended {
            return;
        }
        let Some(from) = self.state.as_ref().map(|s| s.seq) else {
            return;
        };
        let store = self.store.clone();
        let id = self.id;
        ctx.wait(
            async move {
                let record = store.load_session(id).await?;
                let events = match &record {
                    Some(r) if r.seq > from => store.events_after(id, from).await?,
                    _ => Vec::new(),
                };
                Ok::<_, StoreError>((record, events))
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                if !act.role.is_watcher() || act.ended {
                    return;
                }
                let record = match res {
                    Ok((Some(record), events)) => {
                        for e in events.iter().filter(|e| e.seq <= record.seq) {
                            act.audience.republish(&record, e);
                        }
                        record
                    }
                    Ok((None, _)) => return,
                    Err(e) => {
                        tracing::warn!(session = %act.id, error = %e, "cannot refresh a watched session");
                        return;
                    }
                };
                let Some(current) = act.state.as_ref() else {
                    return;
                };
                if current.seq > record.seq {
                    return;
                }
                // A replayed create may have rotated the token without a transition.
                if !current.token_hash.matches(&record.token_hash) {
                    act.live.untrack_token(act.id, current.token_hash);
                    act.live.track_token(act.id, record.token_hash);
                }
                let terminal = record.status.is_terminal();
                act.state = Some(record);
                if terminal {
                    act.finish(ctx);
                }
            }),
        );
    }
}

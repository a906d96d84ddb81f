//! The dispatcher: finds where a session runs and gets a command carried out there.
//!
//! A session live here is sent the command; an ended one answers from its record
//! ([`SessionCommand::on_ended`]); one owned by another node (SPEC §7) is forwarded
//! through the [`Router`], or served by a watching actor when the command only reads.
//! A dead actor, a restarted one, an owner node that is gone or moving: each is retried
//! within bounds ([`MAX_ATTEMPTS`], [`TAKEOVER_PATIENCE`]) or answered `503`, decided by
//! [`after_forward`] for forwarding (a pure function, tested against a table).

use std::time::Duration;

use actix::MailboxError;

use super::{Lookup, Registry, ServeError};
use crate::commands::SessionCommand;
use crate::error::SessionError;
use crate::ids::SessionId;
use crate::route::ForwardError;
use crate::session::SessionActor;
use crate::session_store::Claim;
use crate::store::StoreError;

/// How often a command is re-sent after the actor it went to died or restarted.
const MAX_ATTEMPTS: usize = 3;

/// How long a command for a session whose owner node is gone waits for another node to
/// take the session over (a dead node's lease lapses within seconds, SPEC §7: 10 s)
/// before it is answered `503` with `Retry-After`.
const TAKEOVER_PATIENCE: Duration = Duration::from_secs(12);

/// Pause between two tries to reach a session whose owner is gone or moving.
const TAKEOVER_BACKOFF: Duration = Duration::from_millis(200);

/// Most remembered owners of sessions run by other nodes; past it the memory is
/// cleared (it is only a shortcut: a wrong or missing entry costs one store read).
pub(super) const MAX_REMOTE_ROUTES: usize = 65_536;

/// Why the registry could not carry out a command here.
pub(super) enum RouteError {
    /// The session is owned by another node (only when forwarding is not allowed).
    NotOwner,
    /// The command failed.
    Session(SessionError),
}

impl From<SessionError> for RouteError {
    fn from(e: SessionError) -> Self {
        RouteError::Session(e)
    }
}

impl From<StoreError> for RouteError {
    fn from(e: StoreError) -> Self {
        RouteError::Session(e.into())
    }
}

/// What the dispatcher does after a command forwarded to the owner node failed.
#[derive(Debug)]
pub(super) enum Next {
    /// Answer the caller with this.
    Fail(SessionError),
    /// Look the session up again at once (the owner restarted its actor; that counts
    /// as an attempt).
    AskAgain,
    /// The owner is gone or no longer owns it: look up again after a pause, until
    /// another node took the session over or the patience ran out.
    OwnerGone,
}

/// The rule after a failed forward of a command (`retry_safe`: it commits nothing, so
/// sending it twice is harmless; `carries_upload`: its bytes went to that node).
pub(super) fn after_forward(e: ForwardError, retry_safe: bool, carries_upload: bool) -> Next {
    let gone = match e {
        ForwardError::Session(SessionError::Restarted) => return Next::AskAgain,
        ForwardError::Session(e) => return Next::Fail(e),
        ForwardError::NotOwner | ForwardError::Unreachable => true,
        ForwardError::NoAnswer if retry_safe => true,
        // The owner may be stalled after committing: a retry could commit twice, and
        // the client's own retry must not wait on it again (SPEC §7).
        ForwardError::NoAnswer => {
            return Next::Fail(SessionError::Unavailable(
                "the node that runs this session did not answer; \
                 read the session before trying again",
            ))
        }
    };
    if gone && carries_upload {
        return Next::Fail(SessionError::Unavailable(
            "the session moved to another node while the upload was sent; upload it again",
        ));
    }
    Next::OwnerGone
}

impl Registry {
    /// Finds a session: its live actor (rehydrated if needed), its owner node if another
    /// node runs it, or its terminal record. On a miss, one store read
    /// ([`SessionStore::claim`]): the actor started for it adopts what was read.
    pub async fn lookup(&self, id: SessionId) -> Result<Option<Lookup>, StoreError> {
        if let Some(found) = self.inner.directory.find(id) {
            // An owner actor answers from memory only while this node's lease is
            // surely valid (SPEC §7); else the lease is renewed first, and if it had
            // lapsed, every owner actor here is let go (fenced) and the session is
            // looked up afresh: it may be another node's now.
            let trusted = found.watching
                || match self.inner.router.get() {
                    Some(router) => router.lease_fresh() || router.confirm_lease().await,
                    None => true,
                };
            if !found.addr.connected() || found.fenced {
                // Stopped, or letting its session go.
                self.forget(id, &found.addr);
            } else if !trusted {
                // The lease could not be renewed (the store is unreachable): whether
                // another node took the session cannot be known. The actor stays; the
                // request is answered `503`.
                return Err(StoreError::NoLease);
            } else if !found.watching {
                return Ok(Some(Lookup::Live(found.addr)));
            }
        }
        if self.inner.router.get().is_some() {
            if let Some(node) = self.inner.remote.get(&id).map(|n| n.clone()) {
                return Ok(Some(Lookup::Remote(node)));
            }
            if self.inner.directory.handing_over() {
                // Handing over: the session stays with whoever takes it; ask again later.
                return Ok(Some(Lookup::Remote(String::new())));
            }
        }
        // Read when no actor of this node runs the session, so nothing here commits to
        // it meanwhile; should a dead actor's last write land after this read, the new
        // actor's first commit is refused as stale and it reloads.
        Ok(match self.inner.store.claim(id).await? {
            Claim::Missing => None,
            Claim::Ended(record) => Some(Lookup::Ended(*record)),
            Claim::Mine(record) => {
                let owner = record.owner.clone();
                Some(Lookup::Live(self.own(id, &owner, Some(*record))))
            }
            Claim::Other(node) => {
                if self.inner.remote.len() >= MAX_REMOTE_ROUTES {
                    self.inner.remote.clear();
                }
                self.inner.remote.insert(id, node.clone());
                Some(Lookup::Remote(node))
            }
        })
    }

    /// Sends `cmd` to the session's actor, or answers it from the store if the session
    /// ended. A command the actor refused with [`SessionError::Restarted`] (a contained
    /// panic: nothing was committed) is re-sent to the restarted actor. A command whose
    /// actor died while holding it (`MailboxError::Closed`) may have committed: it is
    /// re-sent only if it commits nothing ([`SessionCommand::retry_safe`]), else
    /// answered `503`, so a committed approve is never re-run into a false `409`.
    ///
    /// A session owned by another node gets the command there (SPEC §7). If that node
    /// is gone, the command waits (bounded) for another node to take the session over.
    pub async fn call<C: SessionCommand>(
        &self,
        id: SessionId,
        cmd: C,
    ) -> Result<C::Output, SessionError>
    where
        SessionActor: actix::Handler<C>,
        C::Result: Send,
    {
        match self.dispatch(id, cmd, true).await {
            Ok(out) => Ok(out),
            Err(RouteError::Session(e)) => Err(e),
            Err(RouteError::NotOwner) => Err(SessionError::Unavailable(
                "the session is moving between nodes; try again",
            )),
        }
    }

    /// Carries out a command another node forwarded: here, or not at all (a node that
    /// does not own the session answers [`ServeError::NotOwner`], never forwards).
    pub async fn serve<C: SessionCommand>(
        &self,
        id: SessionId,
        cmd: C,
    ) -> Result<C::Output, ServeError>
    where
        SessionActor: actix::Handler<C>,
        C::Result: Send,
    {
        match self.dispatch(id, cmd, false).await {
            Ok(out) => Ok(out),
            Err(RouteError::Session(e)) => Err(ServeError::Session(e)),
            Err(RouteError::NotOwner) => Err(ServeError::NotOwner),
        }
    }

    async fn dispatch<C: SessionCommand>(
        &self,
        id: SessionId,
        cmd: C,
        forward: bool,
    ) -> Result<C::Output, RouteError>
    where
        SessionActor: actix::Handler<C>,
        C::Result: Send,
    {
        let patience = std::time::Instant::now() + TAKEOVER_PATIENCE;
        let mut last = SessionError::Unavailable("the session is restarting; try again");
        let mut attempts = 0;
        while attempts < MAX_ATTEMPTS {
            let addr = match self.lookup(id).await? {
                None => return Err(SessionError::NotFound.into()),
                Some(Lookup::Ended(record)) => {
                    return Ok(cmd.on_ended(&record, self.inner.clock.now())?)
                }
                Some(Lookup::Live(addr)) => addr,
                Some(Lookup::Remote(node)) => {
                    let Some(out) = cmd.to_wire() else {
                        // Served here, by an actor that watches the owner's commits.
                        if !forward {
                            return Err(RouteError::NotOwner);
                        }
                        let addr = self.watcher(id);
                        attempts += 1;
                        match addr.send(cmd.clone()).await {
                            Ok(Err(SessionError::Restarted)) | Err(_) => continue,
                            Ok(res) => return Ok(res?),
                        }
                    };
                    let (Some(router), true, false) =
                        (self.inner.router.get(), forward, node.is_empty())
                    else {
                        if !forward {
                            return Err(RouteError::NotOwner);
                        }
                        return Err(SessionError::Unavailable(
                            "this node is shutting down; try again",
                        )
                        .into());
                    };
                    // An upload's bytes went to that node: they are not sent again
                    // to another (its ticket is that node's), the device sends again.
                    let carries_upload = out.upload.is_some();
                    let failed = match router.forward(node.clone(), id, out).await {
                        Ok(ok) => return Ok(C::from_wire(ok)?),
                        Err(e) => e,
                    };
                    // Whatever happened, the route goes: the store is asked again who
                    // owns the session (the owner may have died; the session is ours to
                    // claim once its lease lapses).
                    self.inner.remote.remove(&id);
                    match after_forward(failed, cmd.retry_safe(), carries_upload) {
                        Next::Fail(e) => return Err(e.into()),
                        Next::AskAgain => attempts += 1,
                        Next::OwnerGone => {
                            if std::time::Instant::now() >= patience {
                                return Err(SessionError::Unavailable(
                                    "the node that ran this session is gone and another is taking it over; try again",
                                )
                                .into());
                            }
                            actix::clock::sleep(TAKEOVER_BACKOFF).await;
                        }
                    }
                    continue;
                }
            };
            attempts += 1;
            match addr.send(cmd.clone()).await {
                Ok(Err(SessionError::Restarted)) => {
                    last = SessionError::Unavailable("the session is restarting; try again");
                }
                Ok(res) => return Ok(res?),
                Err(MailboxError::Closed) | Err(MailboxError::Timeout) => {
                    // Stopped (ended, or killed by a panic): drop the dead address; the
                    // next lookup asks the store whether it is live or ended.
                    self.forget(id, &addr);
                    if !cmd.retry_safe() {
                        return Err(SessionError::Unavailable(
                            "the session restarted while handling this request; \
                             read it before trying again",
                        )
                        .into());
                    }
                }
            }
        }
        Err(last.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(next: &Next) -> bool {
        matches!(next, Next::Fail(SessionError::Unavailable(_)))
    }

    #[test]
    fn after_a_failed_forward_the_dispatcher_follows_the_table() {
        use ForwardError::*;
        // (error, retry_safe, carries_upload) → what happens.
        let restarted = || Session(SessionError::Restarted);
        assert!(matches!(
            after_forward(restarted(), true, false),
            Next::AskAgain
        ));
        assert!(matches!(
            after_forward(restarted(), false, true),
            Next::AskAgain
        ));
        assert!(matches!(
            after_forward(Session(SessionError::NotFound), true, false),
            Next::Fail(SessionError::NotFound)
        ));
        assert!(matches!(
            after_forward(Session(SessionError::Unauthorized), false, false),
            Next::Fail(SessionError::Unauthorized)
        ));
        for gone in [NotOwner, Unreachable] {
            let again = || match &gone {
                NotOwner => NotOwner,
                _ => Unreachable,
            };
            assert!(matches!(
                after_forward(again(), true, false),
                Next::OwnerGone
            ));
            assert!(matches!(
                after_forward(again(), false, false),
                Next::OwnerGone
            ));
            assert!(unavailable(&after_forward(again(), false, true)));
        }
        assert!(matches!(
            after_forward(NoAnswer, true, false),
            Next::OwnerGone
        ));
        assert!(unavailable(&after_forward(NoAnswer, true, true)));
        assert!(unavailable(&after_forward(NoAnswer, false, false)));
        assert!(unavailable(&after_forward(NoAnswer, false, true)));
    }
}

//! Test-only fault injection: arms a session actor to panic, outside its containment,
//! at one named point, so the tests can prove that supervision strands nobody.
//!
//! Cheap when unarmed: one `Option` compare at each point. Nothing in the broker sends
//! [`ArmFault`]; only the integration tests do, through the registry.

use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::commands::SessionCommand;
use crate::error::SessionError;
use crate::model::SessionRecord;

/// Where an armed session actor panics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// Applying a committed transition to the in-memory state.
    Apply,
    /// Pushing a committed transition to the audience.
    Publish,
    /// Ending a terminal session's actor.
    Finish,
    /// Loading the session from the store (at start and after a restart).
    Load,
    /// Publishing, after a restart, what the subscribers missed.
    CatchUp,
    /// Checking (and committing) the expiry.
    CheckExpiry,
    /// The `RotateToken` handler.
    RotateToken,
    /// The `Tick` handler.
    Tick,
    /// The `Unsubscribe` handler.
    Unsubscribe,
}

/// Test hook: the session actor panics, uncontained, the next time it reaches `at`.
/// The arming survives a contained restart (so `Load` and `CatchUp` can be reached).
#[doc(hidden)]
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<(), SessionError>")]
pub struct ArmFault {
    /// The point to panic at.
    pub at: FaultPoint,
}

impl SessionCommand for ArmFault {
    type Output = ();
    fn on_ended(&self, _: &SessionRecord, _: DateTime<Utc>) -> Result<(), SessionError> {
        Ok(())
    }
}

//! The pure rules that plan each command a session accepts (the messages themselves
//! are beside the actor, in [`session::messages`](crate::session::messages)).
//!
//! Every plan asks [`next`] whether the command may move the session and builds the
//! [`TransitionWrite`] it commits. The session actor runs these against its in-memory
//! record; the registry runs the same functions against a terminal session read from
//! the store ([`SessionCommand::on_ended`]), so a live and an ended session answer a
//! command the same way.

use std::collections::BTreeSet;

use actix::Message;
use chrono::{DateTime, Utc};

use crate::credentials::issuer_may_touch;
use crate::error::SessionError;
use crate::ids::DeviceId;
use crate::model::{is_file_scope, Binding, BindingCode, Consent, SessionRecord};
use crate::route::{Outbound, Wire, WireOk};
use crate::session::messages::{
    Answer, Caller, Cancel, Decide, Inspect, Retrieve, RotateToken, ShowOn,
};
#[cfg(any(test, feature = "fault-injection"))]
use crate::session::messages::{ArmFault, InjectFault};
use crate::status::{next, Code, Event, Outcome, Reason, Status, BINDING_TRIES};
use crate::write::{Note, NoteWrite, TransitionWrite};

/// The first check of every device command (`information`, uploads, `update`), before
/// the binding and the state are looked at: a device whose issuer may not touch this
/// API key's sessions ([`issuer_may_touch`]: a demo token on another key's session)
/// is `403` and learns nothing more, and nothing about the session changes.
pub fn admit_device(session: &SessionRecord, device: &DeviceId) -> Result<(), SessionError> {
    if issuer_may_touch(&device.issuer, &session.owner) {
        Ok(())
    } else {
        Err(SessionError::Forbidden(
            "a demo device token works only on the demo's own sessions",
        ))
    }
}

/// Checks that `caller` may see `session` at all.
pub fn authorize(session: &SessionRecord, caller: &Caller) -> Result<(), SessionError> {
    match caller {
        // Another key's session does not exist, as far as this key can tell.
        Caller::Backend { owner } if *owner != session.owner => Err(SessionError::NotFound),
        Caller::Client { token, .. } if !token.matches(&session.token_hash) => {
            Err(SessionError::Unauthorized)
        }
        Caller::Device { device } => {
            admit_device(session, device)?;
            match &session.device {
                Some(bound) if bound != device => Err(SessionError::Forbidden(
                    "the session is bound to another device",
                )),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// What a command will do.
#[derive(Debug)]
pub enum Plan {
    /// Nothing to commit; answer with the session as it is.
    Stay,
    /// Commit this transition, then answer with the session after it.
    Move(TransitionWrite),
    /// Commit this change, which is no transition, then answer as [`answer_note`] says.
    Note(NoteWrite),
}

/// The answer to a command whose [`Plan::Move`] committed, given the session as
/// committed: the session, except when the last wrong binding code ended it, which is
/// still a wrong code to the device (`422 binding_mismatch`, no tries left).
pub fn answer_move(committed: SessionRecord) -> Result<SessionRecord, SessionError> {
    if committed.reason == Some(Reason::BindingMismatch) {
        return Err(SessionError::BindingMismatch { tries_left: 0 });
    }
    Ok(committed)
}

/// The answer to a command whose [`Plan::Note`] committed, given the session as
/// committed: a counted wrong binding code is refused `422 binding_mismatch` with the
/// tries left; anything else answers with the session.
pub fn answer_note(note: &Note, committed: SessionRecord) -> Result<SessionRecord, SessionError> {
    match note {
        Note::BindingMiss { misses } => Err(SessionError::BindingMismatch {
            tries_left: BINDING_TRIES.saturating_sub(*misses),
        }),
        Note::ShownOn(_) => Ok(committed),
    }
}

/// The write of a move to `status` that [`next`] allowed, with what every such move
/// does: `decided_at` on a terminal status, the custody purge on an end without
/// consent, the user made known on `confirmed`. Commands add their own parts (the
/// binding, the consent, the shared data and files).
fn transition(
    session: &SessionRecord,
    at: DateTime<Utc>,
    status: crate::status::Status,
) -> TransitionWrite {
    TransitionWrite {
        id: session.id,
        from_seq: session.seq,
        status,
        at,
        bind: None,
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

/// Plans the expiry of a session whose `expires_at` is at or before `now`: `None` if it
/// is not due yet, or [`next`] refuses (already terminal). The session actor's timer
/// and the start-up expiry of what became overdue while the broker was down both ask
/// this.
pub fn plan_expiry(session: &SessionRecord, now: DateTime<Utc>) -> Option<TransitionWrite> {
    if now < session.expires_at {
        return None;
    }
    match next(session.status, None, Event::Expire) {
        Ok(Outcome::Move(status)) => Some(transition(session, now, status)),
        Ok(Outcome::Stay | Outcome::Decline(_) | Outcome::Miss { .. }) | Err(_) => None,
    }
}

/// Refuses device commands once `expires_at` passed, even if the expiry timer has not
/// fired yet: the session is expired in all but the commit.
pub(crate) fn check_not_overdue(
    session: &SessionRecord,
    now: DateTime<Utc>,
) -> Result<(), SessionError> {
    if !session.status.is_terminal() && now >= session.expires_at {
        return Err(SessionError::InvalidState(crate::status::Status::Expired));
    }
    Ok(())
}

impl Retrieve {
    /// Plans `information`: bind and move to `retrieved`, or nothing for the bound device.
    pub fn plan(&self, session: &SessionRecord, now: DateTime<Utc>) -> Result<Plan, SessionError> {
        admit_device(session, &self.device)?;
        let outcome = next(
            session.status,
            session.device.as_ref(),
            Event::Retrieve {
                device: &self.device,
            },
        )?;
        check_not_overdue(session, now)?;
        Ok(match outcome {
            Outcome::Move(status) => Plan::Move(TransitionWrite {
                bind: Some(self.device.clone()),
                // Drawn now, when the phone opens the session, for the client only.
                binding_code: (session.request.binding == Binding::Code).then(BindingCode::draw),
                ..transition(session, now, status)
            }),
            Outcome::Stay | Outcome::Decline(_) | Outcome::Miss { .. } => Plan::Stay,
        })
    }
}

impl Decide {
    /// Plans `update`. `uploaded` lists the file scopes that have a staged upload.
    pub fn plan(
        &self,
        session: &SessionRecord,
        uploaded: &BTreeSet<String>,
        now: DateTime<Utc>,
    ) -> Result<Plan, SessionError> {
        admit_device(session, &self.device)?;
        let event = match &self.answer {
            Answer::Approve { binding_code, .. } => Event::Approve {
                device: &self.device,
                code: code_check(session, *binding_code),
            },
            Answer::Deny => Event::Deny {
                device: &self.device,
            },
        };
        let outcome = next(session.status, session.device.as_ref(), event)?;
        check_not_overdue(session, now)?;
        let write = match outcome {
            Outcome::Move(status) => {
                let Answer::Approve { shared_data, .. } = &self.answer else {
                    return Err(SessionError::InvalidState(session.status));
                };
                check_complete(&session.request.scopes, shared_data, uploaded)?;
                TransitionWrite {
                    consent: Some(Consent {
                        is_consented: true,
                        consented_at: now,
                    }),
                    shared_data: Some(shared_data.clone()),
                    ..transition(session, now, status)
                }
            }
            Outcome::Decline(reason) => TransitionWrite {
                // Declined: the person did not consent, whether they said so or the
                // last binding code was wrong (SPEC §3, the decision of `declined`).
                consent: Some(Consent {
                    is_consented: false,
                    consented_at: now,
                }),
                reason: Some(reason),
                binding_misses: (reason == Reason::BindingMismatch)
                    .then_some(session.binding_misses.saturating_add(1)),
                ..transition(session, now, Status::Declined)
            },
            Outcome::Miss { misses } => {
                return Ok(Plan::Note(NoteWrite {
                    id: session.id,
                    from_seq: session.seq,
                    note: Note::BindingMiss { misses },
                }))
            }
            Outcome::Stay => return Err(SessionError::InvalidState(session.status)),
        };
        Ok(Plan::Move(write))
    }
}

/// How the binding code an approve carries compares with the session's.
fn code_check(session: &SessionRecord, given: Option<BindingCode>) -> Code {
    match (session.request.binding, given) {
        (Binding::None, None) => Code::NotAsked,
        (Binding::None, Some(_)) => Code::Unexpected,
        (Binding::Code, None) => Code::Missing,
        // A session retrieved without a code (none can be, but a row could say so)
        // matches nothing.
        (Binding::Code, Some(given)) if session.binding_code == Some(given) => Code::Right,
        (Binding::Code, Some(_)) => Code::Wrong {
            earlier: session.binding_misses,
        },
    }
}

impl ShowOn {
    /// Plans recording where the session is shown: once, by the first client that
    /// subscribes or fetches the QR while the session is live; nothing after that.
    pub fn plan(&self, session: &SessionRecord) -> Result<Plan, SessionError> {
        authorize(session, &self.caller)?;
        if session.shown_on.is_some() || session.status.is_terminal() {
            return Ok(Plan::Stay);
        }
        Ok(Plan::Note(NoteWrite {
            id: session.id,
            from_seq: session.seq,
            note: Note::ShownOn(self.shown_on.clone()),
        }))
    }
}

/// Approve needs a value for every non-file scope, an upload for every file scope,
/// and nothing outside the scopes.
fn check_complete(
    scopes: &[String],
    shared: &serde_json::Map<String, serde_json::Value>,
    uploaded: &BTreeSet<String>,
) -> Result<(), SessionError> {
    if let Some(extra) = shared.keys().find(|k| !scopes.contains(k)) {
        return Err(SessionError::Invalid(format!(
            "shared_data.{extra} is not a scope of this session"
        )));
    }
    if let Some(file) = shared.keys().find(|k| is_file_scope(k)) {
        return Err(SessionError::Invalid(format!(
            "shared_data.{file} is a file scope: upload it with PUT /v1/sessions/{{id}}/files/{file}"
        )));
    }
    let missing: Vec<&str> = scopes
        .iter()
        .filter(|s| {
            if is_file_scope(s) {
                !uploaded.contains(*s)
            } else {
                !shared.contains_key(*s)
            }
        })
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(SessionError::Incomplete(format!(
            "approval is missing: {} (values go in shared_data, files are uploaded)",
            missing.join(", ")
        )));
    }
    Ok(())
}

impl Cancel {
    /// Plans the cancel.
    pub fn plan(&self, session: &SessionRecord, now: DateTime<Utc>) -> Result<Plan, SessionError> {
        authorize(
            session,
            &Caller::Backend {
                owner: self.owner.clone(),
            },
        )?;
        let outcome = next(session.status, None, Event::Cancel)?;
        // Past `expires_at` the session is expired in all but the commit, which the
        // expiry timer makes: it cannot be cancelled any more.
        check_not_overdue(session, now)?;
        match outcome {
            Outcome::Move(status) => Ok(Plan::Move(transition(session, now, status))),
            Outcome::Stay | Outcome::Decline(_) | Outcome::Miss { .. } => Ok(Plan::Stay),
        }
    }
}

/// A command the registry can route to a live actor or answer for an ended session.
pub trait SessionCommand:
    Message<Result = Result<<Self as SessionCommand>::Output, SessionError>> + Clone + Send + 'static
{
    /// The success value.
    type Output: Send + 'static;

    /// Whether the command may be sent again after its actor died while holding it
    /// (`MailboxError::Closed`): only for commands that commit nothing. A command that
    /// may have committed is answered `503` instead, never re-run (a second approve
    /// would be a false `409`).
    fn retry_safe(&self) -> bool {
        false
    }

    /// The answer for a session that is already terminal (no actor runs for it).
    fn on_ended(
        &self,
        session: &SessionRecord,
        now: DateTime<Utc>,
    ) -> Result<Self::Output, SessionError>;

    /// The command as it travels to the node that owns the session (SPEC §7); `None`:
    /// it is served where it arrives (subscriptions and long-polls are held by the
    /// node the client is connected to, which watches the session).
    fn to_wire(&self) -> Option<Outbound> {
        None
    }

    /// The owner's answer as this command's output.
    fn from_wire(ok: WireOk) -> Result<Self::Output, SessionError> {
        Err(unexpected(ok))
    }
}

/// An answer from another node that does not fit the command: a bug, or nodes of
/// different versions.
pub(crate) fn unexpected(ok: WireOk) -> SessionError {
    tracing::error!(answer = ?std::mem::discriminant(&ok), "unexpected answer from the owner node");
    SessionError::Unavailable("the node that runs this session answered unexpectedly; try again")
}

/// A command that travels as itself and is answered with the session.
fn record_from_wire(ok: WireOk) -> Result<SessionRecord, SessionError> {
    match ok {
        WireOk::Record(r) => Ok(r),
        other => Err(unexpected(other)),
    }
}

fn outbound(cmd: Wire) -> Option<Outbound> {
    Some(Outbound { cmd, upload: None })
}

/// A planned command on an ended session can only be refused (nothing leaves a
/// terminal status); a `Stay` plan answers with the session.
fn ended(
    plan: Result<Plan, SessionError>,
    session: &SessionRecord,
) -> Result<SessionRecord, SessionError> {
    match plan? {
        Plan::Stay => Ok(session.clone()),
        Plan::Move(_) | Plan::Note(_) => Err(SessionError::InvalidState(session.status)),
    }
}

impl SessionCommand for Inspect {
    type Output = SessionRecord;
    fn to_wire(&self) -> Option<Outbound> {
        outbound(Wire::Inspect(self.clone()))
    }
    fn from_wire(ok: WireOk) -> Result<SessionRecord, SessionError> {
        record_from_wire(ok)
    }
    fn on_ended(
        &self,
        session: &SessionRecord,
        _: DateTime<Utc>,
    ) -> Result<SessionRecord, SessionError> {
        authorize(session, &self.caller)?;
        Ok(session.clone())
    }
}

impl SessionCommand for Retrieve {
    type Output = SessionRecord;
    fn to_wire(&self) -> Option<Outbound> {
        outbound(Wire::Retrieve(self.clone()))
    }
    fn from_wire(ok: WireOk) -> Result<SessionRecord, SessionError> {
        record_from_wire(ok)
    }
    fn on_ended(
        &self,
        session: &SessionRecord,
        now: DateTime<Utc>,
    ) -> Result<SessionRecord, SessionError> {
        ended(self.plan(session, now), session)
    }
}

impl SessionCommand for Decide {
    type Output = SessionRecord;
    fn to_wire(&self) -> Option<Outbound> {
        outbound(Wire::Decide(self.clone()))
    }
    fn from_wire(ok: WireOk) -> Result<SessionRecord, SessionError> {
        record_from_wire(ok)
    }
    fn on_ended(
        &self,
        session: &SessionRecord,
        now: DateTime<Utc>,
    ) -> Result<SessionRecord, SessionError> {
        ended(self.plan(session, &BTreeSet::new(), now), session)
    }
}

impl SessionCommand for Cancel {
    type Output = SessionRecord;
    fn to_wire(&self) -> Option<Outbound> {
        outbound(Wire::Cancel(self.clone()))
    }
    fn from_wire(ok: WireOk) -> Result<SessionRecord, SessionError> {
        record_from_wire(ok)
    }
    fn on_ended(
        &self,
        session: &SessionRecord,
        now: DateTime<Utc>,
    ) -> Result<SessionRecord, SessionError> {
        ended(self.plan(session, now), session)
    }
}

impl SessionCommand for ShowOn {
    type Output = SessionRecord;
    fn retry_safe(&self) -> bool {
        // Set once, by whichever try commits first: a second try changes nothing.
        true
    }
    fn to_wire(&self) -> Option<Outbound> {
        outbound(Wire::ShowOn(self.clone()))
    }
    fn from_wire(ok: WireOk) -> Result<SessionRecord, SessionError> {
        record_from_wire(ok)
    }
    fn on_ended(
        &self,
        session: &SessionRecord,
        _: DateTime<Utc>,
    ) -> Result<SessionRecord, SessionError> {
        ended(self.plan(session), session)
    }
}

impl SessionCommand for RotateToken {
    type Output = ();
    fn to_wire(&self) -> Option<Outbound> {
        outbound(Wire::RotateToken)
    }
    fn from_wire(ok: WireOk) -> Result<(), SessionError> {
        match ok {
            WireOk::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }
    fn on_ended(&self, _: &SessionRecord, _: DateTime<Utc>) -> Result<(), SessionError> {
        Ok(())
    }
}

#[cfg(any(test, feature = "fault-injection"))]
impl SessionCommand for InjectFault {
    type Output = ();
    fn on_ended(&self, _: &SessionRecord, _: DateTime<Utc>) -> Result<(), SessionError> {
        Ok(())
    }
}

/// Test-only (see [`ArmFault`]): an ended session has no actor to arm.
#[cfg(any(test, feature = "fault-injection"))]
impl SessionCommand for ArmFault {
    type Output = ();
    fn on_ended(&self, _: &SessionRecord, _: DateTime<Utc>) -> Result<(), SessionError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SessionRequest;
    use crate::status::Status;

    fn session(status: Status) -> SessionRecord {
        let mut s = SessionRecord::open(
            "Acme",
            SessionRequest::default(),
            Utc::now(),
            chrono::Duration::seconds(60),
        )
        .0;
        s.status = status;
        s
    }

    #[test]
    fn expiry_is_planned_only_once_due_and_only_for_a_live_session() {
        let live = session(Status::Retrieved);
        let due = live.expires_at;
        assert!(plan_expiry(&live, due - chrono::Duration::milliseconds(1)).is_none());
        let write = plan_expiry(&live, due).expect("due");
        assert_eq!(write.status, Status::Expired);
        assert_eq!(write.from_seq, live.seq);
        assert_eq!(write.decided_at, Some(due));
        assert!(
            write.purge,
            "an expiry discards what was stored about the person"
        );
        assert!(!write.registers_user);
        for terminal in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(plan_expiry(&session(terminal), due).is_none(), "{terminal}");
        }
    }

    #[test]
    fn every_move_carries_what_its_status_implies_written_out() {
        // (status reached, decided_at set, personal data discarded, user registered)
        let table = [
            (Status::Retrieved, false, false, false),
            (Status::Confirmed, true, false, true),
            (Status::Declined, true, true, false),
            (Status::Expired, true, true, false),
            (Status::Cancelled, true, true, false),
        ];
        let s = session(Status::Retrieved);
        let at = Utc::now();
        for (status, decided, purge, registers) in table {
            let w = transition(&s, at, status);
            assert_eq!(w.decided_at.is_some(), decided, "{status}");
            assert_eq!(w.purge, purge, "{status}");
            assert_eq!(w.registers_user, registers, "{status}");
        }
    }

    #[test]
    fn a_demo_device_is_refused_by_every_device_command_on_another_keys_session() {
        use crate::credentials::{DEMO_API_KEY_NAME, DEMO_ISSUER};
        use crate::session::messages::CheckUpload;
        let demo = DeviceId::new(
            DEMO_ISSUER,
            crate::ids::UserId::parse("demo-user-1").unwrap(),
        );
        let now = Utc::now();
        let forbidden = |r: Result<(), SessionError>| matches!(r, Err(SessionError::Forbidden(_)));
        for status in [Status::Initialized, Status::Retrieved, Status::Confirmed] {
            let mut real = session(status);
            real.request = std::sync::Arc::new(SessionRequest {
                scopes: vec!["selfie".into()],
                ..SessionRequest::default()
            });
            if status != Status::Initialized {
                // Bound to the demo device itself: the lane still comes first.
                real.device = Some(demo.clone());
            }
            let retrieve = Retrieve {
                device: demo.clone(),
            };
            assert!(forbidden(retrieve.plan(&real, now).map(drop)), "{status}");
            for answer in [
                Answer::Deny,
                Answer::Approve {
                    shared_data: Default::default(),
                    binding_code: None,
                },
            ] {
                let decide = Decide {
                    device: demo.clone(),
                    answer,
                };
                let plan = decide.plan(&real, &BTreeSet::from(["selfie".to_owned()]), now);
                assert!(forbidden(plan.map(drop)), "{status}");
            }
            let upload = CheckUpload {
                device: demo.clone(),
                kind: "selfie".into(),
            };
            assert!(forbidden(upload.check(&real, now)), "{status}");
            let caller = Caller::Device {
                device: demo.clone(),
            };
            assert!(forbidden(authorize(&real, &caller)), "{status}");
        }
        // On a demo session the demo device goes on to the usual rules.
        let mut own = session(Status::Initialized);
        own.owner = DEMO_API_KEY_NAME.into();
        let retrieve = Retrieve { device: demo };
        assert!(matches!(retrieve.plan(&own, now), Ok(Plan::Move(_))));
    }
}

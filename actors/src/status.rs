//! The session state machine of SPEC §2, as one pure function.
//!
//! The session actor asks [`next`] what an event does and only then commits it;
//! nothing else in the broker decides a transition. That includes the binding code of
//! SPEC §2 ("Binding the phone to the screen"): whether an approve confirms, counts a
//! wrong code, or ends the session after the last one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

/// The status of a verification session; the wire names are the snake_case ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created by the backend, not yet opened by a device.
    Initialized,
    /// Opened by a device, which is now bound to it.
    Retrieved,
    /// The person approved and consented.
    Confirmed,
    /// The person denied.
    Declined,
    /// `expires_at` passed before a decision.
    Expired,
    /// The backend cancelled it.
    Cancelled,
}

impl Status {
    /// Every status, in the order of SPEC §2.
    pub const ALL: [Status; 6] = [
        Status::Initialized,
        Status::Retrieved,
        Status::Confirmed,
        Status::Declined,
        Status::Expired,
        Status::Cancelled,
    ];

    /// Nothing leaves a terminal status.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Initialized | Status::Retrieved)
    }

    /// The statuses a session can still leave: it has an actor and an expiry timer.
    pub fn live() -> impl Iterator<Item = Status> {
        Status::ALL.into_iter().filter(|s| !s.is_terminal())
    }

    /// [`Status::live`] as an SQL list, `('initialized', 'retrieved')`, for the store's
    /// queries. A literal rather than bound parameters, so that SQLite can match it to
    /// the partial index on live sessions (a test holds the index to it).
    pub fn live_sql() -> &'static str {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let names: Vec<String> = Status::live().map(|s| format!("'{s}'")).collect();
            format!("({})", names.join(", "))
        });
        &SQL
    }

    /// The statuses whose records retention deletes once their time is over (SPEC §2,
    /// "Records"): every terminal one; a live session is never touched.
    pub fn records_expire(self) -> bool {
        self.is_terminal()
    }

    /// [`Status::records_expire`] as an SQL list, `('confirmed', …)`, for the store's
    /// retention query: the rule is decided here, not written into SQL.
    pub fn records_expire_sql() -> &'static str {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let names: Vec<String> = Status::ALL
                .into_iter()
                .filter(|s| s.records_expire())
                .map(|s| format!("'{s}'"))
                .collect();
            format!("({})", names.join(", "))
        });
        &SQL
    }

    /// Whether a session in this status keeps the person's data (shared data, files)
    /// until retention purges it (SPEC §2): only a confirmed one; every other end
    /// deletes it with the transition.
    pub fn keeps_data(self) -> bool {
        self == Status::Confirmed
    }

    /// [`Status::keeps_data`] as an SQL list, for the retention purge.
    pub fn keeps_data_sql() -> &'static str {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let names: Vec<String> = Status::ALL
                .into_iter()
                .filter(|s| s.keeps_data())
                .map(|s| format!("'{s}'"))
                .collect();
            format!("({})", names.join(", "))
        });
        &SQL
    }

    /// Whether reaching this status ends the session without the person's consent,
    /// so that everything stored about them is deleted (SPEC §2, data custody).
    pub fn discards_personal_data(self) -> bool {
        self.is_terminal() && self != Status::Confirmed
    }

    /// Whether reaching this status makes the bound user known to the backend, with
    /// status `PENDING` until set (SPEC §3, users).
    pub fn registers_user(self) -> bool {
        self == Status::Confirmed
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Initialized => "initialized",
            Status::Retrieved => "retrieved",
            Status::Confirmed => "confirmed",
            Status::Declined => "declined",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?}"))
    }
}

/// How many wrong binding codes end a session (SPEC §2: the third wrong one).
pub const BINDING_TRIES: u8 = 3;

/// Why a session ended `declined`: the decision's `reason` (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The person denied.
    Denied,
    /// The last allowed binding code was wrong: ended for safety.
    BindingMismatch,
}

impl Reason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Denied => "denied",
            Reason::BindingMismatch => "binding_mismatch",
        }
    }
}

impl FromStr for Reason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Reason::Denied, Reason::BindingMismatch]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown reason {s:?}"))
    }
}

/// What an approve carries of the binding code, measured against the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The session has no binding and the approve carries no code.
    NotAsked,
    /// The session has a binding and the approve carries none.
    Missing,
    /// The session has no binding, yet the approve carries a code.
    Unexpected,
    /// The code shown to the client.
    Right,
    /// Another code, after `earlier` wrong ones.
    Wrong {
        /// Wrong codes counted before this one.
        earlier: u8,
    },
}

/// Something that may move a session.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A device calls `information`.
    Retrieve {
        /// The calling device.
        device: &'a DeviceId,
    },
    /// The bound device approves.
    Approve {
        /// The calling device.
        device: &'a DeviceId,
        /// The binding code it carries, as it compares.
        code: Code,
    },
    /// The bound device denies.
    Deny {
        /// The calling device.
        device: &'a DeviceId,
    },
    /// A device uploads a file (nothing moves; it is allowed or refused).
    Upload {
        /// The calling device.
        device: &'a DeviceId,
    },
    /// `expires_at` has passed.
    Expire,
    /// The backend deletes the session.
    Cancel,
}

/// What an allowed event does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A transition to this status (seq grows by one).
    Move(Status),
    /// A transition to `declined`, for this reason (seq grows by one).
    Decline(Reason),
    /// Allowed, but nothing changes (a repeated `information` from the bound device).
    Stay,
    /// A wrong binding code short of the last: it is counted (now `misses` in all),
    /// nothing else changes, and the approve is refused `422 binding_mismatch`.
    Miss {
        /// Wrong codes counted, this one included.
        misses: u8,
    },
}

/// Why an event is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The session is bound to another device (`403`).
    #[error("the session is bound to another device")]
    WrongDevice,
    /// The event is not allowed in the current status (`409 invalid_state`).
    #[error("not allowed while the session is {0}")]
    InvalidState(Status),
    /// An approve without the binding code the session needs (`400`).
    #[error(
        "this session needs binding_code: the two digits shown on the screen where it started"
    )]
    CodeMissing,
    /// An approve with a binding code on a session without binding (`400`).
    #[error("this session has no binding code; send none")]
    CodeUnexpected,
}

/// The transition rule of SPEC §2: what `event` does to a session in `status`
/// whose bound device is `bound`. A device is its issuer and `sub` together.
///
/// The device check comes before the state check, so that a foreign device
/// learns nothing about a session it may not touch.
pub fn next(
    status: Status,
    bound: Option<&DeviceId>,
    event: Event<'_>,
) -> Result<Outcome, Refusal> {
    use Status::*;
    let device = match event {
        Event::Retrieve { device }
        | Event::Approve { device, .. }
        | Event::Deny { device }
        | Event::Upload { device } => Some(device),
        Event::Expire | Event::Cancel => None,
    };
    if let (Some(device), Some(bound)) = (device, bound) {
        if device != bound {
            return Err(Refusal::WrongDevice);
        }
    }
    match (status, event) {
        (Initialized, Event::Retrieve { .. }) => Ok(Outcome::Move(Retrieved)),
        (Retrieved, Event::Retrieve { .. }) => Ok(Outcome::Stay),
        (Retrieved, Event::Approve { code, .. }) => match code {
            Code::NotAsked | Code::Right => Ok(Outcome::Move(Confirmed)),
            Code::Missing => Err(Refusal::CodeMissing),
            Code::Unexpected => Err(Refusal::CodeUnexpected),
            Code::Wrong { earlier } if earlier.saturating_add(1) >= BINDING_TRIES => {
                Ok(Outcome::Decline(Reason::BindingMismatch))
            }
            Code::Wrong { earlier } => Ok(Outcome::Miss {
                misses: earlier + 1,
            }),
        },
        (Retrieved, Event::Deny { .. }) => Ok(Outcome::Decline(Reason::Denied)),
        (Retrieved, Event::Upload { .. }) => Ok(Outcome::Stay),
        (Initialized | Retrieved, Event::Expire) => Ok(Outcome::Move(Expired)),
        (Initialized | Retrieved, Event::Cancel) => Ok(Outcome::Move(Cancelled)),
        (status, _) => Err(Refusal::InvalidState(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(issuer: &str, sub: &str) -> DeviceId {
        DeviceId::new(issuer, crate::ids::UserId::parse(sub).unwrap())
    }

    fn events(device: &DeviceId) -> [(&'static str, Event<'_>); 6] {
        [
            ("retrieve", Event::Retrieve { device }),
            (
                "approve",
                Event::Approve {
                    device,
                    code: Code::NotAsked,
                },
            ),
            ("deny", Event::Deny { device }),
            ("upload", Event::Upload { device }),
            ("expire", Event::Expire),
            ("cancel", Event::Cancel),
        ]
    }

    /// What each event does in each status, for the bound device (or an unbound
    /// session): the diagram of SPEC §2 written out row by row, not computed.
    /// `Err(())` is a refusal with `invalid_state` naming the current status.
    #[rustfmt::skip]
    const SPEC_TABLE: [(Status, &str, Result<Outcome, ()>); 36] = {
        use Outcome::{Decline, Move, Stay};
        use Status::*;
        [
            (Initialized, "retrieve", Ok(Move(Retrieved))),
            (Initialized, "approve",  Err(())),
            (Initialized, "deny",     Err(())),
            (Initialized, "upload",   Err(())),
            (Initialized, "expire",   Ok(Move(Expired))),
            (Initialized, "cancel",   Ok(Move(Cancelled))),
            (Retrieved,   "retrieve", Ok(Stay)),
            (Retrieved,   "approve",  Ok(Move(Confirmed))),
            (Retrieved,   "deny",     Ok(Decline(Reason::Denied))),
            (Retrieved,   "upload",   Ok(Stay)),
            (Retrieved,   "expire",   Ok(Move(Expired))),
            (Retrieved,   "cancel",   Ok(Move(Cancelled))),
            (Confirmed,   "retrieve", Err(())),
            (Confirmed,   "approve",  Err(())),
            (Confirmed,   "deny",     Err(())),
            (Confirmed,   "upload",   Err(())),
            (Confirmed,   "expire",   Err(())),
            (Confirmed,   "cancel",   Err(())),
            (Declined,    "retrieve", Err(())),
            (Declined,    "approve",  Err(())),
            (Declined,    "deny",     Err(())),
            (Declined,    "upload",   Err(())),
            (Declined,    "expire",   Err(())),
            (Declined,    "cancel",   Err(())),
            (Expired,     "retrieve", Err(())),
            (Expired,     "approve",  Err(())),
            (Expired,     "deny",     Err(())),
            (Expired,     "upload",   Err(())),
            (Expired,     "expire",   Err(())),
            (Expired,     "cancel",   Err(())),
            (Cancelled,   "retrieve", Err(())),
            (Cancelled,   "approve",  Err(())),
            (Cancelled,   "deny",     Err(())),
            (Cancelled,   "upload",   Err(())),
            (Cancelled,   "expire",   Err(())),
            (Cancelled,   "cancel",   Err(())),
        ]
    };

    /// The table's answer for (status, event).
    fn expected(status: Status, event: &str) -> Result<Outcome, Refusal> {
        let (_, _, outcome) = SPEC_TABLE
            .iter()
            .find(|(s, e, _)| *s == status && *e == event)
            .expect("every pair is in the table");
        outcome.map_err(|()| Refusal::InvalidState(status))
    }

    #[test]
    fn the_table_names_every_status_and_event_once() {
        let me = device("phone-app", "me");
        for status in Status::ALL {
            for (name, _) in events(&me) {
                let rows = SPEC_TABLE
                    .iter()
                    .filter(|(s, e, _)| *s == status && *e == name)
                    .count();
                assert_eq!(rows, 1, "{status} {name}");
            }
        }
    }

    #[test]
    fn every_status_and_event_pair_follows_the_spec() {
        let me = device("phone-app", "me");
        for status in Status::ALL {
            for bound in [None, Some(&me)] {
                for (name, event) in events(&me) {
                    assert_eq!(
                        next(status, bound, event),
                        expected(status, name),
                        "{status} {name} bound={bound:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn another_device_is_refused_in_every_status_but_system_events_are_not() {
        let me = device("phone-app", "me");
        // Another user of the same issuer, and the same user id from another issuer.
        for other in [device("phone-app", "other"), device("other-app", "me")] {
            for status in Status::ALL {
                for (name, event) in events(&other) {
                    let got = next(status, Some(&me), event);
                    match name {
                        "expire" | "cancel" => assert_eq!(got, expected(status, name)),
                        _ => assert_eq!(got, Err(Refusal::WrongDevice), "{status} {name}"),
                    }
                }
            }
        }
    }

    #[test]
    fn records_expire_for_exactly_the_ended_statuses() {
        let table = [
            (Status::Initialized, false),
            (Status::Retrieved, false),
            (Status::Confirmed, true),
            (Status::Declined, true),
            (Status::Expired, true),
            (Status::Cancelled, true),
        ];
        for (status, expire) in table {
            assert_eq!(status.records_expire(), expire, "{status}");
        }
        assert_eq!(
            Status::records_expire_sql(),
            "('confirmed', 'declined', 'expired', 'cancelled')"
        );
    }

    #[test]
    fn only_a_confirmed_session_keeps_the_persons_data() {
        let table = [
            (Status::Initialized, false),
            (Status::Retrieved, false),
            (Status::Confirmed, true),
            (Status::Declined, false),
            (Status::Expired, false),
            (Status::Cancelled, false),
        ];
        for (status, keeps) in table {
            assert_eq!(status.keeps_data(), keeps, "{status}");
        }
        assert_eq!(Status::keeps_data_sql(), "('confirmed')");
    }

    #[test]
    fn nothing_leaves_a_terminal_status() {
        let me = device("phone-app", "me");
        for status in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            for (_, event) in events(&me) {
                assert_eq!(
                    next(status, Some(&me), event),
                    Err(Refusal::InvalidState(status))
                );
            }
        }
    }

    /// What an approve does with each binding code, written out: in `retrieved`, for
    /// the bound device. In every other status an approve is refused as in
    /// [`SPEC_TABLE`], whatever it carries.
    #[rustfmt::skip]
    const BINDING_TABLE: [(Code, Result<Outcome, Refusal>); 9] = [
        (Code::NotAsked,               Ok(Outcome::Move(Status::Confirmed))),
        (Code::Right,                  Ok(Outcome::Move(Status::Confirmed))),
        (Code::Missing,                Err(Refusal::CodeMissing)),
        (Code::Unexpected,             Err(Refusal::CodeUnexpected)),
        (Code::Wrong { earlier: 0 },   Ok(Outcome::Miss { misses: 1 })),
        (Code::Wrong { earlier: 1 },   Ok(Outcome::Miss { misses: 2 })),
        (Code::Wrong { earlier: 2 },   Ok(Outcome::Decline(Reason::BindingMismatch))),
        // Never reached (the third ends the session), but never a fourth try either.
        (Code::Wrong { earlier: 3 },   Ok(Outcome::Decline(Reason::BindingMismatch))),
        (Code::Wrong { earlier: 255 }, Ok(Outcome::Decline(Reason::BindingMismatch))),
    ];

    #[test]
    fn an_approve_follows_the_binding_table() {
        let me = device("phone-app", "me");
        for (code, want) in BINDING_TABLE {
            let event = Event::Approve { device: &me, code };
            assert_eq!(next(Status::Retrieved, Some(&me), event), want, "{code:?}");
        }
    }

    #[test]
    fn a_binding_code_changes_nothing_outside_retrieved_nor_for_another_device() {
        let me = device("phone-app", "me");
        let other = device("phone-app", "other");
        for (code, _) in BINDING_TABLE {
            for status in Status::ALL.into_iter().filter(|s| *s != Status::Retrieved) {
                let event = Event::Approve { device: &me, code };
                assert_eq!(
                    next(status, Some(&me), event),
                    Err(Refusal::InvalidState(status)),
                    "{status} {code:?}"
                );
            }
            let event = Event::Approve {
                device: &other,
                code,
            };
            assert_eq!(
                next(Status::Retrieved, Some(&me), event),
                Err(Refusal::WrongDevice),
                "{code:?}"
            );
        }
    }

    #[test]
    fn wire_names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        assert!("CONFIRMED".parse::<Status>().is_err());
        for reason in [Reason::Denied, Reason::BindingMismatch] {
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{}\"", reason.as_str())
            );
        }
    }
}

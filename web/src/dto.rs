//! The JSON bodies of SPEC §3, and their validation.

use chrono::{DateTime, Utc};
use idv_actors::clock::rfc3339;
use idv_actors::model::{is_valid_scope, Consent, Decision, SessionRecord, UserRecord};
use idv_actors::store::WebhookCounts;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ApiError;

/// Most scopes in one session.
pub const MAX_SCOPES: usize = 32;
/// Longest `vendor_data` / `external_reference_id`, in characters.
pub const MAX_REFERENCE_CHARS: usize = 1024;
/// Largest `registration` object, in bytes of JSON.
pub const MAX_REGISTRATION_BYTES: usize = 16 * 1024;
/// Longest URL accepted for `redirect_url` / `callback_url`.
pub const MAX_URL_LEN: usize = 2048;
/// Largest `shared_data` value, in bytes.
pub const MAX_SHARED_VALUE_BYTES: usize = 4 * 1024;

fn time(t: DateTime<Utc>) -> String {
    rfc3339(t)
}

/// `POST /v1/sessions`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Required: 1 to 32 distinct scope names.
    pub scopes: Vec<String>,
    /// Echoed back.
    pub vendor_data: Option<String>,
    /// Echoed back.
    pub external_reference_id: Option<String>,
    /// Prefill for the device, a JSON object.
    pub registration: Option<Box<RawValue>>,
    /// Absolute http(s) URL.
    pub redirect_url: Option<String>,
    /// Absolute http(s) URL.
    pub callback_url: Option<String>,
    /// Lifetime in seconds.
    pub ttl_seconds: Option<i64>,
}

/// Checks an absolute `http`/`https` URL.
pub fn check_url(field: &str, value: &str) -> Result<(), ApiError> {
    let bad = || ApiError::invalid(format!("{field} must be an absolute http or https URL"));
    if value.len() > MAX_URL_LEN {
        return Err(ApiError::invalid(format!(
            "{field} is longer than {MAX_URL_LEN} bytes"
        )));
    }
    let url = url::Url::parse(value).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(())
}

fn check_reference(field: &str, value: &Option<String>) -> Result<(), ApiError> {
    if value
        .as_ref()
        .is_some_and(|v| v.chars().count() > MAX_REFERENCE_CHARS)
    {
        return Err(ApiError::invalid(format!(
            "{field} is longer than {MAX_REFERENCE_CHARS} characters"
        )));
    }
    Ok(())
}

impl CreateSession {
    /// Validates every field of SPEC §3; returns the TTL to use.
    pub fn validate(&self, ttl: crate::state::TtlBounds) -> Result<i64, ApiError> {
        if self.scopes.is_empty() || self.scopes.len() > MAX_SCOPES {
            return Err(ApiError::invalid(format!(
                "scopes must list 1 to {MAX_SCOPES} names"
            )));
        }
        for (i, s) in self.scopes.iter().enumerate() {
            if !is_valid_scope(s) {
                return Err(ApiError::invalid(format!(
                    "scope {s:?} does not match ^[a-z][a-z0-9_]{{0,63}}$"
                )));
            }
            if self.scopes[..i].contains(s) {
                return Err(ApiError::invalid(format!("scope {s:?} is listed twice")));
            }
        }
        check_reference("vendor_data", &self.vendor_data)?;
        check_reference("external_reference_id", &self.external_reference_id)?;
        if let Some(reg) = &self.registration {
            if !reg.get().trim_start().starts_with('{') {
                return Err(ApiError::invalid("registration must be a JSON object"));
            }
            if reg.get().len() > MAX_REGISTRATION_BYTES {
                return Err(ApiError::invalid(format!(
                    "registration is larger than {MAX_REGISTRATION_BYTES} bytes"
                )));
            }
        }
        if let Some(u) = &self.redirect_url {
            check_url("redirect_url", u)?;
        }
        if let Some(u) = &self.callback_url {
            check_url("callback_url", u)?;
        }
        let seconds = self.ttl_seconds.unwrap_or(ttl.default);
        if !(ttl.min..=ttl.max).contains(&seconds) {
            return Err(ApiError::invalid(format!(
                "ttl_seconds must be between {} and {}",
                ttl.min, ttl.max
            )));
        }
        Ok(seconds)
    }
}

/// The answer to a create: the only time the session token is shown.
#[derive(Serialize)]
pub struct Created<'a> {
    pub session_id: String,
    pub session_token: &'a str,
    pub url: String,
    pub status: &'static str,
    pub seq: u64,
    pub expires_at: String,
    pub scopes: &'a [String],
    pub vendor_data: Option<&'a str>,
}

/// `consent` as the API shows it.
#[derive(Serialize)]
pub struct ConsentView {
    pub is_consented: bool,
    pub consented_at: String,
}

impl From<&Consent> for ConsentView {
    fn from(c: &Consent) -> Self {
        Self {
            is_consented: c.is_consented,
            consented_at: time(c.consented_at),
        }
    }
}

/// `GET /v1/sessions/{id}`: the session without secrets or personal data.
#[derive(Serialize)]
pub struct SessionView<'a> {
    pub session_id: String,
    pub status: &'static str,
    pub seq: u64,
    pub scopes: &'a [String],
    pub vendor_data: Option<&'a str>,
    pub external_reference_id: Option<&'a str>,
    pub redirect_url: Option<&'a str>,
    pub created_at: String,
    pub updated_at: String,
    pub expires_at: String,
    pub consent: Option<ConsentView>,
    /// SPEC §4's counts; filled by the handlers that read them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhookCounts>,
}

impl SessionView<'_> {
    /// The view with the session's webhook counts.
    pub fn with_webhooks(self, counts: WebhookCounts) -> Self {
        Self {
            webhooks: Some(counts),
            ..self
        }
    }
}

impl<'a> From<&'a SessionRecord> for SessionView<'a> {
    fn from(s: &'a SessionRecord) -> Self {
        Self {
            session_id: s.id.to_string(),
            status: s.status.as_str(),
            seq: s.seq.0,
            scopes: &s.request.scopes,
            vendor_data: s.request.vendor_data.as_deref(),
            external_reference_id: s.request.external_reference_id.as_deref(),
            redirect_url: s.request.redirect_url.as_deref(),
            created_at: time(s.created_at),
            updated_at: time(s.updated_at),
            expires_at: time(s.expires_at),
            consent: s.consent.as_ref().map(ConsentView::from),
            webhooks: None,
        }
    }
}

/// `GET /v1/sessions/{id}/decision`.
#[derive(Serialize)]
pub struct DecisionView<'a> {
    pub session_id: String,
    pub status: &'static str,
    pub seq: u64,
    /// The bound device's `sub`.
    pub user_id: Option<&'a str>,
    /// The bound device's `iss` (`null` if it bound before issuers were recorded).
    pub issuer: Option<&'a str>,
    pub vendor_data: Option<&'a str>,
    pub external_reference_id: Option<&'a str>,
    pub scopes: &'a [String],
    pub consent: Option<ConsentView>,
    pub shared_data: Option<&'a serde_json::Map<String, serde_json::Value>>,
    pub files: &'a [idv_actors::model::FileMeta],
    pub created_at: String,
    pub decided_at: Option<String>,
    /// When retention purged a confirmed session's shared data and files (`null` until
    /// then; see docs/custody.md).
    pub purged_at: Option<String>,
}

impl<'a> From<&'a Decision> for DecisionView<'a> {
    fn from(d: &'a Decision) -> Self {
        let s = &d.session;
        Self {
            session_id: s.id.to_string(),
            status: s.status.as_str(),
            seq: s.seq.0,
            user_id: s.device.as_ref().map(|d| d.user_id.as_str()),
            issuer: s
                .device
                .as_ref()
                .map(|d| d.issuer.as_str())
                .filter(|iss| !iss.is_empty()),
            vendor_data: s.request.vendor_data.as_deref(),
            external_reference_id: s.request.external_reference_id.as_deref(),
            scopes: &s.request.scopes,
            consent: s.consent.as_ref().map(ConsentView::from),
            shared_data: d.shared_data.as_ref(),
            files: &d.files,
            created_at: time(s.created_at),
            decided_at: s.decided_at.map(time),
            purged_at: d.purged_at.map(time),
        }
    }
}

/// The answer to `PUT /v1/sessions/{id}/files/{kind}`.
#[derive(Serialize)]
pub struct Uploaded {
    pub file_id: String,
    pub kind: String,
    pub size: u64,
}

impl From<idv_actors::session::messages::StagedFile> for Uploaded {
    fn from(f: idv_actors::session::messages::StagedFile) -> Self {
        Self {
            file_id: f.file_id.to_string(),
            kind: f.kind,
            size: f.size,
        }
    }
}

/// `GET /v1/sessions/{id}/status`.
#[derive(Serialize)]
pub struct StatusView {
    pub session_id: String,
    pub status: &'static str,
    pub seq: u64,
    pub updated_at: String,
    pub expires_at: String,
}

impl From<&SessionRecord> for StatusView {
    fn from(s: &SessionRecord) -> Self {
        Self {
            session_id: s.id.to_string(),
            status: s.status.as_str(),
            seq: s.seq.0,
            updated_at: time(s.updated_at),
            expires_at: time(s.expires_at),
        }
    }
}

/// `requester` in `information`.
#[derive(Serialize)]
pub struct Requester<'a> {
    pub name: &'a str,
}

/// `GET /v1/sessions/{id}/information`.
#[derive(Serialize)]
pub struct Information<'a> {
    pub session_id: String,
    pub status: &'static str,
    pub scopes: &'a [String],
    pub requester: Requester<'a>,
    pub registration: Option<&'a RawValue>,
    pub expires_at: String,
}

impl<'a> From<&'a SessionRecord> for Information<'a> {
    fn from(s: &'a SessionRecord) -> Self {
        Self {
            session_id: s.id.to_string(),
            status: s.status.as_str(),
            scopes: &s.request.scopes,
            requester: Requester { name: &s.owner },
            registration: s.request.registration.as_deref(),
            expires_at: time(s.expires_at),
        }
    }
}

/// `POST /v1/sessions/{id}/update`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// `approve` or `deny`.
    pub decision: String,
    /// One string per non-file scope (approve only).
    pub shared_data: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Update {
    /// Validates the shape; what must be in `shared_data` is the session's rule.
    pub fn into_answer(self) -> Result<idv_actors::session::messages::Answer, ApiError> {
        use idv_actors::session::messages::Answer;
        match self.decision.as_str() {
            "approve" => {
                let shared_data = self.shared_data.unwrap_or_default();
                for (k, v) in &shared_data {
                    match v {
                        serde_json::Value::String(s) if s.len() <= MAX_SHARED_VALUE_BYTES => {}
                        serde_json::Value::String(_) => {
                            return Err(ApiError::invalid(format!(
                                "shared_data.{k} is longer than {MAX_SHARED_VALUE_BYTES} bytes"
                            )))
                        }
                        _ => {
                            return Err(ApiError::invalid(format!(
                                "shared_data.{k} must be a string"
                            )))
                        }
                    }
                }
                Ok(Answer::Approve { shared_data })
            }
            "deny" if self.shared_data.is_some() => {
                Err(ApiError::invalid("a deny carries no shared_data"))
            }
            "deny" => Ok(Answer::Deny),
            other => Err(ApiError::invalid(format!(
                "decision must be \"approve\" or \"deny\", not {other:?}"
            ))),
        }
    }
}

/// The answer to `update`.
#[derive(Serialize)]
pub struct Updated {
    pub session_id: String,
    pub status: &'static str,
    pub seq: u64,
    pub redirect_url: Option<String>,
}

impl From<&SessionRecord> for Updated {
    fn from(s: &SessionRecord) -> Self {
        let redirect_url = s.request.redirect_url.as_deref().and_then(|u| {
            let mut url = url::Url::parse(u).ok()?;
            url.query_pairs_mut()
                .append_pair("session_id", &s.id.to_string())
                .append_pair("status", s.status.as_str());
            Some(url.to_string())
        });
        Self {
            session_id: s.id.to_string(),
            status: s.status.as_str(),
            seq: s.seq.0,
            redirect_url,
        }
    }
}

/// `PUT /v1/users/{user_id}/status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetUserStatus {
    /// `PENDING`, `CREATED` or `BLOCKED`.
    pub status: String,
}

/// A user as the API shows it.
#[derive(Serialize)]
pub struct UserView {
    pub user_id: String,
    pub status: &'static str,
    pub updated_at: String,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        Self {
            user_id: u.user_id.to_string(),
            status: u.status.as_str(),
            updated_at: time(u.updated_at),
        }
    }
}

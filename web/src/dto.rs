//! The JSON bodies of SPEC §3, and their validation.

use chrono::{DateTime, Utc};
use idv_actors::clock::rfc3339;
use idv_actors::model::{
    is_valid_scope, Binding, BindingCode, Consent, Decision, SessionRecord, ShownOn, UserRecord,
};
use idv_actors::store::WebhookCounts;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::schema::{FileKind, ImageContentType, Scope, SessionStatus, UserStatusName};

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

/// The scopes of a create request: 1 to 32 distinct names.
pub fn scopes_request() -> utoipa::openapi::schema::ArrayBuilder {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(<Scope as utoipa::PartialSchema>::schema())
        .min_items(Some(1))
        .max_items(Some(MAX_SCOPES))
        .unique_items(true)
}

/// A value in `shared_data`: a string of at most 4 KiB.
pub struct SharedValue;

impl utoipa::PartialSchema for SharedValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .max_length(Some(MAX_SHARED_VALUE_BYTES))
            .description(Some(
                "At most 4 KiB of UTF-8 (maxLength counts characters; the limit is in bytes).",
            ))
            .into()
    }
}
impl ToSchema for SharedValue {}

fn time(t: DateTime<Utc>) -> String {
    rfc3339(t)
}

/// `POST /v1/sessions`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Required: 1 to 32 distinct scope names.
    #[schema(schema_with = scopes_request)]
    pub scopes: Vec<String>,
    /// Echoed back.
    #[schema(max_length = 1024)]
    pub vendor_data: Option<String>,
    /// Echoed back.
    #[schema(max_length = 1024)]
    pub external_reference_id: Option<String>,
    /// Prefill for the device, a JSON object of at most 16 KiB.
    #[schema(value_type = Option<Object>)]
    pub registration: Option<Box<RawValue>>,
    /// Absolute http(s) URL; the device is sent there after deciding.
    #[schema(format = Uri, max_length = 2048, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub redirect_url: Option<String>,
    /// Absolute http(s) URL for the webhooks; needs a broker with a webhook secret, and
    /// a public address unless the broker allows private ones.
    #[schema(format = Uri, max_length = 2048, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub callback_url: Option<String>,
    /// Lifetime in seconds (default 600).
    #[schema(minimum = 30, maximum = 86400)]
    pub ttl_seconds: Option<i64>,
    /// `code`: the phone must type a two-digit number shown by the client app before
    /// it may approve (SPEC §2, binding the phone to the screen). Default `none`.
    // Left out of the canonical body when absent, so that idempotency keys taken
    // before this field existed still match their replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<BindingName>,
}

/// `binding` at creation, and as the session echoes it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BindingName {
    /// No binding.
    None,
    /// A two-digit code to carry from the screen to the phone.
    Code,
}

impl From<BindingName> for Binding {
    fn from(b: BindingName) -> Self {
        match b {
            BindingName::None => Binding::None,
            BindingName::Code => Binding::Code,
        }
    }
}

impl From<Binding> for BindingName {
    fn from(b: Binding) -> Self {
        match b {
            Binding::None => BindingName::None,
            Binding::Code => BindingName::Code,
        }
    }
}

/// A binding code on the wire: two digits, `10` to `99`.
pub struct BindingCodeSchema;

impl utoipa::PartialSchema for BindingCodeSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[1-9][0-9]$"))
            .into()
    }
}
impl ToSchema for BindingCodeSchema {}

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
#[derive(Serialize, ToSchema)]
pub struct Created<'a> {
    #[schema(value_type = String, format = Uuid)]
    pub session_id: idv_actors::ids::IdText,
    /// The client app's credential, shown only here (a replay issues a fresh one).
    #[schema(min_length = 1)]
    pub session_token: &'a str,
    /// Where the device opens the session (`<public base>/verify/<session_id>`).
    #[schema(format = Uri)]
    pub url: String,
    #[schema(value_type = SessionStatus)]
    pub status: &'static str,
    #[schema(minimum = 1)]
    pub seq: u64,
    #[schema(format = DateTime)]
    pub expires_at: String,
    #[schema(value_type = Vec<Scope>)]
    pub scopes: &'a [String],
    pub vendor_data: Option<&'a str>,
    /// As asked at creation (`none` by default).
    pub binding: BindingName,
}

/// `consent` as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct ConsentView {
    pub is_consented: bool,
    #[schema(format = DateTime)]
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
#[derive(Serialize, ToSchema)]
pub struct SessionView<'a> {
    #[schema(format = Uuid)]
    pub session_id: String,
    #[schema(value_type = SessionStatus)]
    pub status: &'static str,
    #[schema(minimum = 1)]
    pub seq: u64,
    #[schema(value_type = Vec<Scope>)]
    pub scopes: &'a [String],
    pub vendor_data: Option<&'a str>,
    pub external_reference_id: Option<&'a str>,
    #[schema(format = Uri)]
    pub redirect_url: Option<&'a str>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// `null` until the person decided.
    pub consent: Option<ConsentView>,
    /// SPEC §4's counts; filled by the handlers that read them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Webhooks>,
}

/// `webhooks` in `GET /v1/sessions/{id}` (SPEC §4).
#[derive(Serialize, ToSchema)]
pub struct Webhooks {
    /// Events not yet delivered (including one in flight).
    pub pending: u64,
    /// Events given up on.
    pub failed: u64,
}

impl From<WebhookCounts> for Webhooks {
    fn from(c: WebhookCounts) -> Self {
        Self {
            pending: c.pending,
            failed: c.failed,
        }
    }
}

impl SessionView<'_> {
    /// The view with the session's webhook counts.
    pub fn with_webhooks(self, counts: WebhookCounts) -> Self {
        Self {
            webhooks: Some(counts.into()),
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
#[derive(Serialize, ToSchema)]
pub struct DecisionView<'a> {
    #[schema(format = Uuid)]
    pub session_id: String,
    #[schema(value_type = SessionStatus)]
    pub status: &'static str,
    #[schema(minimum = 1)]
    pub seq: u64,
    /// The bound device's `sub`.
    pub user_id: Option<&'a str>,
    /// The bound device's `iss` (`null` if it bound before issuers were recorded).
    pub issuer: Option<&'a str>,
    pub vendor_data: Option<&'a str>,
    pub external_reference_id: Option<&'a str>,
    #[schema(value_type = Vec<Scope>)]
    pub scopes: &'a [String],
    /// `null` when the person never decided; `is_consented` is false on a deny.
    pub consent: Option<ConsentView>,
    /// The values shared on approve, one string per non-file scope; `null` otherwise.
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub shared_data: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// The files stored on approve; empty otherwise.
    pub files: Vec<FileView<'a>>,
    /// Why a `declined` session ended: `denied` by the person, or `binding_mismatch`
    /// (the last allowed binding code was wrong); `null` for every other status.
    #[schema(value_type = Option<ReasonName>)]
    pub reason: Option<&'static str>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub decided_at: Option<String>,
    /// When retention purged a confirmed session's shared data and files (`null` until
    /// then; see docs/custody.md).
    #[schema(format = DateTime)]
    pub purged_at: Option<String>,
}

/// `reason` in a decision.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ReasonName {
    /// The person denied.
    Denied,
    /// The last allowed binding code was wrong: ended for safety.
    BindingMismatch,
}

/// A stored file in a decision.
#[derive(Serialize, ToSchema)]
pub struct FileView<'a> {
    #[schema(format = Uuid)]
    pub file_id: String,
    #[schema(value_type = FileKind)]
    pub kind: &'a str,
    #[schema(value_type = ImageContentType)]
    pub content_type: &'a str,
    pub size: u64,
}

impl<'a> From<&'a idv_actors::model::FileMeta> for FileView<'a> {
    fn from(f: &'a idv_actors::model::FileMeta) -> Self {
        Self {
            file_id: f.file_id.to_string(),
            kind: &f.kind,
            content_type: &f.content_type,
            size: f.size,
        }
    }
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
            files: d.files.iter().map(FileView::from).collect(),
            reason: s.reason.map(|r| r.as_str()),
            created_at: time(s.created_at),
            decided_at: s.decided_at.map(time),
            purged_at: d.purged_at.map(time),
        }
    }
}

/// The answer to `PUT /v1/sessions/{id}/files/{kind}`.
#[derive(Serialize, ToSchema)]
pub struct Uploaded {
    #[schema(format = Uuid)]
    pub file_id: String,
    #[schema(value_type = FileKind)]
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
#[derive(Serialize, ToSchema)]
pub struct StatusView {
    #[schema(format = Uuid)]
    pub session_id: String,
    #[schema(value_type = SessionStatus)]
    pub status: &'static str,
    #[schema(minimum = 1)]
    pub seq: u64,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// For a session with `"binding": "code"`, from `retrieved` on: the two digits to
    /// show large, for the person to type on the phone. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BindingCodeSchema>)]
    pub binding_code: Option<String>,
}

impl From<&SessionRecord> for StatusView {
    fn from(s: &SessionRecord) -> Self {
        Self {
            session_id: s.id.to_string(),
            status: s.status.as_str(),
            seq: s.seq.0,
            updated_at: time(s.updated_at),
            expires_at: time(s.expires_at),
            binding_code: s.binding_code.map(|c| c.to_string()),
        }
    }
}

/// `requester` in `information`.
#[derive(Serialize, ToSchema)]
pub struct Requester<'a> {
    pub name: &'a str,
}

/// `GET /v1/sessions/{id}/information`.
#[derive(Serialize, ToSchema)]
pub struct Information<'a> {
    #[schema(format = Uuid)]
    pub session_id: String,
    #[schema(value_type = SessionStatus)]
    pub status: &'static str,
    #[schema(value_type = Vec<Scope>)]
    pub scopes: &'a [String],
    pub requester: Requester<'a>,
    /// The backend's prefill, a JSON object.
    #[schema(value_type = Option<Object>)]
    pub registration: Option<&'a RawValue>,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// `code`: approve must carry the number shown on the screen where the session
    /// started (never the number itself: the person types it). `none` otherwise.
    pub binding: BindingName,
    /// Where the session is shown: the first client that subscribed or fetched the
    /// QR; `null` before that. A hint read from a User-Agent, which can be forged.
    pub shown_on: Option<ShownOnView<'a>>,
}

/// `shown_on` in `information`.
#[derive(Serialize, ToSchema)]
pub struct ShownOnView<'a> {
    /// The browser family, `Chrome`, `Firefox`, `Safari`, … (`Unknown` if unread).
    pub browser: &'a str,
    /// The operating system, `Linux`, `Windows 10`, `macOS`, … (`Unknown` if unread).
    pub os: &'a str,
    /// When that client first asked.
    #[schema(format = DateTime)]
    pub since: String,
}

impl<'a> From<&'a ShownOn> for ShownOnView<'a> {
    fn from(on: &'a ShownOn) -> Self {
        Self {
            browser: &on.browser,
            os: &on.os,
            since: time(on.since),
        }
    }
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
            binding: s.request.binding.into(),
            shown_on: s.shown_on.as_deref().map(ShownOnView::from),
        }
    }
}

/// `POST /v1/sessions/{id}/update`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// `approve` or `deny`.
    #[schema(value_type = DecisionName)]
    pub decision: String,
    /// One string of at most 4 KiB per non-file scope, and nothing else (approve only).
    #[schema(value_type = Option<HashMap<String, SharedValue>>)]
    pub shared_data: Option<serde_json::Map<String, serde_json::Value>>,
    /// Approve of a session with `"binding": "code"`: the two digits the person typed
    /// (required there, refused elsewhere). A wrong one is `422 binding_mismatch`.
    #[schema(value_type = Option<BindingCodeSchema>)]
    pub binding_code: Option<String>,
}

/// The decision of an `update` (the schema of [`Update::decision`]).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum DecisionName {
    /// Share what was asked for.
    Approve,
    /// Refuse.
    Deny,
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
                let binding_code = self
                    .binding_code
                    .map(|c| {
                        BindingCode::parse(&c).ok_or_else(|| {
                            ApiError::invalid("binding_code must be two digits, 10 to 99")
                        })
                    })
                    .transpose()?;
                Ok(Answer::Approve {
                    shared_data,
                    binding_code,
                })
            }
            "deny" if self.shared_data.is_some() => {
                Err(ApiError::invalid("a deny carries no shared_data"))
            }
            "deny" if self.binding_code.is_some() => Err(ApiError::invalid(
                "a deny carries no binding_code: it needs none",
            )),
            "deny" => Ok(Answer::Deny),
            other => Err(ApiError::invalid(format!(
                "decision must be \"approve\" or \"deny\", not {other:?}"
            ))),
        }
    }
}

/// The answer to `update`.
#[derive(Serialize, ToSchema)]
pub struct Updated {
    #[schema(format = Uuid)]
    pub session_id: String,
    #[schema(value_type = SessionStatus)]
    pub status: &'static str,
    #[schema(minimum = 1)]
    pub seq: u64,
    /// The session's `redirect_url` with `session_id` and `status` added, or `null`.
    #[schema(format = Uri)]
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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetUserStatus {
    /// `PENDING`, `CREATED` or `BLOCKED`.
    #[schema(value_type = UserStatusName)]
    pub status: String,
}

/// A user as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct UserView {
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$")]
    pub user_id: String,
    #[schema(value_type = UserStatusName)]
    pub status: &'static str,
    #[schema(format = DateTime)]
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

/// The body of `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (live) or `ready`.
    pub status: String,
}

/// The body of `POST /demo/api/device-token`.
#[derive(Serialize, ToSchema)]
pub struct DemoDeviceToken {
    /// The device JWT.
    pub token: String,
    /// Its `sub`: a fresh demo user.
    pub sub: String,
    /// Its `iss`: the demo issuer.
    pub issuer: String,
}

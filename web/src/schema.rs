//! OpenAPI schemas of the wire names that the actors own: statuses, scopes, file kinds.
//!
//! Each is built from the actors' own list (`Status::ALL`, `FILE_SCOPES`, …), not
//! written out again, so `/openapi.json` cannot drift from what the broker accepts and
//! answers. These types exist only to be named in `#[schema(value_type = …)]`; the
//! handlers keep using the actors' types. They live apart from [`crate::openapi`] so
//! that [`crate::dto`] can name them without depending on the document that lists
//! the DTOs.

use idv_actors::model::{UserStatus, FILE_SCOPES};
use idv_actors::status::Status;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// The scope name pattern of SPEC §3.
pub const SCOPE_PATTERN: &str = "^[a-z][a-z0-9_]{0,63}$";

fn string_enum(description: &str, values: impl IntoIterator<Item = &'static str>) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .description(Some(description))
        .into()
}

/// A session status (SPEC §2).
pub struct SessionStatus;

impl PartialSchema for SessionStatus {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "A session status; confirmed, declined, expired and cancelled are terminal.",
            Status::ALL.map(Status::as_str),
        )
        .into()
    }
}
impl ToSchema for SessionStatus {}

/// A user status of `PUT /v1/users/{user_id}/status`.
pub struct UserStatusName;

/// Every user status, in the order of SPEC §3.
pub const USER_STATUSES: [UserStatus; 3] = [
    UserStatus::Pending,
    UserStatus::Created,
    UserStatus::Blocked,
];

impl PartialSchema for UserStatusName {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "A user status set by the backend (PENDING until set).",
            USER_STATUSES.map(UserStatus::as_str),
        )
        .into()
    }
}
impl ToSchema for UserStatusName {}

/// A scope name.
pub struct Scope;

impl PartialSchema for Scope {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(SCOPE_PATTERN))
            .min_length(Some(1))
            .max_length(Some(64))
            .description(Some(
                "A scope name. selfie, document_front and document_back are file scopes \
                 (satisfied by an upload); every other scope by a value in shared_data.",
            ))
            .into()
    }
}
impl ToSchema for Scope {}

/// A file scope: the `{kind}` of an upload and the `kind` of a file.
pub struct FileKind;

impl PartialSchema for FileKind {
    fn schema() -> RefOr<Schema> {
        string_enum("A file scope: what an uploaded image shows.", FILE_SCOPES).into()
    }
}
impl ToSchema for FileKind {}

/// The content type of an uploaded image.
pub struct ImageContentType;

impl PartialSchema for ImageContentType {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "The type of an uploaded image.",
            ["image/jpeg", "image/png"],
        )
        .into()
    }
}
impl ToSchema for ImageContentType {}

/// Raw bytes: an image upload or download.
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("binary".into())))
            .into()
    }
}
impl ToSchema for Binary {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_status_in_the_description_parses_back() {
        for status in USER_STATUSES {
            assert_eq!(UserStatus::parse(status.as_str()), Some(status));
        }
    }
}

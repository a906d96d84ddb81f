//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, generated from the
//! handlers' `#[utoipa::path]` annotations and the [`crate::dto`] types, so it cannot
//! drift from them.
//!
//! What every route shares is added here rather than on each handler: the security
//! schemes of SPEC §1 (one per credential), and the errors any request can meet
//! (`429` from the rate limiter and `500`/`503` from the broker, with `Retry-After`
//! where SPEC §5 has it).

use actix_web::HttpResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::ErrorBody;
use crate::routes::{client, demo, device, files, ops, pages, sessions, users};
use crate::ws;

/// The document: every route of [`crate::configure`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "idv-broker",
        description = "A real-time identity-verification session broker (SPEC §3). \
            Every error is {\"error\": {\"code\", \"message\"}} (SPEC §5).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        sessions::create,
        sessions::get,
        sessions::decision,
        sessions::cancel,
        files::upload,
        files::download,
        users::set_status,
        users::get,
        client::status,
        client::qr_svg,
        ws::subscribe,
        device::information,
        device::update,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        document,
        pages::sdk,
        pages::asset,
        pages::verify,
        pages::demo,
        demo::create_session,
        demo::decision,
        demo::device_token,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Credentials, &SharedErrors),
    tags(
        (name = "backend", description = "The enterprise's server, with X-Api-Key."),
        (name = "client", description = "The browser that shows the QR code, with the session token."),
        (name = "device", description = "The phone, with a trusted issuer's JWT."),
        (name = "operations", description = "Probes, metrics and this description."),
        (name = "pages", description = "The hosted device page, the demo and the SDK."),
    )
)]
pub struct ApiDoc;

/// The security schemes of SPEC §1, one per credential.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "The backend's API key, configured at start (--api-key NAME=KEY).",
            ))),
        );
        components.add_security_scheme(
            "session_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The client app's session_token, returned when the session was created.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_token_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The session token in the URL, only on /ws and /qr.svg (a browser cannot set \
                 headers on a WebSocket or an <img>).",
            ))),
        );
        components.add_security_scheme(
            "device_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT of a trusted issuer, with sub and exp; valid for at most 24 h: \
                         HS256 with its secret (--issuer ISS=SECRET), or RS256, PS256, ES256 \
                         or EdDSA with its public keys (--issuer-key, --issuer-jwks), the key \
                         picked by kid.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The errors any route can answer, and `404` wherever a path segment is a parameter
/// (a segment that matches no route is `404` too).
struct SharedErrors;

fn error_response(description: &str, retry_after: bool) -> utoipa::openapi::Response {
    let mut res = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                ErrorBody::name(),
            ))))
            .build(),
    );
    if retry_after {
        res = res.header("Retry-After", retry_after_header());
    }
    res.build()
}

/// `Retry-After: <seconds>` (SPEC §5: on `429` and `503`).
fn retry_after_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .description(Some("Seconds to wait before trying again."))
        .build()
}

impl Modify for SharedErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let shared = [
            (
                "429",
                "rate_limited: too many requests from this address.",
                true,
            ),
            ("500", "internal: an unexpected failure (logged).", false),
            (
                "503",
                "unavailable: a limit of the broker is reached (connections from this address, live sessions in all or per API key, WebSockets, waiting long-polls, subscribers per session, staged uploads, the store's queue), or it is shutting down.",
                true,
            ),
        ];
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let has_path_param = op
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| p.parameter_in == ParameterIn::Path);
                let responses = &mut op.responses.responses;
                if has_path_param && !responses.contains_key("404") {
                    responses.insert(
                        "404".into(),
                        RefOr::T(error_response(
                            "not_found: no such route or resource.",
                            false,
                        )),
                    );
                }
                for (status, description, retry_after) in shared {
                    responses
                        .entry(status.into())
                        .or_insert_with(|| RefOr::T(error_response(description, retry_after)));
                }
                // A handler's own `429`/`503` carries `Retry-After` too: every one does.
                for status in ["429", "503"] {
                    if let Some(RefOr::T(res)) = responses.get_mut(status) {
                        res.headers
                            .entry("Retry-After".into())
                            .or_insert_with(retry_after_header);
                    }
                }
            }
        }
    }
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "This description (OpenAPI 3.1).", content_type = "application/json", body = Object),
    )
)]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::OpenApi as _;
    use utoipa::PartialSchema as _;

    /// Every `resource("<path>", "<METHODS>")` in `configure`, as (method, path).
    fn configured_routes() -> BTreeSet<(String, String)> {
        let source = include_str!("lib.rs");
        let mut routes = BTreeSet::new();
        for call in source.split("resource(\"").skip(1) {
            let mut parts = call.splitn(3, '"');
            let (Some(path), Some(_), Some(rest)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let methods = rest.split('"').next().unwrap_or_default();
            for method in methods.split(',') {
                routes.insert((method.trim().to_lowercase(), path.to_owned()));
            }
        }
        routes
    }

    #[test]
    fn every_route_of_configure_is_in_the_document_and_nothing_else() {
        let doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    documented.insert((method.clone(), path.clone()));
                }
            }
        }
        let configured = configured_routes();
        assert!(
            configured.len() > 20,
            "the routes were read: {configured:?}"
        );
        assert_eq!(documented, configured);
    }

    #[test]
    fn the_session_status_enum_is_every_status_of_the_actors() {
        let json = serde_json::to_value(crate::schema::SessionStatus::schema()).unwrap();
        let names: Vec<&str> = idv_actors::status::Status::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(json["enum"], serde_json::json!(names));
    }
}

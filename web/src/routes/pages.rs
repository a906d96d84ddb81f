//! The pages a person sees (SPEC §3 "Pages and operations"): the hosted device page,
//! the demo client app and the browser SDK. They are static files compiled into the
//! binary: no CDN, no build step, nothing fetched at run time.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::session_id;
use crate::error::ApiError;
use crate::state::AppState;

/// The policy every page is served with: scripts, styles and requests only from the
/// broker itself, no inline script or style, no framing. `blob:` images are the QR
/// code (fetched with the token in a header, not in an `<img>` URL) and photo previews.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// A file compiled into the binary.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const SDK: Asset = Asset {
    name: "sdk.js",
    content_type: "application/javascript; charset=utf-8",
    body: include_str!("../../static/sdk.js"),
};
const DEMO_PAGE: Asset = Asset {
    name: "demo.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../static/demo.html"),
};
const VERIFY_PAGE: Asset = Asset {
    name: "verify.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../static/verify.html"),
};

/// What `/assets/{name}` serves; anything else is `404`.
const ASSETS: [Asset; 3] = [
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../static/style.css"),
    },
    Asset {
        name: "demo.js",
        content_type: "application/javascript; charset=utf-8",
        body: include_str!("../../static/demo.js"),
    },
    Asset {
        name: "verify.js",
        content_type: "application/javascript; charset=utf-8",
        body: include_str!("../../static/verify.js"),
    },
];

/// The device page's `<body>` tag, and the same tag in demo mode: `data-demo` tells
/// the page's script that it may ask the demo for a device token (only then; without
/// it the script never calls the demo's route).
const VERIFY_BODY: &str = "<body class=\"page-verify\">";
const VERIFY_BODY_DEMO: &str = "<body class=\"page-verify\" data-demo>";

/// A static file with the headers every page gets. `no-cache` (revalidate) rather
/// than a long lifetime: the files change with the binary and carry no version.
fn serve(asset: &Asset) -> HttpResponse {
    serve_body(asset, asset.body.into())
}

/// [`serve`] with a body of its own (a page adapted to the broker's mode).
fn serve_body(asset: &Asset, body: std::borrow::Cow<'static, str>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(match body {
            // A static page is sent from the binary as is, without a copy.
            std::borrow::Cow::Borrowed(b) => actix_web::body::BoxBody::new(b),
            std::borrow::Cow::Owned(b) => actix_web::body::BoxBody::new(b),
        })
}

#[utoipa::path(
    get,
    path = "/sdk.js",
    tag = "pages",
    responses(
        (status = 200, description = "The browser SDK.", content_type = "application/javascript; charset=utf-8", body = String),
    )
)]
/// `GET /sdk.js`.
pub async fn sdk() -> HttpResponse {
    serve(&SDK)
}

#[utoipa::path(
    get,
    path = "/assets/{name}",
    tag = "pages",
    params(
        ("name" = String, Path, description = "style.css, demo.js or verify.js."),
    ),
    responses(
        (status = 200, description = "The pages' stylesheet or a script.", content(
            (String = "text/css; charset=utf-8"),
            (String = "application/javascript; charset=utf-8")
        )),
        (status = 404, description = "No such asset.", body = crate::error::ErrorBody),
    )
)]
/// `GET /assets/{name}`: the pages' stylesheet and scripts.
pub async fn asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    ASSETS
        .iter()
        .find(|a| a.name == name.as_str())
        .map(serve)
        .ok_or_else(|| ApiError::not_found("no such asset"))
}

#[utoipa::path(
    get,
    path = "/verify/{id}",
    tag = "pages",
    params(
        ("id" = String, Path, format = Uuid, description = "The session id."),
    ),
    responses(
        (status = 200, description = "The hosted device page; it reads the device token from #token=<jwt>.", content_type = "text/html; charset=utf-8", body = String),
        (status = 400, description = "The id is not a UUID.", body = crate::error::ErrorBody),
    )
)]
/// `GET /verify/{id}`: the hosted device page. The page itself holds nothing about
/// the session; it reads the id from its path and the device token from the fragment.
/// In demo mode it is marked so (see [`VERIFY_BODY_DEMO`]): without a token, it may
/// then ask the demo for one, which answers for demo sessions only.
pub async fn verify(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    session_id(&path)?;
    Ok(match state.demo {
        Some(_) => serve_body(
            &VERIFY_PAGE,
            VERIFY_PAGE
                .body
                .replacen(VERIFY_BODY, VERIFY_BODY_DEMO, 1)
                .into(),
        ),
        None => serve(&VERIFY_PAGE),
    })
}

#[utoipa::path(
    get,
    path = "/demo",
    tag = "pages",
    responses(
        (status = 200, description = "The demo client app.", content_type = "text/html; charset=utf-8", body = String),
        (status = 404, description = "The demo is off.", body = crate::error::ErrorBody),
    )
)]
/// `GET /demo`: the demo client app, only in demo mode.
pub async fn demo(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .demo
        .as_ref()
        .map(|_| serve(&DEMO_PAGE))
        .ok_or_else(|| ApiError::not_found("the demo is off (start the broker with --demo)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_page_has_the_body_tag_that_demo_mode_marks() {
        assert_eq!(VERIFY_PAGE.body.matches(VERIFY_BODY).count(), 1);
        assert!(!VERIFY_PAGE.body.contains("data-demo"));
    }
}

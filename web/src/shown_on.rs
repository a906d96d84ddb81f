//! `shown_on` (SPEC §2): where a session is shown, read from the User-Agent of the
//! first client that subscribed or fetched the QR, for the phone to show the person.
//!
//! The browser family and OS come from Project Woothee's dataset (the `woothee`
//! crate), not from patterns of our own. It is a hint, never a check: a User-Agent
//! says whatever its sender wants (docs/security.md); the binding code is the check.

use actix_web::http::header;
use actix_web::HttpRequest;
use idv_actors::ids::SessionId;
use idv_actors::model::{SessionRecord, ShownOn, MAX_SHOWN_ON_NAME};
use idv_actors::session::messages::{Caller, ShowOn};

use crate::state::AppState;

/// What is shown for a browser or OS the dataset does not know.
const UNKNOWN: &str = "Unknown";

/// The browser family and OS a User-Agent names, as the device page shows them
/// ("Chrome on Linux"); `Unknown` for what the dataset does not recognise.
pub fn parse(user_agent: &str) -> (String, String) {
    let parsed = woothee::parser::Parser::new().parse(user_agent);
    let name = |value: Option<&str>| {
        let value = value.filter(|v| !v.is_empty() && *v != woothee::woothee::VALUE_UNKNOWN);
        fit(match value {
            // The dataset's name for macOS predates Apple's.
            Some("Mac OSX") => "macOS".to_owned(),
            Some(v) => v.to_owned(),
            None => UNKNOWN.to_owned(),
        })
    };
    (
        name(parsed.as_ref().map(|p| p.name)),
        name(parsed.as_ref().map(|p| p.os)),
    )
}

/// `value` cut to at most [`MAX_SHOWN_ON_NAME`] bytes, at a character boundary.
fn fit(mut value: String) -> String {
    if value.len() > MAX_SHOWN_ON_NAME {
        let end = (0..=MAX_SHOWN_ON_NAME)
            .rev()
            .find(|i| value.is_char_boundary(*i))
            .unwrap_or(0);
        value.truncate(end);
    }
    value
}

/// Records where session `id` is shown, from this request, unless `session` (as the
/// caller just read it) already says, or the request has no User-Agent. It never fails
/// the request: `shown_on` is a hint, and a failure to record it is only logged.
pub async fn record(
    state: &AppState,
    req: &HttpRequest,
    id: SessionId,
    caller: Caller,
    session: &SessionRecord,
) {
    if session.shown_on.is_some() || session.status.is_terminal() {
        return;
    }
    let Some(user_agent) = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let (browser, os) = parse(user_agent);
    let shown_on = ShownOn {
        browser,
        os,
        since: state.registry.clock().now(),
    };
    if let Err(e) = state.registry.call(id, ShowOn { caller, shown_on }).await {
        tracing::debug!(session = %id, error = %e, "cannot record where the session is shown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_browsers_are_named_by_family_and_os() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
                ("Chrome", "Linux"),
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
                ("Firefox", "Windows 10"),
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                ("Safari", "macOS"),
            ),
        ];
        for (ua, (browser, os)) in cases {
            assert_eq!(parse(ua), (browser.to_owned(), os.to_owned()), "{ua}");
        }
    }

    #[test]
    fn what_the_dataset_does_not_know_is_unknown() {
        assert_eq!(parse("curl/8.5.0").1, "Unknown");
        assert_eq!(parse(""), ("Unknown".to_owned(), "Unknown".to_owned()));
        let long = fit("é".repeat(100));
        assert_eq!(long, "é".repeat(MAX_SHOWN_ON_NAME / 2));
        assert_eq!(fit("Chrome".into()), "Chrome");
    }
}

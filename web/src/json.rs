//! The JSON body extractor: actix-web's limits and content type, then a bound on how
//! deeply the body nests (SPEC §3), then the typed body.
//!
//! Nesting is checked on the whole body before it is deserialized, because parts of
//! bodies are kept verbatim (`registration` is a `RawValue`) and parsed again later:
//! a body that passes here can be parsed anywhere in the broker.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// Deepest nesting of arrays and objects accepted in a JSON body; the body itself is
/// level 1 (SPEC §3).
pub const MAX_JSON_DEPTH: usize = 32;

/// A JSON body of type `T`: at most [`MAX_JSON_BODY`](crate::MAX_JSON_BODY) bytes,
/// `Content-Type: application/json`, nested at most [`MAX_JSON_DEPTH`] levels.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // actix-web's extractor reads the body under the app's `JsonConfig` (size,
        // content type, error mapping) into a `RawValue`, which checks the syntax
        // without building anything, at any depth.
        let raw = web::Json::<Box<RawValue>>::from_request(req, payload);
        Box::pin(async move {
            let raw = raw.await?.into_inner();
            let text = raw.get();
            if depth(text) > MAX_JSON_DEPTH {
                return Err(ApiError::invalid(format!(
                    "the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
                ))
                .into());
            }
            serde_json::from_str(text)
                .map(Json)
                .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")).into())
        })
    }
}

/// How deeply arrays and objects nest in `json`, which is valid JSON: `1` for `{}`,
/// `2` for `{"a": []}`, `0` for a scalar. Brackets inside strings do not count.
fn depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert_eq!(depth("1"), 0);
        assert_eq!(depth(r#""[{""#), 0);
        assert_eq!(depth("{}"), 1);
        assert_eq!(depth(r#"{"a": [1, {"b": {}}], "c": []}"#), 4);
        assert_eq!(depth(r#"{"a": "]]]]\"[[[", "b": [[]]}"#), 3);
        assert_eq!(depth(r#"["\\", [[]]]"#), 3);
        assert_eq!(depth(&nested(32)), 32);
        assert_eq!(depth(&nested(33)), 33);
        assert_eq!(depth(&format!("[{}, {}]", nested(2), nested(5))), 6);
    }
}

//! Secrets out of connection strings, before anything prints or logs them (SPEC §7:
//! neither a password nor a key is ever printed or logged).
//!
//! One function for both engines' URLs, and for any text that may quote one (an
//! error message): it works on the text, not on a parsed URL, so a string that does
//! not parse (a typo, a list of NATS servers) is still redacted, never echoed whole.

/// What replaces a secret.
const MASK: &str = "***";

/// Parameter names whose value is a secret: `password=` in a URL's query or in
/// libpq's `key=value` form, and its relatives.
const SECRET_KEYS: [&str; 4] = ["password", "sslpassword", "pass", "token"];

/// Schemes whose userinfo without a `:` is itself a secret: a NATS URL `nats://TOKEN@host`
/// authenticates with a token, where a PostgreSQL URL's lone user is only a name.
const TOKEN_SCHEMES: [&str; 4] = ["nats", "tls", "ws", "wss"];

/// `text` with every URL password (`scheme://user:secret@host` → `scheme://user:***@host`),
/// every NATS token (`nats://secret@host` → `nats://***@host`) and every `password=`
/// parameter (query or keyword form, quoted or not) replaced by `***`.
pub fn redact_url(text: &str) -> String {
    redact_parameters(&redact_userinfo(text))
}

/// Masks the secret part of the userinfo of each `scheme://userinfo@host` in `text`.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let scheme = rest[scheme_start..at].to_ascii_lowercase();
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends where the path, query, fragment, the next server of a
        // list, or the surrounding text starts.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | ',' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(MASK);
                    }
                    None if TOKEN_SCHEMES.contains(&scheme.as_str()) => out.push_str(MASK),
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Masks the value of each secret `key=value` in `text`, where the key starts the text
/// or follows `?`, `&`, `;` or white space.
fn redact_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let at_boundary = i == 0 || matches!(bytes[i - 1], b'?' | b'&' | b';' | b' ' | b'\t');
        let secret = if at_boundary {
            SECRET_KEYS.iter().find_map(|k| {
                text.get(i..i + k.len())
                    .filter(|s| s.eq_ignore_ascii_case(k))
                    .and_then(|_| value_start(text, i + k.len()))
            })
        } else {
            None
        };
        match secret {
            Some(start) => {
                out.push_str(&text[i..start]);
                out.push_str(MASK);
                i = value_end(text, start);
            }
            None => {
                // Whole characters only: `i` stays on a char boundary.
                let c = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&text[i..i + c]);
                i += c;
            }
        }
    }
    out
}

/// Where the value after a key ending at `i` starts: after `=` (with libpq's optional
/// spaces around it), or `None` when no `=` follows.
fn value_start(text: &str, i: usize) -> Option<usize> {
    let after = &text[i..];
    let trimmed = after.trim_start_matches(' ');
    let eq = trimmed.strip_prefix('=')?;
    let value = eq.trim_start_matches(' ');
    Some(text.len() - value.len())
}

/// Where a value starting at `start` ends: a quoted one (libpq's `'a b\'c'`) at its
/// closing quote, others at `&`, `#`, white space or a closing quote of the text
/// around it.
fn value_end(text: &str, start: usize) -> usize {
    let value = &text[start..];
    if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        for (n, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '\'' if !escaped => return start + 1 + n + 1,
                _ => escaped = false,
            }
        }
        return text.len();
    }
    start
        + value
            .find(|c: char| matches!(c, '&' | '#' | '"' | '\'' | ';') || c.is_whitespace())
            .unwrap_or(value.len())
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_urls_and_parameters_are_masked_and_nothing_else_changes() {
        let cases = [
            // (given, printed)
            (
                "postgres://idvb:s3cret@db.example:5432/idv?sslmode=verify-full",
                "postgres://idvb:***@db.example:5432/idv?sslmode=verify-full",
            ),
            ("postgresql://idvb@db/idv", "postgresql://idvb@db/idv"),
            (
                "postgres://idvb:p%40ss@db/idv",
                "postgres://idvb:***@db/idv",
            ),
            // A password with an `@` left unescaped: everything up to the last `@` goes.
            ("postgres://idvb:p@ss@db/idv", "postgres://idvb:***@db/idv"),
            (
                "postgres://db/idv?user=idvb&password=s3cret&sslmode=require",
                "postgres://db/idv?user=idvb&password=***&sslmode=require",
            ),
            (
                "postgres://db/idv?PASSWORD=s3cret",
                "postgres://db/idv?PASSWORD=***",
            ),
            (
                "host=db user=idvb password=s3cret dbname=idv",
                "host=db user=idvb password=*** dbname=idv",
            ),
            (
                "host=db password = 'two words\\' and' dbname=idv",
                "host=db password = *** dbname=idv",
            ),
            (
                "nats://app:s3cret@127.0.0.1:4222",
                "nats://app:***@127.0.0.1:4222",
            ),
            (
                "tls://app:s3cret@nats.example",
                "tls://app:***@nats.example",
            ),
            // A NATS URL's lone user is a token.
            (
                "nats://s3cret@nats.example:4222",
                "nats://***@nats.example:4222",
            ),
            (
                "nats://a:s1@h1:4222,nats://a:s2@h2:4222",
                "nats://a:***@h1:4222,nats://a:***@h2:4222",
            ),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            // Inside a message, and not confused by names that end in a secret key.
            (
                "cannot connect to NATS at \"nats://app:s3cret@h:1\": refused",
                "cannot connect to NATS at \"nats://app:***@h:1\": refused",
            ),
            (
                "keypassword_hint=x passwords are hidden",
                "keypassword_hint=x passwords are hidden",
            ),
            ("", ""),
            ("héllo password=ü€ wörld", "héllo password=*** wörld"),
        ];
        for (given, printed) in cases {
            assert_eq!(redact_url(given), printed, "{given}");
            assert!(!redact_url(given).contains("s3cret"), "{given}");
        }
    }
}

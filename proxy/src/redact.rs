//! What in a Traefik configuration is a credential, and how it is hidden in documents
//! people read (status, logs, metrics labels, `traefik dump`): header values whose name
//! carries credentials, `basicAuth`/`digestAuth` users, URL user info, private keys,
//! and the values of `Header`/`HeaderRegexp` rule matchers on such headers.
//!
//! Only the Traefik provider endpoint serves the real values (Traefik needs them); it
//! requires the admin token whenever one is set.

use serde_json::Value;

/// What a hidden value is replaced with. Plain ASCII, valid in URL user info.
pub const REDACTED: &str = "REDACTED";

/// Header names (lower case) that carry credentials whatever their spelling.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"];
/// A name containing one of these (lower case) is taken to carry a credential.
const CREDENTIAL_WORDS: &[&str] = &["token", "secret", "key", "password", "passwd", "auth", "cookie", "credential"];

/// Whether a header (or configuration key) called `name` carries a credential:
/// `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, `X-Api-Key`, or any
/// name containing `token`, `secret`, `key`, `password`, `passwd`, `auth`, `cookie` or
/// `credential` (case-insensitive).
pub fn is_credential_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    CREDENTIAL_HEADERS.contains(&lower.as_str()) || CREDENTIAL_WORDS.iter().any(|w| lower.contains(w))
}

/// `url` with its user info (`user:password@`) replaced by [`REDACTED`]; unchanged when it
/// has none.
pub fn redact_url(url: &str) -> String {
    redact_text(url)
}

/// `text` with the user info of every `scheme://user:password@host` in it replaced by
/// [`REDACTED`] (for error messages that quote URLs).
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the path, query or fragment, or where a quoted URL ends.
        let end = tail.find(['/', '?', '#', '"', '\'', '`', ' ', '\t', '\n', ')', ',']).unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str(REDACTED);
                rest = &tail[userinfo_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// `rule` with the value of every `Header(name, value)` and `HeaderRegexp(name, value)`
/// matcher on a credential header replaced by [`REDACTED`], and URL user info hidden.
pub fn redact_rule(rule: &str) -> String {
    let mut out = String::with_capacity(rule.len());
    let mut rest = rule;
    while let Some(at) = rest.find("Header") {
        let (head, tail) = rest.split_at(at + "Header".len());
        out.push_str(head);
        let tail = tail.strip_prefix("Regexp").map_or(tail, |t| {
            out.push_str("Regexp");
            t
        });
        rest = tail;
        let Some(args) = tail.strip_prefix('(') else { continue };
        let Some((name, after_name)) = quoted(args) else { continue };
        let after_comma = after_name.trim_start();
        let Some(after_comma) = after_comma.strip_prefix(',') else { continue };
        let value_start = after_comma.trim_start();
        let Some((_, after_value)) = quoted(value_start) else { continue };
        if !is_credential_name(name) {
            continue;
        }
        // Copy up to the value's opening quote, the marker, then from its closing quote.
        let consumed = tail.len() - value_start.len();
        out.push_str(&tail[..consumed + 1]);
        out.push_str(REDACTED);
        let close = tail.len() - after_value.len() - 1;
        rest = &tail[close..];
    }
    out.push_str(rest);
    redact_text(&out)
}

/// The content of the quoted string (backticks or double quotes) `s` starts with (after
/// spaces), and what follows its closing quote.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    let quote = s.chars().next().filter(|c| *c == '`' || *c == '"')?;
    let body = &s[1..];
    let end = body.find(quote)?;
    Some((&body[..end], &body[end + 1..]))
}

/// Hides every credential in a JSON document (a Traefik dynamic configuration, or a
/// status document) in place:
/// - a string under a key that [`is_credential_name`] (header maps such as
///   `customRequestHeaders`, health-check `headers`, plugin settings, `keyFile`);
/// - every entry of a `users` list (`basicAuth`, `digestAuth` hashes);
/// - any string holding a PEM private key;
/// - the values of credential headers in `rule` strings;
/// - the user info of URLs in every string.
///
/// Empty strings stay empty (an empty header value removes the header: it hides nothing).
pub fn redact_value(doc: &mut Value) {
    match doc {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(s) if s.is_empty() => {}
                    Value::String(s) if is_credential_name(key) || is_private_key(s) => *s = REDACTED.to_string(),
                    Value::String(s) if key == "rule" => *s = redact_rule(s),
                    Value::Array(users) if key == "users" => {
                        for u in users.iter_mut().filter(|u| u.as_str().is_some_and(|s| !s.is_empty())) {
                            *u = Value::String(REDACTED.to_string());
                        }
                    }
                    other => redact_value(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::String(s) if is_private_key(s) => *s = REDACTED.to_string(),
        Value::String(s) if s.contains("://") => *s = redact_text(s),
        _ => {}
    }
}

fn is_private_key(s: &str) -> bool {
    s.contains("-----BEGIN") && s.contains("PRIVATE KEY")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn credential_names() {
        for name in ["Authorization", "proxy-authorization", "Cookie", "Set-Cookie", "X-Api-Key", "X-Auth-Token"] {
            assert!(is_credential_name(name), "{name}");
        }
        for name in ["X-Secret-Thing", "db_password", "keyFile", "X-Upstream-Credentials"] {
            assert!(is_credential_name(name), "{name}");
        }
        for name in ["X-Forwarded-Proto", "X-Frame-Options", "Content-Type", "X-Served-By", "Host"] {
            assert!(!is_credential_name(name), "{name}");
        }
    }

    #[test]
    fn url_user_info_is_hidden() {
        assert_eq!(redact_url("http://user:pa55@10.0.0.1:8080/x?y=1"), "http://REDACTED@10.0.0.1:8080/x?y=1");
        assert_eq!(redact_url("https://tok@h"), "https://REDACTED@h");
        assert_eq!(
            redact_url("http://10.0.0.1:8080/a@b"),
            "http://10.0.0.1:8080/a@b",
            "an @ in the path is not user info"
        );
        assert_eq!(redact_url("http://h:1"), "http://h:1");
        assert_eq!(
            redact_text("\"http://a:b@h:1\" and \"https://c@d/e\" are bad"),
            "\"http://REDACTED@h:1\" and \"https://REDACTED@d/e\" are bad"
        );
        assert_eq!(redact_text("no urls here: a@b"), "no urls here: a@b");
    }

    #[test]
    fn rule_header_values_are_hidden() {
        assert_eq!(
            redact_rule("Host(`a`) && Header(`Authorization`, `Bearer s3cret`)"),
            "Host(`a`) && Header(`Authorization`, `REDACTED`)"
        );
        assert_eq!(redact_rule("HeaderRegexp(\"X-Api-Key\", \"^k.*$\")"), "HeaderRegexp(\"X-Api-Key\", \"REDACTED\")");
        let plain = "Header(`X-Env`, `prod`) || PathPrefix(`/Header`)";
        assert_eq!(redact_rule(plain), plain);
        assert_eq!(redact_rule("Header(`Cookie`"), "Header(`Cookie`", "a cut-off rule stays as it is");
    }

    #[test]
    fn traefik_document_credentials_are_hidden() {
        let mut doc = json!({"http": {
            "routers": {"auth": {"rule": "Header(`Authorization`, `Bearer r`)", "service": "s", "middlewares": ["auth"]}},
            "middlewares": {
                "auth": {"basicAuth": {"users": ["u:$apr1$x$hash"], "realm": "r"}},
                "digest": {"digestAuth": {"users": ["u:r:hash"]}},
                "hdrs": {"headers": {
                    "customRequestHeaders": {"Authorization": "Bearer s3cret", "X-Served-By": "c", "X-Remove": ""},
                    "customResponseHeaders": {"Set-Cookie": "sid=1"}}},
                "fwd": {"forwardAuth": {"address": "http://u:p@auth:9000/check", "authResponseHeaders": ["X-User"]}}
            },
            "services": {"s": {"loadBalancer": {
                "servers": [{"url": "http://user:pa55@127.0.0.1:1"}],
                "healthCheck": {"path": "/h", "headers": {"X-Api-Key": "k1", "X-Env": "prod"}}}}}
        },
        "tls": {"certificates": [{"certFile": "/c.pem", "keyFile": "-----BEGIN PRIVATE KEY-----\nabc"}]}});
        redact_value(&mut doc);
        let text = doc.to_string();
        for secret in ["s3cret", "$apr1$", "u:r:hash", "sid=1", "pa55", "k1", "u:p@", "Bearer r", "abc"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let h = &doc["http"]["middlewares"]["hdrs"]["headers"]["customRequestHeaders"];
        assert_eq!(h["Authorization"], REDACTED);
        assert_eq!(h["X-Served-By"], "c", "other headers are kept");
        assert_eq!(h["X-Remove"], "", "an empty value (a removal) is kept");
        assert_eq!(doc["http"]["services"]["s"]["loadBalancer"]["servers"][0]["url"], "http://REDACTED@127.0.0.1:1");
        assert_eq!(doc["http"]["services"]["s"]["loadBalancer"]["healthCheck"]["headers"]["X-Env"], "prod");
        assert_eq!(doc["http"]["middlewares"]["fwd"]["forwardAuth"]["authResponseHeaders"][0], "X-User");
        assert_eq!(doc["http"]["routers"]["auth"]["middlewares"][0], "auth", "names are not credentials");
        assert_eq!(doc["http"]["middlewares"]["auth"]["basicAuth"]["realm"], "r");
    }
}

//! `basicAuth`: HTTP Basic authentication against htpasswd users, as Traefik does it.
//! Users come from `usersFile` (read by the control plane) and `users` (inline), the
//! file's first, inline ones overriding a file user of the same name. A request without
//! valid credentials gets `401` with `WWW-Authenticate: Basic realm="<realm>"` and never
//! reaches the upstream. On success the user name goes upstream in `headerField` (when
//! set) and `Authorization` is removed when `removeHeader` is set.
//!
//! bcrypt is slow by design (tens of milliseconds): its check runs on Tokio's blocking
//! pool (`spawn_blocking`), so the proxy's runtime threads never wait on it. apr1 and
//! SHA-1 are checked inline (apr1 is 1000 MD5 rounds, well under a millisecond).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use http::header::{HeaderName, HeaderValue};
use pingora_proxy::Session;
use serde_json::Value;

use super::htpasswd::{merged_lines, pass_user, Hash, UsersOptions};
use super::{options, Apply, BuildCx, BuildError, MwState, Reply, Verdict};

/// A compiled `basicAuth`. `Debug` shows user names, never hashes.
#[derive(Debug)]
pub struct BasicAuth {
    users: Arc<HashMap<String, Hash>>,
    challenge: String,
    remove_header: bool,
    header_field: Option<HeaderName>,
}

/// Parse and validate `headerField`.
pub(crate) fn header_field(kind: &str, v: Option<&str>) -> Result<Option<HeaderName>, BuildError> {
    match v.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => HeaderName::from_bytes(s.as_bytes())
            .map(Some)
            .map_err(|_| BuildError::new(format!("{kind}.headerField"), format!("{s:?} is not a valid header name"))),
    }
}

/// The `usersFile` contents, or an error when the plane did not load it.
pub(crate) fn users_file<'a>(
    kind: &str,
    reference: Option<&str>,
    cx: &'a BuildCx<'_>,
) -> Result<Option<&'a str>, BuildError> {
    let Some(r) = reference.filter(|r| !r.is_empty()) else { return Ok(None) };
    let field = format!("{kind}.usersFile");
    let bytes = cx.file(r).ok_or_else(|| BuildError::new(&field, format!("{r}: file not loaded")))?;
    std::str::from_utf8(bytes).map(Some).map_err(|_| BuildError::new(field, format!("{r}: not UTF-8 text")))
}

/// Build from Traefik's `basicAuth` options.
pub fn build(config: &Value, cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    let o: UsersOptions = options("basicAuth", config)?;
    let file = users_file("basicAuth", o.users_file.as_deref(), cx)?;
    let mut users = HashMap::new();
    for (inline, line) in merged_lines(file, &o.users) {
        let field = match inline {
            Some(i) => format!("basicAuth.users[{i}]"),
            None => "basicAuth.usersFile".to_string(),
        };
        let Some((user, hash)) = line.split_once(':') else {
            return Err(BuildError::new(field, "expected user:hash"));
        };
        let hash = Hash::parse(hash).map_err(|e| BuildError::new(&field, format!("user {user:?}: {e}")))?;
        users.insert(user.to_string(), hash);
    }
    if users.is_empty() {
        return Err(BuildError::new("basicAuth.users", "no users (set users or usersFile)"));
    }
    let realm = o.realm.filter(|r| !r.is_empty()).unwrap_or_else(|| "traefik".to_string());
    let challenge = format!("Basic realm=\"{}\"", realm.replace('\\', "\\\\").replace('"', "\\\""));
    HeaderValue::from_str(&challenge).map_err(|_| BuildError::new("basicAuth.realm", "not a valid header value"))?;
    Ok(Box::new(BasicAuth {
        users: Arc::new(users),
        challenge,
        remove_header: o.remove_header,
        header_field: header_field("basicAuth", o.header_field.as_deref())?,
    }))
}

/// `user` and `password` from a `Basic` authorization value (scheme case-insensitive).
pub fn parse_basic(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(&value[6..]).ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((user, raw[colon + 1..].to_vec()))
}

/// The 401 answer asking for credentials.
pub(crate) fn unauthorized(challenge: &str) -> Reply {
    Reply::text(401, "401 Unauthorized\n").with(http::header::WWW_AUTHENTICATE, challenge)
}

impl BasicAuth {
    async fn check(&self, user: &str, password: Vec<u8>) -> bool {
        let Some(hash) = self.users.get(user) else { return false };
        if !hash.is_slow() {
            return hash.verify(&password);
        }
        let users = Arc::clone(&self.users);
        let user = user.to_string();
        tokio::task::spawn_blocking(move || users.get(&user).is_some_and(|h| h.verify(&password)))
            .await
            .unwrap_or(false)
    }
}

#[async_trait::async_trait]
impl Apply for BasicAuth {
    async fn request(
        &self,
        session: &mut Session,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        let creds =
            session.req_header().headers.get(http::header::AUTHORIZATION).and_then(|v| parse_basic(v.as_bytes()));
        let Some((user, password)) = creds else {
            tracing::debug!("basicAuth: no credentials");
            return Ok(Verdict::Respond(unauthorized(&self.challenge)));
        };
        if !self.check(&user, password).await {
            tracing::debug!("basicAuth: authentication failed");
            return Ok(Verdict::Respond(unauthorized(&self.challenge)));
        }
        pass_user(session.req_header_mut(), self.header_field.as_ref(), self.remove_header, &user)?;
        Ok(Verdict::Next)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn basic_credentials_parse() {
        // "Aladdin:open sesame" (RFC 7617).
        let (u, p) = parse_basic(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==").unwrap();
        assert_eq!((u.as_str(), p.as_slice()), ("Aladdin", b"open sesame".as_slice()));
        assert!(parse_basic(b"bAsIc QWxhZGRpbjpvcGVuIHNlc2FtZQ==").is_some());
        assert!(parse_basic(b"Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ==").is_none());
        assert!(parse_basic(b"Basic !!!").is_none());
        // No colon.
        assert!(parse_basic(b"Basic QWxhZGRpbg==").is_none());
    }
}

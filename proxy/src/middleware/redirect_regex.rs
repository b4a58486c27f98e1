//! `redirectRegex`: match the request's full URL (`scheme://host/path?query`, built as
//! Traefik builds it) against a regular expression and, when the replacement gives a
//! different URL, redirect the client there: 302 (or 307 for a method other than GET),
//! 301/308 when `permanent`. The upstream never sees a redirected request. The pattern
//! is compiled once, at build time.

use http::header::LOCATION;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::{options, Apply, BuildCx, BuildError, MwState, Reply, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    regex: String,
    #[serde(default)]
    replacement: String,
    #[serde(default)]
    permanent: bool,
}

/// A compiled `redirectRegex`.
#[derive(Debug)]
pub struct RedirectRegex {
    regex: Regex,
    replacement: String,
    permanent: bool,
}

/// Build from Traefik's `redirectRegex` options.
pub fn build(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    let o: Options = options("redirectRegex", config)?;
    let regex = Regex::new(&o.regex).map_err(|e| BuildError::new("redirectRegex.regex", e.to_string()))?;
    Ok(Box::new(RedirectRegex { regex, replacement: o.replacement, permanent: o.permanent }))
}

/// The request's URL as Traefik matches it: the scheme is `https` on a TLS connection
/// and `http` otherwise (an absolute-form target's own scheme, host and port are taken
/// when the connection is not TLS), the host is the `Host` header, then the target.
pub fn request_url(req: &RequestHeader, tls: bool) -> String {
    let uri = &req.uri;
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut scheme = uri.scheme_str().unwrap_or("http");
    if tls {
        scheme = "https";
    }
    let host = match uri.authority() {
        Some(a) => a.as_str(),
        None => req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
    };
    format!("{scheme}://{host}{target}")
}

/// The status of a redirect: 302/307 temporary, 301/308 permanent; the 30x that keeps
/// the method (307/308) for anything but GET, as Traefik does.
pub fn redirect_status(method: &http::Method, permanent: bool) -> u16 {
    match (permanent, method == http::Method::GET) {
        (false, true) => 302,
        (false, false) => 307,
        (true, true) => 301,
        (true, false) => 308,
    }
}

/// The reason phrase Traefik writes as the body of a redirect.
fn reason(status: u16) -> &'static str {
    match status {
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        _ => "Permanent Redirect",
    }
}

impl RedirectRegex {
    /// Where to send the client for `url`, when the pattern matches and the
    /// replacement changes it.
    pub fn target(&self, url: &str) -> Option<String> {
        if !self.regex.is_match(url) {
            return None;
        }
        let new = self.regex.replace_all(url, self.replacement.as_str());
        (new != url).then(|| new.into_owned())
    }
}

#[async_trait::async_trait]
impl Apply for RedirectRegex {
    async fn request(
        &self,
        session: &mut Session,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let url = request_url(session.req_header(), tls);
        let Some(location) = self.target(&url) else { return Ok(Verdict::Next) };
        let Ok(value) = http::HeaderValue::from_str(&location) else {
            // Traefik answers 500 when the rewritten URL does not parse.
            return Ok(Verdict::Respond(Reply::text(500, "Internal Server Error")));
        };
        let status = redirect_status(&session.req_header().method, self.permanent);
        let mut reply = Reply::text(status, reason(status));
        reply.headers.push((LOCATION, value));
        Ok(Verdict::Respond(reply))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn req(method: &str, target: &str, host: &str) -> RequestHeader {
        let mut r = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        r.insert_header("host", host).unwrap();
        r
    }

    #[test]
    fn the_url_is_built_as_traefik_builds_it() {
        assert_eq!(request_url(&req("GET", "/a?b=1", "x.test:8080"), false), "http://x.test:8080/a?b=1");
        assert_eq!(request_url(&req("GET", "/a", "x.test"), true), "https://x.test/a");
        let mut absolute = req("GET", "/", "x.test");
        absolute.set_uri(http::Uri::from_static("http://y.test/p"));
        assert_eq!(request_url(&absolute, false), "http://y.test/p");
    }

    #[test]
    fn statuses_follow_the_method() {
        assert_eq!(redirect_status(&http::Method::GET, false), 302);
        assert_eq!(redirect_status(&http::Method::POST, false), 307);
        assert_eq!(redirect_status(&http::Method::GET, true), 301);
        assert_eq!(redirect_status(&http::Method::PUT, true), 308);
    }

    #[test]
    fn only_a_changed_url_redirects() {
        let m = RedirectRegex {
            regex: Regex::new("^http://localhost/(.*)").unwrap(),
            replacement: "http://mydomain/${1}".into(),
            permanent: false,
        };
        assert_eq!(m.target("http://localhost/a?b"), Some("http://mydomain/a?b".into()));
        assert_eq!(m.target("http://other/a"), None);
        let same = RedirectRegex { regex: Regex::new("^(.*)$").unwrap(), replacement: "$1".into(), permanent: false };
        assert_eq!(same.target("http://x/"), None);
    }
}

//! Strict HTTP/1 framing at the proxy's edges: what Pingora 0.9.1 leaves to us.
//!
//! Pingora already answers 400 itself, before any hook runs, to a request whose
//! `Content-Length` values differ or are not numbers, whose final `Transfer-Encoding` is
//! not `chunked`, that is HTTP/1.0 with `Transfer-Encoding`, or that carries two `Host`
//! fields; with both `Transfer-Encoding` and `Content-Length` it drops the length and
//! closes the connection afterwards (RFC 9112 §6.3), and it strips the request's
//! hop-by-hop fields (and those `Connection` names) on the way upstream. What it lets
//! through, and this module handles:
//! - an agreeing list or repetition of `Content-Length` (`42, 42`) is forwarded as it
//!   came, so a backend that reads it differently can be smuggled a second request: it
//!   is rewritten to one `Content-Length`;
//! - an HTTP/1.1 request without `Host` (RFC 9112 §3.2 says 400);
//! - the response's hop-by-hop fields (`Keep-Alive`, `Proxy-Connection`, whatever its
//!   `Connection` names, ...) reach the client, and a 204 keeps its `Content-Length`.

use http::header::{self, HeaderName};
use http::{StatusCode, Version};
use pingora_http::{RequestHeader, ResponseHeader};

/// Why a request is refused with 400 before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `Content-Length` values that disagree or are not numbers.
    #[error("conflicting or invalid Content-Length")]
    ContentLength,
    /// HTTP/1.1 without a `Host` field.
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
}

/// Response fields that are about one connection, never forwarded (RFC 9110 §7.6.1,
/// plus `Proxy-Authenticate`, which concerns the client's own proxy, as Go's reverse
/// proxy under Traefik treats it). `Transfer-Encoding` is not among them: Pingora frames
/// the downstream body from it.
const RESPONSE_HOP_BY_HOP: [&str; 5] = ["keep-alive", "proxy-connection", "te", "proxy-authenticate", "upgrade"];

impl Refusal {
    /// The body of the 400 answer.
    pub fn body(self) -> &'static str {
        match self {
            Refusal::ContentLength => "400 conflicting or invalid Content-Length\n",
            Refusal::MissingHost => "400 HTTP/1.1 request without a Host header\n",
        }
    }

    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ContentLength => "content_length",
            Refusal::MissingHost => "missing_host",
        }
    }
}

/// The single length an agreeing set of `Content-Length` values states. `Ok(None)`:
/// no `Content-Length`. `Err`: values that disagree or are not `1*DIGIT`.
fn content_length<'a>(values: impl Iterator<Item = &'a http::HeaderValue>) -> Result<Option<(u64, usize)>, ()> {
    let mut found: Option<u64> = None;
    let mut tokens = 0usize;
    for v in values {
        for t in v.as_bytes().split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.is_empty() || !t.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = std::str::from_utf8(t).ok().and_then(|s| s.parse::<u64>().ok()).ok_or(())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
            tokens += 1;
        }
    }
    Ok(found.map(|n| (n, tokens)))
}

/// Check and normalise a request head before routing: one `Content-Length` or none,
/// a `Host` on HTTP/1.1. A refused request must get 400 and its connection closed.
pub fn check_request(req: &mut RequestHeader) -> Result<(), Refusal> {
    if req.version == Version::HTTP_11 && !req.headers.contains_key(header::HOST) {
        return Err(Refusal::MissingHost);
    }
    if req.headers.contains_key(header::TRANSFER_ENCODING) {
        // Transfer-Encoding frames the body; Pingora already removed any length.
        req.remove_header(&header::CONTENT_LENGTH);
        return Ok(());
    }
    match content_length(req.headers.get_all(header::CONTENT_LENGTH).iter()) {
        Err(()) => Err(Refusal::ContentLength),
        Ok(Some((n, tokens))) if tokens > 1 => {
            req.insert_header(header::CONTENT_LENGTH, n.to_string()).map_err(|_| Refusal::ContentLength)
        }
        Ok(_) => Ok(()),
    }
}

/// Strip what must not reach the client from a response head: the fields its
/// `Connection` names (except framing, which Pingora owns), `Connection` itself (Pingora
/// writes its own), the hop-by-hop fields (`Upgrade` kept on a 101), and on 1xx, 204
/// and 304 any `Content-Length` and `Transfer-Encoding` (RFC 9110 §8.6, RFC 9112 §6.1).
/// An agreeing list of lengths becomes one.
pub fn clean_response(resp: &mut ResponseHeader) {
    let status = resp.status;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut nominated: Vec<HeaderName> = Vec::new();
    let mut upgrade_token = false;
    for token in resp
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
    {
        let Ok(name) = HeaderName::from_bytes(token) else { continue };
        if name == header::UPGRADE {
            upgrade_token = true;
        }
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::UPGRADE {
            continue;
        }
        nominated.push(name);
    }
    for name in &nominated {
        resp.remove_header(name);
    }
    resp.remove_header(&header::CONNECTION);
    for name in RESPONSE_HOP_BY_HOP {
        if switching && name == "upgrade" {
            continue;
        }
        resp.remove_header(name);
    }
    if switching && upgrade_token {
        // A 101 is informational: Pingora writes no Connection of its own on it.
        let _ = resp.insert_header(header::CONNECTION, "upgrade");
    }
    if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.remove_header(&header::TRANSFER_ENCODING);
        return;
    }
    if !resp.headers.contains_key(header::TRANSFER_ENCODING) {
        if let Ok(Some((n, tokens))) = content_length(resp.headers.get_all(header::CONTENT_LENGTH).iter()) {
            if tokens > 1 {
                let _ = resp.insert_header(header::CONTENT_LENGTH, n.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn all(h: &http::HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }

    #[test]
    fn agreeing_lengths_become_one() {
        for sent in [
            &[("Host", "a"), ("Content-Length", "42, 42")][..],
            &[("Host", "a"), ("Content-Length", "42"), ("Content-Length", "42")],
        ] {
            let mut r = request(Version::HTTP_11, sent);
            check_request(&mut r).unwrap();
            assert_eq!(all(&r.headers, "content-length"), ["42"], "{sent:?}");
        }
        let mut r = request(Version::HTTP_11, &[("Host", "a"), ("Content-Length", "7")]);
        check_request(&mut r).unwrap();
        assert_eq!(all(&r.headers, "content-length"), ["7"]);
    }

    #[test]
    fn disagreeing_or_odd_lengths_are_refused() {
        for cl in ["42, 43", "42,", "-1", "+42", "4 2", "0x2a", "", "99999999999999999999999"] {
            let mut r = request(Version::HTTP_11, &[("Host", "a"), ("Content-Length", cl)]);
            assert_eq!(check_request(&mut r), Err(Refusal::ContentLength), "{cl:?}");
        }
        let mut r = request(Version::HTTP_11, &[("Host", "a"), ("Content-Length", "1"), ("Content-Length", "2")]);
        assert_eq!(check_request(&mut r), Err(Refusal::ContentLength));
    }

    #[test]
    fn transfer_encoding_wins_over_length() {
        let mut r =
            request(Version::HTTP_11, &[("Host", "a"), ("Transfer-Encoding", "chunked"), ("Content-Length", "42, 43")]);
        check_request(&mut r).unwrap();
        assert!(r.headers.get("content-length").is_none());
    }

    #[test]
    fn host_is_required_on_http11_only() {
        let mut r = request(Version::HTTP_11, &[]);
        assert_eq!(check_request(&mut r), Err(Refusal::MissingHost));
        let mut r = request(Version::HTTP_11, &[("Host", "")]);
        assert_eq!(check_request(&mut r), Ok(()), "an empty Host is allowed (RFC 9112 §3.2)");
        let mut r = request(Version::HTTP_10, &[]);
        assert_eq!(check_request(&mut r), Ok(()));
    }

    #[test]
    fn response_hop_by_hop_fields_are_stripped() {
        let mut r = response(
            200,
            &[
                ("Connection", "X-Secret, keep-alive"),
                ("Connection", "Content-Length"),
                ("X-Secret", "s"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Proxy-Authenticate", "Basic"),
                ("TE", "trailers"),
                ("Upgrade", "h2c"),
                ("Content-Length", "2"),
                ("X-Kept", "k"),
            ],
        );
        clean_response(&mut r);
        let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length", "x-kept"], "{:?}", r.headers);
    }

    #[test]
    fn switching_protocols_keeps_its_upgrade() {
        let mut r = response(101, &[("Connection", "Upgrade, X-Secret"), ("Upgrade", "websocket"), ("X-Secret", "s")]);
        clean_response(&mut r);
        assert_eq!(all(&r.headers, "upgrade"), ["websocket"]);
        assert_eq!(all(&r.headers, "connection"), ["upgrade"]);
        assert!(r.headers.get("x-secret").is_none());
    }

    #[test]
    fn bodiless_statuses_lose_their_body_headers() {
        for status in [100, 103, 204, 304] {
            let mut r = response(status, &[("Content-Length", "12"), ("Transfer-Encoding", "chunked"), ("ETag", "e")]);
            clean_response(&mut r);
            assert!(r.headers.get("content-length").is_none(), "{status}");
            assert!(r.headers.get("transfer-encoding").is_none(), "{status}");
            assert_eq!(all(&r.headers, "etag"), ["e"]);
        }
        let mut r = response(200, &[("Content-Length", "5, 5")]);
        clean_response(&mut r);
        assert_eq!(all(&r.headers, "content-length"), ["5"]);
        let mut r = response(200, &[("Transfer-Encoding", "chunked")]);
        clean_response(&mut r);
        assert_eq!(all(&r.headers, "transfer-encoding"), ["chunked"], "Pingora frames the body from it");
    }
}

//! `forwardAuth`: ask an authentication server about each request, as Traefik does.
//!
//! The auth server gets a `GET` (the client's method with `preserveRequestMethod`) to
//! `address`, carrying the client's headers (only `authRequestHeaders` when set; never
//! hop-by-hop ones, `Host` or `Content-Length`) and `X-Forwarded-For` (the peer address,
//! after the client's own list when `trustForwardHeader`), `X-Forwarded-Method`,
//! `-Proto`, `-Host` and `-Uri` (the client's values when `trustForwardHeader` and
//! present, else the request's). The body is not sent.
//!
//! - A 2xx answer lets the request go on, with the `authResponseHeaders` and the headers
//!   matching `authResponseHeadersRegex` of the answer set on it (replacing the client's
//!   headers of those names).
//! - Any other answer goes back to the client as is: status, headers (less hop-by-hop
//!   ones), body; a relative `Location` is made absolute against `address` unless
//!   `preserveLocationHeader`. Redirects are not followed.
//! - An auth server that cannot be reached (or times out after [`TIMEOUT`]) gets the
//!   client a 500 with an empty body, as in Traefik.
//!
//! One `reqwest` client per middleware, built with its TLS settings when the
//! configuration is compiled. `forwardBody`, `maxBodySize`, `addAuthCookiesToResponse`,
//! `headerField` and `tls.caOptional` are refused.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora_proxy::Session;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::{options, Apply, BuildCx, BuildError, MwState, Reply, Verdict};

/// How long the auth server has to answer (Traefik's client has 30 s too).
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest auth-server body relayed to the client; a larger one is a 500.
pub const MAX_AUTH_BODY: usize = 1 << 20;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Tls {
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
    #[serde(default)]
    ca_optional: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Options {
    address: String,
    #[serde(default)]
    tls: Option<Tls>,
    #[serde(default)]
    trust_forward_header: bool,
    #[serde(default)]
    auth_response_headers: Vec<String>,
    #[serde(default)]
    auth_response_headers_regex: Option<String>,
    #[serde(default)]
    auth_request_headers: Vec<String>,
    #[serde(default)]
    add_auth_cookies_to_response: Vec<String>,
    #[serde(default)]
    forward_body: bool,
    #[serde(default)]
    max_body_size: Option<i64>,
    #[serde(default)]
    preserve_location_header: bool,
    #[serde(default)]
    preserve_request_method: bool,
    #[serde(default)]
    header_field: Option<String>,
}

/// A compiled `forwardAuth`.
#[derive(Debug)]
pub struct ForwardAuth {
    address: url::Url,
    client: reqwest::Client,
    trust_forward_header: bool,
    response_headers: Vec<HeaderName>,
    response_regex: Option<Regex>,
    request_headers: Vec<HeaderName>,
    preserve_location: bool,
    preserve_method: bool,
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

fn hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// The file references of a `forwardAuth` configuration: `tls.ca`, `tls.cert`, `tls.key`.
pub fn tls_files(config: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(tls) = config.get("tls") {
        for key in ["ca", "cert", "key"] {
            if let Some(f) = tls.get(key).and_then(Value::as_str).filter(|f| !f.is_empty()) {
                out.push((format!("forwardAuth.tls.{key}"), f.to_string()));
            }
        }
    }
    out
}

fn unsupported(field: &str) -> BuildError {
    BuildError::new(format!("forwardAuth.{field}"), "not supported by Constellation")
}

/// Build from Traefik's `forwardAuth` options.
pub fn build(config: &Value, cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    let o: Options = options("forwardAuth", config)?;
    if o.forward_body {
        return Err(unsupported("forwardBody"));
    }
    if o.max_body_size.is_some_and(|m| m != -1) {
        return Err(unsupported("maxBodySize"));
    }
    if !o.add_auth_cookies_to_response.is_empty() {
        return Err(unsupported("addAuthCookiesToResponse"));
    }
    if o.header_field.as_deref().is_some_and(|h| !h.is_empty()) {
        return Err(unsupported("headerField"));
    }
    let address = url::Url::parse(&o.address)
        .map_err(|e| BuildError::new("forwardAuth.address", format!("{:?}: {e}", o.address)))?;
    if !matches!(address.scheme(), "http" | "https") {
        return Err(BuildError::new("forwardAuth.address", "must be an http:// or https:// URL"));
    }
    let names = |field: &str, list: &[String]| -> Result<Vec<HeaderName>, BuildError> {
        list.iter()
            .enumerate()
            .map(|(i, h)| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    BuildError::new(format!("forwardAuth.{field}[{i}]"), format!("{h:?} is not a header name"))
                })
            })
            .collect()
    };
    let response_headers = names("authResponseHeaders", &o.auth_response_headers)?;
    let request_headers = names("authRequestHeaders", &o.auth_request_headers)?;
    let response_regex = match o.auth_response_headers_regex.as_deref().filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => {
            Some(Regex::new(r).map_err(|e| BuildError::new("forwardAuth.authResponseHeadersRegex", e.to_string()))?)
        }
    };
    let mut builder =
        reqwest::Client::builder().timeout(TIMEOUT).redirect(reqwest::redirect::Policy::none()).no_proxy();
    let tls = o.tls.unwrap_or_default();
    if tls.ca_optional == Some(true) {
        return Err(unsupported("tls.caOptional"));
    }
    let file = |key: &str, r: &Option<String>| -> Result<Option<&[u8]>, BuildError> {
        match r.as_deref().filter(|r| !r.is_empty()) {
            None => Ok(None),
            Some(r) => cx
                .file(r)
                .map(Some)
                .ok_or_else(|| BuildError::new(format!("forwardAuth.tls.{key}"), format!("{r}: file not loaded"))),
        }
    };
    if let Some(ca) = file("ca", &tls.ca)? {
        let certs = reqwest::Certificate::from_pem_bundle(ca)
            .map_err(|e| BuildError::new("forwardAuth.tls.ca", format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(BuildError::new("forwardAuth.tls.ca", "no certificate in the file"));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    match (file("cert", &tls.cert)?, file("key", &tls.key)?) {
        (Some(cert), Some(key)) => {
            let mut pem = cert.to_vec();
            pem.push(b'\n');
            pem.extend_from_slice(key);
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| BuildError::new("forwardAuth.tls.cert", format!("certificate and key unusable: {e}")))?;
            builder = builder.identity(id);
        }
        (None, None) => {}
        (Some(_), None) => return Err(BuildError::new("forwardAuth.tls.key", "required with tls.cert")),
        (None, Some(_)) => return Err(BuildError::new("forwardAuth.tls.cert", "required with tls.key")),
    }
    if tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    let client =
        builder.build().map_err(|e| BuildError::new("forwardAuth.tls", format!("cannot build the client: {e}")))?;
    Ok(Box::new(ForwardAuth {
        address,
        client,
        trust_forward_header: o.trust_forward_header,
        response_headers,
        response_regex,
        request_headers,
        preserve_location: o.preserve_location_header,
        preserve_method: o.preserve_request_method,
    }))
}

/// `name` as Go's `CanonicalHeaderKey` writes it (`x-auth-user` → `X-Auth-User`), which
/// is what Traefik matches `authResponseHeadersRegex` against.
pub fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
        upper = c == '-';
    }
    out
}

impl ForwardAuth {
    fn auth_request(&self, session: &Session) -> reqwest::RequestBuilder {
        let req = session.req_header();
        let method = if self.preserve_method {
            reqwest::Method::from_bytes(req.method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET)
        } else {
            reqwest::Method::GET
        };
        let mut headers = http::HeaderMap::new();
        for (name, value) in req.headers.iter() {
            if hop_by_hop(name) || name == http::header::HOST || name == http::header::CONTENT_LENGTH {
                continue;
            }
            if !self.request_headers.is_empty() && !self.request_headers.contains(name) {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        let trusted = |n: &str| if self.trust_forward_header { req.headers.get(n).cloned() } else { None };
        let peer: Option<IpAddr> = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if let Some(ip) = peer {
            let prior: Vec<&str> = if self.trust_forward_header {
                req.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect()
            } else {
                Vec::new()
            };
            let xff = if prior.is_empty() { ip.to_string() } else { format!("{}, {ip}", prior.join(", ")) };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                headers.insert("x-forwarded-for", v);
            }
        } else if !self.trust_forward_header {
            headers.remove("x-forwarded-for");
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let method_v = trusted("x-forwarded-method").or_else(|| HeaderValue::from_str(req.method.as_str()).ok());
        let proto = trusted("x-forwarded-proto")
            .unwrap_or_else(|| HeaderValue::from_static(if tls { "https" } else { "http" }));
        let host = trusted("x-forwarded-host").or_else(|| {
            req.headers
                .get(http::header::HOST)
                .cloned()
                .or_else(|| req.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()))
        });
        let uri = trusted("x-forwarded-uri")
            .or_else(|| HeaderValue::from_str(req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")).ok());
        for (name, value) in [
            ("x-forwarded-method", method_v),
            ("x-forwarded-proto", Some(proto)),
            ("x-forwarded-host", host),
            ("x-forwarded-uri", uri),
        ] {
            match value {
                Some(v) => {
                    headers.insert(name, v);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        self.client.request(method, self.address.clone()).headers(headers)
    }

    fn deny(&self, resp: &reqwest::Response, body: Bytes) -> Reply {
        let mut headers = Vec::with_capacity(resp.headers().len());
        for (name, value) in resp.headers() {
            if hop_by_hop(name) || name == http::header::CONTENT_LENGTH {
                continue;
            }
            if name == http::header::LOCATION && !self.preserve_location {
                let resolved = value
                    .to_str()
                    .ok()
                    .and_then(|l| self.address.join(l).ok())
                    .and_then(|u| HeaderValue::from_str(u.as_str()).ok());
                if let Some(v) = resolved {
                    headers.push((name.clone(), v));
                    continue;
                }
            }
            headers.push((name.clone(), value.clone()));
        }
        Reply { status: resp.status().as_u16(), headers, body }
    }
}

async fn read_body(mut resp: reqwest::Response) -> Option<(reqwest::Response, Bytes)> {
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if buf.len() + c.len() > MAX_AUTH_BODY {
                    return None;
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => return Some((resp, Bytes::from(buf))),
            Err(_) => return None,
        }
    }
}

fn server_error() -> Verdict {
    Verdict::Respond(Reply { status: 500, headers: Vec::new(), body: Bytes::new() })
}

#[async_trait::async_trait]
impl Apply for ForwardAuth {
    async fn request(
        &self,
        session: &mut Session,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        let resp = match self.auth_request(session).send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(address = %self.address, error = %e, "forwardAuth: error calling the auth server");
                return Ok(server_error());
            }
        };
        let status = resp.status();
        if !status.is_success() {
            let Some((resp, body)) = read_body(resp).await else {
                tracing::debug!(address = %self.address, "forwardAuth: error reading the auth server's answer");
                return Ok(server_error());
            };
            tracing::debug!(address = %self.address, status = status.as_u16(), "forwardAuth: access denied");
            return Ok(Verdict::Respond(self.deny(&resp, body)));
        }
        let req = session.req_header_mut();
        for name in &self.response_headers {
            req.remove_header(name);
            for v in resp.headers().get_all(name) {
                req.append_header(name.clone(), v.clone())?;
            }
        }
        if let Some(re) = &self.response_regex {
            let matching: Vec<HeaderName> =
                req.headers.keys().filter(|k| re.is_match(&canonical(k.as_str()))).cloned().collect();
            for k in matching {
                req.remove_header(&k);
            }
            for (k, v) in resp.headers() {
                if re.is_match(&canonical(k.as_str())) {
                    req.append_header(k.clone(), v.clone())?;
                }
            }
        }
        Ok(Verdict::Next)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn canonical_header_keys_are_gos() {
        assert_eq!(canonical("x-auth-user"), "X-Auth-User");
        assert_eq!(canonical("WWW-AUTHENTICATE"), "Www-Authenticate");
    }

    #[test]
    fn tls_files_are_referenced() {
        let v = serde_json::json!({"address": "https://a", "tls": {"ca": "ca.pem", "cert": "", "key": "k.pem"}});
        assert_eq!(
            tls_files(&v),
            vec![
                ("forwardAuth.tls.ca".to_string(), "ca.pem".to_string()),
                ("forwardAuth.tls.key".to_string(), "k.pem".to_string())
            ]
        );
    }
}

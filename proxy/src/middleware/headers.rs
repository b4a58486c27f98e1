//! `headers` beyond custom headers: Traefik's security headers (HSTS, frame, nosniff,
//! XSS, CSP, referrer and permissions policies, allowed hosts) and CORS (allowed
//! origins, preflight answered here). The plain case (custom request/response headers
//! only) stays the table's built-in [`crate::table::Middleware::Headers`], the fast path;
//! this one is built when any other option is set.
//!
//! As in Traefik, the security part wraps the CORS part: the host check comes first
//! (500 `Bad Host`), then a CORS preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered 200 without reaching the upstream; on the
//! way back the custom response headers and the CORS headers are set, then the security
//! headers.

use http::header::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use regex::Regex;

use super::{Apply, BuildError, MwState, Reply, Verdict};
use crate::dynamic;

/// A header set (`Some`) or removed (`None`), as the custom header lists are.
pub type HeaderEdit = (HeaderName, Option<HeaderValue>);

const ACAO: HeaderName = HeaderName::from_static("access-control-allow-origin");
const ACAC: HeaderName = HeaderName::from_static("access-control-allow-credentials");
const ACAH: HeaderName = HeaderName::from_static("access-control-allow-headers");
const ACAM: HeaderName = HeaderName::from_static("access-control-allow-methods");
const ACEH: HeaderName = HeaderName::from_static("access-control-expose-headers");
const ACMA: HeaderName = HeaderName::from_static("access-control-max-age");
const ACRM: &str = "access-control-request-method";

/// Whether `h` sets nothing but custom headers (the table's built-in handles it).
pub fn is_plain(h: &dynamic::Headers) -> bool {
    let rest = dynamic::Headers {
        custom_request_headers: Default::default(),
        custom_response_headers: Default::default(),
        ..h.clone()
    };
    rest == dynamic::Headers::default()
}

/// Security options (Traefik's "secure" handler).
#[derive(Debug, Default)]
struct Secure {
    /// Lower-cased allowed hosts (empty: any).
    allowed_hosts: Vec<String>,
    hosts_proxy_headers: Vec<HeaderName>,
    ssl_proxy_headers: Vec<(HeaderName, String)>,
    is_development: bool,
    /// The `Strict-Transport-Security` value, when `stsSeconds` is set.
    sts: Option<HeaderValue>,
    force_sts: bool,
    /// The `Public-Key-Pins` value, sent like STS only over HTTPS and not in development.
    pkp: Option<HeaderValue>,
    /// Headers sent on every response.
    fixed: Vec<(HeaderName, HeaderValue)>,
}

/// CORS options.
#[derive(Debug)]
struct Cors {
    credentials: bool,
    allow_headers: Option<HeaderValue>,
    allow_methods: Option<HeaderValue>,
    origins: Vec<String>,
    origin_patterns: Vec<Regex>,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
    vary: bool,
}

/// A compiled `headers` middleware with security or CORS options.
#[derive(Debug)]
pub struct Headers {
    request: Vec<HeaderEdit>,
    response: Vec<HeaderEdit>,
    secure: Option<Secure>,
    cors: Option<Cors>,
}

fn value(field: &str, v: &str) -> Result<HeaderValue, BuildError> {
    HeaderValue::from_str(v)
        .map_err(|e| BuildError::new(format!("headers.{field}"), format!("invalid header value: {e}")))
}

fn name(field: &str, v: &str) -> Result<HeaderName, BuildError> {
    HeaderName::from_bytes(v.as_bytes())
        .map_err(|e| BuildError::new(format!("headers.{field}"), format!("{v:?} is not a header name: {e}")))
}

fn joined(field: &str, list: &Option<Vec<String>>) -> Result<Option<HeaderValue>, BuildError> {
    match list {
        Some(l) if !l.is_empty() => Ok(Some(value(field, &l.join(","))?)),
        _ => Ok(None),
    }
}

/// Build from Traefik's `headers` options; `request` and `response` are its custom
/// header lists, already checked.
pub fn build(h: &dynamic::Headers, request: Vec<HeaderEdit>, response: Vec<HeaderEdit>) -> Result<Headers, BuildError> {
    let removed: [(&str, bool, &str); 5] = [
        ("sslRedirect", h.ssl_redirect.is_some(), "use a redirectScheme middleware"),
        ("sslTemporaryRedirect", h.ssl_temporary_redirect.is_some(), "use a redirectScheme middleware"),
        ("sslHost", h.ssl_host.is_some(), "use a redirectRegex middleware"),
        ("sslForceHost", h.ssl_force_host.is_some(), "use a redirectRegex middleware"),
        ("featurePolicy", h.feature_policy.is_some(), "use permissionsPolicy"),
    ];
    if let Some((field, _, hint)) = removed.iter().find(|(_, set, _)| *set) {
        return Err(BuildError::new(
            format!("headers.{field}"),
            format!("was removed in Traefik v3 and is not supported: {hint}"),
        ));
    }

    let mut s = Secure {
        allowed_hosts: h.allowed_hosts.iter().flatten().map(|x| x.to_ascii_lowercase()).collect(),
        is_development: h.is_development.unwrap_or(false),
        force_sts: h.force_sts_header.unwrap_or(false),
        ..Secure::default()
    };
    for (i, n) in h.hosts_proxy_headers.iter().flatten().enumerate() {
        s.hosts_proxy_headers.push(name(&format!("hostsProxyHeaders[{i}]"), n)?);
    }
    for (k, v) in h.ssl_proxy_headers.iter().flatten() {
        s.ssl_proxy_headers.push((name(&format!("sslProxyHeaders.{k}"), k)?, v.clone()));
    }
    let sts_seconds = h.sts_seconds.unwrap_or(0);
    if sts_seconds < 0 {
        return Err(BuildError::new("headers.stsSeconds", format!("{sts_seconds} is negative")));
    }
    if sts_seconds > 0 {
        let mut v = format!("max-age={sts_seconds}");
        if h.sts_include_subdomains.unwrap_or(false) {
            v.push_str("; includeSubDomains");
        }
        if h.sts_preload.unwrap_or(false) {
            v.push_str("; preload");
        }
        s.sts = Some(value("stsSeconds", &v)?);
    }
    let nonempty = |o: &Option<String>| o.as_deref().filter(|v| !v.is_empty()).map(str::to_string);
    let frame =
        nonempty(&h.custom_frame_options_value).or_else(|| h.frame_deny.unwrap_or(false).then(|| "DENY".into()));
    let xss = nonempty(&h.custom_browser_xss_value)
        .or_else(|| h.browser_xss_filter.unwrap_or(false).then(|| "1; mode=block".into()));
    if let Some(pk) = nonempty(&h.public_key) {
        s.pkp = Some(value("publicKey", &pk)?);
    }
    let fixed: [(&str, &str, Option<String>); 7] = [
        ("customFrameOptionsValue", "x-frame-options", frame),
        (
            "contentTypeNosniff",
            "x-content-type-options",
            h.content_type_nosniff.unwrap_or(false).then(|| "nosniff".into()),
        ),
        ("customBrowserXSSValue", "x-xss-protection", xss),
        ("contentSecurityPolicy", "content-security-policy", nonempty(&h.content_security_policy)),
        (
            "contentSecurityPolicyReportOnly",
            "content-security-policy-report-only",
            nonempty(&h.content_security_policy_report_only),
        ),
        ("referrerPolicy", "referrer-policy", nonempty(&h.referrer_policy)),
        ("permissionsPolicy", "permissions-policy", nonempty(&h.permissions_policy)),
    ];
    for (field, header, v) in fixed {
        if let Some(v) = v {
            s.fixed.push((HeaderName::from_static(header), value(field, &v)?));
        }
    }
    let has_secure = !s.allowed_hosts.is_empty()
        || !s.hosts_proxy_headers.is_empty()
        || !s.ssl_proxy_headers.is_empty()
        || s.sts.is_some()
        || s.pkp.is_some()
        || !s.fixed.is_empty();

    let max_age = h.access_control_max_age.unwrap_or(0);
    if max_age < 0 {
        return Err(BuildError::new("headers.accessControlMaxAge", format!("{max_age} is negative")));
    }
    let mut c = Cors {
        credentials: h.access_control_allow_credentials.unwrap_or(false),
        allow_headers: joined("accessControlAllowHeaders", &h.access_control_allow_headers)?,
        allow_methods: joined("accessControlAllowMethods", &h.access_control_allow_methods)?,
        origins: h.access_control_allow_origin_list.clone().unwrap_or_default(),
        expose: joined("accessControlExposeHeaders", &h.access_control_expose_headers)?,
        max_age: HeaderValue::from(max_age),
        vary: h.add_vary_header.unwrap_or(false),
        origin_patterns: Vec::new(),
    };
    for (i, p) in h.access_control_allow_origin_list_regex.iter().flatten().enumerate() {
        let re = Regex::new(p)
            .map_err(|e| BuildError::new(format!("headers.accessControlAllowOriginListRegex[{i}]"), e.to_string()))?;
        c.origin_patterns.push(re);
    }
    for (i, o) in c.origins.iter().enumerate() {
        value(&format!("accessControlAllowOriginList[{i}]"), o)?;
    }
    let has_cors = c.credentials
        || c.allow_headers.is_some()
        || c.allow_methods.is_some()
        || !c.origins.is_empty()
        || !c.origin_patterns.is_empty()
        || c.expose.is_some()
        || max_age != 0
        || c.vary;

    Ok(Headers { request, response, secure: has_secure.then_some(s), cors: has_cors.then_some(c) })
}

fn header<'r>(req: &'r RequestHeader, name: &str) -> &'r str {
    req.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

impl Secure {
    /// Whether the request's host is allowed (any, without `allowedHosts` or in
    /// development). The host is the first non-empty `hostsProxyHeaders` header, else
    /// `Host`, compared whole (port included) and without regard to case.
    fn host_allowed(&self, req: &RequestHeader) -> bool {
        if self.allowed_hosts.is_empty() || self.is_development {
            return true;
        }
        let host = self
            .hosts_proxy_headers
            .iter()
            .map(|h| header(req, h.as_str()))
            .find(|v| !v.is_empty())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or_else(|| header(req, "host"));
        self.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(host))
    }

    /// Whether the request came over HTTPS: TLS to this proxy, or an `sslProxyHeaders`
    /// header with its value.
    fn is_ssl(&self, req: &RequestHeader, tls: bool) -> bool {
        tls || req.uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https"))
            || self.ssl_proxy_headers.iter().any(|(k, v)| header(req, k.as_str()) == v)
    }

    fn apply(&self, req: &RequestHeader, tls: bool, out: &mut Vec<(HeaderName, HeaderValue)>) {
        if self.sts.is_some() || self.pkp.is_some() {
            let ssl = !self.is_development && self.is_ssl(req, tls);
            if let Some(sts) = self.sts.as_ref().filter(|_| !self.is_development && (ssl || self.force_sts)) {
                out.push((http::header::STRICT_TRANSPORT_SECURITY, sts.clone()));
            }
            if let Some(pkp) = self.pkp.as_ref().filter(|_| ssl) {
                out.push((HeaderName::from_static("public-key-pins"), pkp.clone()));
            }
        }
        out.extend(self.fixed.iter().cloned());
    }
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for `origin`, if allowed: `*` or the
    /// listed origin as written, else the origin itself when a pattern matches.
    fn allowed(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let o = origin.to_str().unwrap_or("");
        if let Some(item) = self.origins.iter().find(|i| *i == "*" || *i == o) {
            return HeaderValue::from_str(item).ok();
        }
        self.origin_patterns.iter().any(|re| re.is_match(o)).then(|| origin.clone())
    }

    fn preflight(&self, req: &RequestHeader) -> Option<Reply> {
        if req.method != http::Method::OPTIONS || header(req, ACRM).is_empty() {
            return None;
        }
        let origin = req.headers.get(http::header::ORIGIN).filter(|o| !o.is_empty())?;
        let mut headers = Vec::with_capacity(5);
        if self.credentials {
            headers.push((ACAC, HeaderValue::from_static("true")));
        }
        if let Some(v) = &self.allow_headers {
            headers.push((ACAH, v.clone()));
        }
        if let Some(v) = &self.allow_methods {
            headers.push((ACAM, v.clone()));
        }
        if let Some(v) = self.allowed(origin) {
            headers.push((ACAO, v));
        }
        headers.push((ACMA, self.max_age.clone()));
        Some(Reply { status: 200, headers, body: bytes::Bytes::new() })
    }

    fn apply(&self, req: &RequestHeader, resp: &mut ResponseHeader) -> pingora_core::Result<()> {
        let empty = HeaderValue::from_static("");
        let origin = req.headers.get(http::header::ORIGIN).unwrap_or(&empty);
        if let Some(v) = self.allowed(origin) {
            resp.insert_header(ACAO, v)?;
        }
        if self.credentials {
            resp.insert_header(ACAC, HeaderValue::from_static("true"))?;
        }
        if let Some(v) = &self.expose {
            resp.insert_header(ACEH, v.clone())?;
        }
        if self.vary {
            let vary = resp.headers.get(http::header::VARY).and_then(|v| v.to_str().ok()).unwrap_or("");
            if vary != "Origin" {
                let v = if vary.is_empty() { "Origin".to_string() } else { format!("{vary},Origin") };
                resp.insert_header(http::header::VARY, v)?;
            }
        }
        Ok(())
    }
}

fn tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait::async_trait]
impl Apply for Headers {
    async fn request(
        &self,
        session: &mut Session,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        let req = session.req_header();
        if let Some(s) = &self.secure {
            if !s.host_allowed(req) {
                return Ok(Verdict::Respond(Reply::text(500, "Bad Host\n")));
            }
        }
        if let Some(mut reply) = self.cors.as_ref().and_then(|c| c.preflight(req)) {
            // The security handler wraps the CORS one: its headers are on the
            // preflight answer too.
            if let Some(s) = &self.secure {
                s.apply(req, tls(session), &mut reply.headers);
            }
            return Ok(Verdict::Respond(reply));
        }
        Ok(Verdict::Next)
    }

    fn upstream_request(&self, req: &mut RequestHeader, _state: &MwState, _index: usize) -> pingora_core::Result<()> {
        for (name, value) in &self.request {
            match value {
                Some(v) => req.insert_header(name.clone(), v.clone())?,
                None => {
                    req.remove_header(name);
                }
            }
        }
        Ok(())
    }

    async fn response(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<()> {
        for (name, value) in &self.response {
            match value {
                Some(v) => resp.insert_header(name.clone(), v.clone())?,
                None => {
                    resp.remove_header(name);
                }
            }
        }
        let req = session.req_header();
        if let Some(c) = &self.cors {
            c.apply(req, resp)?;
        }
        if let Some(s) = &self.secure {
            let mut out = Vec::with_capacity(s.fixed.len() + 1);
            s.apply(req, tls(session), &mut out);
            for (k, v) in out {
                resp.insert_header(k, v)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn opts(v: serde_json::Value) -> dynamic::Headers {
        serde_json::from_value(v).unwrap()
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn plain_custom_headers_stay_on_the_fast_path() {
        assert!(is_plain(&opts(serde_json::json!({"customRequestHeaders": {"a": "b"}}))));
        assert!(!is_plain(&opts(serde_json::json!({"frameDeny": true}))));
    }

    #[test]
    fn removed_options_are_errors_naming_them() {
        let e = build(&opts(serde_json::json!({"sslRedirect": true})), vec![], vec![]).unwrap_err();
        assert_eq!(e.field, "headers.sslRedirect");
        let e = build(&opts(serde_json::json!({"featurePolicy": "x"})), vec![], vec![]).unwrap_err();
        assert_eq!(e.field, "headers.featurePolicy");
        let e = build(&opts(serde_json::json!({"stsSeconds": -1})), vec![], vec![]).unwrap_err();
        assert_eq!(e.field, "headers.stsSeconds");
        let e =
            build(&opts(serde_json::json!({"accessControlAllowOriginListRegex": ["("]})), vec![], vec![]).unwrap_err();
        assert_eq!(e.field, "headers.accessControlAllowOriginListRegex[0]");
    }

    #[test]
    fn sts_only_over_tls_unless_forced_and_never_in_development() {
        let h = build(&opts(serde_json::json!({"stsSeconds": 60, "stsPreload": true})), vec![], vec![]).unwrap();
        let s = h.secure.unwrap();
        let mut out = vec![];
        s.apply(&req("GET", &[]), false, &mut out);
        assert!(out.is_empty());
        s.apply(&req("GET", &[]), true, &mut out);
        assert_eq!(out[0].1, "max-age=60; preload");
        let h =
            build(&opts(serde_json::json!({"publicKey": "pin-sha256=\"x\"", "forceSTSHeader": true})), vec![], vec![])
                .unwrap();
        let s = h.secure.unwrap();
        let mut out = vec![];
        s.apply(&req("GET", &[]), false, &mut out);
        assert!(out.is_empty(), "{out:?}");
        s.apply(&req("GET", &[]), true, &mut out);
        assert_eq!(out[0].0, "public-key-pins");
        let h = build(
            &opts(serde_json::json!({"stsSeconds": 60, "sslProxyHeaders": {"X-Forwarded-Proto": "https"}})),
            vec![],
            vec![],
        )
        .unwrap();
        let mut out = vec![];
        h.secure.unwrap().apply(&req("GET", &[("x-forwarded-proto", "https")]), false, &mut out);
        assert_eq!(out.len(), 1);
        let h = build(&opts(serde_json::json!({"stsSeconds": 60, "isDevelopment": true})), vec![], vec![]).unwrap();
        let mut out = vec![];
        h.secure.unwrap().apply(&req("GET", &[]), true, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn allowed_hosts_use_proxy_headers_first() {
        let h = build(
            &opts(serde_json::json!({"allowedHosts": ["Good.test"], "hostsProxyHeaders": ["X-Forwarded-Host"]})),
            vec![],
            vec![],
        )
        .unwrap();
        let s = h.secure.unwrap();
        assert!(s.host_allowed(&req("GET", &[("host", "good.test")])));
        assert!(!s.host_allowed(&req("GET", &[("host", "good.test:8080")])));
        assert!(!s.host_allowed(&req("GET", &[("host", "good.test"), ("x-forwarded-host", "evil.test")])));
        assert!(s.host_allowed(&req("GET", &[("host", "evil.test"), ("x-forwarded-host", "good.test")])));
    }

    #[test]
    fn origins_match_exactly_by_star_or_by_pattern() {
        let h = build(
            &opts(serde_json::json!({
                "accessControlAllowOriginList": ["https://a.test"],
                "accessControlAllowOriginListRegex": ["^https://.*\\.b\\.test$"],
            })),
            vec![],
            vec![],
        )
        .unwrap();
        let c = h.cors.unwrap();
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(c.allowed(&v("https://a.test")), Some(v("https://a.test")));
        assert_eq!(c.allowed(&v("https://x.b.test")), Some(v("https://x.b.test")));
        assert_eq!(c.allowed(&v("https://c.test")), None);
        let star = build(&opts(serde_json::json!({"accessControlAllowOriginList": ["*"]})), vec![], vec![]).unwrap();
        assert_eq!(star.cors.unwrap().allowed(&v("https://z.test")), Some(v("*")));
    }

    #[test]
    fn a_preflight_needs_options_origin_and_a_requested_method() {
        let h = build(
            &opts(
                serde_json::json!({"accessControlAllowMethods": ["GET", "PUT"], "accessControlAllowOriginList": ["*"]}),
            ),
            vec![],
            vec![],
        )
        .unwrap();
        let c = h.cors.unwrap();
        assert!(c.preflight(&req("OPTIONS", &[("origin", "https://a.test")])).is_none());
        assert!(c.preflight(&req("GET", &[("origin", "https://a.test"), (ACRM, "PUT")])).is_none());
        let r = c.preflight(&req("OPTIONS", &[("origin", "https://a.test"), (ACRM, "PUT")])).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.headers.contains(&(ACAM, HeaderValue::from_static("GET,PUT"))));
        assert!(r.headers.contains(&(ACMA, HeaderValue::from_static("0"))));
    }
}

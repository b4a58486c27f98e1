//! `errors`: when the upstream answers with a status in `status`, the client gets the
//! body of a page fetched from another service of the configuration (`service`, at
//! `query`, with `{status}`, `{originalStatus}` and `{url}` filled in) in place of the
//! upstream's body, with the upstream's status (or the one `statusRewrites` maps it
//! to), as in Traefik. The page is fetched in the response phase with one HTTP client
//! built with the middleware; the upstream's body chunks are dropped and the page sent.
//! When the page cannot be fetched, the client gets the status and its reason phrase.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::Deserialize;
use serde_json::Value;

use super::{options, Apply, BuildCx, BuildError, MwState};
use crate::dynamic::HttpService;

/// How long fetching an error page may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Options {
    #[serde(default)]
    status: Vec<String>,
    #[serde(default)]
    status_rewrites: BTreeMap<String, Value>,
    #[serde(default)]
    service: String,
    #[serde(default)]
    query: String,
}

/// Inclusive status ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges(Vec<(u16, u16)>);

impl Ranges {
    /// Parse Traefik's forms: `"404"`, `"500-599"`, `"500,502,505-599"`.
    pub fn parse(s: &str) -> Result<Ranges, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let code = |x: &str| {
                x.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| format!("{part:?} is not a status code or range"))
            };
            let (a, b) = (code(a)?, code(b)?);
            if a > b {
                return Err(format!("{part:?}: the range is reversed"));
            }
            out.push((a, b));
        }
        if out.is_empty() {
            return Err(format!("{s:?} names no status"));
        }
        Ok(Ranges(out))
    }

    /// Whether `code` is in one of the ranges.
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|(a, b)| (*a..=*b).contains(&code))
    }
}

/// A compiled `errors`.
#[derive(Debug)]
pub struct Errors {
    status: Vec<Ranges>,
    rewrites: Vec<(Ranges, u16)>,
    /// Base URLs (`scheme://host:port` plus any path) of the service's servers.
    servers: Vec<String>,
    next: AtomicUsize,
    query: String,
    pass_host: bool,
    client: reqwest::Client,
}

/// Build from Traefik's `errors` options.
pub fn build(config: &Value, cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    let o: Options = options("errors", config)?;
    if o.status.is_empty() {
        return Err(BuildError::new("errors.status", "at least one status or range is required"));
    }
    let status = o
        .status
        .iter()
        .enumerate()
        .map(|(i, s)| Ranges::parse(s).map_err(|e| BuildError::new(format!("errors.status[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rewrites = Vec::new();
    for (k, v) in &o.status_rewrites {
        let field = format!("errors.statusRewrites.{k}");
        let from = Ranges::parse(k).map_err(|e| BuildError::new(field.clone(), e))?;
        let to = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| BuildError::new(field.clone(), format!("{v} is not a status code")))?;
        rewrites.push((from, to));
    }
    if o.service.is_empty() {
        return Err(BuildError::new("errors.service", "a service is required"));
    }
    let name = o.service.as_str();
    let svc = cx
        .cfg
        .http
        .services
        .get(name)
        .or_else(|| name.split_once('@').and_then(|(n, _)| cx.cfg.http.services.get(n)))
        .ok_or_else(|| BuildError::new("errors.service", format!("no service {name:?}")))?;
    let HttpService::LoadBalancer(lb) = svc else {
        return Err(BuildError::new("errors.service", format!("{name:?} must be a loadBalancer service")));
    };
    if lb.servers.is_empty() {
        return Err(BuildError::new("errors.service", format!("{name:?} has no servers")));
    }
    let mut builder = reqwest::Client::builder().timeout(FETCH_TIMEOUT).redirect(reqwest::redirect::Policy::none());
    let mut servers = Vec::with_capacity(lb.servers.len());
    for s in &lb.servers {
        let u = url::Url::parse(&s.url)
            .map_err(|e| BuildError::new("errors.service", format!("server {:?} of {name:?}: {e}", s.url)))?;
        let host = u.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = u.port_or_known_default().unwrap_or(80);
        if host.parse::<std::net::IpAddr>().is_err() {
            // Names resolve the way the proxy resolves them (the resolver's answers).
            if let Ok(addr) = cx.addresses.address_of(&host, port) {
                builder = builder.resolve(&host, addr);
            }
        }
        servers.push(s.url.trim_end_matches('/').to_string());
    }
    let client = builder.build().map_err(|e| BuildError::new("errors.service", format!("HTTP client: {e}")))?;
    let query = if o.query.is_empty() { "/".to_string() } else { o.query };
    if !query.starts_with('/') {
        return Err(BuildError::new("errors.query", format!("{query:?} must start with '/'")));
    }
    Ok(Box::new(Errors {
        status,
        rewrites,
        servers,
        next: AtomicUsize::new(0),
        query,
        pass_host: lb.pass_host_header != Some(false),
        client,
    }))
}

/// The page replacing the upstream's body.
struct Page(Option<Bytes>);

/// `{url}`: the request's URL, escaped as a query value.
fn escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Errors {
    async fn fetch(
        &self,
        path: &str,
        host: Option<&http::HeaderValue>,
    ) -> Result<(Option<http::HeaderValue>, Bytes), String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len();
        let url = format!("{}{path}", self.servers[i]);
        let mut req = self.client.get(&url);
        if let Some(h) = host.filter(|_| self.pass_host) {
            req = req.header(header::HOST, h.clone());
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok((ct, body))
    }
}

#[async_trait::async_trait]
impl Apply for Errors {
    async fn response(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        state: &mut MwState,
        index: usize,
    ) -> pingora_core::Result<()> {
        let original = resp.status.as_u16();
        if !self.status.iter().any(|r| r.contains(original)) {
            return Ok(());
        }
        let code = self.rewrites.iter().find(|(r, _)| r.contains(original)).map_or(original, |(_, c)| *c);
        let req = session.req_header();
        let url = req.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let path = self
            .query
            .replace("{status}", &code.to_string())
            .replace("{originalStatus}", &original.to_string())
            .replace("{url}", &escape(&url));
        let host = req.headers.get(header::HOST).cloned();
        let (ct, body) = match self.fetch(&path, host.as_ref()).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "errors middleware: error page not fetched");
                let reason = http::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
                (Some(http::HeaderValue::from_static("text/plain; charset=utf-8")), Bytes::from(reason.to_string()))
            }
        };
        resp.set_status(code)?;
        for h in [
            header::CONTENT_ENCODING,
            header::TRANSFER_ENCODING,
            header::CONTENT_TYPE,
            header::ETAG,
            header::LAST_MODIFIED,
            header::CONTENT_RANGE,
            header::ACCEPT_RANGES,
        ] {
            resp.remove_header(&h);
        }
        if let Some(ct) = ct {
            resp.insert_header(header::CONTENT_TYPE, ct)?;
        }
        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        state.put(index, Page(Some(body)));
        Ok(())
    }

    fn wants_body(&self) -> bool {
        true
    }

    fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        state: &mut MwState,
        index: usize,
    ) -> pingora_core::Result<()> {
        let Some(Page(page)) = state.get_mut::<Page>(index) else { return Ok(()) };
        // The upstream's chunks are dropped; the page goes out at the end.
        *body = if end { page.take().filter(|p| !p.is_empty()) } else { None };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        let r = Ranges::parse("404, 500-503").unwrap_or_else(|e| panic!("{e}"));
        assert!(r.contains(404) && r.contains(500) && r.contains(503));
        assert!(!r.contains(405) && !r.contains(504) && !r.contains(200));
        assert!(Ranges::parse("600").is_err());
        assert!(Ranges::parse("503-500").is_err());
        assert!(Ranges::parse("abc").is_err());
        assert!(Ranges::parse("").is_err());
    }

    #[test]
    fn url_is_escaped() {
        assert_eq!(escape("/a b?x=1&y=2"), "%2Fa+b%3Fx%3D1%26y%3D2");
    }
}

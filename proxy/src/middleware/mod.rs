//! Traefik's HTTP middlewares beyond the four built into the table (`stripPrefix`,
//! `addPrefix`, custom `headers`, `redirectScheme`): each kind lives in its own module,
//! is compiled from its configuration (kept verbatim by the model as
//! [`crate::dynamic::Middleware::Other`]) into an [`Apply`], and runs where Traefik runs
//! it. The router's middlewares (a `chain` expanded in place) form an onion, as in
//! Traefik:
//!
//! - [`Apply::request`] runs in router order before any upstream is picked; the first
//!   middleware that answers ([`Verdict::Respond`]) ends the request there (later ones
//!   never see it, and neither does the upstream);
//! - [`Apply::upstream_request`] runs in router order on the request of every attempt;
//! - [`Apply::response`] and [`Apply::response_body`] run in reverse order on the
//!   upstream's answer.
//!
//! A kind listed in [`KINDS`] is applied; any other stays "parsed, not applied" and
//! refuses its routers (fail closed). Per-request state lives in [`MwState`], one slot
//! per middleware of the route, allocated only by middlewares that need one.
//!
//! Files a middleware names (`usersFile`) are read by the control plane and handed in
//! through [`BuildCx::file`]: the proxy never touches the disk.

use std::any::Any;
use std::fmt;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use serde_json::Value;

use crate::settings::ProxySettings;
use crate::transport::TransportFiles;

pub mod basic_auth;
pub mod buffering;
pub mod compress;
pub mod content_type;
pub mod digest_auth;
pub mod errors;
pub mod forward_auth;
pub mod headers;
pub mod htpasswd;
pub mod in_flight;
pub mod ip_allow_list;
pub mod ip_strategy;
pub mod rate_limit;
pub mod redirect_regex;
pub mod replace_path;
pub mod replace_path_regex;
pub mod strip_prefix_regex;

/// What a middleware's request phase decided.
pub enum Verdict {
    /// Go on to the next middleware (and, after the last, the upstream).
    Next,
    /// Answer the client with this and stop.
    Respond(Reply),
}

/// A response a middleware makes itself (401, 403, 429, a redirect, a CORS preflight…).
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers (`content-length` is added from the body).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// A `text/plain` reply with `body`.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))],
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    /// Add a header (a value that is not a valid header value is skipped).
    pub fn with(mut self, name: HeaderName, value: &str) -> Reply {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }
}

/// Per-request state of a route's middlewares: one slot per middleware (by its index in
/// the route), empty until a middleware stores something (an in-flight slot to release,
/// an encoder, the request's `Origin` for CORS). Dropped with the request.
#[derive(Default)]
pub struct MwState {
    /// The client's address as the entry point's forwarded-headers policy sees it.
    pub client_ip: Option<IpAddr>,
    slots: Vec<Option<Box<dyn Any + Send + Sync>>>,
}

impl MwState {
    /// The state stored by middleware `index`, if it is a `T`.
    pub fn get<T: 'static>(&self, index: usize) -> Option<&T> {
        self.slots.get(index)?.as_ref()?.downcast_ref()
    }

    /// Mutable access to the state of middleware `index`.
    pub fn get_mut<T: 'static>(&mut self, index: usize) -> Option<&mut T> {
        self.slots.get_mut(index)?.as_mut()?.downcast_mut()
    }

    /// Store `value` as the state of middleware `index`.
    pub fn put<T: Any + Send + Sync>(&mut self, index: usize, value: T) {
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots[index] = Some(Box::new(value));
    }

    /// Remove and return the state of middleware `index`.
    pub fn take<T: 'static>(&mut self, index: usize) -> Option<T> {
        let slot = self.slots.get_mut(index)?;
        match slot.take()?.downcast::<T>() {
            Ok(v) => Some(*v),
            Err(other) => {
                *slot = Some(other);
                None
            }
        }
    }
}

/// A compiled middleware. `index` is its position in the route (its [`MwState`] slot).
/// Every method has a do-nothing default; a kind implements the phases it acts in.
#[async_trait::async_trait]
pub trait Apply: Send + Sync + fmt::Debug {
    /// Request phase, in router order, before an upstream is picked. The request head
    /// may be changed (`session.req_header_mut()`): later middlewares and every attempt
    /// see the change.
    async fn request(
        &self,
        _session: &mut Session,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        Ok(Verdict::Next)
    }

    /// Whether [`Apply::request_body`] must see the request body.
    fn wants_request_body(&self) -> bool {
        false
    }

    /// On each request body chunk as it arrives from the client (before it goes
    /// upstream), in router order; may replace the chunk, or fail the request (an
    /// error with `ErrorType::HTTPStatus(413)` answers 413).
    async fn request_body(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end: bool,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<()> {
        Ok(())
    }

    /// On the request of each upstream attempt, in router order.
    fn upstream_request(&self, _req: &mut RequestHeader, _state: &MwState, _index: usize) -> pingora_core::Result<()> {
        Ok(())
    }

    /// On the upstream's response head, in reverse router order (may await, e.g. to
    /// fetch an error page from another service).
    async fn response(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<()> {
        Ok(())
    }

    /// Whether [`Apply::response_body`] must see the body (most middlewares never do).
    fn wants_body(&self) -> bool {
        false
    }

    /// On each response body chunk (`None` at the end without data), in reverse router
    /// order; may replace the chunk.
    fn response_body(
        &self,
        _body: &mut Option<Bytes>,
        _end: bool,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<()> {
        Ok(())
    }

    /// Called when the request ends, whatever happened (release slots, count).
    fn finish(&self, _state: &mut MwState, _index: usize) {}
}

/// What a kind's builder gets besides its configuration.
pub struct BuildCx<'a> {
    /// The middleware's name (as in `http.middlewares.<name>`).
    pub name: &'a str,
    /// Proxy settings in force.
    pub settings: &'a ProxySettings,
    /// Files the control plane read for the configuration.
    pub files: &'a TransportFiles,
    /// The whole configuration (for middlewares that name a service, like `errors`).
    pub cfg: &'a crate::DynamicConfig,
    /// Resolved server addresses (host:port → address), as the compiler has them.
    pub addresses: &'a crate::AddressMap,
}

impl BuildCx<'_> {
    /// The bytes of a file this middleware names (`reference` as written), when the
    /// control plane loaded it (see [`file_references`]).
    pub fn file(&self, reference: &str) -> Option<&[u8]> {
        self.files.get(&files_key(self.name), reference)
    }
}

/// The key under which a middleware's files are kept in [`TransportFiles`].
pub fn files_key(middleware: &str) -> String {
    format!("middleware:{middleware}")
}

/// Why a middleware's configuration cannot be applied: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// Field inside the middleware, e.g. `basicAuth.users[1]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl BuildError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> BuildError {
        BuildError { field: field.into(), message: message.into() }
    }
}

/// Deserialize a kind's configuration (Traefik's JSON shape) into its options type; an
/// error names the field.
pub fn options<T: serde::de::DeserializeOwned>(kind: &str, config: &Value) -> Result<T, BuildError> {
    serde_path_to_error::deserialize(config).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { kind.to_string() } else { format!("{kind}.{path}") };
        BuildError::new(field, e.inner().to_string())
    })
}

/// A kind's builder.
pub type Builder = fn(&Value, &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError>;

/// Every kind applied here, with its builder. (`chain` is expanded by the compiler.)
pub const KINDS: &[(&str, Builder)] = &[
    ("replacePath", replace_path::build),
    ("ipAllowList", ip_allow_list::build),
    ("ipWhiteList", ip_allow_list::build_white_list),
    ("inFlightReq", in_flight::build),
    ("rateLimit", rate_limit::build),
    ("stripPrefixRegex", strip_prefix_regex::build),
    ("replacePathRegex", replace_path_regex::build),
    ("redirectRegex", redirect_regex::build),
    ("contentType", content_type::build),
    ("basicAuth", basic_auth::build),
    ("digestAuth", digest_auth::build),
    ("forwardAuth", forward_auth::build),
    ("compress", compress::build),
    ("buffering", buffering::build),
    ("errors", errors::build),
];

/// Whether `kind` is applied (a kind in [`KINDS`], or `chain`).
pub fn applies(kind: &str) -> bool {
    kind == "chain" || KINDS.iter().any(|(k, _)| *k == kind)
}

/// Build a middleware of `kind`; `None` when the kind is not applied.
pub fn build(kind: &str, config: &Value, cx: &BuildCx<'_>) -> Option<Result<Box<dyn Apply>, BuildError>> {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, b)| b(config, cx))
}

/// Files middlewares name, as `(middleware, field, reference)`: the control plane reads
/// them (relative to the defining route file) before compiling.
pub fn file_references(cfg: &crate::DynamicConfig) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, m) in &cfg.http.middlewares {
        if let crate::dynamic::Middleware::Other { kind, config } = m {
            if matches!(kind.as_str(), "basicAuth" | "digestAuth") {
                if let Some(f) = config.get("usersFile").and_then(Value::as_str).filter(|f| !f.is_empty()) {
                    out.push((name.clone(), format!("{kind}.usersFile"), f.to_string()));
                }
            }
            if kind == "forwardAuth" {
                for (key, f) in forward_auth::tls_files(config) {
                    out.push((name.clone(), key, f));
                }
            }
        }
    }
    out
}

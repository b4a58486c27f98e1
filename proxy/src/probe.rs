//! The one outbound HTTP client of Constellation: active health checks, the control
//! plane's instance checks and the public-IP lookups all send their requests through a
//! [`Prober`], built on reqwest with rustls.
//!
//! A probe may name the socket address to connect to ([`ProbeRequest::connect_to`]):
//! the request still carries the URL's host (as `Host` and, for https, as SNI), but no
//! name is looked up. Clients are cached per (host, address) pair and share one rustls
//! configuration, built once per [`Prober`]. Every probe opens a fresh connection, so a
//! listener that stopped accepting is noticed at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

/// Most clients kept in one prober's cache; past it the cache starts over (a client is
/// cheap to rebuild, and a table rarely names this many distinct hosts).
const MAX_CACHED_CLIENTS: usize = 1024;
/// `User-Agent` of every probe.
const USER_AGENT: &str = concat!("constellation/", env!("CARGO_PKG_VERSION"));

/// How a prober treats server certificates on https.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertPolicy {
    /// Verify the chain against the Mozilla roots and the name (public services).
    Verify,
    /// Complete the handshake (signatures are still checked) without verifying the
    /// chain or the name: for health probes of upstreams, which carry no secrets and
    /// often present self-signed or internal certificates.
    Unverified,
}

/// Why a probe got no response.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL cannot be sent (not http/https, no host...).
    #[error("invalid URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header name or value is not valid HTTP.
    #[error("invalid header {name:?}: {reason}")]
    Header {
        /// Header name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (a TLS set-up problem).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No complete answer within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// TCP or TLS connect failed.
    #[error("connect: {0}")]
    Connect(String),
    /// The connection failed after it was set up (reset, garbage, early close).
    #[error("request: {0}")]
    Request(String),
    /// The body is larger than the probe accepts.
    #[error("answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct ProbeRequest<'a> {
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Full URL: scheme, host, port, path and query.
    pub url: &'a str,
    /// Connect here instead of resolving the URL's host (the port is taken from the
    /// URL). `None` lets the system resolver find the host.
    pub connect_to: Option<SocketAddr>,
    /// `Host` header to send instead of the URL's authority.
    pub host_header: Option<&'a str>,
    /// Extra request headers.
    pub headers: &'a [(String, String)],
    /// Deadline for connect, request and the whole body.
    pub timeout: Duration,
    /// Largest body read; a longer one is [`ProbeError::TooLarge`]. 0 skips the body.
    pub max_body: usize,
    /// TLS settings for this probe instead of the prober's [`CertPolicy`]: a health
    /// check uses its upstream's transport (trusted roots, client certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl<'a> ProbeRequest<'a> {
    /// A `GET` of `url` with no body read, within `timeout`.
    pub fn get(url: &'a str, timeout: Duration) -> Self {
        Self { method: "GET", url, connect_to: None, host_header: None, headers: &[], timeout, max_body: 0, tls: None }
    }
}

/// The answer to a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Location` header, when the answer has one.
    pub location: Option<String>,
    /// Body, up to [`ProbeRequest::max_body`] bytes.
    pub body: Bytes,
}

/// A cached client's key: host, address, TLS settings (see [`Prober`]).
type ClientKey = (String, Option<SocketAddr>, usize);
/// A cached client and the TLS settings its key points at (kept alive by the entry).
type CachedClient = (reqwest::Client, Option<Arc<rustls::ClientConfig>>);

/// Sends probes. Cheap to share behind an `Arc`; see the module docs.
pub struct Prober {
    policy: CertPolicy,
    tls: rustls::ClientConfig,
    /// Clients by (host, address, TLS settings: 0 for the prober's own, else the
    /// address of the request's `Arc<ClientConfig>`, kept alive by the entry).
    clients: Mutex<HashMap<ClientKey, CachedClient>>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Prober {
    /// A prober with the given certificate policy.
    pub fn new(policy: CertPolicy) -> Result<Self, ProbeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProbeError::Client(e.to_string()))?;
        let tls = match policy {
            CertPolicy::Verify => {
                let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            CertPolicy::Unverified => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoChainCheck(provider)))
                .with_no_client_auth(),
        };
        Ok(Self { policy, tls, clients: Mutex::new(HashMap::new()) })
    }

    /// The certificate policy.
    pub fn policy(&self) -> CertPolicy {
        self.policy
    }

    fn client(
        &self,
        host: &str,
        connect_to: Option<SocketAddr>,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<reqwest::Client, ProbeError> {
        let tls_key = tls.map(|t| Arc::as_ptr(t) as usize).unwrap_or(0);
        let key = (host.to_ascii_lowercase(), connect_to, tls_key);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, _)) = clients.get(&key) {
            return Ok(c.clone());
        }
        let config = match tls {
            Some(t) => rustls::ClientConfig::clone(t),
            None => self.tls.clone(),
        };
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            // A fresh connection per probe: a kept-alive one would hide a listener
            // that no longer accepts.
            .pool_max_idle_per_host(0);
        if let Some(addr) = connect_to {
            builder = builder.resolve(&key.0, addr);
        }
        let client = builder.build().map_err(|e| ProbeError::Client(e.to_string()))?;
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        // The entry holds the settings, so their address cannot be reused by another.
        clients.insert(key, (client.clone(), tls.cloned()));
        Ok(client)
    }

    /// Send `req` and read the answer (see [`ProbeRequest`]).
    pub async fn send(&self, req: &ProbeRequest<'_>) -> Result<ProbeResponse, ProbeError> {
        let url_err = |reason: String| ProbeError::Url { url: req.url.to_string(), reason };
        let url = Url::parse(req.url).map_err(|e| url_err(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(url_err(format!("scheme {:?} is not http or https", url.scheme())));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => Some(d.to_string()),
            Some(_) => None,
            None => return Err(url_err("no host".into())),
        };
        // An IP literal is connected to as written; connect_to re-targets it.
        let url = match (&host, req.connect_to) {
            (None, Some(addr)) => {
                let mut u = url.clone();
                u.set_ip_host(addr.ip()).map_err(|()| url_err("cannot re-target the address".into()))?;
                u
            }
            _ => url,
        };
        let client = self.client(host.as_deref().unwrap_or(""), host.as_ref().and(req.connect_to), req.tls.as_ref())?;
        let method = Method::from_bytes(req.method.as_bytes())
            .map_err(|e| ProbeError::Header { name: "method".into(), reason: format!("{:?}: {e}", req.method) })?;
        let mut headers = HeaderMap::new();
        for (k, v) in req.headers {
            let hdr_err = |reason: String| ProbeError::Header { name: k.clone(), reason };
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| hdr_err(e.to_string()))?;
            let value = HeaderValue::from_str(v).map_err(|e| hdr_err(e.to_string()))?;
            headers.insert(name, value);
        }
        if let Some(h) = req.host_header {
            let value = HeaderValue::from_str(h)
                .map_err(|e| ProbeError::Header { name: "host".into(), reason: e.to_string() })?;
            headers.insert(reqwest::header::HOST, value);
        }
        let exchange = async {
            let resp = client.request(method, url).headers(headers).send().await.map_err(classify)?;
            let status = resp.status().as_u16();
            let location =
                resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
            let mut body = BytesMut::new();
            if req.max_body > 0 {
                let mut resp = resp;
                while let Some(chunk) = resp.chunk().await.map_err(classify)? {
                    if body.len() + chunk.len() > req.max_body {
                        return Err(ProbeError::TooLarge(req.max_body));
                    }
                    body.extend_from_slice(&chunk);
                }
            }
            Ok(ProbeResponse { status, location, body: body.freeze() })
        };
        match tokio::time::timeout(req.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout(req.timeout)),
        }
    }
}

/// The innermost cause of a reqwest error, which is where the useful words are
/// ("Connection refused", "invalid peer certificate"...).
fn classify(e: reqwest::Error) -> ProbeError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        ProbeError::Connect(text)
    } else {
        ProbeError::Request(text)
    }
}

/// A certificate verifier that accepts any chain and name but still checks the
/// handshake signatures, so the peer holds the key of the certificate it shows.
#[derive(Debug)]
pub(crate) struct NoChainCheck(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoChainCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;

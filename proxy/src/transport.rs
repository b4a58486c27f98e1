//! Upstream transports: how the proxy connects to a service's servers — TLS trust
//! (system roots, `rootCAs`, `insecureSkipVerify`), the SNI name, client certificates,
//! HTTP/2 and the connection timeouts — compiled from a Traefik `serversTransport`.
//!
//! The proxy reads no file: the control plane loads every file a transport names into
//! [`TransportFiles`] before compiling, and [`UpstreamTransport::compile`] parses the
//! bytes. A transport is shared by the upstreams of the services selecting it; the
//! request path only copies `Arc`s out of it into Pingora's `HttpPeer`.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::utils::tls::{CertKey, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::dynamic::{ServersTransport, TraefikDuration};

/// Concurrent HTTP/2 streams the proxy opens on one upstream connection.
pub const MAX_H2_STREAMS: usize = 100;

/// The contents of the files transports name, keyed by transport name and the
/// reference as written (a path, relative or absolute). Filled by the control plane.
#[derive(Debug, Clone, Default)]
pub struct TransportFiles {
    files: BTreeMap<(String, String), Arc<[u8]>>,
}

impl TransportFiles {
    /// Record the bytes of `reference` (as written in transport `transport`).
    pub fn insert(&mut self, transport: &str, reference: &str, bytes: Vec<u8>) {
        self.files.insert((transport.to_string(), reference.to_string()), bytes.into());
    }

    /// The bytes of `reference` in `transport`, if loaded.
    pub fn get(&self, transport: &str, reference: &str) -> Option<&[u8]> {
        self.files.get(&(transport.to_string(), reference.to_string())).map(|b| &**b)
    }
}

/// Whether a file-or-content value is the PEM text itself rather than a file name.
pub fn is_inline_pem(value: &str) -> bool {
    value.trim_start().starts_with("-----BEGIN")
}

/// A transport problem: the field (`rootCAs[0]`, `certificates[0].keyFile`...) and what
/// is wrong with it. Never quotes key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    /// Field inside the transport.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A compiled servers transport.
pub struct UpstreamTransport {
    /// Transport name (`default` when a service selects none).
    pub name: String,
    /// SNI and verified name instead of the URL's host.
    pub server_name: Option<String>,
    /// Verify the server's certificate chain and name.
    pub verify: bool,
    /// Trusted CAs instead of the system roots.
    pub ca: Option<Arc<[WrappedX509]>>,
    /// Client certificate and key for servers that ask for one.
    pub client_cert: Option<Arc<CertKey>>,
    /// Offer h2 (ALPN) to https servers.
    pub http2: bool,
    /// Connect timeout (`dialTimeout`), else the proxy's.
    pub connect_timeout: Option<Duration>,
    /// Read timeout (`responseHeaderTimeout`), else the proxy's.
    pub read_timeout: Option<Duration>,
    /// Pooled-connection idle timeout (`idleConnTimeout`), else the proxy's.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 ping interval (`readIdleTimeout`).
    pub h2_ping_interval: Option<Duration>,
    /// Whether connections are kept for reuse (`maxIdleConnsPerHost` ≥ 0).
    pub keepalive: bool,
    /// Settings the proxy parses but cannot apply (routers using the transport refuse).
    pub unapplied: Vec<String>,
    /// TLS settings of https health checks: the same trust as requests.
    pub probe_tls: Arc<rustls::ClientConfig>,
    /// Hash of everything above: a changed transport gives its upstreams fresh
    /// connections (Pingora's pool key does not include the CA list).
    pub fingerprint: u64,
}

impl std::fmt::Debug for UpstreamTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTransport")
            .field("name", &self.name)
            .field("verify", &self.verify)
            .field("custom_ca", &self.ca.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

fn duration(d: &Option<TraefikDuration>, field: &str) -> Result<Option<Duration>, TransportError> {
    match d {
        None => Ok(None),
        Some(d) => match d.to_std() {
            Ok(v) if v.is_zero() => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(message) => Err(TransportError { field: format!("forwardingTimeouts.{field}"), message }),
        },
    }
}

/// What a message calls a file-or-content value: the file name, or `inline PEM`.
fn source(reference: &str) -> String {
    if is_inline_pem(reference) {
        "inline PEM".into()
    } else {
        format!("{reference:?}")
    }
}

/// The certificates in PEM `bytes` (from `reference`), each checked to parse as X.509.
fn certificates(bytes: &[u8], field: &str, reference: &str) -> Result<Vec<Vec<u8>>, TransportError> {
    let err = |message: String| TransportError {
        field: field.to_string(),
        message: format!("{}: {message}", source(reference)),
    };
    let mut out = Vec::new();
    for cert in CertificateDer::pem_slice_iter(bytes) {
        let cert = cert.map_err(|e| err(format!("not a PEM certificate: {e}")))?;
        // Pingora parses these again (and panics on what does not parse): check first.
        if let Err(e) = x509_parser::parse_x509_certificate(cert.as_ref()) {
            return Err(err(format!("a certificate does not parse: {e}")));
        }
        out.push(cert.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(out)
}

impl UpstreamTransport {
    /// The transport of services that select none: system roots, verification on,
    /// SNI from the URL, h2 offered to https servers, the proxy's timeouts.
    pub fn system_default() -> Result<Self, TransportError> {
        Self::compile("default", &ServersTransport::default(), &TransportFiles::default())
    }

    /// Compile transport `name` from its definition and the loaded files.
    pub fn compile(name: &str, t: &ServersTransport, files: &TransportFiles) -> Result<Self, TransportError> {
        let file = |field: &str, reference: &str| -> Result<Vec<u8>, TransportError> {
            if is_inline_pem(reference) {
                return Ok(reference.as_bytes().to_vec());
            }
            files.get(name, reference).map(<[u8]>::to_vec).ok_or_else(|| TransportError {
                field: field.to_string(),
                message: format!("file {reference:?} was not loaded"),
            })
        };
        let mut hasher = DefaultHasher::new();
        let verify = !t.insecure_skip_verify.unwrap_or(false);
        let mut roots = rustls::RootCertStore::empty();
        let ca = if t.root_cas.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            None
        } else {
            let mut list = Vec::new();
            for (i, reference) in t.root_cas.iter().enumerate() {
                let field = format!("rootCAs[{i}]");
                let bytes = file(&field, reference)?;
                bytes.hash(&mut hasher);
                for der in certificates(&bytes, &field, reference)? {
                    roots.add(CertificateDer::from(der.clone())).map_err(|e| TransportError {
                        field: field.clone(),
                        message: format!("{}: not usable as a CA certificate: {e}", source(reference)),
                    })?;
                    list.push(WrappedX509::new(der, pingora_core::utils::tls::parse_x509));
                }
            }
            Some(Arc::<[WrappedX509]>::from(list))
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError { field: String::new(), message: e.to_string() })?;
        let builder = if verify {
            builder.with_root_certificates(roots)
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(crate::probe::NoChainCheck(provider)))
        };
        let (probe_tls, client_cert) = match t.certificates.first() {
            None => (builder.with_no_client_auth(), None),
            Some(c) => {
                let cert_field = "certificates[0].certFile";
                let key_field = "certificates[0].keyFile";
                let chain = certificates(&file(cert_field, &c.cert_file)?, cert_field, &c.cert_file)?;
                let key_bytes = file(key_field, &c.key_file)?;
                key_bytes.hash(&mut hasher);
                chain.hash(&mut hasher);
                let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TransportError {
                    field: key_field.into(),
                    message: format!("{}: not a PEM private key: {e}", source(&c.key_file)),
                })?;
                let key_der = key.secret_der().to_vec();
                let certs: Vec<CertificateDer<'static>> = chain.iter().cloned().map(CertificateDer::from).collect();
                // rustls checks that the key matches the certificate.
                let cfg = builder.with_client_auth_cert(certs, key).map_err(|e| TransportError {
                    field: "certificates[0]".into(),
                    message: format!("the key does not fit the certificate: {e}"),
                })?;
                (cfg, Some(Arc::new(CertKey::new(chain, key_der))))
            }
        };
        let mut unapplied = Vec::new();
        if t.certificates.len() > 1 {
            unapplied.push("certificates beyond the first".to_string());
        }
        if t.peer_cert_uri.is_some() {
            unapplied.push("peerCertURI".to_string());
        }
        if t.spiffe.is_some() {
            unapplied.push("spiffe".to_string());
        }
        let ft = t.forwarding_timeouts.clone().unwrap_or_default();
        if ft.ping_timeout.is_some() {
            unapplied.push("forwardingTimeouts.pingTimeout".to_string());
        }
        if t.max_idle_conns_per_host.is_some_and(|n| n > 0) {
            // Pingora's pool is sized for the whole process, not per host.
            unapplied.push("maxIdleConnsPerHost (a per-host cap; only 0 or negative apply)".to_string());
        }
        let server_name = t.server_name.clone().filter(|s| !s.is_empty());
        let out = Self {
            name: name.to_string(),
            server_name,
            verify,
            ca,
            client_cert,
            http2: !t.disable_http2.unwrap_or(false),
            connect_timeout: duration(&ft.dial_timeout, "dialTimeout")?,
            read_timeout: duration(&ft.response_header_timeout, "responseHeaderTimeout")?,
            idle_timeout: duration(&ft.idle_conn_timeout, "idleConnTimeout")?,
            h2_ping_interval: duration(&ft.read_idle_timeout, "readIdleTimeout")?,
            keepalive: t.max_idle_conns_per_host.is_none_or(|n| n >= 0),
            unapplied,
            probe_tls: Arc::new(probe_tls),
            fingerprint: 0,
        };
        (
            name,
            &out.server_name,
            out.verify,
            out.http2,
            out.connect_timeout,
            out.read_timeout,
            out.idle_timeout,
            out.h2_ping_interval,
            out.keepalive,
        )
            .hash(&mut hasher);
        Ok(Self { fingerprint: hasher.finish(), ..out })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dynamic::TransportCertificate;

    fn ca() -> (rcgen::CertifiedKey<rcgen::KeyPair>, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let pem = ck.cert.pem();
        (ck, pem)
    }

    #[test]
    fn default_verifies_with_h2_and_system_roots() {
        let t = UpstreamTransport::system_default().unwrap();
        assert!(t.verify && t.http2 && t.keepalive && t.ca.is_none() && t.client_cert.is_none());
        assert!(t.unapplied.is_empty());
    }

    #[test]
    fn root_cas_and_client_certificates_load_from_files_or_inline_text() {
        let (_, ca_pem) = ca();
        let client = rcgen::generate_simple_self_signed(vec!["client.test".into()]).unwrap();
        let mut files = TransportFiles::default();
        files.insert("t", "ca.pem", ca_pem.clone().into_bytes());
        files.insert("t", "client.key", client.signing_key.serialize_pem().into_bytes());
        let st = ServersTransport {
            root_cas: vec!["ca.pem".into(), ca_pem],
            certificates: vec![TransportCertificate { cert_file: client.cert.pem(), key_file: "client.key".into() }],
            server_name: Some("internal.test".into()),
            disable_http2: Some(true),
            ..ServersTransport::default()
        };
        let t = UpstreamTransport::compile("t", &st, &files).unwrap();
        assert_eq!(t.ca.as_ref().map(|c| c.len()), Some(2));
        assert!(t.client_cert.is_some() && !t.http2);
        assert_eq!(t.server_name.as_deref(), Some("internal.test"));
        // The debug form never shows key material.
        assert!(!format!("{t:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let (_, ca_pem) = ca();
        let other = rcgen::generate_simple_self_signed(vec!["other.test".into()]).unwrap();
        let mut files = TransportFiles::default();
        files.insert("t", "garbage.pem", b"hello".to_vec());
        let err = |st: ServersTransport| UpstreamTransport::compile("t", &st, &files).unwrap_err();
        let e = err(ServersTransport { root_cas: vec!["missing.pem".into()], ..Default::default() });
        assert_eq!(e.field, "rootCAs[0]");
        let e = err(ServersTransport { root_cas: vec!["garbage.pem".into()], ..Default::default() });
        assert!(e.message.contains("no PEM certificate"), "{e:?}");
        // A key that is not the certificate's.
        let e = err(ServersTransport {
            certificates: vec![TransportCertificate { cert_file: ca_pem, key_file: other.signing_key.serialize_pem() }],
            ..Default::default()
        });
        assert_eq!(e.field, "certificates[0]", "{e:?}");
        assert!(!e.message.contains("PRIVATE"));
    }

    #[test]
    fn unsupported_settings_are_listed_not_skipped() {
        let st = ServersTransport {
            peer_cert_uri: Some("spiffe://x".into()),
            max_idle_conns_per_host: Some(10),
            ..Default::default()
        };
        let t = UpstreamTransport::compile("t", &st, &TransportFiles::default()).unwrap();
        assert_eq!(t.unapplied.len(), 2, "{:?}", t.unapplied);
        let st = ServersTransport { max_idle_conns_per_host: Some(-1), ..Default::default() };
        let t = UpstreamTransport::compile("t", &st, &TransportFiles::default()).unwrap();
        assert!(t.unapplied.is_empty() && !t.keepalive);
    }
}

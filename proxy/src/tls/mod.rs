//! TLS termination: the certificate and options snapshot the control plane hands in
//! ([`TlsSnapshot`], swapped whole through a [`TlsHandle`]), the ClientHello reader
//! ([`hello`]), and what ACME needs from the proxy ([`AcmeMaterial`], [`acme_domains`]).
//!
//! The proxy never reads a file: the plane reads what [`referenced_files`] lists and
//! passes the bytes in [`TlsFiles`]; [`TlsSnapshot::build`] parses them, checks every
//! option and builds one rustls `ServerConfig` (one Pingora `Acceptor`) per options set
//! and protocol list, so a handshake only picks one.

pub mod certs;
pub mod hello;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::listeners::tls::Acceptor;
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use rustls::crypto::ring::{cipher_suite as cs, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use serde::Serialize;

use crate::dynamic::{Domain, DynamicConfig, TlsOptions};
use crate::rule::Rule;
pub use certs::{CertEntry, CertSource, CertStore};

/// The ALPN name of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN name of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// The ALPN name of the ACME TLS-ALPN-01 challenge (RFC 8737).
pub const ALPN_ACME: &[u8] = b"acme-tls/1";
/// The options set a router without `tls.options` uses.
pub const DEFAULT_OPTIONS: &str = "default";

/// The shared, swappable TLS snapshot.
pub type TlsHandle = Arc<ArcSwap<TlsSnapshot>>;

/// What ACME hands the proxy: issued certificates, and answers to pending challenges.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AcmeMaterial {
    /// Issued certificates: PEM chain (leaf first) and PEM private key.
    pub certificates: Vec<(String, String)>,
    /// http-01: token → key authorization, answered on every plain entry point at
    /// `/.well-known/acme-challenge/<token>`.
    pub http01: BTreeMap<String, String>,
    /// tls-alpn-01: domain → (PEM challenge certificate, PEM key), served to a ClientHello
    /// for that name offering ALPN `acme-tls/1`.
    pub alpn01: BTreeMap<String, (String, String)>,
}

impl fmt::Debug for AcmeMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys and key authorizations stay out of logs.
        f.debug_struct("AcmeMaterial")
            .field("certificates", &self.certificates.len())
            .field("http01", &self.http01.keys().collect::<Vec<_>>())
            .field("alpn01", &self.alpn01.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// File contents the plane read for a snapshot, by the path as written in the
/// configuration (after the plane made it absolute).
pub type TlsFiles = BTreeMap<String, Vec<u8>>;

/// A TLS problem in the configuration, with the object and key to locate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// `tls.options.modern`, `tls.certificates[0]`, `tls.stores.default`.
    pub object: String,
    /// The key under it, e.g. `minVersion`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.object, self.message)
        } else {
            write!(f, "{}.{}: {}", self.object, self.field, self.message)
        }
    }
}

fn err(object: impl Into<String>, field: &str, message: impl Into<String>) -> TlsError {
    TlsError { object: object.into(), field: field.to_string(), message: message.into() }
}

/// Whether a `certFile`/`keyFile`/`caFiles` value is PEM text rather than a path.
pub fn is_inline_pem(value: &str) -> bool {
    value.trim_start().starts_with("-----BEGIN")
}

/// Every file a configuration's TLS section names, with the key naming it
/// (`tls.certificates[0].certFile`), inline PEM left out. The plane reads these.
pub fn referenced_files(cfg: &DynamicConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(tls) = &cfg.tls else { return out };
    let mut add = |path: &str, key: String| {
        if !path.is_empty() && !is_inline_pem(path) {
            out.push((path.to_string(), key));
        }
    };
    for (i, c) in tls.certificates.iter().enumerate() {
        add(&c.cert_file, format!("tls.certificates[{i}].certFile"));
        add(&c.key_file, format!("tls.certificates[{i}].keyFile"));
    }
    for (name, s) in &tls.stores {
        if let Some(d) = &s.default_certificate {
            add(&d.cert_file, format!("tls.stores.{name}.defaultCertificate.certFile"));
            add(&d.key_file, format!("tls.stores.{name}.defaultCertificate.keyFile"));
        }
    }
    for (name, o) in &tls.options {
        for (i, ca) in o.client_auth.iter().flat_map(|c| c.ca_files.iter()).enumerate() {
            add(ca, format!("tls.options.{name}.clientAuth.caFiles[{i}]"));
        }
    }
    out
}

fn contents<'a>(files: &'a TlsFiles, value: &'a str) -> Option<&'a [u8]> {
    if is_inline_pem(value) {
        Some(value.as_bytes())
    } else {
        files.get(value).map(Vec::as_slice)
    }
}

/// Public facts about one served certificate (status; never key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Names it covers.
    pub names: Vec<String>,
    /// `file`, `acme`, `default` or `self-signed`.
    pub source: String,
    /// The file it came from, when any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// notAfter, Unix seconds.
    pub not_after_unix: i64,
    /// Issuer common name.
    pub issuer: String,
}

/// One options set, ready for handshakes.
struct OptionSet {
    /// ALPN with `h2` (for entry points with `http2 = true`).
    with_h2: Arc<Acceptor>,
    /// ALPN without `h2`.
    without_h2: Arc<Acceptor>,
}

/// Everything a TLS handshake needs, built once per configuration or ACME change.
pub struct TlsSnapshot {
    store: Arc<CertStore>,
    options: HashMap<String, OptionSet>,
    /// Router `Host` names → the options set named by their router.
    host_options: HashMap<String, String>,
    alpn01: HashMap<String, Arc<Acceptor>>,
    http01: HashMap<String, String>,
}

impl fmt::Debug for TlsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSnapshot")
            .field("certificates", &self.store.all().len())
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("host_options", &self.host_options)
            .finish_non_exhaustive()
    }
}

fn version(object: &str, field: &str, v: &str) -> Result<&'static SupportedProtocolVersion, TlsError> {
    match v {
        "VersionTLS12" => Ok(&rustls::version::TLS12),
        "VersionTLS13" => Ok(&rustls::version::TLS13),
        "VersionTLS10" | "VersionTLS11" => Err(err(
            object,
            field,
            format!("{v:?} is not available: rustls speaks only TLS 1.2 and 1.3 (use VersionTLS12)"),
        )),
        other => Err(err(object, field, format!("{other:?} is not a TLS version (VersionTLS12 or VersionTLS13)"))),
    }
}

/// A Traefik (Go) cipher suite name → the rustls suite.
fn suite(name: &str) -> Option<SupportedCipherSuite> {
    Some(match name {
        "TLS_AES_128_GCM_SHA256" => cs::TLS13_AES_128_GCM_SHA256,
        "TLS_AES_256_GCM_SHA384" => cs::TLS13_AES_256_GCM_SHA384,
        "TLS_CHACHA20_POLY1305_SHA256" => cs::TLS13_CHACHA20_POLY1305_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

fn curve(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    Some(match name {
        "X25519" => kx_group::X25519,
        "CurveP256" | "secp256r1" => kx_group::SECP256R1,
        "CurveP384" | "secp384r1" => kx_group::SECP384R1,
        _ => return None,
    })
}

/// A built options set before the certificate store is attached.
struct Checked {
    provider: Arc<CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    alpn: Vec<Vec<u8>>,
    strict: bool,
}

/// Check one options set (`object` = `tls.options.<name>`) and turn it into rustls terms.
fn check_options(object: &str, o: &TlsOptions, files: Option<&TlsFiles>) -> Result<Checked, Vec<TlsError>> {
    let mut errors = Vec::new();
    let min = o.min_version.as_deref().map(|v| version(object, "minVersion", v)).transpose();
    let max = o.max_version.as_deref().map(|v| version(object, "maxVersion", v)).transpose();
    let (min, max) = match (min, max) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            errors.extend(a.err());
            errors.extend(b.err());
            (None, None)
        }
    };
    let rank = |v: &SupportedProtocolVersion| if v.version == rustls::ProtocolVersion::TLSv1_3 { 13 } else { 12 };
    let lo = min.map_or(12, rank);
    let hi = max.map_or(13, rank);
    if lo > hi {
        errors.push(err(object, "maxVersion", "is below minVersion"));
    }
    let versions: Vec<&'static SupportedProtocolVersion> = [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .filter(|v| (lo..=hi).contains(&rank(v)))
        .collect();
    let mut provider = (*certs::provider()).clone();
    if !o.cipher_suites.is_empty() {
        let mut chosen = Vec::new();
        for name in &o.cipher_suites {
            match suite(name) {
                Some(s) => chosen.push(s),
                None => errors.push(err(
                    object,
                    "cipherSuites",
                    format!(
                        "{name:?} is unknown or not supported by rustls (AEAD suites only: TLS_AES_128_GCM_SHA256, \
                         TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, ...)"
                    ),
                )),
            }
        }
        // As in Go, the list restricts TLS 1.2; TLS 1.3 suites stay unless some are listed.
        let lists_13 = chosen.iter().any(|s| s.tls13().is_some());
        if !lists_13 {
            chosen.extend(provider.cipher_suites.iter().filter(|s| s.tls13().is_some()).copied());
        }
        if lo == 12 && !chosen.iter().any(|s| s.tls13().is_none()) && hi == 12 {
            errors.push(err(object, "cipherSuites", "lists no TLS 1.2 suite, but only TLS 1.2 is allowed"));
        }
        provider.cipher_suites = chosen;
    }
    if !o.curve_preferences.is_empty() {
        let mut groups = Vec::new();
        for name in &o.curve_preferences {
            match curve(name) {
                Some(g) => groups.push(g),
                None => errors.push(err(
                    object,
                    "curvePreferences",
                    format!("{name:?} is unknown or not supported (X25519, CurveP256, CurveP384)"),
                )),
            }
        }
        provider.kx_groups = groups;
    }
    let alpn: Vec<Vec<u8>> = match &o.alpn_protocols {
        Some(list) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
        None => vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()],
    };
    let provider = Arc::new(provider);
    let mut verifier = None;
    if let Some(ca) = &o.client_auth {
        let kind = ca.client_auth_type.as_deref().unwrap_or("NoClientCert");
        let verify = match kind {
            "NoClientCert" => None,
            "VerifyClientCertIfGiven" => Some(true),
            "RequireAndVerifyClientCert" => Some(false),
            "RequestClientCert" | "RequireAnyClientCert" => {
                errors.push(err(
                    object,
                    "clientAuth.clientAuthType",
                    format!(
                        "{kind:?} accepts client certificates without verifying them, which rustls does not do; \
                         use VerifyClientCertIfGiven or RequireAndVerifyClientCert with caFiles"
                    ),
                ));
                None
            }
            other => {
                errors.push(err(
                    object,
                    "clientAuth.clientAuthType",
                    format!(
                        "{other:?} is not a client auth type (NoClientCert, VerifyClientCertIfGiven, \
                         RequireAndVerifyClientCert)"
                    ),
                ));
                None
            }
        };
        if let Some(optional) = verify {
            if ca.ca_files.is_empty() {
                errors.push(err(object, "clientAuth.caFiles", format!("{kind} needs at least one CA file")));
            } else if let Some(files) = files {
                let mut roots = RootCertStore::empty();
                for (i, f) in ca.ca_files.iter().enumerate() {
                    let field = format!("clientAuth.caFiles[{i}]");
                    let Some(bytes) = contents(files, f) else {
                        errors.push(err(object, &field, format!("{f}: not read")));
                        continue;
                    };
                    let certs: Result<Vec<CertificateDer<'static>>, _> =
                        CertificateDer::pem_slice_iter(bytes).collect();
                    match certs {
                        Ok(list) if !list.is_empty() => {
                            for c in list {
                                if let Err(e) = roots.add(c) {
                                    errors.push(err(object, &field, format!("{f}: not a usable CA certificate ({e})")));
                                }
                            }
                        }
                        Ok(_) => errors.push(err(object, &field, format!("{f}: no PEM CERTIFICATE block found"))),
                        Err(e) => errors.push(err(object, &field, format!("{f}: not valid PEM ({e})"))),
                    }
                }
                if !roots.is_empty() {
                    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                    let builder = if optional { builder.allow_unauthenticated() } else { builder };
                    match builder.build() {
                        Ok(v) => verifier = Some(v),
                        Err(e) => errors.push(err(object, "clientAuth", format!("cannot verify with these CAs: {e}"))),
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Checked { provider, versions, verifier, alpn, strict: o.sni_strict.unwrap_or(false) })
}

fn acceptor(
    object: &str,
    c: &Checked,
    store: &Arc<CertStore>,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Arc<Acceptor>, TlsError> {
    let builder = ServerConfig::builder_with_provider(c.provider.clone())
        .with_protocol_versions(&c.versions)
        .map_err(|e| err(object, "cipherSuites", format!("no usable suite for these versions: {e}")))?;
    let builder = match &c.verifier {
        Some(v) => builder.with_client_cert_verifier(v.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(certs::SniResolver::new(store.clone(), c.strict)));
    config.alpn_protocols = c.alpn.iter().filter(|p| keep(p)).cloned().collect();
    Ok(Arc::new(Acceptor::from_server_config(Arc::new(config))))
}

/// Check the TLS section of a configuration without file contents (options values,
/// stores, certificate entries): what `compile` reports with file:line:column.
pub fn check(cfg: &DynamicConfig) -> Vec<TlsError> {
    let mut errors = Vec::new();
    let Some(tls) = &cfg.tls else { return errors };
    for (name, o) in &tls.options {
        if let Err(e) = check_options(&format!("tls.options.{name}"), o, None) {
            errors.extend(e);
        }
    }
    for (i, c) in tls.certificates.iter().enumerate() {
        let object = format!("tls.certificates[{i}]");
        if c.cert_file.is_empty() {
            errors.push(err(&object, "certFile", "is required"));
        }
        if c.key_file.is_empty() {
            errors.push(err(&object, "keyFile", "is required"));
        }
        if let Some(s) = c.stores.iter().find(|s| s.as_str() != "default") {
            errors.push(err(&object, "stores", format!("store {s:?} does not exist (only \"default\")")));
        }
    }
    for (name, s) in &tls.stores {
        let object = format!("tls.stores.{name}");
        if name != "default" {
            errors.push(err(&object, "", "only the store named \"default\" is used; rename it or remove it"));
        }
        if s.default_generated_cert.is_some() {
            errors.push(err(
                &object,
                "defaultGeneratedCert",
                "is not supported: name the default certificate with defaultCertificate (ACME certificates are \
                 served by name)",
            ));
        }
        if let Some(d) = &s.default_certificate {
            if d.cert_file.is_empty() || d.key_file.is_empty() {
                errors.push(err(&object, "defaultCertificate", "needs certFile and keyFile"));
            }
        }
    }
    for (rname, r) in &cfg.http.routers {
        let Some(opts) = r.tls.as_ref().and_then(|t| t.options.as_deref()) else { continue };
        let bare = opts.split('@').next().unwrap_or(opts);
        let defined = tls.options.contains_key(bare) || bare == DEFAULT_OPTIONS;
        if !defined {
            errors.push(err(format!("http.routers.{rname}"), "tls.options", format!("no tls.options named {bare:?}")));
        }
    }
    errors
}

impl TlsSnapshot {
    /// No certificates configured: the generated self-signed default, default options.
    pub fn empty() -> Self {
        match Self::build(&DynamicConfig::default(), &TlsFiles::new(), &AcmeMaterial::default()) {
            Ok((s, _)) => s,
            // The built-in options always build.
            Err(e) => panic!("default TLS options do not build: {e:?}"),
        }
    }

    /// Build from a validated configuration, the files it names, and ACME's material.
    /// Returns the snapshot and warnings (names covered twice, router option conflicts).
    pub fn build(
        cfg: &DynamicConfig,
        files: &TlsFiles,
        acme: &AcmeMaterial,
    ) -> Result<(Self, Vec<String>), Vec<TlsError>> {
        let mut errors = check(cfg);
        let mut warnings = Vec::new();
        let default_tls = crate::dynamic::TlsConfig::default();
        let tls = cfg.tls.as_ref().unwrap_or(&default_tls);
        let pair = |object: &str, cert: &str, key: &str, source: CertSource| -> Result<CertEntry, TlsError> {
            let c = contents(files, cert).ok_or_else(|| err(object, "certFile", format!("{cert}: not read")))?;
            let k = contents(files, key).ok_or_else(|| err(object, "keyFile", format!("{key}: not read")))?;
            certs::parse_pair(c, k, source).map_err(|m| {
                let (field, file) = if m.starts_with("key") { ("keyFile", key) } else { ("certFile", cert) };
                let shown = if is_inline_pem(file) { "inline PEM" } else { file };
                err(object, field, format!("{shown}: {m}"))
            })
        };
        // File certificates first: they win a name over ACME's (an operator's choice).
        let mut entries = Vec::new();
        for (i, c) in tls.certificates.iter().enumerate() {
            if c.cert_file.is_empty() || c.key_file.is_empty() {
                continue;
            }
            let source =
                CertSource::File(if is_inline_pem(&c.cert_file) { "inline".into() } else { c.cert_file.clone() });
            match pair(&format!("tls.certificates[{i}]"), &c.cert_file, &c.key_file, source) {
                Ok(e) => entries.push(Arc::new(e)),
                Err(e) => errors.push(e),
            }
        }
        for (i, (chain, key)) in acme.certificates.iter().enumerate() {
            match certs::parse_pair(chain.as_bytes(), key.as_bytes(), CertSource::Acme) {
                Ok(e) => entries.push(Arc::new(e)),
                Err(m) => warnings.push(format!("acme certificate {i}: {m}; not served")),
            }
        }
        let mut default = certs::self_signed();
        if let Some(d) = tls.stores.get("default").and_then(|s| s.default_certificate.as_ref()) {
            if !d.cert_file.is_empty() && !d.key_file.is_empty() {
                let source = CertSource::Default(if is_inline_pem(&d.cert_file) {
                    "inline".into()
                } else {
                    d.cert_file.clone()
                });
                match pair("tls.stores.default.defaultCertificate", &d.cert_file, &d.key_file, source) {
                    Ok(e) => default = Arc::new(e),
                    Err(e) => errors.push(e),
                }
            }
        }
        let (store, w) = CertStore::new(entries, default);
        warnings.extend(w);
        let store = Arc::new(store);
        let mut sets: BTreeMap<String, TlsOptions> = tls.options.clone().into_iter().collect();
        sets.entry(DEFAULT_OPTIONS.to_string()).or_default();
        let mut options = HashMap::new();
        for (name, o) in &sets {
            let object = format!("tls.options.{name}");
            match check_options(&object, o, Some(files)) {
                Ok(c) => {
                    let with = acceptor(&object, &c, &store, |_| true);
                    let without = acceptor(&object, &c, &store, |p| p != ALPN_H2);
                    match (with, without) {
                        (Ok(with_h2), Ok(without_h2)) => {
                            options.insert(name.clone(), OptionSet { with_h2, without_h2 });
                        }
                        (Err(e), _) | (_, Err(e)) => errors.push(e),
                    }
                }
                Err(e) => {
                    // `check` already reported what does not need files.
                    for e in e {
                        if !errors.contains(&e) {
                            errors.push(e);
                        }
                    }
                }
            }
        }
        let mut host_options: HashMap<String, String> = HashMap::new();
        let mut conflicted = BTreeSet::new();
        for (rname, r) in &cfg.http.routers {
            let Some(t) = &r.tls else { continue };
            let opts = t.options.as_deref().map(|o| o.split('@').next().unwrap_or(o)).unwrap_or(DEFAULT_OPTIONS);
            let Ok(rule) = Rule::parse(r.rule.as_deref().unwrap_or("")) else { continue };
            for host in rule.hosts() {
                match host_options.get(host) {
                    Some(prev) if prev != opts => {
                        if conflicted.insert(host.to_string()) {
                            warnings.push(format!(
                                "http.routers.{rname}: {host} is served with several tls.options; the default options \
                                 apply to it"
                            ));
                        }
                    }
                    Some(_) => {}
                    None => {
                        host_options.insert(host.to_string(), opts.to_string());
                    }
                }
            }
        }
        for host in &conflicted {
            host_options.insert(host.clone(), DEFAULT_OPTIONS.to_string());
        }
        let mut alpn01 = HashMap::new();
        for (domain, (cert, key)) in &acme.alpn01 {
            match certs::parse_pair(cert.as_bytes(), key.as_bytes(), CertSource::Acme) {
                Ok(e) => {
                    let config = ServerConfig::builder_with_provider(certs::provider())
                        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
                        .map(|b| b.with_no_client_auth().with_cert_resolver(Arc::new(Single(e.key.clone()))));
                    match config {
                        Ok(mut c) => {
                            c.alpn_protocols = vec![ALPN_ACME.to_vec()];
                            alpn01.insert(
                                domain.to_ascii_lowercase(),
                                Arc::new(Acceptor::from_server_config(Arc::new(c))),
                            );
                        }
                        Err(e) => warnings.push(format!("acme tls-alpn-01 {domain}: {e}")),
                    }
                }
                Err(m) => warnings.push(format!("acme tls-alpn-01 {domain}: {m}; not served")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let http01 = acme.http01.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok((Self { store, options, host_options, alpn01, http01 }, warnings))
    }

    /// The acceptor for a handshake naming `sni`: the options set of the router serving
    /// that name (else `default`), with or without `h2` in ALPN.
    pub fn acceptor(&self, sni: Option<&str>, h2: bool) -> &Arc<Acceptor> {
        let name = sni.and_then(|s| self.host_options.get(s)).map(String::as_str).unwrap_or(DEFAULT_OPTIONS);
        let set = self.options.get(name).or_else(|| self.options.get(DEFAULT_OPTIONS));
        match set {
            Some(s) if h2 => &s.with_h2,
            Some(s) => &s.without_h2,
            // `build` always inserts `default`.
            None => unreachable_default(),
        }
    }

    /// The tls-alpn-01 acceptor for `sni`, when a challenge for it is pending.
    pub fn acme_alpn(&self, sni: &str) -> Option<&Arc<Acceptor>> {
        self.alpn01.get(sni)
    }

    /// The key authorization for an http-01 `token`, when a challenge is pending.
    pub fn http01(&self, token: &str) -> Option<&str> {
        self.http01.get(token).map(String::as_str)
    }

    /// The certificate store.
    pub fn store(&self) -> &CertStore {
        &self.store
    }

    /// Public facts about every served certificate (the default last).
    pub fn certificates(&self) -> Vec<CertInfo> {
        self.store
            .all()
            .iter()
            .map(|e| CertInfo {
                names: e.names.clone(),
                source: e.source.kind().to_string(),
                file: e.source.file().map(str::to_string),
                not_after_unix: e.not_after,
                issuer: e.issuer.clone(),
            })
            .collect()
    }
}

fn unreachable_default() -> ! {
    panic!("TLS snapshot without default options")
}

/// A resolver with one certificate (the tls-alpn-01 challenge).
#[derive(Debug)]
struct Single(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Single {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What ACME must order, by resolver: one name list per certificate, its main name
/// first. A router with `tls.certResolver` wants one certificate per `tls.domains`
/// entry (main, then SANs; wildcards allowed) or, when it has none, one for the literal
/// names of its `Host` rule (Traefik's behaviour). Names are lower-cased and a list
/// repeated by several routers is ordered once.
pub fn acme_domains(cfg: &DynamicConfig) -> BTreeMap<String, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut push = |resolver: &str, names: Vec<String>| {
        let mut list: Vec<String> = Vec::with_capacity(names.len());
        for n in names.into_iter().map(|n| n.trim_end_matches('.').to_ascii_lowercase()) {
            if !n.is_empty() && !list.contains(&n) {
                list.push(n);
            }
        }
        if !list.is_empty() {
            out.entry(resolver.to_string()).or_default().insert(list);
        }
    };
    // A router's certificate: its `domains`, or else the literal names of its rule.
    let mut wanted = |resolver: Option<&str>, domains: Option<&Vec<Domain>>, hosts: &dyn Fn() -> Vec<String>| {
        let Some(resolver) = resolver.filter(|s| !s.is_empty()) else { return };
        match domains.filter(|d| !d.is_empty()) {
            Some(domains) => {
                for d in domains {
                    push(resolver, d.main.iter().chain(d.sans.iter().flatten()).cloned().collect());
                }
            }
            None => push(resolver, hosts()),
        }
    };
    for r in cfg.http.routers.values() {
        let Some(t) = &r.tls else { continue };
        let hosts = || {
            Rule::parse(r.rule.as_deref().unwrap_or(""))
                .map(|rule| rule.hosts().into_iter().map(str::to_string).collect())
                .unwrap_or_default()
        };
        wanted(t.cert_resolver.as_deref(), t.domains.as_ref(), &hosts);
    }
    // TCP routers that terminate TLS (a passthrough router's certificate is its server's).
    for r in cfg.tcp.routers.values() {
        let Some(t) = r.tls.as_ref().filter(|t| t.passthrough != Some(true)) else { continue };
        let hosts = || {
            crate::rule::TcpRule::parse(r.rule.as_deref().unwrap_or(""))
                .map(|rule| rule.hosts().into_iter().map(str::to_string).collect())
                .unwrap_or_default()
        };
        wanted(t.cert_resolver.as_deref(), t.domains.as_ref(), &hosts);
    }
    out
}

/// TLS metrics.
#[derive(Clone)]
pub struct TlsMetrics {
    /// Handshakes that failed, by entry point and reason.
    pub handshake_failures: IntCounterVec,
    /// Seconds until notAfter of the certificate served for each name.
    pub cert_expiry: GaugeVec,
}

impl TlsMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            handshake_failures: IntCounterVec::new(
                Opts::new(
                    "constellation_tls_handshake_failures_total",
                    "TLS handshakes that failed on an entry point, by reason: not_tls, bad_record, malformed_hello, \
                     fragmented_hello, not_client_hello, timeout, handshake (rustls refused: version, SNI, client \
                     certificate, ALPN), closed.",
                ),
                &["entrypoint", "reason"],
            )?,
            cert_expiry: GaugeVec::new(
                Opts::new(
                    "constellation_cert_expiry_seconds",
                    "Seconds until the certificate served for a name expires (negative: expired).",
                ),
                &["domain"],
            )?,
        };
        registry.register(Box::new(m.handshake_failures.clone()))?;
        registry.register(Box::new(m.cert_expiry.clone()))?;
        Ok(m)
    }

    /// Set `constellation_cert_expiry_seconds` from a snapshot at `now_unix`.
    pub fn observe(&self, snapshot: &TlsSnapshot, now_unix: i64) {
        self.cert_expiry.reset();
        for e in snapshot.store.all() {
            for n in &e.names {
                self.cert_expiry.with_label_values(&[n]).set((e.not_after - now_unix) as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests;

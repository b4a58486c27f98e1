//! Certificates: PEM → rustls `CertifiedKey` with the names it covers, the store that
//! picks one by server name, and the resolver rustls asks during a handshake.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;

/// Where a served certificate came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertSource {
    /// `tls.certificates[]` (the file or `inline`).
    File(String),
    /// Issued by ACME (handed in by the control plane).
    Acme,
    /// `tls.stores.default.defaultCertificate`.
    Default(String),
    /// Generated at start because no default certificate is configured.
    SelfSigned,
}

impl CertSource {
    /// `file`, `acme`, `default` or `self-signed`.
    pub fn kind(&self) -> &'static str {
        match self {
            CertSource::File(_) => "file",
            CertSource::Acme => "acme",
            CertSource::Default(_) => "default",
            CertSource::SelfSigned => "self-signed",
        }
    }

    /// The file it was read from, if any.
    pub fn file(&self) -> Option<&str> {
        match self {
            CertSource::File(f) | CertSource::Default(f) => Some(f),
            CertSource::Acme | CertSource::SelfSigned => None,
        }
    }
}

/// One parsed certificate and key.
pub struct CertEntry {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf (subjectAltName, else the subject CN), lower-cased;
    /// wildcards as `*.example.com`.
    pub names: Vec<String>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// The issuer's common name (empty when it has none).
    pub issuer: String,
    /// Where it came from.
    pub source: CertSource,
}

impl fmt::Debug for CertEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("CertEntry")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("issuer", &self.issuer)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The crypto provider of every TLS config here (ring, as reqwest's).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// Parse a PEM chain (leaf first) and a PEM private key into an entry, checking the key
/// belongs to the leaf. Errors say what is wrong, never what the key holds.
pub fn parse_pair(chain_pem: &[u8], key_pem: &[u8], source: CertSource) -> Result<CertEntry, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: not valid PEM ({e})"))?;
    if chain.is_empty() {
        return Err("certificate: no PEM CERTIFICATE block found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => "key: no PEM private key block found".to_string(),
        other => format!("key: not valid PEM ({other})"),
    })?;
    let signer =
        provider().key_provider.load_private_key(key).map_err(|e| format!("key: unusable private key ({e})"))?;
    let certified = CertifiedKey::new(chain, signer);
    // `Unknown`: webpki could not read the public key (a tls-alpn-01 challenge
    // certificate carries a critical extension it does not know); only a proven
    // mismatch is an error.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) = certified.keys_match() {
        return Err("key: the private key does not match the certificate".to_string());
    }
    let (names, not_after, issuer) = describe(&certified.cert[0])?;
    Ok(CertEntry { key: Arc::new(certified), names, not_after, issuer, source })
}

/// DNS names, notAfter and issuer CN of a DER certificate.
fn describe(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, String), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate: not a valid X.509 certificate ({e})"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()) {
            if cn.contains('.') && !cn.contains(' ') {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    let issuer = cert.issuer().iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or("").to_string();
    Ok((names, cert.validity().not_after.timestamp(), issuer))
}

/// The self-signed certificate served when no default is configured (Traefik's
/// "TRAEFIK DEFAULT CERT"), generated once per process.
pub fn self_signed() -> Arc<CertEntry> {
    static CERT: OnceLock<Arc<CertEntry>> = OnceLock::new();
    CERT.get_or_init(|| {
        let generated = (|| -> Result<CertEntry, String> {
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
            params.distinguished_name.push(rcgen::DnType::CommonName, "CONSTELLATION DEFAULT CERT");
            let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
            parse_pair(cert.pem().as_bytes(), key.serialize_pem().as_bytes(), CertSource::SelfSigned)
        })();
        match generated {
            Ok(e) => Arc::new(e),
            // rcgen with ring cannot fail to sign its own fresh key; if it ever did,
            // there would be nothing to serve and the process could not do TLS at all.
            Err(e) => panic!("cannot generate the default self-signed certificate: {e}"),
        }
    })
    .clone()
}

/// Certificates by the names they cover, and the default.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertEntry>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertEntry>>,
    default: Arc<CertEntry>,
    all: Vec<Arc<CertEntry>>,
}

impl CertStore {
    /// A store serving `entries` (earlier ones win a name; put the preferred source
    /// first) and `default` for everything else.
    pub fn new(entries: Vec<Arc<CertEntry>>, default: Arc<CertEntry>) -> (Self, Vec<String>) {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut warnings = Vec::new();
        for e in &entries {
            for name in &e.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent.to_string()),
                    None => (&mut exact, name.clone()),
                };
                if let Some(prev) = map.get(&key) {
                    let prev: &Arc<CertEntry> = prev;
                    if !Arc::ptr_eq(prev, e) {
                        warnings.push(format!(
                            "tls: {name} is covered by several certificates; the one from {} is served, not the one from {}",
                            describe_source(&prev.source),
                            describe_source(&e.source)
                        ));
                    }
                    continue;
                }
                map.insert(key, e.clone());
            }
        }
        let mut all = entries;
        all.push(default.clone());
        (Self { exact, wildcard, default, all }, warnings)
    }

    /// The certificate for `name`: an exact name, then a wildcard one label up.
    pub fn lookup(&self, name: &str) -> Option<&Arc<CertEntry>> {
        let name = name.trim_end_matches('.');
        if let Some(e) = self.exact.get(name) {
            return Some(e);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }

    /// The default certificate.
    pub fn default_cert(&self) -> &Arc<CertEntry> {
        &self.default
    }

    /// Every certificate (the default last), for status.
    pub fn all(&self) -> &[Arc<CertEntry>] {
        &self.all
    }
}

fn describe_source(s: &CertSource) -> String {
    match s.file() {
        Some(f) => f.to_string(),
        None => s.kind().to_string(),
    }
}

/// rustls' certificate choice for one options set: by SNI, else the default; with
/// `strict`, no match (or no SNI) fails the handshake.
#[derive(Debug)]
pub struct SniResolver {
    store: Arc<CertStore>,
    strict: bool,
}

impl SniResolver {
    /// Resolve from `store`.
    pub fn new(store: Arc<CertStore>, strict: bool) -> Self {
        Self { store, strict }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name().and_then(|n| self.store.lookup(&n.to_ascii_lowercase())) {
            Some(e) => Some(e.key.clone()),
            None if self.strict => None,
            None => Some(self.store.default.key.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn parses_names_and_refuses_a_foreign_key() {
        let (cert, key) = pair(&["a.test", "*.b.test"]);
        let e = parse_pair(cert.as_bytes(), key.as_bytes(), CertSource::Acme).unwrap();
        assert_eq!(e.names, ["a.test", "*.b.test"]);
        assert!(e.not_after > 0);
        let (_, other_key) = pair(&["c.test"]);
        let err = parse_pair(cert.as_bytes(), other_key.as_bytes(), CertSource::Acme).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        let err = parse_pair(b"garbage", key.as_bytes(), CertSource::Acme).unwrap_err();
        assert!(err.starts_with("certificate:"), "{err}");
        let err = parse_pair(cert.as_bytes(), b"", CertSource::Acme).unwrap_err();
        assert!(err.starts_with("key:"), "{err}");
        assert!(!format!("{e:?}").contains("PRIVATE"));
    }

    #[test]
    fn lookup_exact_then_one_wildcard_label() {
        let mk = |n: &[&str]| {
            let (c, k) = pair(n);
            Arc::new(parse_pair(c.as_bytes(), k.as_bytes(), CertSource::File(n[0].into())).unwrap())
        };
        let (store, warnings) =
            CertStore::new(vec![mk(&["a.test"]), mk(&["*.b.test"]), mk(&["x.b.test"]), mk(&["a.test"])], self_signed());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(store.lookup("a.test").unwrap().names, ["a.test"]);
        assert_eq!(store.lookup("x.b.test").unwrap().names, ["x.b.test"]);
        assert_eq!(store.lookup("y.b.test").unwrap().names, ["*.b.test"]);
        assert!(store.lookup("z.y.b.test").is_none(), "a wildcard covers one label");
        assert!(store.lookup("b.test").is_none());
        assert_eq!(store.default_cert().source, CertSource::SelfSigned);
    }
}

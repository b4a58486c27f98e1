//! What every node serves and reports, built from the store: issued certificates,
//! http-01 key authorizations, tls-alpn-01 challenge certificates, and per-certificate
//! status.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::store::{Sealer, StoreError};

/// Store key of the account credentials (sealed).
pub(crate) const ACCOUNT_KEY: &str = "acme/account";
/// Store key prefix of issued certificates (sealed), by main name.
pub(crate) const CERT_PREFIX: &str = "acme/cert/";
/// Store key prefix of http-01 key authorizations (in the clear: the CA fetches them over
/// plain HTTP anyway), by token.
pub(crate) const HTTP01_PREFIX: &str = "acme/http01/";
/// Store key prefix of tls-alpn-01 challenge certificates (sealed), by name.
pub(crate) const ALPN01_PREFIX: &str = "acme/alpn01/";

/// An issued certificate with its chain and private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Every name it covers, the main name first.
    pub domains: Vec<String>,
    /// Leaf first, then intermediates, PEM.
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM. Never logged (see the `Debug` impl).
    pub key_pem: String,
    /// Start of validity, Unix seconds.
    pub not_before: u64,
    /// End of validity, Unix seconds.
    pub not_after: u64,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("domains", &self.domains)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A tls-alpn-01 challenge certificate and its key (PEM).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlpnCert {
    /// The self-signed challenge certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

impl fmt::Debug for AlpnCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlpnCert").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// Where one certificate (by main name) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    /// Wanted, not ordered yet (or this node is not the orderer and none is stored).
    Pending,
    /// An order is under way.
    Ordering,
    /// Issued and not due for renewal.
    Valid,
    /// The last order failed; the next attempt is scheduled.
    Failed,
}

/// Status of one certificate, for `/api/v1/status` and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    /// Every name, the main name first.
    pub domains: Vec<String>,
    /// Where it stands.
    pub state: CertState,
    /// End of validity of the stored certificate, Unix seconds.
    pub not_after: Option<u64>,
    /// When it is due for renewal, Unix seconds.
    pub renew_at: Option<u64>,
    /// The last failure, if the last order failed.
    pub last_error: Option<String>,
    /// When the next attempt is due after a failure, Unix seconds.
    pub next_attempt: Option<u64>,
    /// Failures in a row.
    pub failures: u32,
}

/// Everything a node needs to serve ACME certificates and answer challenges, rebuilt
/// whole from the store on every change (so nodes that do not order have it too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcmeSnapshot {
    /// Issued certificates, by main name order.
    pub certificates: Vec<IssuedCert>,
    /// http-01: token to key authorization, answered at
    /// `/.well-known/acme-challenge/<token>` as `text/plain`.
    pub http01: BTreeMap<String, String>,
    /// tls-alpn-01: name to the challenge certificate served on ALPN `acme-tls/1`.
    pub alpn01: BTreeMap<String, AlpnCert>,
    /// Status by main name: the orderer's own view on the orderer, the stored
    /// certificates elsewhere.
    pub status: BTreeMap<String, CertStatus>,
    /// Whether this node is the orderer (holds the `acme` lease) as of its last pass.
    pub orderer: bool,
}

/// The served parts of a snapshot, from the store.
pub(crate) struct Built {
    pub(crate) certificates: Vec<IssuedCert>,
    pub(crate) http01: BTreeMap<String, String>,
    pub(crate) alpn01: BTreeMap<String, AlpnCert>,
    /// Entries that could not be opened: skipped, logged by the caller, never served.
    pub(crate) errors: Vec<StoreError>,
}

/// Builds the served parts of a snapshot from the store's entries.
pub(crate) fn build(entries: &BTreeMap<String, Vec<u8>>, sealer: &Sealer) -> Built {
    let mut certs = Vec::new();
    let mut http01 = BTreeMap::new();
    let mut alpn01 = BTreeMap::new();
    let mut errors = Vec::new();
    for (key, value) in entries.range(crate::store::KEY_PREFIX.to_string()..) {
        if !key.starts_with(crate::store::KEY_PREFIX) {
            break;
        }
        if let Some(token) = key.strip_prefix(HTTP01_PREFIX) {
            match String::from_utf8(value.clone()) {
                Ok(ka) => {
                    http01.insert(token.to_string(), ka);
                }
                Err(_) => errors.push(corrupt(key, "not UTF-8")),
            }
        } else if key.starts_with(CERT_PREFIX) {
            match decode::<IssuedCert>(sealer, key, value) {
                Ok(c) => certs.push(c),
                Err(e) => errors.push(e),
            }
        } else if let Some(domain) = key.strip_prefix(ALPN01_PREFIX) {
            match decode::<AlpnCert>(sealer, key, value) {
                Ok(c) => {
                    alpn01.insert(domain.to_string(), c);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    Built { certificates: certs, http01, alpn01, errors }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    sealer: &Sealer,
    key: &str,
    value: &[u8],
) -> Result<T, StoreError> {
    let plain = sealer.open(key, value)?;
    serde_json::from_slice(&plain).map_err(|e| corrupt(key, &e.to_string()))
}

fn corrupt(key: &str, problem: &str) -> StoreError {
    StoreError::Corrupt { key: key.to_string(), problem: problem.to_string() }
}

//! ACME certificates shared by the cluster.
//!
//! One node at a time orders: the holder of the `acme` lease (a [`Fence`] says whether
//! this node is it, and with which token). It keeps one account, orders one certificate
//! per wanted name set, publishes the challenge answers (http-01 key authorizations,
//! tls-alpn-01 challenge certificates) into an [`AcmeStore`] that every node reads, or
//! dns-01 TXT records through a [`DnsChallenge`] provider, and stores chain and key
//! there too. Every node builds the same [`AcmeSnapshot`] from the store, so any node
//! answers a challenge and serves a certificate, and a new orderer after a fail-over
//! reuses the account and certificates without ordering again. Secrets in the store are
//! sealed with the cluster key ([`Sealer`]) when one is configured.
//!
//! Using it (what the control plane does):
//! ```text
//! let settings = config.validate()?;                         // [acme] from the agent file
//! let store: Arc<dyn AcmeStore> = match lease_node {
//!     Some(node) => Arc::new(LeaseStore::new(node.clone(), ACME_LEASE)),
//!     None => Arc::new(FileStore::open(&data_dir.join("acme"))?),
//! };
//! let fence: Arc<dyn Fence> = match lease_node {
//!     Some(node) => Arc::new(LeaseFence::new(node, ACME_LEASE, holder_token_rx)),
//!     None => Arc::new(SoleNode),
//! };
//! let acme = Acme::start(AcmeInputs {
//!     settings, store, sealer: Sealer::new(keyring), fence,
//!     domains: wanted_rx,          // watch of BTreeSet<Vec<String>>: one list per certificate
//!     dns: None,                   // Some(provider) for dns-01
//!     metrics: AcmeMetrics::register(&registry)?,
//! })?;
//! let snapshot = acme.snapshot();  // watch::Receiver<AcmeSnapshot>, hand it to the proxy
//! ```
//!
//! Wanted certificates are a set of name lists: one list per certificate, its main name
//! first (a router's `tls.domains` main then sans, or its `Host` names). Certificates
//! are stored by main name; a changed name list orders again.
//!
//! Failures back off per certificate, exponentially with jitter between `retry_min_ms`
//! and `retry_max_ms`; a CA `Retry-After` (rate limits) is honoured; `badNonce` is
//! retried by instant-acme (three times) and then by the backoff. Renewal starts
//! `renew_before_days` before expiry, but never before a third of the lifetime.
//!
//! Store layout (keys under `acme/`): `acme/account` (sealed), `acme/cert/<main>`
//! (sealed JSON of [`IssuedCert`]), `acme/http01/<token>` (key authorization, clear),
//! `acme/alpn01/<name>` (sealed). Nothing secret is logged: [`IssuedCert`] and
//! [`AlpnCert`] redact their keys in `Debug`.

#![forbid(unsafe_code)]

mod ca;
mod challenge;
mod config;
mod metrics;
mod orderer;
mod snapshot;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::AbortHandle;

pub use challenge::DnsChallenge;
pub use config::{
    AcmeConfig, AcmeSettings, ChallengeKind, ConfigError, KeyType, DEFAULT_RENEW_BEFORE_DAYS, DEFAULT_RETRY_MAX_MS,
    DEFAULT_RETRY_MIN_MS, LETS_ENCRYPT_PRODUCTION,
};
pub use metrics::AcmeMetrics;
pub use orderer::{Fence, LeaseFence, SoleNode};
pub use snapshot::{AcmeSnapshot, AlpnCert, CertState, CertStatus, IssuedCert};
pub use store::{AcmeStore, FileStore, LeaseStore, Sealer, StoreError, ACME_LEASE, KEY_PREFIX};

/// The ALPN protocol of tls-alpn-01 (RFC 8737): a handshake offering it must be answered
/// with the challenge certificate of its SNI name from [`AcmeSnapshot::alpn01`].
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// The path prefix of http-01 answers: `<prefix><token>` answers
/// [`AcmeSnapshot::http01`]`[token]` as `text/plain`.
pub const HTTP01_PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// The wanted certificates: one name list per certificate, its main name first.
pub type Wanted = BTreeSet<Vec<String>>;

/// What [`Acme::start`] needs.
pub struct AcmeInputs {
    /// The validated `[acme]`.
    pub settings: AcmeSettings,
    /// Where account, certificates and challenge answers live.
    pub store: Arc<dyn AcmeStore>,
    /// Seals secrets with the cluster key (or not, without one).
    pub sealer: Sealer,
    /// Whether this node orders now, and its token.
    pub fence: Arc<dyn Fence>,
    /// The wanted certificates: one name list per certificate, main name first.
    pub domains: watch::Receiver<Wanted>,
    /// The dns-01 provider; required with `challenge = "dns-01"`.
    pub dns: Option<Arc<dyn DnsChallenge>>,
    /// Registered metrics.
    pub metrics: AcmeMetrics,
}

/// Why [`Acme::start`] refused.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// `challenge = "dns-01"` without a DNS provider.
    #[error("acme.challenge = \"dns-01\" needs a DNS provider (configure [dns])")]
    NoDnsProvider,
    /// The CA client could not be built.
    #[error("acme: {0}")]
    Client(String),
}

/// The running ACME resolver: the orderer (acting only while the fence says so) and the
/// snapshot publisher. Its tasks stop when it is dropped.
pub struct Acme {
    snapshot: watch::Receiver<AcmeSnapshot>,
    tasks: Vec<AbortHandle>,
}

impl Acme {
    /// Starts the orderer and the snapshot publisher on the current tokio runtime.
    pub fn start(inputs: AcmeInputs) -> Result<Acme, AcmeError> {
        if inputs.settings.config.challenge == ChallengeKind::Dns01 && inputs.dns.is_none() {
            return Err(AcmeError::NoDnsProvider);
        }
        let metrics = inputs.metrics.clone();
        let observed = Arc::new(ca::Observed { requests: Some(metrics.requests.clone()), ..Default::default() });
        // Built once here so a bad root fails at start, not on the first order.
        ca::CaClient::new(&inputs.settings.extra_roots, Arc::clone(&observed)).map_err(AcmeError::Client)?;
        let (store, sealer) = (Arc::clone(&inputs.store), inputs.sealer.clone());
        let (status_tx, status_rx) = watch::channel((false, BTreeMap::new()));
        let (snap_tx, snap_rx) = watch::channel(AcmeSnapshot::default());
        let (orderer, domains) = orderer::Orderer::new(inputs, observed, status_tx);
        let run = tokio::spawn(orderer.run(domains)).abort_handle();
        let publish = tokio::spawn(publish(store, sealer, status_rx, snap_tx, metrics)).abort_handle();
        Ok(Acme { snapshot: snap_rx, tasks: vec![run, publish] })
    }

    /// The snapshot, rebuilt whole on every change of the store or of the status.
    pub fn snapshot(&self) -> watch::Receiver<AcmeSnapshot> {
        self.snapshot.clone()
    }
}

impl Drop for Acme {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn publish(
    store: Arc<dyn AcmeStore>,
    sealer: Sealer,
    mut status: watch::Receiver<(bool, BTreeMap<String, CertStatus>)>,
    tx: watch::Sender<AcmeSnapshot>,
    metrics: AcmeMetrics,
) {
    let mut entries = store.entries();
    let mut reported = BTreeSet::new();
    loop {
        let data = Arc::clone(&entries.borrow_and_update());
        let (orderer, mut statuses) = status.borrow_and_update().clone();
        let snapshot::Built { certificates, http01, alpn01, errors } = snapshot::build(&data, &sealer);
        for e in errors {
            let line = e.to_string();
            if reported.insert(line.clone()) {
                tracing::warn!(error = %line, "acme: stored entry skipped");
            }
        }
        for cert in &certificates {
            let main = cert.domains.first().cloned().unwrap_or_default();
            metrics.expiry.with_label_values(&[main.as_str()]).set(i64::try_from(cert.not_after).unwrap_or(i64::MAX));
            statuses.entry(main).or_insert_with(|| CertStatus {
                domains: cert.domains.clone(),
                state: CertState::Valid,
                not_after: Some(cert.not_after),
                renew_at: None,
                last_error: None,
                next_attempt: None,
                failures: 0,
            });
        }
        tx.send_if_modified(|old| {
            let new = AcmeSnapshot { certificates, http01, alpn01, status: statuses, orderer };
            let changed = *old != new;
            *old = new;
            changed
        });
        tokio::select! {
            r = entries.changed() => if r.is_err() { return },
            r = status.changed() => if r.is_err() { return },
        }
    }
}

//! The orderer: while this node holds the `acme` lease, it keeps one account, orders a
//! certificate per wanted name set, publishes the challenge answers into the store,
//! stores chain and key, cleans up, renews, and backs off on failure. Every call to the
//! CA, the DNS provider or the store is preceded by a fence check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use constellation_lease::LeaseNode;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::watch;

use crate::ca::{CaClient, Observed};
use crate::challenge::{alpn_certificate, DnsChallenge};
use crate::config::{AcmeSettings, ChallengeKind};
use crate::metrics::AcmeMetrics;
use crate::snapshot::{
    decode, AlpnCert, CertState, CertStatus, IssuedCert, ACCOUNT_KEY, ALPN01_PREFIX, CERT_PREFIX, HTTP01_PREFIX,
};
use crate::store::{AcmeStore, Sealer, StoreError};

/// While not the holder, how often the orderer asks the fence again.
pub(crate) const STANDBY_POLL: Duration = Duration::from_secs(2);
/// After a challenge answer is in the store, how long other replicas get to apply it
/// before the CA is told to validate (a follower applies within a heartbeat or two).
const CHALLENGE_SETTLE: Duration = Duration::from_millis(300);
/// Longest wait for the CA to validate an order, and then to issue it.
const ORDER_POLL_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait between two passes when nothing is due.
const IDLE_PASS: Duration = Duration::from_secs(3600);
/// When a certificate this close to expiry is still not renewed, every pass logs a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86_400);

/// "Am I the current orderer, and with which token?": the fencing read asked before every
/// external action. The plane implements it over the lease group (see [`LeaseFence`]);
/// a single node without Raft uses [`SoleNode`].
#[async_trait]
pub trait Fence: Send + Sync + 'static {
    /// `Some(token)` while this node holds the `acme` lease with `token` (a linearizable
    /// check); `None` otherwise.
    async fn holder_token(&self) -> Option<u64>;
}

/// The fence of a single node without a lease group: always the holder, token 0.
pub struct SoleNode;

#[async_trait]
impl Fence for SoleNode {
    async fn holder_token(&self) -> Option<u64> {
        Some(0)
    }
}

/// A fence over the lease group: the token this node's lease holder last got (`None`
/// while it does not hold the lease), confirmed by [`LeaseNode::check`] each time.
pub struct LeaseFence {
    node: LeaseNode,
    lease: String,
    token: watch::Receiver<Option<u64>>,
}

impl LeaseFence {
    /// `token` is fed by whatever contends for `lease` on this node (the plane's holder).
    pub fn new(node: LeaseNode, lease: &str, token: watch::Receiver<Option<u64>>) -> LeaseFence {
        LeaseFence { node, lease: lease.to_string(), token }
    }
}

#[async_trait]
impl Fence for LeaseFence {
    async fn holder_token(&self) -> Option<u64> {
        let token = (*self.token.borrow())?;
        match self.node.check(&self.lease, token).await {
            Ok(true) => Some(token),
            _ => None,
        }
    }
}

/// Why one order failed.
#[derive(Debug)]
pub(crate) enum OrderError {
    /// The fence said no: stop at once, touch nothing.
    Fenced,
    /// The CA said it is rate limiting us.
    RateLimited(String),
    /// Anything else; retried with backoff.
    Failed(String),
}

impl From<instant_acme::Error> for OrderError {
    fn from(e: instant_acme::Error) -> Self {
        match &e {
            instant_acme::Error::Api(p) if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited") => {
                OrderError::RateLimited(e.to_string())
            }
            _ => OrderError::Failed(e.to_string()),
        }
    }
}

impl From<StoreError> for OrderError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Fenced(_) => OrderError::Fenced,
            other => OrderError::Failed(other.to_string()),
        }
    }
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::Fenced => f.write_str("no longer the acme lease holder"),
            OrderError::RateLimited(e) | OrderError::Failed(e) => f.write_str(e),
        }
    }
}

/// Failures in a row of one certificate and when it may be tried again.
struct Backoff {
    failures: u32,
    next: Instant,
    next_unix: u64,
    last_error: String,
}

/// Something published for a challenge, removed after the order.
enum Published {
    Key(String),
    Txt(String),
}

/// Stored form of the account: the directory it belongs to and instant-acme's credentials.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: serde_json::Value,
}

pub(crate) struct Orderer {
    pub(crate) settings: AcmeSettings,
    pub(crate) store: Arc<dyn AcmeStore>,
    pub(crate) sealer: Sealer,
    pub(crate) fence: Arc<dyn Fence>,
    pub(crate) dns: Option<Arc<dyn DnsChallenge>>,
    pub(crate) metrics: AcmeMetrics,
    pub(crate) observed: Arc<Observed>,
    pub(crate) status: watch::Sender<(bool, BTreeMap<String, CertStatus>)>,
    pub(crate) account: Option<Account>,
    backoff: HashMap<String, Backoff>,
}

/// A wanted certificate: its names, normalised (lower case, no trailing dot, main first,
/// no duplicates).
pub(crate) fn normalise(wanted: &BTreeSet<Vec<String>>) -> Vec<Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for names in wanted {
        let mut seen = BTreeSet::new();
        let list: Vec<String> = names
            .iter()
            .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| !n.is_empty() && seen.insert(n.clone()))
            .collect();
        if let Some(main) = list.first() {
            out.entry(main.clone()).or_insert(list);
        }
    }
    out.into_values().collect()
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// When a certificate is due: `renew_before` ahead of its expiry, but never before a
/// third of its lifetime has passed (so a window longer than the lifetime renews at a
/// steady pace rather than in a loop).
pub(crate) fn renew_at(cert: &IssuedCert, renew_before: Duration) -> u64 {
    let lifetime = cert.not_after.saturating_sub(cert.not_before);
    let by_window = cert.not_after.saturating_sub(renew_before.as_secs());
    by_window.max(cert.not_before + lifetime / 3)
}

impl Orderer {
    /// The orderer of `inputs` (its `domains` returned for [`Orderer::run`]).
    pub(crate) fn new(
        inputs: crate::AcmeInputs,
        observed: Arc<Observed>,
        status: watch::Sender<(bool, BTreeMap<String, CertStatus>)>,
    ) -> (Orderer, watch::Receiver<BTreeSet<Vec<String>>>) {
        let crate::AcmeInputs { settings, store, sealer, fence, domains, dns, metrics } = inputs;
        let orderer = Orderer {
            settings,
            store,
            sealer,
            fence,
            dns,
            metrics,
            observed,
            status,
            account: None,
            backoff: HashMap::new(),
        };
        (orderer, domains)
    }

    /// Runs until `domains` closes.
    pub(crate) async fn run(mut self, mut domains: watch::Receiver<BTreeSet<Vec<String>>>) {
        loop {
            let wanted = normalise(&domains.borrow_and_update());
            let wake = self.pass(&wanted).await;
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                changed = domains.changed() => if changed.is_err() { return },
            }
        }
    }

    /// One pass over every wanted certificate; returns when the next pass is due.
    pub(crate) async fn pass(&mut self, wanted: &[Vec<String>]) -> Instant {
        let now = Instant::now();
        let Some(token) = self.fence.holder_token().await else {
            self.account = None;
            let status = wanted.iter().map(|names| (names[0].clone(), self.stored_status(names))).collect();
            self.status.send_replace((false, status));
            return now + STANDBY_POLL;
        };
        self.backoff.retain(|main, _| wanted.iter().any(|w| &w[0] == main));
        self.clean_leftovers(token).await;
        let mut statuses: BTreeMap<String, CertStatus> =
            wanted.iter().map(|names| (names[0].clone(), self.stored_status(names))).collect();
        self.status.send_replace((true, statuses.clone()));
        let mut next = now + IDLE_PASS;
        for names in wanted {
            let main = &names[0];
            let stored = self.stored_cert(main);
            let now_unix = unix(SystemTime::now());
            let due = match &stored {
                None => true,
                Some(c) => c.domains != *names || renew_at(c, self.settings.renew_before()) <= now_unix,
            };
            if !due {
                let at = stored.as_ref().map_or(now_unix, |c| renew_at(c, self.settings.renew_before()));
                next = next.min(now + Duration::from_secs(at.saturating_sub(now_unix)));
                continue;
            }
            if let Some(b) = self.backoff.get(main) {
                if b.next > Instant::now() {
                    next = next.min(b.next);
                    continue;
                }
            }
            if let Some(c) = &stored {
                tracing::info!(domain = %main, not_after = c.not_after, "acme: certificate due for renewal");
            }
            if let Some(s) = statuses.get_mut(main) {
                s.state = CertState::Ordering;
            }
            self.status.send_replace((true, statuses.clone()));
            match self.order(names, token).await {
                Ok(cert) => {
                    self.backoff.remove(main);
                    tracing::info!(domain = %main, names = ?names, not_after = cert.not_after, "acme: certificate issued");
                    let at = renew_at(&cert, self.settings.renew_before());
                    next = next.min(Instant::now() + Duration::from_secs(at.saturating_sub(unix(SystemTime::now()))));
                    statuses.insert(main.clone(), self.stored_status(names));
                }
                Err(OrderError::Fenced) => {
                    tracing::info!(domain = %main, "acme: lost the acme lease; stopping this pass");
                    self.account = None;
                    self.status.send_replace((false, statuses));
                    return Instant::now() + STANDBY_POLL;
                }
                Err(e) => {
                    self.metrics.orders.with_label_values(&["failed"]).inc();
                    let b = self.fail(main, &e);
                    next = next.min(b.0);
                    let mut s = self.stored_status(names);
                    s.state = CertState::Failed;
                    s.last_error = Some(e.to_string());
                    s.next_attempt = Some(b.1);
                    s.failures = b.2;
                    if let Some(c) = &stored {
                        let left = c.not_after.saturating_sub(unix(SystemTime::now()));
                        if Duration::from_secs(left) < EXPIRY_WARNING {
                            tracing::warn!(domain = %main, expires_in_s = left, "acme: certificate expires soon and renewal is failing");
                        }
                    }
                    statuses.insert(main.clone(), s);
                }
            }
            self.status.send_replace((true, statuses.clone()));
        }
        // Never a tight loop, whatever the clock says.
        next.max(Instant::now() + Duration::from_millis(50))
    }

    /// Records a failure of `main`; returns (next attempt, as Unix seconds, failures).
    fn fail(&mut self, main: &str, e: &OrderError) -> (Instant, u64, u32) {
        let (min, max) = self.settings.retry_bounds();
        let failures = self.backoff.get(main).map_or(0, |b| b.failures) + 1;
        let exp = min.saturating_mul(1u32 << (failures - 1).min(20)).min(max);
        // Full jitter on the upper half: between half and all of the exponential delay.
        let half = exp / 2;
        let jitter = Duration::from_millis(rand::random_range(0..=u64::try_from(half.as_millis()).unwrap_or(0)));
        let mut delay = half + jitter;
        let retry_after = self.observed.take_retry_after();
        if let Some(at) = retry_after {
            delay = delay.max(at.duration_since(SystemTime::now()).unwrap_or_default());
        } else if matches!(e, OrderError::RateLimited(_)) {
            delay = delay.max(max);
        }
        tracing::warn!(domain = %main, failures, retry_in_ms = delay.as_millis() as u64, error = %e, "acme: order failed");
        let next = Instant::now() + delay;
        let next_unix = unix(SystemTime::now() + delay);
        self.backoff.insert(main.to_string(), Backoff { failures, next, next_unix, last_error: e.to_string() });
        (next, next_unix, failures)
    }

    fn stored_cert(&self, main: &str) -> Option<IssuedCert> {
        let key = format!("{CERT_PREFIX}{main}");
        let value = self.store.get(&key)?;
        match decode::<IssuedCert>(&self.sealer, &key, &value) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "acme: stored certificate unusable; ordering again");
                None
            }
        }
    }

    fn stored_status(&self, names: &[String]) -> CertStatus {
        let stored = self.stored_cert(&names[0]);
        let backoff = self.backoff.get(&names[0]);
        let state = match (&stored, backoff) {
            (_, Some(_)) => CertState::Failed,
            (Some(c), None) if c.domains == names => CertState::Valid,
            _ => CertState::Pending,
        };
        CertStatus {
            domains: names.to_vec(),
            state,
            not_after: stored.as_ref().map(|c| c.not_after),
            renew_at: stored.as_ref().map(|c| renew_at(c, self.settings.renew_before())),
            last_error: backoff.map(|b| b.last_error.clone()),
            next_attempt: backoff.map(|b| b.next_unix),
            failures: backoff.map_or(0, |b| b.failures),
        }
    }

    /// Challenge answers left in the store by an orderer that lost the lease mid-order
    /// (it must not clean up after that): no order is under way between passes, so every
    /// one found now is stale.
    async fn clean_leftovers(&self, token: u64) {
        let stale: Vec<String> = self
            .store
            .entries()
            .borrow()
            .keys()
            .filter(|k| k.starts_with(HTTP01_PREFIX) || k.starts_with(ALPN01_PREFIX))
            .cloned()
            .collect();
        for key in stale {
            if self.fenced(token).await.is_err() {
                return;
            }
            if let Err(e) = self.store.put(token, &key, None).await {
                tracing::warn!(key = %key, error = %e, "acme: stale challenge answer not removed");
            }
        }
    }

    async fn fenced(&self, token: u64) -> Result<(), OrderError> {
        match self.fence.holder_token().await {
            Some(t) if t == token => Ok(()),
            _ => Err(OrderError::Fenced),
        }
    }

    /// The account: from memory, else from the store, else created at the CA and stored.
    async fn account(&mut self, token: u64) -> Result<Account, OrderError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let directory = self.settings.config.directory.clone();
        let stored = self
            .store
            .get(ACCOUNT_KEY)
            .and_then(|v| match decode::<StoredAccount>(&self.sealer, ACCOUNT_KEY, &v) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "acme: stored account unusable; creating a new one");
                    None
                }
            })
            .filter(|a| a.directory == directory);
        let http = || -> Result<Box<CaClient>, OrderError> {
            Ok(Box::new(
                CaClient::new(&self.settings.extra_roots, Arc::clone(&self.observed)).map_err(OrderError::Failed)?,
            ))
        };
        self.fenced(token).await?;
        let account = match stored {
            Some(a) => {
                let credentials = serde_json::from_value(a.credentials)
                    .map_err(|e| OrderError::Failed(format!("stored account credentials: {e}")))?;
                Account::builder_with_http(http()?).from_credentials(credentials).await?
            }
            None => {
                let contact = self.settings.config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) =
                    Account::builder_with_http(http()?).create(&new, directory.clone(), None).await?;
                let credentials = serde_json::to_value(&credentials)
                    .map_err(|e| OrderError::Failed(format!("account credentials: {e}")))?;
                let record = serde_json::to_vec(&StoredAccount { directory, credentials })
                    .map_err(|e| OrderError::Failed(format!("account credentials: {e}")))?;
                self.fenced(token).await?;
                self.store.put(token, ACCOUNT_KEY, Some(self.sealer.seal(ACCOUNT_KEY, &record))).await?;
                tracing::info!(id = %account.id(), "acme: account created and stored");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// One order for `names`, start to finish, then cleaning of the challenge answers.
    async fn order(&mut self, names: &[String], token: u64) -> Result<IssuedCert, OrderError> {
        let account = match self.account(token).await {
            Ok(a) => a,
            Err(e) => {
                self.account = None;
                return Err(e);
            }
        };
        let mut published = Vec::new();
        let result = self.order_with(&account, names, token, &mut published).await;
        if let Err(OrderError::Failed(_)) = &result {
            // A failure may come from the account (deactivated, unknown after a CA reset):
            // load or create it again on the next attempt.
            self.account = None;
        }
        for item in published {
            if self.fenced(token).await.is_err() {
                break; // the new holder owns the store now
            }
            let cleaned = match &item {
                Published::Key(key) => self.store.put(token, key, None).await.map_err(|e| e.to_string()),
                Published::Txt(domain) => match &self.dns {
                    Some(dns) => dns.clear_txt(domain).await,
                    None => Ok(()),
                },
            };
            if let Err(e) = cleaned {
                tracing::warn!(error = %e, "acme: challenge answer not cleaned up");
            }
        }
        result
    }

    async fn order_with(
        &self,
        account: &Account,
        names: &[String],
        token: u64,
        published: &mut Vec<Published>,
    ) -> Result<IssuedCert, OrderError> {
        let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        self.fenced(token).await?;
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let kind = self.settings.config.challenge;
        let challenge_type = match kind {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeKind::Dns01 => ChallengeType::Dns01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(OrderError::Failed(format!("authorization is {other:?}"))),
            }
            let mut challenge = authz.challenge(challenge_type.clone()).ok_or_else(|| {
                OrderError::Failed(format!("the CA offers no {} challenge for this name", kind.as_str()))
            })?;
            let key_auth = challenge.key_authorization();
            let domain = challenge.identifier().identifier.clone();
            let Identifier::Dns(domain) = domain else {
                return Err(OrderError::Failed("the CA asked about a non-DNS identifier".into()));
            };
            let mut wait_for = None;
            match kind {
                ChallengeKind::Http01 => {
                    let key = format!("{HTTP01_PREFIX}{}", challenge.token);
                    self.fenced(token).await?;
                    self.store.put(token, &key, Some(key_auth.as_str().as_bytes().to_vec())).await?;
                    published.push(Published::Key(key.clone()));
                    wait_for = Some(key);
                }
                ChallengeKind::TlsAlpn01 => {
                    let (cert_pem, key_pem) =
                        alpn_certificate(&domain, key_auth.digest().as_ref()).map_err(OrderError::Failed)?;
                    let key = format!("{ALPN01_PREFIX}{domain}");
                    let record = serde_json::to_vec(&AlpnCert { cert_pem, key_pem })
                        .map_err(|e| OrderError::Failed(e.to_string()))?;
                    self.fenced(token).await?;
                    self.store.put(token, &key, Some(self.sealer.seal(&key, &record))).await?;
                    published.push(Published::Key(key.clone()));
                    wait_for = Some(key);
                }
                ChallengeKind::Dns01 => {
                    let dns = self
                        .dns
                        .as_ref()
                        .ok_or_else(|| OrderError::Failed("dns-01 needs a DNS provider; none is configured".into()))?;
                    self.fenced(token).await?;
                    dns.set_txt(&domain, &key_auth.dns_value())
                        .await
                        .map_err(|e| OrderError::Failed(format!("dns-01 TXT for {domain}: {e}")))?;
                    published.push(Published::Txt(domain.clone()));
                }
            }
            if let Some(key) = wait_for {
                self.visible(&key).await;
            }
            self.fenced(token).await?;
            challenge.set_ready().await?;
        }
        let policy = RetryPolicy::new().timeout(ORDER_POLL_TIMEOUT).initial_delay(Duration::from_millis(200));
        self.fenced(token).await?;
        let status = order.poll_ready(&policy).await?;
        if status != OrderStatus::Ready {
            return Err(OrderError::Failed(format!("order is {status:?} after validation")));
        }
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .map_err(|e| OrderError::Failed(format!("CSR for {names:?}: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let key = rcgen::KeyPair::generate_for(self.settings.config.key_type.algorithm())
            .map_err(|e| OrderError::Failed(format!("certificate key: {e}")))?;
        let csr = params.serialize_request(&key).map_err(|e| OrderError::Failed(format!("CSR: {e}")))?;
        self.fenced(token).await?;
        order.finalize_csr(csr.der()).await?;
        let chain_pem = order.poll_certificate(&policy).await?;
        let (not_before, not_after) = validity(&chain_pem).map_err(OrderError::Failed)?;
        let cert =
            IssuedCert { domains: names.to_vec(), chain_pem, key_pem: key.serialize_pem(), not_before, not_after };
        let record = serde_json::to_vec(&cert).map_err(|e| OrderError::Failed(e.to_string()))?;
        let key = format!("{CERT_PREFIX}{}", names[0]);
        self.fenced(token).await?;
        self.store.put(token, &key, Some(self.sealer.seal(&key, &record))).await?;
        // Counted as soon as it is stored (and so served), before the clean-up.
        self.metrics.orders.with_label_values(&["issued"]).inc();
        self.metrics.expiry.with_label_values(&[names[0].as_str()]).set(i64::try_from(not_after).unwrap_or(i64::MAX));
        Ok(cert)
    }

    /// Waits (bounded) until this node's view of the store holds `key`, then gives the
    /// other replicas [`CHALLENGE_SETTLE`] to apply it too.
    async fn visible(&self, key: &str) {
        let mut rx = self.store.entries();
        let seen = rx.wait_for(|d| d.contains_key(key));
        let _ = tokio::time::timeout(Duration::from_secs(5), seen).await;
        tokio::time::sleep(CHALLENGE_SETTLE).await;
    }
}

/// Validity of the leaf (the first certificate of a PEM chain), Unix seconds.
pub(crate) fn validity(chain_pem: &str) -> Result<(u64, u64), String> {
    let der = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .next()
        .ok_or("the CA sent no certificate")?
        .map_err(|e| format!("certificate chain: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("leaf certificate: {e}"))?;
    let v = cert.validity();
    let secs = |t: i64| u64::try_from(t).unwrap_or(0);
    Ok((secs(v.not_before.timestamp()), secs(v.not_after.timestamp())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: u64, not_after: u64) -> IssuedCert {
        IssuedCert {
            domains: vec!["a.test".into()],
            chain_pem: String::new(),
            key_pem: String::new(),
            not_before,
            not_after,
        }
    }

    #[test]
    fn renewal_is_due_in_the_window_but_never_before_a_third_of_the_lifetime() {
        let day = 86_400;
        // 90 days, 30-day window: day 60.
        assert_eq!(renew_at(&cert(0, 90 * day), Duration::from_secs(30 * day)), 60 * day);
        // 6 days, 30-day window: after 2 days, not at once.
        assert_eq!(renew_at(&cert(1_000, 1_000 + 6 * day), Duration::from_secs(30 * day)), 1_000 + 2 * day);
    }

    #[test]
    fn wanted_names_are_normalised_and_keyed_by_main_name() {
        let wanted: BTreeSet<Vec<String>> = [
            vec!["App.Test.".to_string(), "www.app.test".into(), "app.test".into()],
            vec!["app.test".to_string()],
            vec![],
        ]
        .into_iter()
        .collect();
        let out = normalise(&wanted);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0][0], "app.test");
        assert_eq!(out[0].iter().filter(|n| *n == "app.test").count(), 1);
    }
}

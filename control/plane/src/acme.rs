//! The ACME glue: where the orderer keeps its state and who may order (the `acme` lease
//! in a cluster, this node alone without one), which certificates the routes want, and
//! the snapshot of issued certificates and pending challenges handed to the proxy.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use constellation_acme::{
    Acme, AcmeInputs, AcmeMetrics, AcmeSettings, AcmeSnapshot, AcmeStore, DnsChallenge, Fence, FileStore, LeaseFence,
    LeaseStore, Sealer, SoleNode, Wanted, ACME_LEASE,
};
use constellation_cluster::Keyring;
use constellation_lease::LeaseNode;
use constellation_proxy::tls::AcmeMaterial;
use tokio::sync::watch;

use crate::admin::AdminState;
use crate::routes::{AcmeWanted, Reloader};
use crate::status::AcmeStatus;

/// dns-01 through the DNS controller's Cloudflare client.
pub struct CloudflareTxt(pub constellation_dns::AcmeTxt);

#[async_trait::async_trait]
impl DnsChallenge for CloudflareTxt {
    async fn set_txt(&self, domain: &str, value: &str) -> Result<(), String> {
        self.0.set_txt(domain, value).await.map_err(|e| e.to_string())
    }
    async fn clear_txt(&self, domain: &str) -> Result<(), String> {
        self.0.clear_txt(domain).await.map_err(|e| e.to_string())
    }
}

/// The resolver `[acme]` defines (Traefik's `certResolver` name).
pub const DEFAULT_RESOLVER: &str = "default";

/// Where account and certificates live, and who orders.
pub enum Placement<'a> {
    /// One node without a lease group: a directory of the data dir, and this node
    /// always orders.
    Alone {
        /// The directory (created if missing).
        dir: &'a Path,
    },
    /// A lease-group voter: the replicated store, and whoever holds the `acme` lease
    /// orders. `token` is this node's holder of the lease (`None`: it never contends).
    Lease {
        /// This node's lease group member.
        node: LeaseNode,
        /// The held-token watch of this node's `acme` lease holder, if it contends.
        token: Option<watch::Receiver<Option<u64>>>,
    },
}

/// Start ordering and serving ACME certificates; the returned task runs until aborted
/// (dropping it stops the orderer). `None` with the reason logged when it cannot start.
pub fn start(
    settings: AcmeSettings,
    placement: Placement<'_>,
    keyring: Option<Arc<Keyring>>,
    dns: Option<Arc<dyn DnsChallenge>>,
    reloader: Arc<Reloader>,
    admin: Arc<AdminState>,
    registry: &prometheus::Registry,
) -> Option<tokio::task::JoinHandle<()>> {
    let (store, fence, storage): (Arc<dyn AcmeStore>, Arc<dyn Fence>, &str) = match placement {
        Placement::Alone { dir } => match FileStore::open(dir) {
            Ok(store) => (Arc::new(store), Arc::new(SoleNode), "file"),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "acme: cannot open the certificate store; no ACME certificates");
                return None;
            }
        },
        Placement::Lease { node, token } => {
            // A node that does not contend still reads the store (it serves every
            // certificate and answers every challenge); its fence never opens.
            let token = token.unwrap_or_else(|| watch::channel(None).1);
            let fence = LeaseFence::new(node.clone(), ACME_LEASE, token);
            (Arc::new(LeaseStore::new(node, ACME_LEASE)), Arc::new(fence), "raft")
        }
    };
    let metrics = match AcmeMetrics::register(registry) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "acme: cannot register metrics; no ACME certificates");
            return None;
        }
    };
    let sealer = Sealer::new(keyring);
    let encrypted = sealer.encrypts();
    let (wanted_tx, wanted_rx) = watch::channel(Wanted::new());
    let base = AcmeStatus {
        resolver: DEFAULT_RESOLVER.into(),
        directory: settings.config.directory.clone(),
        challenge: settings.config.challenge.as_str().into(),
        storage: storage.into(),
        encrypted,
        ..AcmeStatus::default()
    };
    let inputs = AcmeInputs { settings, store, sealer, fence, domains: wanted_rx, dns, metrics };
    let acme = match Acme::start(inputs) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "acme: cannot start; no ACME certificates");
            return None;
        }
    };
    tracing::info!(storage, encrypted, challenge = %base.challenge, directory = %base.directory, "acme: started");
    Some(tokio::spawn(run(acme, reloader.acme_wanted(), wanted_tx, reloader, admin, base)))
}

/// Follow the routes' wanted certificates and the orderer's snapshot until aborted.
async fn run(
    acme: Acme,
    mut routes: watch::Receiver<AcmeWanted>,
    wanted: watch::Sender<Wanted>,
    reloader: Arc<Reloader>,
    admin: Arc<AdminState>,
    base: AcmeStatus,
) {
    let mut snapshot = acme.snapshot();
    let mut unknown_logged = BTreeSet::new();
    loop {
        let (default, unknown) = split_wanted(&routes.borrow_and_update());
        for name in &unknown {
            if unknown_logged.insert(name.clone()) {
                tracing::warn!(
                    resolver = %name,
                    "routers name a certificate resolver that is not configured (only [acme], the resolver \"default\", exists); they get the default certificate"
                );
            }
        }
        wanted.send_if_modified(|w| {
            let changed = *w != default;
            *w = default;
            changed
        });
        let snap = snapshot.borrow_and_update().clone();
        if let Err(errors) = reloader.set_acme(material(&snap)) {
            for e in errors {
                tracing::warn!(error = %e, "acme: certificates not applied");
            }
        }
        let mut status = base.clone();
        status.orderer = snap.orderer;
        status.certificates = snap.status.values().cloned().collect();
        status.unknown_resolvers = unknown.into_iter().collect();
        status.pending_http01 = snap.http01.len();
        status.pending_alpn01 = snap.alpn01.len();
        admin.acme.store(Some(Arc::new(status)));
        tokio::select! {
            r = routes.changed() => if r.is_err() { return },
            r = snapshot.changed() => if r.is_err() { return },
        }
    }
}

/// The `default` resolver's certificates, and the other resolver names routers use.
fn split_wanted(all: &AcmeWanted) -> (Wanted, BTreeSet<String>) {
    let default = all.get(DEFAULT_RESOLVER).cloned().unwrap_or_default();
    let unknown = all.keys().filter(|k| *k != DEFAULT_RESOLVER).cloned().collect();
    (default, unknown)
}

/// What the proxy serves from a snapshot.
fn material(snap: &AcmeSnapshot) -> AcmeMaterial {
    AcmeMaterial {
        certificates: snap.certificates.iter().map(|c| (c.chain_pem.clone(), c.key_pem.clone())).collect(),
        http01: snap.http01.clone(),
        alpn01: snap.alpn01.iter().map(|(d, a)| (d.clone(), (a.cert_pem.clone(), a.key_pem.clone()))).collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_the_default_resolver_is_ordered_and_others_are_reported() {
        let mut all = AcmeWanted::new();
        all.entry("default".into()).or_default().insert(vec!["a.test".into(), "b.test".into()]);
        all.entry("le".into()).or_default().insert(vec!["c.test".into()]);
        let (default, unknown) = split_wanted(&all);
        assert_eq!(default, Wanted::from([vec!["a.test".to_string(), "b.test".to_string()]]));
        assert_eq!(unknown, BTreeSet::from(["le".to_string()]));
    }
}

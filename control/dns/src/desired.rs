//! What the zone should say: apex and wildcard at the lb-leader, one record per node.

use std::collections::BTreeSet;
use std::net::IpAddr;

use tracing::warn;

use super::config::{normalize_name, DnsConfig};
use super::record::{Record, RecordType};

/// One node as the reconciler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    /// Node name (becomes the `{node}` label).
    pub name: String,
    /// Its public IP, if known.
    pub ip: Option<IpAddr>,
    /// Alive, or down for less than the grace period: its record stays.
    pub keep: bool,
}

/// The desired records, plus the names whose desired content is unknown right now (no
/// lb-leader IP, a live node without a known IP): their records are neither written nor
/// deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Records that must exist with exactly this content.
    pub records: Vec<Record>,
    /// Names left as they are.
    pub held: BTreeSet<String>,
}

impl Desired {
    /// Every name this state speaks about (records and held names), sorted.
    pub fn names(&self) -> BTreeSet<String> {
        self.records.iter().map(|r| r.name.clone()).chain(self.held.iter().cloned()).collect()
    }
}

/// Computes the desired records: the apex and `*.zone` point at `lb_leader_ip`, and every
/// kept node's record at its IP. An IPv6 address yields AAAA only when `cfg.ipv6` is set.
pub fn desired(cfg: &DnsConfig, lb_leader_ip: Option<IpAddr>, nodes: &[NodeAddr]) -> Desired {
    let zone = cfg.zone_name();
    let mut out = Desired::default();
    let usable = |ip: Option<IpAddr>| ip.filter(|ip| cfg.ipv6 || ip.is_ipv4());
    let mut front = Vec::new();
    if cfg.apex {
        front.push(zone.clone());
    }
    if cfg.wildcard {
        front.push(format!("*.{zone}"));
    }
    for name in front {
        match usable(lb_leader_ip) {
            Some(ip) => out.records.push(record(cfg, name, ip)),
            None => {
                out.held.insert(name);
            }
        }
    }
    if let Some(tpl) = &cfg.node_record {
        let tpl = normalize_name(tpl);
        for node in nodes.iter().filter(|n| n.keep) {
            let Some(label) = node_label(&node.name) else {
                warn!(node = %node.name, "node name is not a DNS label; no DNS record for it");
                continue;
            };
            let name = tpl.replace("{node}", &label);
            match usable(node.ip) {
                Some(ip) => out.records.push(record(cfg, name, ip)),
                None => {
                    out.held.insert(name);
                }
            }
        }
    }
    out.records.sort_by_key(Record::key);
    out.records.dedup_by(|a, b| a.key() == b.key());
    out
}

fn record(cfg: &DnsConfig, name: String, ip: IpAddr) -> Record {
    Record { name, kind: RecordType::for_ip(ip), content: ip, ttl: cfg.ttl, proxied: cfg.proxied }
}

/// Turns a node name into a DNS label (lower-case letters, digits, `-`; 1–63 characters).
pub(crate) fn node_label(name: &str) -> Option<String> {
    let l = name.trim().to_ascii_lowercase();
    let ok = !l.is_empty()
        && l.len() <= 63
        && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !l.starts_with('-')
        && !l.ends_with('-');
    ok.then_some(l)
}

//! The `[dns]` configuration: which zone, which names, how fast, and who owns what.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DnsError;

/// Cloudflare's production API base. It ends with `/`: without it `url::Url::join` drops `/v4`.
pub const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4/";
/// Default TTL of written records, seconds (1 means "automatic" to Cloudflare).
pub const DEFAULT_TTL: u32 = 60;
/// Default time between two full reconciliations, milliseconds.
pub const DEFAULT_RECONCILE_INTERVAL_MS: u64 = 60_000;
/// Default time a node may be down before its record is removed, milliseconds.
pub const DEFAULT_NODE_GRACE_MS: u64 = 300_000;
/// Default request budget per 5 minutes (Cloudflare allows 1,200 per user).
pub const DEFAULT_RATE_PER_5MIN: u32 = 600;
/// Default burst of the request budget (requests that may go back to back).
pub const DEFAULT_RATE_BURST: u32 = 10;
/// Default timeout of one HTTP request to the API, milliseconds.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default time the lb-leader must stay the same before DNS follows it, milliseconds.
pub const DEFAULT_LEADER_SETTLE_MS: u64 = 2_000;
/// Cloudflare's documented per-user limit per 5 minutes; a budget above it only earns 429s.
pub const CLOUDFLARE_LIMIT_PER_5MIN: u32 = 1_200;
/// Default cluster id in the ownership marker (set your own when several clusters
/// share a zone).
pub const DEFAULT_CLUSTER_ID: &str = "constellation";

/// The `[dns]` section. With no `token` the reconciler runs dry: it plans and logs, and
/// writes nothing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Zone name, e.g. `example.com`; the apex record is this name. Required. Default: empty.
    pub zone: String,
    /// Zone id; when set, the `GET zones?name=` lookup is skipped. Default: none.
    pub zone_id: Option<String>,
    /// API base URL, ending with `/`. Default: `https://api.cloudflare.com/client/v4/`.
    pub api_url: String,
    /// API token (Zone:DNS:Edit and Zone:Zone:Read). Never logged, never read from the
    /// config file itself: it comes from `api_token_file` or `CONSTELLATION_DNS__API_TOKEN`.
    /// Default: none (dry run).
    #[serde(skip)]
    pub token: Option<String>,
    /// File holding the API token, relative to the agent config. Default: none.
    pub api_token_file: Option<std::path::PathBuf>,
    /// Point the zone apex at the lb-leader's public IP. Default: true.
    pub apex: bool,
    /// Point `*.zone` at the lb-leader's public IP. Default: true.
    pub wildcard: bool,
    /// Per-node record template with a `{node}` placeholder, inside the zone, e.g.
    /// `{node}.nodes.example.com`. Default: none (no per-node records).
    pub node_record: Option<String>,
    /// TTL of written records, seconds; 1 = automatic. Ignored by Cloudflare for proxied
    /// records. Default: 60.
    pub ttl: u32,
    /// Write records as proxied (orange cloud). Default: false.
    pub proxied: bool,
    /// Also write AAAA records for IPv6 addresses. Default: false.
    pub ipv6: bool,
    /// Time between two full reconciliations, milliseconds. Default: 60000.
    pub reconcile_interval_ms: u64,
    /// A node down for less than this keeps its record, milliseconds. Default: 300000.
    pub node_grace_ms: u64,
    /// Requests to the API per 5 minutes, shared by every call; at most 1200. Default: 600.
    pub rate_per_5min: u32,
    /// Requests that may go back to back before the rate applies. Default: 10.
    pub rate_burst: u32,
    /// Timeout of one HTTP request, milliseconds. Default: 10000.
    pub request_timeout_ms: u64,
    /// The lb-leader must stay the same this long before apex/wildcard follow it,
    /// milliseconds. Default: 2000.
    pub leader_settle_ms: u64,
    /// Take over records of the managed names that lack our ownership comment. Default: false.
    pub adopt: bool,
    /// Cluster id written into the ownership comment. Required. Default: empty.
    pub cluster_id: String,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            zone: String::new(),
            zone_id: None,
            api_url: DEFAULT_API_URL.to_string(),
            token: None,
            api_token_file: None,
            apex: true,
            wildcard: true,
            node_record: None,
            ttl: DEFAULT_TTL,
            proxied: false,
            ipv6: false,
            reconcile_interval_ms: DEFAULT_RECONCILE_INTERVAL_MS,
            node_grace_ms: DEFAULT_NODE_GRACE_MS,
            rate_per_5min: DEFAULT_RATE_PER_5MIN,
            rate_burst: DEFAULT_RATE_BURST,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            leader_settle_ms: DEFAULT_LEADER_SETTLE_MS,
            adopt: false,
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
        }
    }
}

// The token must never reach a log line, so Debug is written by hand.
impl fmt::Debug for DnsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsConfig")
            .field("zone", &self.zone)
            .field("zone_id", &self.zone_id)
            .field("api_url", &self.api_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("api_token_file", &self.api_token_file)
            .field("apex", &self.apex)
            .field("wildcard", &self.wildcard)
            .field("node_record", &self.node_record)
            .field("ttl", &self.ttl)
            .field("proxied", &self.proxied)
            .field("ipv6", &self.ipv6)
            .field("reconcile_interval_ms", &self.reconcile_interval_ms)
            .field("node_grace_ms", &self.node_grace_ms)
            .field("rate_per_5min", &self.rate_per_5min)
            .field("rate_burst", &self.rate_burst)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("leader_settle_ms", &self.leader_settle_ms)
            .field("adopt", &self.adopt)
            .field("cluster_id", &self.cluster_id)
            .finish()
    }
}

impl DnsConfig {
    /// Checks every field; the error names the key and what to do.
    pub fn validate(&self) -> Result<(), DnsError> {
        let bad = |key: &'static str, message: String| Err(DnsError::Config { key, message });
        let zone = normalize_name(&self.zone);
        if zone.is_empty() || !zone.contains('.') {
            return bad("dns.zone", format!("{:?} is not a zone name; set it to e.g. \"example.com\"", self.zone));
        }
        if self.cluster_id.trim().is_empty() || self.cluster_id.contains(char::is_whitespace) {
            return bad(
                "dns.cluster_id",
                "must be a non-empty id without spaces (it goes into record comments)".into(),
            );
        }
        if !self.api_url.ends_with('/') {
            return bad(
                "dns.api_url",
                format!("{:?} must end with '/' (else /v4 drops from every path)", self.api_url),
            );
        }
        match reqwest::Url::parse(&self.api_url) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
            _ => return bad("dns.api_url", format!("{:?} is not an http(s) URL", self.api_url)),
        }
        if let Some(t) = &self.token {
            if t.trim().is_empty() {
                return bad(
                    "dns.api_token_file",
                    "the token is empty; remove the setting for a dry run or put a Cloudflare API token in it".into(),
                );
            }
        }
        if let Some(tpl) = &self.node_record {
            let n = normalize_name(tpl);
            if !n.contains("{node}") {
                return bad("dns.node_record", format!("{tpl:?} lacks the {{node}} placeholder"));
            }
            if !(n.ends_with(&format!(".{zone}"))) {
                return bad("dns.node_record", format!("{tpl:?} is not inside the zone {zone:?}"));
            }
        }
        if self.ttl != 1 && !(30..=86_400).contains(&self.ttl) {
            return bad("dns.ttl", format!("{} must be 1 (automatic) or 30..=86400 seconds", self.ttl));
        }
        if self.rate_per_5min == 0 || self.rate_per_5min > CLOUDFLARE_LIMIT_PER_5MIN {
            return bad("dns.rate_per_5min", format!("{} must be within 1..=1200", self.rate_per_5min));
        }
        for (key, v) in [
            ("dns.reconcile_interval_ms", self.reconcile_interval_ms),
            ("dns.request_timeout_ms", self.request_timeout_ms),
            ("dns.rate_burst", u64::from(self.rate_burst)),
        ] {
            if v == 0 {
                return bad(key, "must be greater than 0".into());
            }
        }
        Ok(())
    }

    /// The zone name, lower-case, without a trailing dot.
    pub fn zone_name(&self) -> String {
        normalize_name(&self.zone)
    }

    /// The ownership comment of this cluster's records.
    pub fn marker(&self) -> String {
        format!("managed-by=constellation cluster={}", self.cluster_id)
    }

    /// The comment of this cluster's dns-01 challenge TXT records. It is not the ownership
    /// marker (the reconciler's list by comment does not match it, and `cluster_id` has no
    /// spaces, so no other cluster's marker can equal it).
    pub fn challenge_marker(&self) -> String {
        format!("{} acme-challenge", self.marker())
    }

    /// Time between two full reconciliations.
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_millis(self.reconcile_interval_ms)
    }

    /// A node down for less than this keeps its record.
    pub fn node_grace(&self) -> Duration {
        Duration::from_millis(self.node_grace_ms)
    }

    /// The lb-leader must stay the same this long before DNS follows it.
    pub fn leader_settle(&self) -> Duration {
        Duration::from_millis(self.leader_settle_ms)
    }

    /// Timeout of one HTTP request.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Lower-cases a DNS name and strips a trailing dot.
pub(crate) fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

//! `[warp]` and `[[warp.gateways]]`: what each gateway is, how its egress is probed,
//! and when its container is restarted.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Cloudflare's trace page: answers `key=value` lines including `ip=`, `colo=` and
/// `warp=on|plus|off` for whoever asks.
pub const DEFAULT_TRACE_URL: &str = "https://www.cloudflare.com/cdn-cgi/trace";
/// Default probe interval (ms).
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Default time one probe may take in all (ms).
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Default consecutive successes that bring a down gateway up.
pub const DEFAULT_RISE: u32 = 2;
/// Default consecutive failures that take an up gateway down.
pub const DEFAULT_FALL: u32 = 3;
/// Default time a gateway stays down before its container is restarted (ms).
pub const DEFAULT_RESTART_AFTER_MS: u64 = 60_000;
/// Default cap on container restarts per gateway in any hour.
pub const DEFAULT_MAX_RESTARTS_PER_HOUR: u32 = 3;
/// Default image of the short-lived probe container for `network` gateways (the
/// catalogue's curl image).
pub const DEFAULT_PROBE_IMAGE: &str = "curlimages/curl:8.17.0";

/// `[warp]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarpConfig {
    /// This node's egress gateways. Default: none (no monitor runs).
    pub gateways: Vec<GatewayConfig>,
}

/// One `[[warp.gateways]]`. Exactly one of `socks5`, `http_proxy` and `network` says how
/// traffic leaves through it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Name, unique on the node; instances name it in `egress` (`warp` matches any
    /// gateway of the node when none is called `warp`).
    pub name: String,
    /// The WARP client's SOCKS5 proxy, `host:port` (names are resolved by the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socks5: Option<String>,
    /// The WARP client's HTTP proxy, `host:port` (CONNECT for https trace URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_proxy: Option<String>,
    /// A Docker network whose default route is the gateway (`warp-nat-net`): the probe
    /// runs in a short-lived container on that network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Image of the probe container (`network` only). Default [`DEFAULT_PROBE_IMAGE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_image: Option<String>,
    /// Command of the probe container, `{url}` and `{timeout_s}` filled in (`network`
    /// only). Default `curl -fsS --max-time {timeout_s} {url}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe_command: Vec<String>,
    /// The trace page to fetch through the gateway. Default [`DEFAULT_TRACE_URL`].
    #[serde(default = "default_trace_url")]
    pub trace_url: String,
    /// Probe interval (ms). Default 10000.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Time one probe may take in all (ms), at most the interval. Default 5000, or the
    /// interval when that is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Consecutive good probes that bring the gateway up. Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive bad probes that take it down. Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// The gateway's container (name or id) on this node's engine: its state and health
    /// are shown beside the probe's verdict, and it is what `restart` restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Restart `container` through Docker when the gateway stays down. Default false.
    #[serde(default)]
    pub restart: bool,
    /// How long the gateway must be down before (each) restart (ms). Default 60000.
    #[serde(default = "default_restart_after")]
    pub restart_after_ms: u64,
    /// At most this many restarts in any hour. Default 3.
    #[serde(default = "default_max_restarts")]
    pub max_restarts_per_hour: u32,
    /// Docker engine endpoint for `network` probes and restarts. Default: the local
    /// socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_endpoint: Option<String>,
}

fn default_trace_url() -> String {
    DEFAULT_TRACE_URL.to_string()
}
fn default_interval() -> u64 {
    DEFAULT_INTERVAL_MS
}
fn default_rise() -> u32 {
    DEFAULT_RISE
}
fn default_fall() -> u32 {
    DEFAULT_FALL
}
fn default_restart_after() -> u64 {
    DEFAULT_RESTART_AFTER_MS
}
fn default_max_restarts() -> u32 {
    DEFAULT_MAX_RESTARTS_PER_HOUR
}

/// How a gateway's traffic leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A SOCKS5 proxy.
    Socks5(String),
    /// An HTTP proxy.
    HttpProxy(String),
    /// A Docker network routed through the gateway.
    Network(String),
}

impl Via {
    /// `socks5 127.0.0.1:1080`, `http-proxy …`, `network warp-nat-net`.
    pub fn describe(&self) -> String {
        match self {
            Via::Socks5(a) => format!("socks5 {a}"),
            Via::HttpProxy(a) => format!("http-proxy {a}"),
            Via::Network(n) => format!("network {n}"),
        }
    }
}

impl GatewayConfig {
    /// A gateway named `name` leaving through SOCKS5 at `addr`, every other field default.
    pub fn socks5(name: &str, addr: &str) -> Self {
        GatewayConfig {
            name: name.into(),
            socks5: Some(addr.into()),
            http_proxy: None,
            network: None,
            probe_image: None,
            probe_command: Vec::new(),
            trace_url: default_trace_url(),
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: None,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            container: None,
            restart: false,
            restart_after_ms: DEFAULT_RESTART_AFTER_MS,
            max_restarts_per_hour: DEFAULT_MAX_RESTARTS_PER_HOUR,
            docker_endpoint: None,
        }
    }

    /// The time one probe may take.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS.min(self.interval_ms)))
    }

    /// How traffic leaves (validated configs have exactly one).
    pub fn via(&self) -> Option<Via> {
        match (&self.socks5, &self.http_proxy, &self.network) {
            (Some(a), None, None) => Some(Via::Socks5(a.clone())),
            (None, Some(a), None) => Some(Via::HttpProxy(a.clone())),
            (None, None, Some(n)) => Some(Via::Network(n.clone())),
            _ => None,
        }
    }

    /// The probe container's command with the URL and timeout filled in.
    pub fn probe_argv(&self) -> Vec<String> {
        let secs = (self.timeout().as_millis() as u64).div_ceil(1000).max(1).to_string();
        let template: Vec<String> = if self.probe_command.is_empty() {
            ["curl", "-fsS", "--max-time", "{timeout_s}", "{url}"].iter().map(|s| s.to_string()).collect()
        } else {
            self.probe_command.clone()
        };
        template.iter().map(|a| a.replace("{url}", &self.trace_url).replace("{timeout_s}", &secs)).collect()
    }
}

fn check_host_port(v: &str) -> Result<(), String> {
    if v.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(format!("{v:?} is not host:port, e.g. \"127.0.0.1:1080\"")),
    }
}

impl WarpConfig {
    /// Whether no gateway is configured.
    pub fn is_empty(&self) -> bool {
        self.gateways.is_empty()
    }

    /// Every problem as `(key, message)`, keys relative to `warp`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        for (i, g) in self.gateways.iter().enumerate() {
            let key = format!("gateways[{i}]");
            let mut bad = |field: &str, msg: String| out.push((format!("{key}.{field}"), msg));
            if g.name.is_empty() || !g.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                bad("name", format!("{:?}: use letters, digits, '-' and '_'", g.name));
            } else if !names.insert(g.name.clone()) {
                bad("name", format!("{:?} names two gateways", g.name));
            }
            let ways = [g.socks5.is_some(), g.http_proxy.is_some(), g.network.is_some()].iter().filter(|b| **b).count();
            if ways != 1 {
                bad("socks5", "give exactly one of socks5, http_proxy and network".into());
            }
            for (field, v) in [("socks5", &g.socks5), ("http_proxy", &g.http_proxy)] {
                if let Some(Err(e)) = v.as_deref().map(check_host_port) {
                    bad(field, e);
                }
            }
            if g.network.as_deref().is_some_and(str::is_empty) {
                bad("network", "empty network name".into());
            }
            if g.network.is_none() && (g.probe_image.is_some() || !g.probe_command.is_empty()) {
                bad("probe_image", "probe_image and probe_command apply to network gateways only".into());
            }
            match reqwest::Url::parse(&g.trace_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                Ok(_) => bad("trace_url", format!("{:?}: an http:// or https:// URL with a host", g.trace_url)),
                Err(e) => bad("trace_url", format!("{:?}: {e}", g.trace_url)),
            }
            if g.interval_ms < 100 {
                bad("interval_ms", format!("{} ms is too short (at least 100)", g.interval_ms));
            }
            if let Some(t) = g.timeout_ms.filter(|t| *t == 0 || *t > g.interval_ms) {
                bad("timeout_ms", format!("{t} ms: more than 0 and at most interval_ms ({})", g.interval_ms));
            }
            if g.rise == 0 {
                bad("rise", "at least 1".into());
            }
            if g.fall == 0 {
                bad("fall", "at least 1".into());
            }
            if g.restart && g.container.is_none() {
                bad("restart", "restart = true needs container = \"<name>\" (the gateway's container)".into());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_and_acceptance_shape() {
        let cfg: WarpConfig = toml::from_str(
            "[[gateways]]\nname = \"warp\"\nsocks5 = \"127.0.0.1:11080\"\ntrace_url = \"http://127.0.0.1:18099/cdn-cgi/trace\"\ninterval_ms = 1000\n",
        )
        .unwrap();
        let g = &cfg.gateways[0];
        assert_eq!(g.via(), Some(Via::Socks5("127.0.0.1:11080".into())));
        assert_eq!((g.rise, g.fall), (2, 3));
        assert_eq!(g.timeout(), std::time::Duration::from_secs(1), "never longer than the interval");
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    }

    #[test]
    fn bad_gateways_are_named() {
        let mut a = GatewayConfig::socks5("a", "nohost");
        a.http_proxy = Some("127.0.0.1:3128".into());
        a.trace_url = "ftp://x/".into();
        a.restart = true;
        let b = GatewayConfig::socks5("a", "127.0.0.1:1");
        let keys: Vec<String> = WarpConfig { gateways: vec![a, b] }.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "gateways[0].socks5",
                "gateways[0].socks5",
                "gateways[0].trace_url",
                "gateways[0].restart",
                "gateways[1].name"
            ]
        );
    }

    #[test]
    fn probe_command_is_filled_in() {
        let mut g = GatewayConfig::socks5("n", "127.0.0.1:1");
        g.timeout_ms = Some(2500);
        g.trace_url = "http://10.0.0.1/cdn-cgi/trace".into();
        assert_eq!(g.probe_argv(), ["curl", "-fsS", "--max-time", "3", "http://10.0.0.1/cdn-cgi/trace"]);
    }
}

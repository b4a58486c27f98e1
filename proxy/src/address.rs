//! Resolved upstream addresses, handed to [`compile`](crate::compile()) by whoever
//! resolves host names (the control plane's resolver). This crate never resolves a
//! name itself.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::dynamic::{DynamicConfig, HttpService};
use crate::upstream::parse_server_url;

/// A host name and port that must be resolved before its upstreams can be used.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// Host name as written in the server URL, lower-cased.
    pub host: String,
    /// Port from the URL (or its scheme's default).
    pub port: u16,
}

impl HostPort {
    /// A key for `host` (case-insensitive) and `port`.
    pub fn new(host: &str, port: u16) -> Self {
        Self { host: host.to_ascii_lowercase(), port }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The answers known for host names: an address, or why there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressMap {
    entries: HashMap<HostPort, Result<SocketAddr, String>>,
}

impl AddressMap {
    /// An empty map (every host name is unresolved).
    pub fn new() -> Self {
        Self::default()
    }

    /// Record the answer for `key`.
    pub fn insert(&mut self, key: HostPort, answer: Result<SocketAddr, String>) {
        self.entries.insert(key, answer);
    }

    /// The answer for `key`, if one was recorded.
    pub fn get(&self, key: &HostPort) -> Option<&Result<SocketAddr, String>> {
        self.entries.get(key)
    }

    /// Number of recorded answers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no answer is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The address an upstream at `host:port` uses: an IP literal as written, else the
    /// recorded answer; a name without one is unresolved (an `Err` saying so).
    pub fn address_of(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = HostPort::new(host, port);
        match self.entries.get(&key) {
            Some(answer) => answer.clone(),
            None => Err(format!("{key}: not resolved yet")),
        }
    }
}

/// The host names (not IP literals) in the server URLs of `cfg`'s load balancers:
/// what a resolver must answer for the table to use them. URLs that do not parse are
/// skipped (compile reports them).
pub fn host_names(cfg: &DynamicConfig) -> BTreeSet<HostPort> {
    let mut out = BTreeSet::new();
    for svc in cfg.http.services.values() {
        let HttpService::LoadBalancer(lb) = svc else { continue };
        for server in &lb.servers {
            let Ok(url) = parse_server_url(&server.url) else { continue };
            if url.host.parse::<IpAddr>().is_err() {
                out.insert(HostPort::new(&url.host, url.port));
            }
        }
    }
    let tcp = cfg.tcp.services.values().filter_map(|s| match s {
        crate::dynamic::TcpService::LoadBalancer(lb) => Some(lb.servers.iter().map(|s| s.address.as_str())),
        crate::dynamic::TcpService::Weighted(_) => None,
    });
    let udp = cfg.udp.services.values().filter_map(|s| match s {
        crate::dynamic::UdpService::LoadBalancer(lb) => Some(lb.servers.iter().map(|s| s.address.as_str())),
        crate::dynamic::UdpService::Weighted(_) => None,
    });
    for address in tcp.flatten().chain(udp.flatten()) {
        if let Some((host, port)) = crate::tcp::split_host_port(address) {
            if host.parse::<IpAddr>().is_err() {
                out.insert(HostPort::new(host, port));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dynamic::{parse_str, Format};

    #[test]
    fn host_names_lists_names_not_literals() {
        let yaml = "http:\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"http://App.Test:8080/x\"\n          - url: \"https://db.test\"\n          - url: \"http://127.0.0.1:1\"\n          - url: \"http://[::1]:2\"\n          - url: \"not a url\"\n";
        let cfg = parse_str(yaml, Format::Yaml, "t.yaml").unwrap();
        let names: Vec<String> = host_names(&cfg).iter().map(ToString::to_string).collect();
        assert_eq!(names, ["app.test:8080", "db.test:443"]);
    }

    #[test]
    fn address_of_literals_answers_and_missing_names() {
        let mut m = AddressMap::new();
        m.insert(HostPort::new("a.test", 80), Ok("10.0.0.1:80".parse().unwrap()));
        m.insert(HostPort::new("b.test", 80), Err("b.test:80: no such host".into()));
        assert_eq!(m.address_of("127.0.0.1", 9), Ok("127.0.0.1:9".parse().unwrap()));
        assert_eq!(m.address_of("::1", 9), Ok("[::1]:9".parse().unwrap()));
        assert_eq!(m.address_of("A.test", 80), Ok("10.0.0.1:80".parse().unwrap()));
        assert_eq!(m.address_of("b.test", 80), Err("b.test:80: no such host".into()));
        assert_eq!(m.address_of("a.test", 81), Err("a.test:81: not resolved yet".into()));
    }
}

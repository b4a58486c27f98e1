//! Traefik's `ipStrategy` (which address is "the client") and `sourceCriterion` (what
//! groups requests into one source for `inFlightReq` and `rateLimit`), shared by the
//! middlewares that need them.
//!
//! - no strategy: the connection's peer ([`MwState::client_ip`]);
//! - `depth: n` (n > 0): the n-th address from the right of the first
//!   `X-Forwarded-For` header (nothing when the header has fewer entries);
//! - `excludedIPs`: the right-most `X-Forwarded-For` entry not in these ranges;
//! - `ipv6Subnet`: an IPv6 result is replaced by the first address of its subnet of that
//!   size, so that one client's many addresses count as one.
//!
//! `depth` wins over `excludedIPs`, as in Traefik. The entry point has already removed
//! `X-Forwarded-For` from peers it does not trust (see [`crate::forwarded`]).

use std::net::{IpAddr, Ipv6Addr};

use http::header::HeaderName;
use pingora_http::RequestHeader;
use serde::Deserialize;

use super::{BuildError, MwState};
use crate::forwarded::IpNet;

/// Traefik's `ipStrategy` options, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpStrategyOptions {
    /// Position from the right in `X-Forwarded-For` (0: not used).
    #[serde(default)]
    pub depth: i64,
    /// Ranges skipped when reading `X-Forwarded-For` from the right.
    #[serde(default, rename = "excludedIPs")]
    pub excluded_ips: Vec<String>,
    /// IPv6 subnet size (1–128) that groups IPv6 clients.
    #[serde(default, rename = "ipv6Subnet")]
    pub ipv6_subnet: Option<i64>,
}

/// Traefik's `sourceCriterion` options, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCriterionOptions {
    /// Group by client IP chosen by this strategy.
    #[serde(default, rename = "ipStrategy")]
    pub ip_strategy: Option<IpStrategyOptions>,
    /// Group by the value of this request header.
    #[serde(default, rename = "requestHeaderName")]
    pub request_header_name: String,
    /// Group by the request's host.
    #[serde(default, rename = "requestHost")]
    pub request_host: bool,
}

/// A compiled IP strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpStrategy {
    /// The connection's peer.
    Peer {
        /// IPv6 grouping prefix.
        ipv6_subnet: Option<u8>,
    },
    /// The `depth`-th `X-Forwarded-For` entry from the right.
    Depth {
        /// 1 = the right-most entry.
        depth: usize,
        /// IPv6 grouping prefix.
        ipv6_subnet: Option<u8>,
    },
    /// The right-most `X-Forwarded-For` entry outside `excluded`.
    Excluded {
        /// Ranges skipped.
        excluded: Vec<IpNet>,
        /// IPv6 grouping prefix.
        ipv6_subnet: Option<u8>,
    },
}

impl Default for IpStrategy {
    fn default() -> Self {
        IpStrategy::Peer { ipv6_subnet: None }
    }
}

impl IpStrategy {
    /// Compile `ipStrategy` options; `field` is where they sit (for errors).
    pub fn build(o: &IpStrategyOptions, field: &str) -> Result<IpStrategy, BuildError> {
        let ipv6_subnet = match o.ipv6_subnet {
            None => None,
            Some(n @ 1..=128) => Some(n as u8),
            Some(n) => {
                return Err(BuildError::new(
                    format!("{field}.ipv6Subnet"),
                    format!("{n} is not a valid IPv6 subnet size: write a prefix length from 1 to 128"),
                ))
            }
        };
        if o.depth < 0 {
            return Err(BuildError::new(
                format!("{field}.depth"),
                format!("{} is negative: write 0 (not used) or a position from the right, 1 or more", o.depth),
            ));
        }
        if o.depth > 0 {
            let depth = usize::try_from(o.depth)
                .map_err(|_| BuildError::new(format!("{field}.depth"), format!("{} is too large", o.depth)))?;
            return Ok(IpStrategy::Depth { depth, ipv6_subnet });
        }
        if !o.excluded_ips.is_empty() {
            let excluded = parse_ranges(&o.excluded_ips, &format!("{field}.excludedIPs"))?;
            return Ok(IpStrategy::Excluded { excluded, ipv6_subnet });
        }
        Ok(IpStrategy::Peer { ipv6_subnet })
    }

    /// The client address this strategy picks for `req` (whose connection's peer is in
    /// `state`): `None` when there is none, or when the picked entry is not an address.
    pub fn client_ip(&self, req: &RequestHeader, state: &MwState) -> Option<IpAddr> {
        let (ip, subnet) = match self {
            IpStrategy::Peer { ipv6_subnet } => (state.client_ip, *ipv6_subnet),
            IpStrategy::Depth { depth, ipv6_subnet } => (from_depth(first_xff(req), *depth), *ipv6_subnet),
            IpStrategy::Excluded { excluded, ipv6_subnet } => (from_excluded(first_xff(req), excluded), *ipv6_subnet),
        };
        let ip = ip?.to_canonical();
        Some(match (ip, subnet) {
            (IpAddr::V6(v6), Some(prefix)) => IpAddr::V6(ipv6_network(v6, prefix)),
            _ => ip,
        })
    }
}

/// Parse a list of IPs and CIDRs; an error names the entry (`field[i]`).
pub fn parse_ranges(entries: &[String], field: &str) -> Result<Vec<IpNet>, BuildError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.trim().parse::<IpNet>().map_err(|err| BuildError::new(format!("{field}[{i}]"), err.to_string()))
        })
        .collect()
}

/// The first `X-Forwarded-For` header's value (Go's `Header.Get`), or "".
fn first_xff(req: &RequestHeader) -> &str {
    req.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The `depth`-th entry from the right of `xff` (1 = last), parsed.
fn from_depth(xff: &str, depth: usize) -> Option<IpAddr> {
    let entry = xff.rsplit(',').nth(depth.checked_sub(1)?)?;
    parse_entry(entry)
}

/// The right-most non-empty entry of `xff` that is not in `excluded`, parsed. An entry
/// that is not an address is not in any range, so it is the one picked (and then
/// refused as unparsable), as in Traefik.
fn from_excluded(xff: &str, excluded: &[IpNet]) -> Option<IpAddr> {
    for entry in xff.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.parse::<IpAddr>() {
            Ok(ip) if excluded.iter().any(|n| n.contains(ip)) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => return None,
        }
    }
    None
}

fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry.trim().parse().ok()
}

/// The first address of `ip`'s `/prefix` network.
pub fn ipv6_network(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & mask)
}

/// What groups requests into one source (`sourceCriterion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceCriterion {
    /// The client IP picked by a strategy.
    Ip(IpStrategy),
    /// The value of a request header.
    Header(HeaderName),
    /// The request's host (`Host`, with its port if any).
    Host,
}

/// One source's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// A client address (`None`: no usable address; all such requests share a key).
    Ip(Option<IpAddr>),
    /// A header value or a host.
    Text(String),
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceKey::Ip(Some(ip)) => write!(f, "{ip}"),
            SourceKey::Ip(None) => f.write_str("-"),
            SourceKey::Text(t) => write!(f, "{t:?}"),
        }
    }
}

impl SourceCriterion {
    /// Compile `sourceCriterion` (`field` is where it sits); with nothing set, `default`.
    /// Setting more than one criterion is an error, as in Traefik.
    pub fn build(
        o: Option<&SourceCriterionOptions>,
        field: &str,
        default: SourceCriterion,
    ) -> Result<SourceCriterion, BuildError> {
        let Some(o) = o else { return Ok(default) };
        let set = [o.ip_strategy.is_some(), !o.request_header_name.is_empty(), o.request_host];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err(BuildError::new(
                field,
                "ipStrategy, requestHeaderName and requestHost are mutually exclusive: set only one",
            ));
        }
        if let Some(s) = &o.ip_strategy {
            return Ok(SourceCriterion::Ip(IpStrategy::build(s, &format!("{field}.ipStrategy"))?));
        }
        if !o.request_header_name.is_empty() {
            let name = HeaderName::from_bytes(o.request_header_name.as_bytes()).map_err(|_| {
                BuildError::new(
                    format!("{field}.requestHeaderName"),
                    format!("{:?} is not a valid header name", o.request_header_name),
                )
            })?;
            return Ok(SourceCriterion::Header(name));
        }
        if o.request_host {
            return Ok(SourceCriterion::Host);
        }
        Ok(default)
    }

    /// The source `req` belongs to.
    pub fn key(&self, req: &RequestHeader, state: &MwState) -> SourceKey {
        match self {
            SourceCriterion::Ip(s) => SourceKey::Ip(s.client_ip(req, state)),
            SourceCriterion::Header(name) => SourceKey::Text(
                req.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default(),
            ),
            SourceCriterion::Host => {
                let host = req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri.authority().map(|a| a.as_str()))
                    .unwrap_or("");
                SourceKey::Text(host.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(xff: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in xff {
            r.append_header("x-forwarded-for", *v).unwrap();
        }
        r
    }

    fn state(peer: &str) -> MwState {
        MwState { client_ip: Some(peer.parse().unwrap()), ..MwState::default() }
    }

    fn strategy(json: &str) -> Result<IpStrategy, BuildError> {
        let o: IpStrategyOptions = serde_json::from_str(json).unwrap();
        IpStrategy::build(&o, "x.ipStrategy")
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn no_strategy_is_the_peer() {
        let s = strategy("{}").unwrap();
        assert_eq!(s.client_ip(&req(&["1.1.1.1"]), &state("10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(s.client_ip(&req(&[]), &MwState::default()), None);
    }

    #[test]
    fn depth_counts_from_the_right_of_the_first_header() {
        let s = strategy(r#"{"depth": 2}"#).unwrap();
        let r = req(&["1.1.1.1, 2.2.2.2 ,3.3.3.3", "9.9.9.9"]);
        assert_eq!(s.client_ip(&r, &state("10.0.0.1")), ip("2.2.2.2"));
        let s1 = strategy(r#"{"depth": 1}"#).unwrap();
        assert_eq!(s1.client_ip(&r, &state("10.0.0.1")), ip("3.3.3.3"));
        // Fewer entries than the depth: no client.
        let s4 = strategy(r#"{"depth": 4}"#).unwrap();
        assert_eq!(s4.client_ip(&r, &state("10.0.0.1")), None);
        // No header at all.
        assert_eq!(s1.client_ip(&req(&[]), &state("10.0.0.1")), None);
        // A garbage entry is no client.
        assert_eq!(s1.client_ip(&req(&["1.1.1.1, nonsense"]), &state("10.0.0.1")), None);
    }

    #[test]
    fn depth_wins_over_excluded_ips() {
        let s = strategy(r#"{"depth": 1, "excludedIPs": ["3.3.3.3"]}"#).unwrap();
        assert_eq!(s.client_ip(&req(&["1.1.1.1, 3.3.3.3"]), &state("10.0.0.1")), ip("3.3.3.3"));
    }

    #[test]
    fn excluded_ips_skip_from_the_right() {
        let s = strategy(r#"{"excludedIPs": ["10.0.0.0/8", "fd00::/8"]}"#).unwrap();
        let r = req(&["1.1.1.1, 2.2.2.2, 10.1.1.1, , fd00::1"]);
        assert_eq!(s.client_ip(&r, &state("127.0.0.1")), ip("2.2.2.2"));
        assert_eq!(s.client_ip(&req(&["10.1.1.1, 10.2.2.2"]), &state("127.0.0.1")), None);
        assert_eq!(s.client_ip(&req(&["1.1.1.1, bogus, 10.2.2.2"]), &state("127.0.0.1")), None);
    }

    #[test]
    fn ipv6_subnet_groups_v6_and_leaves_v4() {
        let s = strategy(r#"{"ipv6Subnet": 64}"#).unwrap();
        assert_eq!(s.client_ip(&req(&[]), &state("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(s.client_ip(&req(&[]), &state("192.0.2.7")), ip("192.0.2.7"));
        let d = strategy(r#"{"depth": 1, "ipv6Subnet": 48}"#).unwrap();
        assert_eq!(d.client_ip(&req(&["2001:db8:aa:bb::1"]), &state("127.0.0.1")), ip("2001:db8:aa::"));
        // A v4-mapped peer is the v4 address.
        assert_eq!(s.client_ip(&req(&[]), &state("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn bad_strategies_name_the_field() {
        assert_eq!(strategy(r#"{"ipv6Subnet": 0}"#).unwrap_err().field, "x.ipStrategy.ipv6Subnet");
        assert_eq!(strategy(r#"{"ipv6Subnet": 129}"#).unwrap_err().field, "x.ipStrategy.ipv6Subnet");
        assert_eq!(strategy(r#"{"depth": -1}"#).unwrap_err().field, "x.ipStrategy.depth");
        assert_eq!(
            strategy(r#"{"excludedIPs": ["1.2.3.4", "10.0.0/8x"]}"#).unwrap_err().field,
            "x.ipStrategy.excludedIPs[1]"
        );
    }

    #[test]
    fn source_criteria_are_exclusive_and_default() {
        let c = |json: &str| -> Result<SourceCriterion, BuildError> {
            let o: SourceCriterionOptions = serde_json::from_str(json).unwrap();
            SourceCriterion::build(Some(&o), "m.sourceCriterion", SourceCriterion::Host)
        };
        assert_eq!(c("{}").unwrap(), SourceCriterion::Host);
        assert_eq!(c(r#"{"ipStrategy": {}}"#).unwrap(), SourceCriterion::Ip(IpStrategy::default()));
        assert!(c(r#"{"ipStrategy": {}, "requestHost": true}"#).is_err());
        assert!(c(r#"{"requestHeaderName": "X-User", "requestHost": true}"#).is_err());
        let h = c(r#"{"requestHeaderName": "X-User"}"#).unwrap();
        let mut r = req(&[]);
        r.insert_header("x-user", "alice").unwrap();
        assert_eq!(h.key(&r, &MwState::default()), SourceKey::Text("alice".into()));
        assert_eq!(
            c(r#"{"requestHeaderName": "bad header"}"#).unwrap_err().field,
            "m.sourceCriterion.requestHeaderName"
        );
    }
}

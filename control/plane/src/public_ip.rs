//! Public IP detection for this node's state: an operator override, else two "what is
//! my IP" services that agree, else the first global unicast interface address.
//!
//! Services are asked through the shared [`Prober`] (reqwest with rustls), verifying
//! certificates on https like any public client.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Stdio;
use std::time::Duration;

use constellation_proxy::{CertPolicy, ProbeError, ProbeRequest, Prober};
use serde::{Deserialize, Serialize};

/// Environment variable the caller reads and passes as [`PublicIpConfig::env_override`].
pub const ENV_VAR: &str = "CONSTELLATION_PUBLIC_IP";

/// Default services, all answering a plain-text IP over https (so nobody on the path
/// can forge the answer). They are run by different operators, so two of them agreeing
/// is meaningful.
pub const DEFAULT_SERVICES: [&str; 5] = [
    "https://ifconfig.me/ip",
    "https://icanhazip.com",
    "https://api.ipify.org",
    "https://ipinfo.io/ip",
    "https://checkip.amazonaws.com",
];

/// Default time allowed to each service (connect, request and answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How many distinct services must give the same address.
const QUORUM: usize = 2;
/// Largest accepted HTTP response (head and body); an IP answer is a few dozen bytes.
const MAX_RESPONSE: usize = 16 * 1024;
/// Destinations for the UDP "connect" route lookup (documentation addresses; connecting
/// a UDP socket sends nothing).
const ROUTE_PROBE_V4: &str = "192.0.2.1:9";
const ROUTE_PROBE_V6: &str = "[2001:db8::1]:9";

/// Where to look for this node's public address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicIpConfig {
    /// "What is my IP" URLs, `http(s)://host[:port]/path`, each answering the caller's
    /// address as the whole body. At least two distinct usable URLs are needed.
    /// Default [`DEFAULT_SERVICES`].
    pub services: Vec<String>,
    /// Time allowed to each service; services are asked concurrently, so this also
    /// bounds the whole service phase. Default [`DEFAULT_TIMEOUT`] (2 s).
    pub timeout: Duration,
    /// The value of [`ENV_VAR`] (`CONSTELLATION_PUBLIC_IP`), if set. A valid IP wins over
    /// detection; an empty value counts as unset. Default: none.
    pub env_override: Option<String>,
}

impl Default for PublicIpConfig {
    fn default() -> Self {
        Self {
            services: DEFAULT_SERVICES.iter().map(|s| s.to_string()).collect(),
            timeout: DEFAULT_TIMEOUT,
            env_override: None,
        }
    }
}

impl PublicIpConfig {
    /// The defaults, with `env_override` read from the process environment's
    /// [`ENV_VAR`].
    pub fn from_process_env() -> Self {
        Self { env_override: std::env::var(ENV_VAR).ok(), ..Self::default() }
    }
}

/// The outcome of [`detect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// This node's public address, if one was found.
    pub ip: Option<IpAddr>,
    /// Where `ip` came from.
    pub source: Source,
    /// Everything that went wrong on the way, one sentence each (an invalid override, a
    /// service that timed out...). Not empty does not mean `ip` is missing.
    pub errors: Vec<String>,
}

/// Where a [`Detection`]'s address came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The operator's `CONSTELLATION_PUBLIC_IP`.
    Env,
    /// At least two services gave the same answer.
    Services {
        /// The URLs that agreed.
        agreeing: Vec<String>,
    },
    /// A global unicast address on this interface (or `default route` when the name
    /// could not be learnt).
    Interface(String),
    /// Nothing found.
    None,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env => write!(f, "environment variable {ENV_VAR}"),
            Source::Services { agreeing } => write!(f, "services {}", agreeing.join(", ")),
            Source::Interface(name) => write!(f, "interface {name}"),
            Source::None => f.write_str("none"),
        }
    }
}

/// Finds this node's public IP: a valid `env_override` wins; else the services are asked
/// concurrently (each within `timeout`) and the first address two of them agree on is
/// taken; else the first global unicast interface address (IPv4 before IPv6); else none.
/// Every problem met on the way lands in [`Detection::errors`]. Never fails, never
/// panics; takes about one `timeout` at worst (plus a local `ip` run).
pub async fn detect(cfg: &PublicIpConfig) -> Detection {
    let timeout = cfg.timeout;
    detect_with(cfg, move || interface_address(timeout)).await
}

/// [`detect`] with the interface lookup supplied, so tests do not depend on the host.
async fn detect_with<F, Fut>(cfg: &PublicIpConfig, interfaces: F) -> Detection
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = (Option<(IpAddr, String)>, Vec<String>)>,
{
    let mut errors = Vec::new();

    if let Some(raw) = cfg.env_override.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        match raw.parse::<IpAddr>() {
            Ok(ip) => {
                if !is_global_unicast(ip) {
                    tracing::warn!(%ip, "{ENV_VAR} is not a global unicast address; using it as the operator asked");
                }
                return Detection { ip: Some(ip), source: Source::Env, errors };
            }
            Err(e) => errors.push(format!(
                "{ENV_VAR}={raw:?} is not an IP address ({e}); set it to this node's public IPv4 or IPv6 \
                 address or unset it; detecting instead"
            )),
        }
    }

    if let Some((ip, agreeing)) = ask_services(cfg, &mut errors).await {
        return Detection { ip: Some(ip), source: Source::Services { agreeing }, errors };
    }

    let (found, interface_errors) = interfaces().await;
    errors.extend(interface_errors);
    match found {
        Some((ip, name)) => Detection { ip: Some(ip), source: Source::Interface(name), errors },
        None => {
            errors.push("no global unicast address on any interface (this node is behind NAT?)".to_string());
            Detection { ip: None, source: Source::None, errors }
        }
    }
}

/// Asks every usable service concurrently and returns as soon as two agree.
async fn ask_services(cfg: &PublicIpConfig, errors: &mut Vec<String>) -> Option<(IpAddr, Vec<String>)> {
    let mut targets = Vec::new();
    for url in &cfg.services {
        if targets.iter().any(|u| u == url) {
            // The same service twice would agree with itself.
            continue;
        }
        match usable(url) {
            Ok(()) => targets.push(url.clone()),
            Err(why) => errors.push(format!("{url}: skipped: not a usable URL: {why}")),
        }
    }
    if targets.len() < QUORUM {
        errors.push(format!(
            "{} usable service URL(s) configured; {QUORUM} must agree, so services were not asked",
            targets.len()
        ));
        return None;
    }

    let prober = match Prober::new(CertPolicy::Verify) {
        Ok(p) => std::sync::Arc::new(p),
        Err(e) => {
            errors.push(format!("services not asked: {e}"));
            return None;
        }
    };
    let timeout = cfg.timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for url in targets {
        let prober = prober.clone();
        tasks.spawn(async move {
            let answer = match fetch_ip(&prober, &url, timeout).await {
                Err(e) => Err(e),
                Ok(ip) if !is_global_unicast(ip) => Err(format!("answered {ip}, which is not a public address")),
                Ok(ip) => Ok(ip),
            };
            (url, answer)
        });
    }

    let mut answers: Vec<(String, Result<IpAddr, String>)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (url, answer) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                errors.push(format!("a service query task failed: {e}"));
                continue;
            }
        };
        if let Err(e) = &answer {
            tracing::debug!(service = %url, error = %e, "public IP service failed");
            errors.push(format!("{url}: {e}"));
        }
        answers.push((url, answer));
        if let Some(found) = agree(&answers) {
            // Dropping the JoinSet aborts the services still pending.
            return Some(found);
        }
    }

    let ok: Vec<String> =
        answers.iter().filter_map(|(u, a)| a.as_ref().ok().map(|ip| format!("{u} said {ip}"))).collect();
    if !ok.is_empty() {
        errors.push(format!("no two services agreed ({}); not trusting a single answer", ok.join(", ")));
    }
    None
}

/// The address that at least two distinct services gave, with those services in answer
/// order. When several addresses reach two (say an IPv4 and an IPv6 pair), the one with
/// most votes wins, ties going to the one answered first. Failed answers are ignored.
pub fn agree(answers: &[(String, Result<IpAddr, String>)]) -> Option<(IpAddr, Vec<String>)> {
    let mut best: Option<(IpAddr, Vec<String>)> = None;
    let mut seen: Vec<IpAddr> = Vec::new();
    for ip in answers.iter().filter_map(|(_, a)| a.as_ref().ok()) {
        if seen.contains(ip) {
            continue;
        }
        seen.push(*ip);
        let mut names: Vec<String> = Vec::new();
        for (name, answer) in answers {
            if answer.as_ref().ok() == Some(ip) && !names.contains(name) {
                names.push(name.clone());
            }
        }
        if names.len() >= QUORUM && best.as_ref().is_none_or(|(_, b)| names.len() > b.len()) {
            best = Some((*ip, names));
        }
    }
    best
}

/// `true` for addresses routable on the public Internet: IPv4 outside "this network",
/// loopback, RFC 1918, CGNAT (100.64/10), link-local, IETF protocol assignments
/// (192.0.0/24), documentation, benchmarking (198.18/15), multicast and reserved space;
/// IPv6 inside 2000::/3 but outside 2001::/23 (IETF protocol assignments, Teredo),
/// 2001:db8::/32 and 3fff::/20 (documentation). Everything else (loopback, link-local,
/// ULA fc00::/7, multicast, IPv4-mapped...) is not global.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

/// IPv4 ranges that are not global unicast (IANA special-purpose registry, RFC 6890).
const NOT_GLOBAL_V4: [(Ipv4Addr, u8); 14] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // CGNAT, where Tailscale addresses live
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation, TEST-NET-1
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation, TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation, TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

/// IPv6 ranges inside 2000::/3 that are not global unicast.
const NOT_GLOBAL_V6: [(Ipv6Addr, u8); 3] = [
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments, Teredo
    (Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation (RFC 9637)
];

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let inside = |(net, len): &(Ipv4Addr, u8)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(*net) & mask
    };
    !NOT_GLOBAL_V4.iter().any(inside)
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let inside = |(net, len): &(Ipv6Addr, u8)| {
        let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
        u128::from(ip) & mask == u128::from(*net) & mask
    };
    // 2000::/3 is the IANA global unicast space; everything outside it (loopback,
    // link-local, ULA, multicast, IPv4-mapped, NAT64...) is not global.
    inside(&(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3)) && !NOT_GLOBAL_V6.iter().any(inside)
}

// === HTTP ===

/// Whether `url` is something a service can be asked at: an http or https URL with a
/// host.
fn usable(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(())
}

/// One `GET`, the body read as an IP address. Errors are sentences for
/// [`Detection::errors`].
async fn fetch_ip(prober: &Prober, url: &str, timeout: Duration) -> Result<IpAddr, String> {
    let req = ProbeRequest { max_body: MAX_RESPONSE, ..ProbeRequest::get(url.trim(), timeout) };
    let response = prober.send(&req).await.map_err(|e| match e {
        ProbeError::Timeout(t) => format!("no answer within {t:?}"),
        ProbeError::Connect(why) => format!("cannot connect: {why}"),
        ProbeError::TooLarge(n) => format!("answer is larger than {n} bytes; not a what-is-my-IP service?"),
        other => other.to_string(),
    })?;
    match response.status {
        200 => {}
        300..=399 => {
            let to = response.location.as_deref().unwrap_or("(no Location)");
            return Err(format!("HTTP {}, redirect to {to} not followed; configure the final URL", response.status));
        }
        s => return Err(format!("HTTP {s}")),
    }
    let text = String::from_utf8_lossy(&response.body);
    let text = text.trim();
    text.parse::<IpAddr>().map_err(|_| {
        let shown: String = text.chars().take(60).collect();
        let more = if text.chars().count() > 60 { "..." } else { "" };
        format!("answer {shown:?}{more} is not an IP address")
    })
}

// === interfaces ===

/// The first global unicast interface address, IPv4 before IPv6, with the interface's
/// name. Uses `ip -j addr` when available, else the UDP route lookup for IPv4 and
/// `/proc/net/if_inet6` for IPv6. The second value lists problems met.
async fn interface_address(timeout: Duration) -> (Option<(IpAddr, String)>, Vec<String>) {
    let mut errors = Vec::new();
    match ip_addr_json(timeout).await {
        Ok(text) => match parse_ip_addr_json(&text) {
            Ok(addrs) => return (first_global(&addrs), errors),
            Err(e) => errors.push(format!("`ip -j addr` output not understood: {e}")),
        },
        // `ip` missing is normal on minimal systems; the fallback below covers it.
        Err(e) => tracing::debug!(error = %e, "`ip -j addr` unavailable; using the route lookup"),
    }

    let mut addrs = Vec::new();
    let default_if = tokio::fs::read_to_string("/proc/net/route")
        .await
        .ok()
        .and_then(|t| default_route_interface(&t))
        .unwrap_or_else(|| "default route".to_string());
    for probe in [ROUTE_PROBE_V4, ROUTE_PROBE_V6] {
        if let Some(ip) = route_source_address(probe).await {
            addrs.push((default_if.clone(), ip));
        }
    }
    if let Ok(text) = tokio::fs::read_to_string("/proc/net/if_inet6").await {
        addrs.extend(parse_if_inet6(&text));
    }
    (first_global(&addrs), errors)
}

/// Runs `ip -j addr show`.
async fn ip_addr_json(timeout: Duration) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["-j", "addr", "show"]).stdin(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(output.status.to_string());
    }
    String::from_utf8(output.stdout).map_err(|e| e.to_string())
}

/// The source address the kernel would use towards `probe`. Connecting a UDP socket
/// only selects a route; no packet is sent.
async fn route_source_address(probe: &str) -> Option<IpAddr> {
    let bind = if probe.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    socket.connect(probe).await.ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// First global unicast IPv4 address, else first global unicast IPv6 address.
fn first_global(addrs: &[(String, IpAddr)]) -> Option<(IpAddr, String)> {
    let pick = |want_v4: bool| {
        addrs.iter().find(|(_, ip)| ip.is_ipv4() == want_v4 && is_global_unicast(*ip)).map(|(n, ip)| (*ip, n.clone()))
    };
    pick(true).or_else(|| pick(false))
}

#[derive(Debug, Deserialize)]
struct IpLink {
    #[serde(default)]
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Debug, Deserialize)]
struct IpAddrInfo {
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    temporary: bool,
    #[serde(default)]
    deprecated: bool,
    #[serde(default)]
    tentative: bool,
    #[serde(default)]
    dadfailed: bool,
}

/// Addresses from `ip -j addr` on interfaces that are up and not loopback, leaving out
/// IPv6 privacy (temporary), deprecated, tentative and failed addresses, which change
/// or do not work.
fn parse_ip_addr_json(text: &str) -> Result<Vec<(String, IpAddr)>, String> {
    let links: Vec<IpLink> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for link in links {
        let flag = |f: &str| link.flags.iter().any(|x| x == f);
        if !flag("UP") || flag("LOOPBACK") {
            continue;
        }
        for info in &link.addr_info {
            if info.temporary || info.deprecated || info.tentative || info.dadfailed {
                continue;
            }
            if let Some(ip) = info.local.as_deref().and_then(|l| l.parse::<IpAddr>().ok()) {
                out.push((link.ifname.clone(), ip));
            }
        }
    }
    Ok(out)
}

/// Addresses from `/proc/net/if_inet6` (`addr ifindex prefixlen scope flags name`),
/// leaving out temporary, DAD-failed, deprecated and tentative ones.
fn parse_if_inet6(text: &str) -> Vec<(String, IpAddr)> {
    const SKIP: u32 = 0x01 /* temporary */ | 0x08 /* dadfailed */ | 0x20 /* deprecated */ | 0x40 /* tentative */;
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [hex, _index, _prefix, _scope, flags, name] = fields[..] else { continue };
        let (Ok(bits), Ok(flags)) = (u128::from_str_radix(hex, 16), u32::from_str_radix(flags, 16)) else {
            continue;
        };
        if hex.len() != 32 || flags & SKIP != 0 {
            continue;
        }
        out.push((name.to_string(), IpAddr::V6(Ipv6Addr::from(bits))));
    }
    out
}

/// The interface of the IPv4 default route in `/proc/net/route`.
fn default_route_interface(text: &str) -> Option<String> {
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [iface, "00000000", _gateway, _flags, _refcnt, _use, _metric, "00000000", ..] => Some(iface.to_string()),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A local "what is my IP" service answering `body` with a Content-Length and then
    /// keeping the connection open, so the client must not wait for the close.
    async fn service(body: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 512];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        format!("http://{addr}/ip")
    }

    /// A service that accepts and never answers.
    async fn silent_service() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        format!("http://{addr}/")
    }

    fn cfg(services: Vec<String>) -> PublicIpConfig {
        PublicIpConfig { services, timeout: Duration::from_millis(500), env_override: None }
    }

    /// Interface lookup stand-in that finds nothing.
    async fn no_interface() -> (Option<(IpAddr, String)>, Vec<String>) {
        (None, Vec::new())
    }

    /// Interface lookup stand-in that finds 9.9.9.9 on `test0`.
    async fn test_interface() -> (Option<(IpAddr, String)>, Vec<String>) {
        (Some((ip("9.9.9.9"), "test0".into())), Vec::new())
    }

    #[test]
    fn global_unicast_classification() {
        for g in ["1.1.1.1", "8.8.8.8", "100.63.255.255", "100.128.0.1", "172.32.0.1", "192.0.1.1", "223.255.255.254"] {
            assert!(is_global_unicast(ip(g)), "{g} should be global");
        }
        for n in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "100.64.0.1",
            "100.101.7.12",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "192.0.2.2",
            "198.18.0.1",
            "198.19.255.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_global_unicast(ip(n)), "{n} should not be global");
        }
        for g in ["2606:4700:4700::1111", "2a01:4f8::1", "2001:4860:4860::8888", "2002:c000:0201::1"] {
            assert!(is_global_unicast(ip(g)), "{g} should be global");
        }
        for n in [
            "::",
            "::1",
            "fe80::1",
            "fd00::2",
            "fd7a:115c:a1e0::1",
            "fc00::1",
            "ff02::1",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2001:db8::1",
            "2001::1",
            "2001:2::1",
            "3fff::1",
        ] {
            assert!(!is_global_unicast(ip(n)), "{n} should not be global");
        }
    }

    #[test]
    fn agree_needs_two_distinct_services() {
        let a = |n: &str, r: Result<&str, &str>| (n.to_string(), r.map(ip).map_err(str::to_string));
        assert_eq!(agree(&[]), None);
        assert_eq!(agree(&[a("x", Ok("1.1.1.1"))]), None);
        assert_eq!(agree(&[a("x", Ok("1.1.1.1")), a("x", Ok("1.1.1.1"))]), None, "one service twice is one vote");
        assert_eq!(agree(&[a("x", Ok("1.1.1.1")), a("y", Ok("8.8.8.8"))]), None);
        assert_eq!(
            agree(&[a("x", Ok("1.1.1.1")), a("y", Err("timeout")), a("z", Ok("1.1.1.1"))]),
            Some((ip("1.1.1.1"), vec!["x".into(), "z".into()]))
        );
        // Most votes win; on a tie the address answered first.
        let answers = [
            a("a", Ok("2606:4700::1")),
            a("b", Ok("1.1.1.1")),
            a("c", Ok("2606:4700::1")),
            a("d", Ok("1.1.1.1")),
            a("e", Ok("1.1.1.1")),
        ];
        assert_eq!(agree(&answers).unwrap().0, ip("1.1.1.1"));
        assert_eq!(agree(&answers[..4]).unwrap().0, ip("2606:4700::1"));
    }

    #[test]
    fn url_checks() {
        for good in ["http://ifconfig.me/ip", "HTTPS://icanhazip.com", "http://[::1]:8080?format=text"] {
            assert_eq!(usable(good), Ok(()), "{good}");
        }
        for bad in ["ifconfig.me", "ftp://x/", "http://", "http://h:99999/"] {
            assert!(usable(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn two_agreeing_services_win() {
        let services = vec![
            service("garbage <html>").await,
            service("1.1.1.1\n").await,
            silent_service().await,
            service("  1.1.1.1  ").await,
        ];
        let started = Instant::now();
        let c = PublicIpConfig { timeout: Duration::from_secs(5), ..cfg(services.clone()) };
        let d = detect_with(&c, test_interface).await;
        assert_eq!(d.ip, Some(ip("1.1.1.1")));
        let Source::Services { mut agreeing } = d.source else { panic!("source {:?}", d.source) };
        agreeing.sort();
        let mut expected = vec![services[1].clone(), services[3].clone()];
        expected.sort();
        assert_eq!(agreeing, expected);
        // Returned on agreement, without waiting for the silent service's timeout.
        assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_single_answer_is_not_trusted() {
        let services = vec![service("1.1.1.1").await, service("not an ip").await, silent_service().await];
        let d = detect_with(&cfg(services.clone()), test_interface).await;
        assert_eq!((d.ip, &d.source), (Some(ip("9.9.9.9")), &Source::Interface("test0".into())));
        let all = d.errors.join("\n");
        assert!(all.contains(&format!("{}: answer \"not an ip\" is not an IP address", services[1])), "{all}");
        assert!(all.contains(&format!("{}: no answer within", services[2])), "{all}");
        assert!(all.contains("no two services agreed"), "{all}");
    }

    #[tokio::test]
    async fn disagreeing_services_fall_through() {
        let services = vec![service("1.1.1.1").await, service("8.8.8.8").await];
        let d = detect_with(&cfg(services), no_interface).await;
        assert_eq!((d.ip, &d.source), (None, &Source::None));
        assert!(d.errors.iter().any(|e| e.contains("no two services agreed")), "{:?}", d.errors);
    }

    #[tokio::test]
    async fn private_answers_do_not_count() {
        let services = vec![service("10.0.0.1").await, service("10.0.0.1").await];
        let d = detect_with(&cfg(services), no_interface).await;
        assert_eq!(d.ip, None);
        assert!(d.errors.iter().any(|e| e.contains("not a public address")), "{:?}", d.errors);
    }

    #[tokio::test]
    async fn env_override_wins() {
        let mut c = cfg(vec![service("1.1.1.1").await, service("1.1.1.1").await]);
        c.env_override = Some(" 2606:4700:4700::1111 ".into());
        let d = detect_with(&c, test_interface).await;
        assert_eq!((d.ip, &d.source, d.errors.len()), (Some(ip("2606:4700:4700::1111")), &Source::Env, 0));
        // Empty counts as unset.
        c.env_override = Some(String::new());
        let d = detect_with(&c, test_interface).await;
        assert_eq!((d.ip, d.errors.len()), (Some(ip("1.1.1.1")), 0), "{:?}", d.errors);
    }

    #[tokio::test]
    async fn invalid_env_override_is_reported_then_detection_continues() {
        let mut c = cfg(vec![service("1.1.1.1").await, service("1.1.1.1").await]);
        c.env_override = Some("1.2.3".into());
        let d = detect_with(&c, test_interface).await;
        assert_eq!(d.ip, Some(ip("1.1.1.1")));
        assert!(matches!(d.source, Source::Services { .. }));
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        assert!(d.errors[0].starts_with("CONSTELLATION_PUBLIC_IP=\"1.2.3\" is not an IP address"), "{}", d.errors[0]);
    }

    #[tokio::test]
    async fn timeouts_run_concurrently() {
        let mut services = Vec::new();
        for _ in 0..8 {
            services.push(silent_service().await);
        }
        let c = PublicIpConfig { services, timeout: Duration::from_millis(500), env_override: None };
        let started = Instant::now();
        let d = detect_with(&c, no_interface).await;
        let took = started.elapsed();
        assert_eq!(d.ip, None);
        assert_eq!(d.errors.iter().filter(|e| e.contains("no answer within 500ms")).count(), 8, "{:?}", d.errors);
        // Eight services at 500 ms each: concurrent means about 0.5 s, not 4 s. The upper
        // bound leaves room for a loaded machine.
        assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(2500), "took {took:?}");
    }

    #[tokio::test]
    async fn unusable_and_too_few_services_are_reported() {
        let c = cfg(vec!["ftp://api.ipify.org".into(), service("1.1.1.1").await]);
        let d = detect_with(&c, no_interface).await;
        assert_eq!(d.ip, None);
        let all = d.errors.join("\n");
        assert!(all.contains("ftp://api.ipify.org: skipped: not a usable URL"), "{all}");
        assert!(all.contains("1 usable service URL(s) configured; 2 must agree"), "{all}");
    }

    #[tokio::test]
    async fn refused_connection_is_an_error_not_a_hang() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let d = detect_with(&cfg(vec![closed.clone(), service("1.1.1.1").await]), no_interface).await;
        assert!(d.errors.iter().any(|e| e.starts_with(&format!("{closed}: cannot connect"))), "{:?}", d.errors);
    }

    #[tokio::test]
    async fn real_detect_is_bounded_and_only_returns_public_addresses() {
        // Services on closed local ports and the real interface lookup of this host.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let c = PublicIpConfig { services: vec![closed.clone(), closed + "x"], ..PublicIpConfig::default() };
        let started = Instant::now();
        let d = detect(&c).await;
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        match (&d.ip, &d.source) {
            (Some(found), Source::Interface(_)) => assert!(is_global_unicast(*found)),
            (None, Source::None) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ip_json_parsing_skips_down_loopback_and_unstable_addresses() {
        let text = r#"[
          {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"127.0.0.1"}]},
          {"ifindex":2,"ifname":"eth1","flags":["BROADCAST","MULTICAST"],"addr_info":[{"family":"inet","local":"1.2.3.4"}]},
          {"ifindex":3,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[
            {"family":"inet","local":"10.0.0.5","prefixlen":24,"scope":"global"},
            {"family":"inet6","local":"2a01:4f8:1:2::99","prefixlen":64,"scope":"global","temporary":true,"dynamic":true},
            {"family":"inet6","local":"2a01:4f8:1:2::1","prefixlen":64,"scope":"global","dynamic":true,"mngtmpaddr":true},
            {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},
            {}]},
          {"ifindex":4,"ifname":"ens5","flags":["UP"],"addr_info":[{"family":"inet","local":"95.217.1.2","deprecated":true}]}
        ]"#;
        let addrs = parse_ip_addr_json(text).unwrap();
        assert_eq!(
            addrs,
            [
                ("eth0".to_string(), ip("10.0.0.5")),
                ("eth0".to_string(), ip("2a01:4f8:1:2::1")),
                ("eth0".into(), ip("fe80::1"))
            ]
        );
        assert_eq!(first_global(&addrs), Some((ip("2a01:4f8:1:2::1"), "eth0".into())));
        let with_v4 = [addrs.clone(), vec![("ens6".to_string(), ip("95.217.1.3"))]].concat();
        assert_eq!(first_global(&with_v4), Some((ip("95.217.1.3"), "ens6".into())), "IPv4 first");
        assert!(parse_ip_addr_json("not json").is_err());
    }

    #[test]
    fn proc_parsing() {
        let inet6 = "00000000000000000000000000000001 01 80 10 80       lo\n\
                     fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                     2a0104f8000100020000000000000063 04 40 00 01     eth0\n\
                     2a0104f8000100020000000000000001 04 40 00 00     eth0\n\
                     garbage line\n";
        let addrs = parse_if_inet6(inet6);
        assert_eq!(addrs.len(), 3, "temporary address skipped: {addrs:?}");
        assert_eq!(first_global(&addrs), Some((ip("2a01:4f8:1:2::1"), "eth0".into())));

        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(route).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }
}

//! Forwarded headers per entry point, as Traefik's entry point `forwardedHeaders`
//! (`trustedIPs`, `insecure`).
//!
//! A peer the entry point does not trust cannot tell the upstream anything about the
//! client: every forwarding header it sent (`X-Forwarded-*`, `X-Real-Ip`, `Forwarded`,
//! also spelt with underscores) is removed before routing, and the proxy then sets
//! `X-Forwarded-For` and `X-Real-Ip` to the peer address and `X-Forwarded-Proto`,
//! `-Port` and `-Host` to what the entry point and the request really are. A trusted
//! peer (another proxy in front of this one) keeps what it sent: its `X-Forwarded-For`
//! is extended with its own address, and the others are set only where it left them
//! out. Nothing here reads a file: the control plane hands the entry points in as data.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::header::HeaderName;
use pingora_error::Result;
use pingora_http::RequestHeader;

/// Headers only a trusted peer may set, lower case, `-` separated. Traefik's managed
/// set plus RFC 7239 `Forwarded`, which the proxy does not write and so must not pass
/// on from an untrusted client either.
const MANAGED: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-tls-client-cert",
    "x-forwarded-tls-client-cert-info",
    "x-scheme",
    "x-real-ip",
    "forwarded",
];

/// An IP network (`10.0.0.0/8`, `fd00::/8`) or a single address (`192.168.1.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    network: IpAddr,
    prefix: u8,
}

/// Why a trusted-IP entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not an IP address or CIDR network ({reason}); write e.g. \"10.0.0.0/8\" or \"192.168.1.7\"")]
pub struct IpNetError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The transport scheme an entry point speaks, for `X-Forwarded-Proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTP over TLS.
    Https,
}

/// Who an entry point believes about forwarding headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedPolicy {
    /// Peers whose forwarding headers are kept (Traefik's `trustedIPs`). Empty: none,
    /// loopback included.
    pub trusted: Vec<IpNet>,
    /// Keep forwarding headers from every peer (Traefik's `insecure`).
    pub insecure: bool,
}

/// One entry point as the proxy needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPoint {
    /// Name from the agent config (`web`).
    pub name: String,
    /// Listen address.
    pub address: SocketAddr,
    /// What it speaks.
    pub scheme: Scheme,
    /// Whom it believes.
    pub forwarded: ForwardedPolicy,
    /// Every request is redirected to another (HTTPS) entry point (Traefik's
    /// `http.redirections.entryPoint`); `None` routes normally.
    pub redirect: Option<EntryRedirect>,
}

/// Where an entry point redirects every request: `https://<host>:<port><path>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRedirect {
    /// The target entry point's port (left out of the URL when 443).
    pub port: u16,
    /// 301/308 when true, 302/307 when false (the safe-method code first).
    pub permanent: bool,
}

/// What the proxy writes into the forwarding headers of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// The entry point's scheme.
    pub scheme: Scheme,
    /// The port the client connected to.
    pub port: Option<u16>,
    /// Whether the request is a WebSocket handshake (`ws`/`wss`, as Traefik).
    pub websocket: bool,
}

// === impl IpNet ===

impl IpNet {
    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.1.2.3`) count as the IPv4 address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask32(self.prefix);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> std::result::Result<Self, IpNetError> {
        let bad = |reason| IpNetError { entry: s.to_string(), reason };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| bad("prefix length out of range"))?
            }
            Some(_) => return Err(bad("prefix length is not a number")),
        };
        // An IPv4-mapped IPv6 network is the IPv4 network it carries, as peers are.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        // Host bits are cleared, as Traefik does (`10.1.2.3/8` is `10.0.0.0/8`).
        let network = match addr {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask32(prefix)).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask128(prefix)).into()),
        };
        Ok(IpNet { network, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

// === impl Scheme ===

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn websocket(self) -> &'static str {
        match self {
            Scheme::Http => "ws",
            Scheme::Https => "wss",
        }
    }
}

// === impl ForwardedPolicy ===

impl ForwardedPolicy {
    /// A policy trusting the networks listed in `entries` (Traefik's `trustedIPs`
    /// syntax: CIDR networks or single addresses, IPv4 or IPv6).
    pub fn parse(entries: &[String], insecure: bool) -> std::result::Result<Self, IpNetError> {
        let trusted = entries.iter().map(|e| e.parse()).collect::<std::result::Result<Vec<IpNet>, _>>()?;
        Ok(ForwardedPolicy { trusted, insecure })
    }

    /// Whether forwarding headers from `peer` are believed.
    pub fn trusts(&self, peer: Option<IpAddr>) -> bool {
        self.insecure || peer.is_some_and(|ip| self.trusted.iter().any(|n| n.contains(ip)))
    }
}

// === impl EntryPoint ===

impl EntryPoint {
    /// The entry point among `all` a connection to local address `local` came in on:
    /// the same port, and the same IP unless the entry point listens on a wildcard.
    pub fn find(all: &[EntryPoint], local: Option<SocketAddr>) -> Option<&EntryPoint> {
        let l = local?;
        all.iter().find(|e| {
            e.address.port() == l.port()
                && (e.address.ip().is_unspecified() || e.address.ip().to_canonical() == l.ip().to_canonical())
        })
    }
}

/// Whether `name` is a forwarding header only a trusted peer may send. Underscores
/// count as dashes: CGI-style backends map `X_Forwarded_For` and `X-Forwarded-For` to
/// the same variable, so either spelling could smuggle a value past us.
pub fn is_managed(name: &str) -> bool {
    let b = name.as_bytes();
    if !matches!(b.first(), Some(b'x' | b'X' | b'f' | b'F')) {
        return false;
    }
    MANAGED.iter().any(|m| {
        m.len() == b.len() && m.bytes().zip(b).all(|(m, c)| m == c.to_ascii_lowercase() || (m == b'-' && *c == b'_'))
    })
}

/// Remove every forwarding header from `req` (the request of an untrusted peer).
/// Returns how many header names were removed.
pub fn strip(req: &mut RequestHeader) -> usize {
    let names: Vec<HeaderName> = req.headers.keys().filter(|k| is_managed(k.as_str())).cloned().collect();
    for name in &names {
        req.remove_header(name);
    }
    names.len()
}

fn present(req: &RequestHeader, name: &str) -> bool {
    req.headers.get(name).is_some_and(|v| !v.as_bytes().is_empty())
}

/// Set the forwarding headers of the request going upstream. What is already there
/// came from a trusted peer (everything else was stripped) and is kept; the peer is
/// appended to `X-Forwarded-For`, whose several lines are joined into one.
pub fn apply(req: &mut RequestHeader, origin: &Origin, host: &str) -> Result<()> {
    let peer = origin.peer.map(|ip| ip.to_canonical().to_string());
    let mut xff = String::new();
    for v in req.headers.get_all("x-forwarded-for") {
        let v = String::from_utf8_lossy(v.as_bytes());
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        if !xff.is_empty() {
            xff.push_str(", ");
        }
        xff.push_str(v);
    }
    if let Some(p) = &peer {
        if !xff.is_empty() {
            xff.push_str(", ");
        }
        xff.push_str(p);
    }
    if xff.is_empty() {
        req.remove_header("x-forwarded-for");
    } else {
        req.insert_header("x-forwarded-for", xff)?;
    }
    if let Some(p) = peer {
        if !present(req, "x-real-ip") {
            req.insert_header("x-real-ip", p)?;
        }
    }
    if !present(req, "x-forwarded-proto") {
        let proto = if origin.websocket { origin.scheme.websocket() } else { origin.scheme.as_str() };
        req.insert_header("x-forwarded-proto", proto)?;
    }
    if let Some(port) = origin.port {
        if !present(req, "x-forwarded-port") {
            req.insert_header("x-forwarded-port", port.to_string())?;
        }
    }
    if !host.is_empty() && !present(req, "x-forwarded-host") {
        req.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

/// Whether `req` is a WebSocket handshake (`Connection: upgrade` and
/// `Upgrade: websocket`, tokens compared without case).
pub fn is_websocket(req: &RequestHeader) -> bool {
    let has = |name: &str, token: &str| {
        req.headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    has("connection", "upgrade") && has("upgrade", "websocket")
}

#[cfg(test)]
mod tests;

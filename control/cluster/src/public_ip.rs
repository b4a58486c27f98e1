//! Public IP detection for this node's state: an operator override, else two "what is
//! my IP" services that agree, else the first global unicast interface address.
//!
//! This build has no TLS client: services are asked with a minimal HTTP/1.1 GET over a
//! plain TCP connection, and `https://` service URLs are skipped with a warning.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Environment variable the caller reads and passes as [`PublicIpConfig::env_override`].
pub const ENV_VAR: &str = "CONSTELLATION_PUBLIC_IP";

/// Default services, all answering a plain-text IP over plain HTTP. They are run by
/// different operators, so two of them agreeing is meaningful.
pub const DEFAULT_SERVICES: [&str; 5] = [
    "http://ifconfig.me/ip",
    "http://icanhazip.com",
    "http://api.ipify.org",
    "http://ipinfo.io/ip",
    "http://checkip.amazonaws.com",
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
    /// "What is my IP" URLs, `http://host[:port]/path`, each answering the caller's
    /// address as the whole body. `https://` URLs are skipped (no TLS client in this
    /// build). At least two distinct usable URLs are needed. Default
    /// [`DEFAULT_SERVICES`].
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
        if targets.iter().any(|(u, _)| u == url) {
            // The same service twice would agree with itself.
            continue;
        }
        match HttpUrl::parse(url) {
            Ok(target) => targets.push((url.clone(), target)),
            Err(UrlError::Https) => {
                tracing::warn!(service = %url, "https is not supported in this build (no TLS client); service skipped");
                errors.push(format!(
                    "{url}: skipped: https is not supported in this build (no TLS client); use an http:// URL"
                ));
            }
            Err(UrlError::Invalid(why)) => errors.push(format!("{url}: skipped: not a usable URL: {why}")),
        }
    }
    if targets.len() < QUORUM {
        errors.push(format!(
            "{} usable service URL(s) configured; {QUORUM} must agree, so services were not asked",
            targets.len()
        ));
        return None;
    }

    let timeout = cfg.timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for (url, target) in targets {
        tasks.spawn(async move {
            let answer = match tokio::time::timeout(timeout, fetch_ip(&target)).await {
                Err(_) => Err(format!("no answer within {timeout:?}")),
                Ok(Err(e)) => Err(e),
                Ok(Ok(ip)) if !is_global_unicast(ip) => Err(format!("answered {ip}, which is not a public address")),
                Ok(Ok(ip)) => Ok(ip),
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

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpUrl {
    /// Host to connect to (IPv6 without brackets).
    host: String,
    port: u16,
    /// Request target: path and query, starting with `/`.
    path: String,
    /// `Host` header value, as written in the URL.
    host_header: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlError {
    /// An `https://` URL, which this build cannot fetch.
    Https,
    Invalid(String),
}

impl HttpUrl {
    fn parse(url: &str) -> Result<Self, UrlError> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(UrlError::Invalid("expected http://host/path".into()));
        };
        if scheme.eq_ignore_ascii_case("https") {
            return Err(UrlError::Https);
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(UrlError::Invalid(format!("scheme {scheme:?} is not http")));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        let path = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::Invalid("path contains spaces or control characters".into()));
        }
        if authority.contains('@') {
            return Err(UrlError::Invalid("user information in URLs is not supported".into()));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((v6, after)) = bracketed.split_once(']') else {
                return Err(UrlError::Invalid("unclosed [ in host".into()));
            };
            if v6.parse::<Ipv6Addr>().is_err() {
                return Err(UrlError::Invalid(format!("[{v6}] is not an IPv6 address")));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| UrlError::Invalid("junk after ]".into()))?),
            };
            (v6, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::Invalid("no host".into()));
        }
        if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')) {
            return Err(UrlError::Invalid(format!("host {host:?} has characters a host name cannot have")));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => {
                p.parse::<u16>().map_err(|_| UrlError::Invalid(format!("port {p:?} is not a number 0-65535")))?
            }
        };
        Ok(Self { host: host.to_string(), port, path, host_header: authority.to_string() })
    }
}

/// One `GET`, the body read as an IP address. Errors are sentences for
/// [`Detection::errors`].
async fn fetch_ip(url: &HttpUrl) -> Result<IpAddr, String> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", url.host, url.port))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: constellation/{}\r\nAccept: text/plain, */*\r\n\
         Connection: close\r\n\r\n",
        url.path,
        url.host_header,
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending the request failed: {e}"))?;

    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let response = loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("reading the answer failed: {e}"))?;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(format!("answer is larger than {MAX_RESPONSE} bytes; not a what-is-my-IP service?"));
        }
        // Stop as soon as the response is complete: a server may ignore `Connection: close`.
        if let Some(response) = parse_response(&buf, n == 0)? {
            break response;
        }
    };
    match response.status {
        200 => {}
        300..=399 => {
            let to = response.location.as_deref().unwrap_or("(no Location)");
            return Err(format!(
                "HTTP {}, redirect to {to} not followed; configure the final http:// URL",
                response.status
            ));
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

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

/// Parses what has been read so far: `Ok(None)` means "read more", which is an error
/// once `eof` is set and the response is not complete.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof { Err("connection closed before the HTTP headers ended".into()) } else { Ok(None) };
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response (status line {status_line:?})"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad HTTP status line {status_line:?}"))?;

    let mut content_length = None;
    let mut chunked = false;
    let mut location = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_string());
        }
    }

    let body = &buf[head_end + 4..];
    let body = if chunked {
        match decode_chunked(body)? {
            Some(body) => body,
            None if eof => return Err("connection closed in the middle of a chunked answer".into()),
            None => return Ok(None),
        }
    } else if let Some(len) = content_length {
        if body.len() >= len {
            body[..len].to_vec()
        } else if eof {
            return Err(format!("connection closed after {} of {len} body bytes", body.len()));
        } else {
            return Ok(None);
        }
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response { status, location, body }))
}

/// Decodes a chunked body: `Ok(None)` when incomplete. Trailers are ignored.
fn decode_chunked(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let line = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        if size == 0 {
            return Ok(Some(out));
        }
        let data_start = line_end + 2;
        let Some(data_end) = data_start.checked_add(size) else { return Err("chunk size overflows".into()) };
        if rest.len() < data_end + 2 {
            return Ok(None);
        }
        if &rest[data_end..data_end + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        out.extend_from_slice(&rest[data_start..data_end]);
        rest = &rest[data_end + 2..];
    }
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
    fn url_parsing() {
        let u = HttpUrl::parse("http://ifconfig.me/ip").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str(), u.host_header.as_str()),
            ("ifconfig.me", 80, "/ip", "ifconfig.me")
        );
        let u = HttpUrl::parse("HTTP://icanhazip.com").unwrap();
        assert_eq!(u.path, "/");
        let u = HttpUrl::parse("http://[::1]:8080?format=text#x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str(), u.host_header.as_str()),
            ("::1", 8080, "/?format=text", "[::1]:8080")
        );
        assert_eq!(HttpUrl::parse("https://api.ipify.org"), Err(UrlError::Https));
        for bad in
            ["ifconfig.me", "ftp://x/", "http://", "http://u@h/", "http://h:99999/", "http://h/a b", "http://[zz]/"]
        {
            assert!(matches!(HttpUrl::parse(bad), Err(UrlError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn response_parsing() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n1.1.1.1\nEXTRA", false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"1.1.1.1\n"[..]));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n1.1", false), Ok(None));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n1.1", true).is_err());
        assert_eq!(parse_response(b"HTTP/1.0 200 OK\r\n\r\n8.8.8.8", false), Ok(None));
        assert_eq!(parse_response(b"HTTP/1.0 200 OK\r\n\r\n8.8.8.8", true).unwrap().unwrap().body, b"8.8.8.8");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n1.1.\r\n3;x=y\r\n1.1\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, false).unwrap().unwrap().body, b"1.1.1.1");
        assert_eq!(parse_response(&chunked[..chunked.len() - 8], false), Ok(None));
        let moved = parse_response(b"HTTP/1.1 301 Moved\r\nLocation: https://x/\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!(moved.unwrap().unwrap().location.as_deref(), Some("https://x/"));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200", true).is_err());
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
    async fn https_and_too_few_services_are_reported() {
        let c = cfg(vec!["https://api.ipify.org".into(), service("1.1.1.1").await]);
        let d = detect_with(&c, no_interface).await;
        assert_eq!(d.ip, None);
        let all = d.errors.join("\n");
        assert!(all.contains("https://api.ipify.org: skipped: https is not supported"), "{all}");
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

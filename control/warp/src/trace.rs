//! Cloudflare's `/cdn-cgi/trace` answer: `key=value` lines, of which the monitor reads
//! `ip` (the egress address the site saw), `colo` (the Cloudflare data centre) and `warp`
//! (`off`, `on`, `plus`: whether the request arrived through WARP).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The `warp=` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarpState {
    /// Not through WARP: the client is connected some other way (counts as down).
    Off,
    /// Through WARP.
    On,
    /// Through WARP+ (a paid licence).
    Plus,
}

impl WarpState {
    /// `off`, `on` or `plus`.
    pub fn as_str(self) -> &'static str {
        match self {
            WarpState::Off => "off",
            WarpState::On => "on",
            WarpState::Plus => "plus",
        }
    }

    /// `on` or `plus`.
    pub fn through_warp(self) -> bool {
        !matches!(self, WarpState::Off)
    }
}

/// What one trace answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The egress address.
    pub ip: IpAddr,
    /// The data centre, when given.
    pub colo: Option<String>,
    /// Whether the request came through WARP.
    pub warp: WarpState,
}

/// Why a trace body was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// A field the monitor needs is not there.
    #[error("trace answer has no {0}= line (is trace_url a /cdn-cgi/trace page?)")]
    Missing(&'static str),
    /// A field has a value the monitor does not know.
    #[error("trace answer has {field}={value:?}, expected {expected}")]
    Bad {
        /// The field.
        field: &'static str,
        /// Its value (at most 40 characters).
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// Longest body the monitor reads (a real answer is about 250 bytes).
pub const MAX_TRACE_BYTES: usize = 4096;

fn shorten(v: &str) -> String {
    v.chars().take(40).collect()
}

/// Parse a trace body. Unknown keys and lines without `=` are ignored; the first
/// occurrence of a key wins.
pub fn parse(body: &str) -> Result<Trace, TraceError> {
    let (mut ip, mut colo, mut warp) = (None, None, None);
    for line in body.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = v.trim();
        match k.trim() {
            "ip" if ip.is_none() => ip = Some(v),
            "colo" if colo.is_none() => colo = Some(v),
            "warp" if warp.is_none() => warp = Some(v),
            _ => {}
        }
    }
    let ip = ip.ok_or(TraceError::Missing("ip"))?;
    let ip: IpAddr =
        ip.parse().map_err(|_| TraceError::Bad { field: "ip", value: shorten(ip), expected: "an IP address" })?;
    let warp = match warp.ok_or(TraceError::Missing("warp"))? {
        "off" => WarpState::Off,
        "on" => WarpState::On,
        "plus" => WarpState::Plus,
        other => return Err(TraceError::Bad { field: "warp", value: shorten(other), expected: "off, on or plus" }),
    };
    Ok(Trace { ip, colo: colo.filter(|c| !c.is_empty()).map(str::to_string), warp })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_real_answer() {
        let body = "fl=29f123\nh=www.cloudflare.com\nip=104.28.210.7\nts=1733300000.123\nvisit_scheme=https\nuag=curl/8.5.0\ncolo=FRA\nsliver=none\nhttp=http/2\nloc=DE\ntls=TLSv1.3\nsni=plaintext\nwarp=on\ngateway=off\nrbi=off\nkex=X25519\n";
        let t = parse(body).unwrap();
        assert_eq!(t.ip, "104.28.210.7".parse::<IpAddr>().unwrap());
        assert_eq!(t.colo.as_deref(), Some("FRA"));
        assert_eq!(t.warp, WarpState::On);
        assert!(parse(&body.replace("warp=on", "warp=plus")).unwrap().warp.through_warp());
        assert!(!parse(&body.replace("warp=on", "warp=off")).unwrap().warp.through_warp());
        assert!(parse("ip=2606:4700::1\r\nwarp=off\r\n").is_ok(), "IPv6 and CRLF");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert_eq!(parse("<html>blocked</html>"), Err(TraceError::Missing("ip")));
        assert_eq!(parse("ip=1.2.3.4\n"), Err(TraceError::Missing("warp")));
        let e = parse("ip=not-an-ip\nwarp=on").unwrap_err().to_string();
        assert!(e.contains("ip=\"not-an-ip\""), "{e}");
        let e = parse("ip=1.2.3.4\nwarp=maybe").unwrap_err().to_string();
        assert!(e.contains("off, on or plus"), "{e}");
        assert!(parse(&"x".repeat(10_000)).is_err());
    }
}

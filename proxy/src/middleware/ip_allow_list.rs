//! `ipAllowList` (and its deprecated name `ipWhiteList`): only clients whose address
//! (picked by `ipStrategy`, the peer by default) lies in `sourceRange` pass; the others
//! get `rejectStatusCode` (403 by default) with the status text as body, as in Traefik.

use std::net::IpAddr;

use pingora_proxy::Session;
use serde::Deserialize;
use serde_json::Value;

use super::ip_strategy::{parse_ranges, IpStrategy, IpStrategyOptions};
use super::{options, Apply, BuildCx, BuildError, MwState, Reply, Verdict};
use crate::forwarded::IpNet;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default, rename = "sourceRange")]
    source_range: Vec<String>,
    #[serde(default, rename = "ipStrategy")]
    ip_strategy: Option<IpStrategyOptions>,
    #[serde(default, rename = "rejectStatusCode")]
    reject_status_code: Option<i64>,
}

/// A compiled `ipAllowList`.
#[derive(Debug)]
pub struct IpAllowList {
    ranges: Vec<IpNet>,
    strategy: IpStrategy,
    reject: Reply,
}

/// Build `ipAllowList`.
pub fn build(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    build_kind("ipAllowList", config)
}

/// Build the deprecated `ipWhiteList` (no `rejectStatusCode` there, as in Traefik).
pub fn build_white_list(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    if config.get("rejectStatusCode").is_some() {
        return Err(BuildError::new(
            "ipWhiteList.rejectStatusCode",
            "ipWhiteList has no rejectStatusCode (Traefik's deprecated name); use ipAllowList for it",
        ));
    }
    build_kind("ipWhiteList", config)
}

fn build_kind(kind: &str, config: &Value) -> Result<Box<dyn Apply>, BuildError> {
    Ok(Box::new(IpAllowList::new(kind, config)?))
}

impl IpAllowList {
    fn new(kind: &str, config: &Value) -> Result<IpAllowList, BuildError> {
        let o: Options = options(kind, config)?;
        if o.source_range.is_empty() {
            return Err(BuildError::new(
                format!("{kind}.sourceRange"),
                "is empty: list the IPs or CIDR ranges allowed (e.g. [\"10.0.0.0/8\"])",
            ));
        }
        let ranges = parse_ranges(&o.source_range, &format!("{kind}.sourceRange"))?;
        let strategy = match &o.ip_strategy {
            Some(s) => IpStrategy::build(s, &format!("{kind}.ipStrategy"))?,
            None => IpStrategy::default(),
        };
        let status = match o.reject_status_code {
            None | Some(0) => 403,
            Some(n) => u16::try_from(n)
                .ok()
                .and_then(|n| http::StatusCode::from_u16(n).ok())
                .filter(|s| s.canonical_reason().is_some())
                .map(|s| s.as_u16())
                .ok_or_else(|| {
                    BuildError::new(
                        format!("{kind}.rejectStatusCode"),
                        format!("{n} is not a known HTTP status code (e.g. 403 or 404)"),
                    )
                })?,
        };
        let text = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        Ok(IpAllowList { ranges, strategy, reject: Reply::text(status, text) })
    }

    /// Whether `ip` may pass.
    fn allows(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.ranges.iter().any(|n| n.contains(ip)))
    }
}

#[async_trait::async_trait]
impl Apply for IpAllowList {
    async fn request(
        &self,
        session: &mut Session,
        state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        let ip = self.strategy.client_ip(session.req_header(), state);
        if self.allows(ip) {
            tracing::debug!(client = ?ip, "ipAllowList: accepting");
            return Ok(Verdict::Next);
        }
        tracing::debug!(client = ?ip, status = self.reject.status, "ipAllowList: rejecting");
        Ok(Verdict::Respond(self.reject.clone()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn list(json: &str) -> Result<IpAllowList, BuildError> {
        IpAllowList::new("ipAllowList", &serde_json::from_str(json).unwrap())
    }

    #[test]
    fn ranges_v4_v6_and_single_addresses() {
        let l = list(r#"{"sourceRange": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]}"#).unwrap();
        assert!(l.allows(Some("10.9.9.9".parse().unwrap())));
        assert!(l.allows(Some("192.0.2.7".parse().unwrap())));
        assert!(!l.allows(Some("192.0.2.8".parse().unwrap())));
        assert!(l.allows(Some("2001:db8::5".parse().unwrap())));
        assert!(!l.allows(Some("2001:db9::5".parse().unwrap())));
        assert!(!l.allows(None));
        assert_eq!(l.reject.status, 403);
        assert_eq!(&l.reject.body[..], b"Forbidden");
    }

    #[test]
    fn bad_configuration_names_the_field() {
        assert_eq!(list(r#"{"sourceRange": []}"#).unwrap_err().field, "ipAllowList.sourceRange");
        assert_eq!(
            list(r#"{"sourceRange": ["1.2.3.4", "1.2.3.4/33"]}"#).unwrap_err().field,
            "ipAllowList.sourceRange[1]"
        );
        assert_eq!(
            list(r#"{"sourceRange": ["1.2.3.4"], "rejectStatusCode": 999}"#).unwrap_err().field,
            "ipAllowList.rejectStatusCode"
        );
        assert_eq!(list(r#"{"sourceRange": ["1.2.3.4"], "typo": 1}"#).unwrap_err().field, "ipAllowList.typo");
        let l = list(r#"{"sourceRange": ["1.2.3.4"], "rejectStatusCode": 404}"#).unwrap();
        assert_eq!((l.reject.status, &l.reject.body[..]), (404, &b"Not Found"[..]));
    }
}

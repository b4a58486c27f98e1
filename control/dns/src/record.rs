//! DNS records as we want them (`Record`) and as Cloudflare has them (`RemoteRecord`).

use std::fmt;
use std::net::IpAddr;

use serde_json::Value;

use super::config::normalize_name;

/// The record types this module manages. Everything else in the zone is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    /// IPv4 address record.
    A,
    /// IPv6 address record.
    Aaaa,
}

impl RecordType {
    /// The wire name (`A`, `AAAA`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
        }
    }

    /// The type that holds `ip`.
    pub fn for_ip(ip: IpAddr) -> RecordType {
        match ip {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::Aaaa,
        }
    }

    /// Parses a wire name; `None` for every type we do not manage.
    pub fn parse(s: &str) -> Option<RecordType> {
        match s {
            "A" => Some(RecordType::A),
            "AAAA" => Some(RecordType::Aaaa),
            _ => None,
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One desired address record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Full name, lower-case, no trailing dot.
    pub name: String,
    /// A or AAAA.
    pub kind: RecordType,
    /// The address it must point to.
    pub content: IpAddr,
    /// TTL in seconds (1 = automatic).
    pub ttl: u32,
    /// Proxied through Cloudflare.
    pub proxied: bool,
}

impl Record {
    /// The (name, type) pair that identifies the record in a plan.
    pub fn key(&self) -> (String, RecordType) {
        (self.name.clone(), self.kind)
    }
}

/// One record as listed by Cloudflare, of any type. Decoded leniently: unknown types
/// (CAA, HTTPS, …) keep their type name and raw content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRecord {
    /// Cloudflare's record id.
    pub id: String,
    /// Full name, lower-case, no trailing dot.
    pub name: String,
    /// The type as Cloudflare spells it.
    pub kind: String,
    /// The content as Cloudflare returns it (JSON text when it is not a string).
    pub content: String,
    /// TTL in seconds (1 = automatic).
    pub ttl: u32,
    /// Proxied through Cloudflare.
    pub proxied: bool,
    /// The record comment, which carries our ownership marker.
    pub comment: Option<String>,
}

impl RemoteRecord {
    /// Decodes one element of a `dns_records` list; `None` when it lacks an id, name or type.
    pub fn from_json(v: &Value) -> Option<RemoteRecord> {
        let s = |k: &str| v.get(k).and_then(Value::as_str);
        let content = match v.get("content") {
            Some(Value::String(c)) => c.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        Some(RemoteRecord {
            id: s("id")?.to_string(),
            name: normalize_name(s("name")?),
            kind: s("type")?.to_ascii_uppercase(),
            content,
            ttl: v.get("ttl").and_then(Value::as_u64).and_then(|t| u32::try_from(t).ok()).unwrap_or(1),
            proxied: v.get("proxied").and_then(Value::as_bool).unwrap_or(false),
            comment: s("comment").map(str::to_string),
        })
    }

    /// The managed type of this record, if it is one.
    pub fn managed_kind(&self) -> Option<RecordType> {
        RecordType::parse(&self.kind)
    }

    /// True iff the comment is exactly `marker`.
    pub fn owned_by(&self, marker: &str) -> bool {
        self.comment.as_deref() == Some(marker)
    }

    /// True iff this record already says what `want` says (ownership aside).
    pub fn matches(&self, want: &Record) -> bool {
        let content_ok = self.content.parse::<IpAddr>().ok() == Some(want.content);
        // Cloudflare reports ttl 1 for proxied records whatever was asked.
        let ttl_ok = want.proxied || self.ttl == want.ttl;
        self.managed_kind() == Some(want.kind) && content_ok && ttl_ok && self.proxied == want.proxied
    }
}

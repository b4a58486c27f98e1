//! Reading an agent's `/api/v1/status` document and `/metrics` text.

use std::collections::BTreeSet;

use serde_json::Value;

/// The sum of a metric's samples whose label text contains every `labels` fragment.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `members` array of a status document.
pub fn members(status: &Value) -> Vec<Value> {
    status["members"].as_array().cloned().unwrap_or_default()
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_string()
}

/// `(name, state)` of every member, in the document's order (sorted by name).
pub fn member_states(status: &Value) -> Vec<(String, String)> {
    members(status).iter().map(|m| (text(&m["name"]), text(&m["state"]))).collect()
}

/// `(name, state, incarnation)` of every member.
pub fn identities(status: &Value) -> Vec<(String, String, u64)> {
    members(status)
        .iter()
        .map(|m| (text(&m["name"]), text(&m["state"]), m["incarnation"].as_u64().unwrap_or(0)))
        .collect()
}

/// The member `name`.
///
/// # Panics
/// When there is no such member.
pub fn member<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no member {name}: {status:#}"))
}

/// The service `service`.
///
/// # Panics
/// When there is no such service.
pub fn service_status<'a>(status: &'a Value, service: &str) -> &'a Value {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|svc| svc["name"] == service))
        .unwrap_or_else(|| panic!("no service {service}: {status:#}"))
}

/// The upstream `url` of service `service`.
///
/// # Panics
/// When there is no such upstream.
pub fn upstream_status<'a>(status: &'a Value, service: &str, url: &str) -> &'a Value {
    service_status(status, service)["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["url"] == url))
        .unwrap_or_else(|| panic!("no upstream {url} in service {service}: {status:#}"))
}

/// The URLs of the upstreams of `service` (empty when there is no such service).
pub fn upstream_urls(status: &Value, service: &str) -> BTreeSet<String> {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|svc| svc["name"] == service))
        .and_then(|svc| svc["upstreams"].as_array())
        .map(|ups| ups.iter().filter_map(|u| u["url"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// One lease as a node's status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSeen {
    /// `holder`: the node holding it, `None` when vacant.
    pub holder: Option<String>,
    /// `token`: the fencing token of the latest grant.
    pub token: Option<u64>,
    /// `held_here`: this node's holder says it holds the lease.
    pub held_here: bool,
}

/// `leases.<lease>` of a status document.
pub fn lease_seen(status: &Value, lease: &str) -> LeaseSeen {
    let l = &status["leases"][lease];
    LeaseSeen {
        holder: l["holder"].as_str().map(str::to_string),
        token: l["token"].as_u64(),
        held_here: l["held_here"].as_bool().unwrap_or(false),
    }
}

/// `raft.leader` of a status document.
pub fn raft_leader(status: &Value) -> Option<String> {
    status["raft"]["leader"].as_str().map(str::to_string)
}

/// `raft.term` of a status document.
pub fn raft_term(status: &Value) -> u64 {
    status["raft"]["term"].as_u64().unwrap_or(0)
}

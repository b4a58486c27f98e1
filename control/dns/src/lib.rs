//! Cloudflare DNS for the front door: the zone apex and `*.zone` follow the `lb-leader`
//! lease holder's public IP, and each node gets its own record. Only the `dns-writer`
//! holder writes, and it checks its fencing token right before each write batch.
//!
//! Ownership: a record is ours iff its comment is exactly
//! `managed-by=constellation cluster=<cluster_id>`; anything else is never changed or
//! deleted unless `adopt` is set.
//!
//! dns-01 challenge TXT records (`_acme-challenge.<domain>`, see [`AcmeTxt`]) carry
//! `managed-by=constellation cluster=<cluster_id> acme-challenge` instead: the reconciler
//! never lists, changes or deletes them, and only [`AcmeTxt::clear_txt`] removes them.
//!
//! This crate knows nothing of gossip or Raft: the control plane feeds it a
//! [`controller::Topology`] and a [`controller::Fence`].

#![forbid(unsafe_code)]

mod api;
mod bucket;
mod client;
mod config;
pub mod controller;
mod debounce;
mod desired;
mod grace;
mod metrics;
mod plan;
mod reconcile;
mod record;
#[cfg(test)]
mod tests;
mod txt;
mod zone;

pub use bucket::TokenBucket;
pub use client::RetryPolicy;
pub use config::{DnsConfig, DEFAULT_API_URL};
pub use controller::{DnsLast, DnsStatus, PlanSummary};
pub use debounce::Debouncer;
pub use desired::{desired, Desired, NodeAddr};
pub use grace::{GraceTracker, NodeStatus};
pub use metrics::DnsMetrics;
pub use plan::{plan, Ownership, Plan, Update};
pub use reconcile::{Applied, Outcome, Reconciler};
pub use record::{Record, RecordType, RemoteRecord};
pub use txt::{AcmeTxt, ACME_TXT_TTL};

/// Everything that can go wrong talking to Cloudflare. None of them carries the token.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A `[dns]` setting is invalid.
    #[error("invalid {key}: {message}")]
    Config {
        /// The key, e.g. `dns.zone`.
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// Cloudflare refused the token.
    #[error(
        "Cloudflare rejected the API token (HTTP {status}{}{}): check dns.api_token_file or CONSTELLATION_DNS__API_TOKEN; it must be a valid API token \
         with Zone:DNS:Edit and Zone:Zone:Read on zone {zone:?}",
        code.map(|c| format!(", code {c}")).unwrap_or_default(),
        if message.is_empty() { String::new() } else { format!(": {message}") }
    )]
    Auth {
        /// HTTP status.
        status: u16,
        /// Cloudflare error code (9109 invalid token, 10000 authentication error, …).
        code: Option<u32>,
        /// Cloudflare's message.
        message: String,
        /// The zone.
        zone: String,
    },
    /// No zone of that name is visible to the token.
    #[error("zone {zone:?} not found: check dns.zone, or that the token can read it (Zone:Zone:Read)")]
    ZoneNotFound {
        /// The zone name.
        zone: String,
    },
    /// Cloudflare refused a request (a 4xx other than auth or rate limit); not retried.
    #[error("Cloudflare {endpoint} failed: {detail}")]
    Api {
        /// Which call.
        endpoint: &'static str,
        /// HTTP status.
        status: u16,
        /// Status and Cloudflare's error codes and messages.
        detail: String,
    },
    /// A call kept failing (429, 5xx, timeouts) through every attempt.
    #[error("Cloudflare {endpoint} still failing after {attempts} attempts: {last}; the next cycle retries")]
    Exhausted {
        /// Which call.
        endpoint: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A 2xx answer did not decode.
    #[error("Cloudflare {endpoint} answered something unexpected: {detail}")]
    Decode {
        /// Which call.
        endpoint: &'static str,
        /// The decode error.
        detail: String,
    },
    /// Some writes of a batch failed; the rest were applied.
    #[error("{failed} DNS writes failed ({applied} applied): {first}")]
    Incomplete {
        /// Writes applied.
        applied: usize,
        /// Writes failed or not attempted.
        failed: usize,
        /// The first failure.
        first: Box<DnsError>,
    },
    /// The HTTP client could not be built, or the metrics registered.
    #[error("DNS client setup failed: {detail}")]
    Client {
        /// What failed.
        detail: String,
    },
    /// A dns-01 challenge for a name outside `dns.zone`; nothing was sent.
    #[error(
        "cannot publish the dns-01 challenge of {domain:?}: it is not inside the zone {zone:?} (dns.zone); \
         issue that name with http-01 or tls-alpn-01, or through a DNS provider for its own zone"
    )]
    OutsideZone {
        /// The domain as asked.
        domain: String,
        /// The configured zone.
        zone: String,
    },
    /// A call that needs the API was made without a token.
    #[error("no DNS API token (dns.api_token_file or CONSTELLATION_DNS__API_TOKEN): running dry, nothing is sent to Cloudflare")]
    DryRun,
}

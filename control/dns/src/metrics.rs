//! Prometheus metrics of the DNS reconciler.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The DNS metrics; cheap to clone (the counters are shared).
#[derive(Clone)]
pub struct DnsMetrics {
    /// `constellation_dns_api_requests_total{endpoint,result}`.
    pub(crate) api_requests: IntCounterVec,
    /// `constellation_dns_writes_total{op}`.
    pub(crate) writes: IntCounterVec,
    /// `constellation_dns_drift_corrections_total`.
    pub(crate) drift: IntCounter,
    /// `constellation_dns_rate_limit_waits_total`.
    pub(crate) rate_limit_waits: IntCounter,
    /// `constellation_dns_last_success_unix`.
    pub(crate) last_success: IntGauge,
}

impl DnsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<DnsMetrics, prometheus::Error> {
        let api_requests = IntCounterVec::new(
            Opts::new(
                "constellation_dns_api_requests_total",
                "Cloudflare API requests by endpoint and result (ok, rate_limited, server_error, timeout, \
                 transport_error, auth_error, client_error, decode_error).",
            ),
            &["endpoint", "result"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "constellation_dns_writes_total",
                "DNS records written, by op (create, update, delete; txt_create, txt_delete for dns-01 challenges).",
            ),
            &["op"],
        )?;
        let drift = IntCounter::new(
            "constellation_dns_drift_corrections_total",
            "Records put back after they were changed or removed behind the reconciler's back.",
        )?;
        let rate_limit_waits = IntCounter::new(
            "constellation_dns_rate_limit_waits_total",
            "Times a DNS API call waited for the request budget or for a 429's Retry-After.",
        )?;
        let last_success = IntGauge::new(
            "constellation_dns_last_success_unix",
            "Unix time of the last reconciliation that left the zone as desired.",
        )?;
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(drift.clone()))?;
        registry.register(Box::new(rate_limit_waits.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        Ok(DnsMetrics { api_requests, writes, drift, rate_limit_waits, last_success })
    }
}

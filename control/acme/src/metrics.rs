//! The ACME metrics: orders by outcome, requests to the CA, certificate expiry.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Registered once per registry; cheap to clone.
#[derive(Clone)]
pub struct AcmeMetrics {
    /// `constellation_acme_orders_total{outcome}`: `issued` or `failed`.
    pub orders: IntCounterVec,
    /// `constellation_acme_requests_total`: HTTP requests sent to the CA.
    pub requests: IntCounter,
    /// `constellation_acme_cert_not_after_timestamp_seconds{domain}`: Unix time at which
    /// the stored certificate for `domain` (its main name) expires, on every node. (The
    /// proxy's `constellation_cert_expiry_seconds{domain}` counts down to it for every
    /// served certificate.)
    pub expiry: IntGaugeVec,
}

impl AcmeMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> Result<AcmeMetrics, prometheus::Error> {
        let orders = IntCounterVec::new(
            Opts::new("constellation_acme_orders_total", "ACME orders by outcome (issued, failed)"),
            &["outcome"],
        )?;
        let requests = IntCounter::new("constellation_acme_requests_total", "HTTP requests sent to the ACME CA")?;
        let expiry = IntGaugeVec::new(
            Opts::new(
                "constellation_acme_cert_not_after_timestamp_seconds",
                "Unix time at which the stored ACME certificate for a main name expires",
            ),
            &["domain"],
        )?;
        registry.register(Box::new(orders.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(expiry.clone()))?;
        Ok(AcmeMetrics { orders, requests, expiry })
    }
}

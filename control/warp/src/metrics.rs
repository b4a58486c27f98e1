//! Prometheus metrics of the egress monitor.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The monitor's metrics, shared by every gateway's task.
#[derive(Clone)]
pub struct WarpMetrics {
    /// `constellation_warp_egress_up{gateway}`: 1 while the gateway's verdict is up.
    pub up: IntGaugeVec,
    /// `constellation_warp_probe_duration_seconds{gateway}`: every probe's duration.
    pub probe_seconds: HistogramVec,
    /// `constellation_warp_probes_total{gateway,result}`: probes by outcome.
    pub probes: IntCounterVec,
    /// `constellation_warp_gateway_restarts_total{gateway,result}`: container restarts
    /// (`restarted`, `capped`, `failed`).
    pub restarts: IntCounterVec,
    /// `constellation_warp_egress_hints_total{node}`: egress hints this node raised after
    /// repeated 403s from a node's WARP-egress instances.
    pub hints: IntCounterVec,
}

impl WarpMetrics {
    /// Creates the metrics and registers them on `registry`.
    ///
    /// # Errors
    /// When a metric of the same name is already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let up = IntGaugeVec::new(
            Opts::new(
                "constellation_warp_egress_up",
                "1 while the egress gateway is up (probe verdict after rise/fall)",
            ),
            &["gateway"],
        )?;
        let probe_seconds = HistogramVec::new(
            HistogramOpts::new(
                "constellation_warp_probe_duration_seconds",
                "Duration of egress probes through the gateway",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["gateway"],
        )?;
        let probes = IntCounterVec::new(
            Opts::new("constellation_warp_probes_total", "Egress probes by result"),
            &["gateway", "result"],
        )?;
        let restarts = IntCounterVec::new(
            Opts::new("constellation_warp_gateway_restarts_total", "Gateway container restarts by result"),
            &["gateway", "result"],
        )?;
        let hints = IntCounterVec::new(
            Opts::new("constellation_warp_egress_hints_total", "Egress hints raised after repeated 403s, by node"),
            &["node"],
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(probe_seconds.clone()))?;
        registry.register(Box::new(probes.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(hints.clone()))?;
        Ok(WarpMetrics { up, probe_seconds, probes, restarts, hints })
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        match Self::register(&Registry::new()) {
            Ok(m) => m,
            Err(e) => unreachable!("a fresh registry has no collisions: {e}"),
        }
    }
}

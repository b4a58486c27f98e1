//! Proxy metrics, registered in a caller-owned Prometheus registry.
//!
//! Label sets are bounded: routes and upstreams come from configuration, methods are
//! folded into the standard set plus `OTHER`, status codes into classes.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric the data plane updates.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// Requests by route, method and status class.
    pub requests: IntCounterVec,
    /// Request duration in seconds by route.
    pub request_duration: HistogramVec,
    /// Upstream attempts by service and outcome.
    pub attempts: IntCounterVec,
    /// Retries by service and reason.
    pub retries: IntCounterVec,
    /// Retries that were eligible by status or error but not made, by reason.
    pub retries_suppressed: IntCounterVec,
    /// Breaker state per upstream: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// Breaker transitions per upstream by target state.
    pub breaker_transitions: IntCounterVec,
    /// Active health check result per upstream: 1 healthy, 0 unhealthy.
    pub upstream_healthy: IntGaugeVec,
    /// Requests currently in flight.
    pub in_flight: IntGauge,
    /// Generation of the route table in use.
    pub config_generation: IntGauge,
    /// Route table reloads by result (`ok`, `invalid`).
    pub config_reloads: IntCounterVec,
    /// Time to compile a route table.
    pub compile_seconds: Histogram,
    /// 1 per router and feature it needs that is not applied; value 1 while the
    /// router refuses traffic for it, 0 while it is served anyway (allow_unsupported).
    pub router_unapplied: IntGaugeVec,
    /// Clients that closed their connection mid-request, by stage: `headers` (before
    /// the request head was complete), `body` (while sending the request body),
    /// `response` (while the response was being written).
    pub downstream_disconnects: IntCounterVec,
    /// Requests answered 400 for their framing before routing, by reason:
    /// `content_length`, `missing_host`.
    pub requests_rejected: IntCounterVec,
}

impl ProxyMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new("constellation_requests_total", "Requests served by the proxy."),
                &["route", "method", "code_class"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "constellation_request_duration_seconds",
                    "Time from request start to the end of the response.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0,
                ]),
                &["route"],
            )?,
            attempts: IntCounterVec::new(
                Opts::new(
                    "constellation_upstream_attempts_total",
                    "Attempts to upstreams by outcome: ok, connect_error, tls_error, timeout, reset, status_gateway, breaker_rejected, client_timeout.",
                ),
                &["service", "outcome"],
            )?,
            retries: IntCounterVec::new(
                Opts::new("constellation_retries_total", "Retries made, by reason."),
                &["service", "reason"],
            )?,
            retries_suppressed: IntCounterVec::new(
                Opts::new(
                    "constellation_retries_suppressed_total",
                    "Failures that were not retried, by reason: non_idempotent, body_not_replayable, attempts_exhausted, budget, deadline, no_other_upstream, response_started, upgrade.",
                ),
                &["service", "reason"],
            )?,
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "constellation_breaker_state",
                    "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open.",
                ),
                &["service", "upstream"],
            )?,
            breaker_transitions: IntCounterVec::new(
                Opts::new(
                    "constellation_breaker_transitions_total",
                    "Circuit breaker transitions per upstream, by the state entered.",
                ),
                &["service", "upstream", "to"],
            )?,
            upstream_healthy: IntGaugeVec::new(
                Opts::new(
                    "constellation_upstream_healthy",
                    "Active health check verdict per upstream: 1 healthy, 0 unhealthy.",
                ),
                &["service", "upstream"],
            )?,
            in_flight: IntGauge::new(
                "constellation_requests_in_flight",
                "Requests currently being proxied.",
            )?,
            config_generation: IntGauge::new(
                "constellation_config_generation",
                "Generation number of the route table in use.",
            )?,
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "constellation_config_reloads_total",
                    "Route table reloads by result: ok, invalid.",
                ),
                &["result"],
            )?,
            compile_seconds: Histogram::with_opts(HistogramOpts::new(
                "constellation_config_compile_seconds",
                "Time to validate and compile a route table.",
            ))?,
            router_unapplied: IntGaugeVec::new(
                Opts::new(
                    "constellation_router_unapplied",
                    "Routers needing a feature that is not applied: 1 refused (503), 0 served without it.",
                ),
                &["router", "feature"],
            )?,
            downstream_disconnects: IntCounterVec::new(
                Opts::new(
                    "constellation_downstream_disconnects_total",
                    "Clients that closed the connection mid-request, by stage: headers, body, response.",
                ),
                &["stage"],
            )?,
            requests_rejected: IntCounterVec::new(
                Opts::new(
                    "constellation_requests_rejected_total",
                    "Requests answered 400 for their framing before routing, by reason: content_length, missing_host.",
                ),
                &["reason"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.attempts.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.retries_suppressed.clone()))?;
        registry.register(Box::new(m.breaker_state.clone()))?;
        registry.register(Box::new(m.breaker_transitions.clone()))?;
        registry.register(Box::new(m.upstream_healthy.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.config_generation.clone()))?;
        registry.register(Box::new(m.config_reloads.clone()))?;
        registry.register(Box::new(m.compile_seconds.clone()))?;
        registry.register(Box::new(m.router_unapplied.clone()))?;
        registry.register(Box::new(m.downstream_disconnects.clone()))?;
        registry.register(Box::new(m.requests_rejected.clone()))?;
        Ok(m)
    }

    /// Metrics registered in a throwaway registry, for tests and tools.
    pub fn unregistered() -> Self {
        // Registering into a fresh registry cannot collide, so this only fails on a
        // malformed metric definition, which the unit test below would catch.
        match Self::register(&Registry::new()) {
            Ok(m) => m,
            Err(e) => panic!("metric definitions are invalid: {e}"),
        }
    }
}

/// The label used for a request method: the standard methods, or `OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The status class label: `1xx` … `5xx`, or `none` when no response was sent.
pub fn code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_register() {
        let reg = Registry::new();
        let m = ProxyMetrics::register(&reg).map_err(|e| e.to_string());
        assert!(m.is_ok(), "{m:?}", m = m.err());
        assert_eq!(code_class(503), "5xx");
        assert_eq!(method_label(&http::Method::from_bytes(b"PURGE").unwrap_or_default()), "OTHER");
    }
}

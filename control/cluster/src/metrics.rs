//! Gossip and state-pull metrics, and the rate-limited "packet rejected" log lines.

use std::net::SocketAddr;

use constellation_wire::{FrameError, OpenError, RejectLog};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Every `reason` of `constellation_gossip_packets_rejected_total`.
const REASONS: [&str; 7] = ["truncated", "bad_version", "unknown_key", "forged", "decode", "oversize", "version"];

/// The cluster's Prometheus metrics.
pub(crate) struct Metrics {
    /// `constellation_gossip_packets_rejected_total{reason}`.
    pub(crate) rejected: IntCounterVec,
    /// `constellation_gossip_packets_total{direction}`.
    pub(crate) packets: IntCounterVec,
    /// `constellation_members{state}`.
    pub(crate) members: IntGaugeVec,
    /// `constellation_state_pulls_total{result}`.
    pub(crate) pulls: IntCounterVec,
    /// `constellation_convergence_lag_seconds`.
    pub(crate) lag: Histogram,
    reject_log: RejectLog,
}

impl Metrics {
    pub(crate) fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let rejected = IntCounterVec::new(
            Opts::new(
                "constellation_gossip_packets_rejected_total",
                "Gossip datagrams and state-pull frames dropped, by reason (truncated, bad_version, \
                 unknown_key, forged, decode, oversize, version: a peer of another protocol version).",
            ),
            &["reason"],
        )?;
        let packets = IntCounterVec::new(
            Opts::new("constellation_gossip_packets_total", "Gossip datagrams by direction (in, out)."),
            &["direction"],
        )?;
        let members = IntGaugeVec::new(
            Opts::new("constellation_members", "Cluster members by state (alive, suspect, down), self included."),
            &["state"],
        )?;
        let pulls = IntCounterVec::new(
            Opts::new("constellation_state_pulls_total", "State push-pulls initiated, by result (ok, error)."),
            &["result"],
        )?;
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "constellation_convergence_lag_seconds",
                "Time from receiving a newer state digest to holding that state.",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(packets.clone()))?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(pulls.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        // Make every label value visible from the start, at zero.
        for reason in REASONS {
            rejected.with_label_values(&[reason]);
        }
        for direction in ["in", "out"] {
            packets.with_label_values(&[direction]);
        }
        for result in ["ok", "error"] {
            pulls.with_label_values(&[result]);
        }
        Ok(Metrics { rejected, packets, members, pulls, lag, reject_log: RejectLog::default() })
    }

    /// Counts a datagram that did not open; a peer of another version gets its own
    /// warning.
    pub(crate) fn reject_open(&self, peer: SocketAddr, transport: &'static str, error: OpenError) {
        match error {
            OpenError::OtherVersion { theirs, ours } => {
                self.rejected.with_label_values(&["version"]).inc();
                self.reject_log.other_version(peer, transport, theirs, ours);
            }
            other => self.reject(peer, transport, other.reason()),
        }
    }

    /// Counts a state-pull frame refused by the codec.
    pub(crate) fn reject_frame(&self, peer: SocketAddr, error: &FrameError) {
        match error {
            FrameError::Open(open) => self.reject_open(peer, "tcp", *open),
            other => self.reject(peer, "tcp", other.reason()),
        }
    }

    /// Counts a rejected datagram or frame and logs it, at most once a minute per peer IP.
    pub(crate) fn reject(&self, peer: SocketAddr, transport: &'static str, reason: &'static str) {
        self.rejected.with_label_values(&[reason]).inc();
        if self.reject_log.due(peer.ip(), "rejected") {
            tracing::warn!(
                peer = %peer,
                transport,
                reason,
                "cluster packet rejected (wrong cluster key, not a Constellation peer, or corrupted); \
                 further rejections from this address are counted, not logged, for a minute"
            );
        }
    }
}

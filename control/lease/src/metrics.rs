//! Prometheus metrics of the Raft group and the leases.

use std::net::SocketAddr;

use constellation_wire::{FrameError, OpenError, RejectLog};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every `reason` of `constellation_raft_frames_rejected_total`.
const REASONS: [&str; 8] = ["truncated", "bad_version", "unknown_key", "forged", "decode", "oversize", "version", "io"];

/// The Raft and lease metrics of one node.
pub struct RaftMetrics {
    /// `constellation_raft_term`.
    pub(crate) term: IntGauge,
    /// `constellation_raft_is_leader`.
    pub(crate) is_leader: IntGauge,
    /// `constellation_lease_token{lease}`.
    pub(crate) token: IntGaugeVec,
    /// `constellation_lease_renewals_total{lease,result}`.
    pub(crate) renewals: IntCounterVec,
    /// `constellation_lease_stepdowns_total{lease}`.
    pub(crate) stepdowns: IntCounterVec,
    /// `constellation_raft_frames_rejected_total{reason}`.
    pub(crate) rejected: IntCounterVec,
    reject_log: RejectLog,
}

impl RaftMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<RaftMetrics, prometheus::Error> {
        let term = IntGauge::new("constellation_raft_term", "Current Raft term seen by this node.")?;
        let is_leader = IntGauge::new("constellation_raft_is_leader", "1 if this node is the Raft leader, else 0.")?;
        let token = IntGaugeVec::new(
            Opts::new("constellation_lease_token", "Current fencing token of each lease (0 if never granted)."),
            &["lease"],
        )?;
        let renewals = IntCounterVec::new(
            Opts::new(
                "constellation_lease_renewals_total",
                "Lease acquire/renew attempts by this node's holders, by result (acquired, renewed, refused, error).",
            ),
            &["lease", "result"],
        )?;
        let stepdowns = IntCounterVec::new(
            Opts::new(
                "constellation_lease_stepdowns_total",
                "Times a holder on this node gave a lease up because it could not renew by its deadline.",
            ),
            &["lease"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "constellation_raft_frames_rejected_total",
                "Raft frames dropped, by reason (truncated, bad_version, unknown_key, forged, decode, \
                 oversize, version: a peer of another protocol version, io).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(term.clone()))?;
        registry.register(Box::new(is_leader.clone()))?;
        registry.register(Box::new(token.clone()))?;
        registry.register(Box::new(renewals.clone()))?;
        registry.register(Box::new(stepdowns.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        for reason in REASONS {
            rejected.with_label_values(&[reason]);
        }
        Ok(RaftMetrics { term, is_leader, token, renewals, stepdowns, rejected, reject_log: RejectLog::default() })
    }

    /// Counts a refused Raft frame; a peer of another protocol version also gets a
    /// (rate-limited) warning, anything else a debug line.
    pub(crate) fn reject(&self, peer: SocketAddr, error: &FrameError) {
        self.rejected.with_label_values(&[error.reason()]).inc();
        match error {
            FrameError::Open(OpenError::OtherVersion { theirs, ours }) => {
                self.reject_log.other_version(peer, "raft", *theirs, *ours);
            }
            other => tracing::debug!(peer = %peer, error = %other, "raft frame rejected; closing connection"),
        }
    }
}

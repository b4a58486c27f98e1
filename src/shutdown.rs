//! SIGTERM as a planned restart. Pingora, left alone, closes every listener the moment
//! SIGTERM arrives and then sleeps its grace period; the lease holder's tasks die with the
//! process, so the cluster waits a TTL for a new front door. Instead, [`PlannedStop`]
//! (Pingora's shutdown-signal hook) first has the control plane drain — release held
//! leases through the log, hand Raft leadership over — then keeps serving for
//! `[proxy] grace_period_secs`, and only then lets Pingora close the listeners;
//! [`finish_requests`] then waits for requests in flight (at most
//! `graceful_shutdown_timeout_secs`) before the node leaves gossip and exits 0.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use constellation_plane::plane::{Lifecycle, Phase, DRAIN_LIMIT};
use constellation_proxy::ProxyMetrics;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, UnixShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// Pingora's shutdown-signal watch with a drain before the grace period: SIGTERM drains
/// and serves on, SIGQUIT is Pingora's graceful upgrade, SIGINT stops at once (also
/// during a drain).
pub struct PlannedStop {
    /// The control plane's phase.
    pub lifecycle: Lifecycle,
    /// How long the listeners stay open after draining.
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for PlannedStop {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) =
            (signal(SignalKind::terminate()), signal(SignalKind::quit()), signal(SignalKind::interrupt()))
        else {
            tracing::error!("cannot listen for signals; SIGTERM closes the listeners at once");
            return UnixShutdownSignalWatch.recv().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        let started = Instant::now();
        tracing::info!(
            grace_secs = self.grace.as_secs(),
            "SIGTERM: releasing leases and handing raft leadership over; the proxy keeps serving"
        );
        self.lifecycle.advance(Phase::Draining);
        let drained = tokio::time::timeout(DRAIN_LIMIT * 2, self.lifecycle.reached(Phase::Drained));
        tokio::select! {
            r = drained => if r.is_err() {
                tracing::warn!("draining did not finish in time; going on without it");
            },
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        tracing::info!(
            drained_ms = started.elapsed().as_millis() as u64,
            grace_secs = self.grace.as_secs(),
            "drained; serving until the grace period ends"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.grace) => {}
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        tracing::info!("grace period over: the listeners close, requests in flight finish");
        ShutdownSignal::GracefulTerminate
    }
}

/// After the listeners closed: waits until no proxied request is in flight (polled), at
/// most `limit`; returns how many were still in flight then.
pub async fn finish_requests(metrics: &ProxyMetrics, limit: Duration) -> i64 {
    let deadline = Instant::now() + limit;
    // A request accepted just before the listeners closed may still be reading its head
    // (not counted yet): give it a moment.
    tokio::time::sleep(limit.min(Duration::from_millis(200))).await;
    loop {
        let in_flight = metrics.in_flight.get();
        if in_flight <= 0 || Instant::now() >= deadline {
            return in_flight.max(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! The monitor: one task per gateway probing on its interval, a rise/fall verdict, the
//! gateway container's state beside it, and the restarter.
//!
//! A probe is good when the trace page answers, says `warp=on` or `plus`, and shows an
//! egress IP other than the node's own public IP (when that is known). The first probe
//! decides at once; after that `rise` good probes in a row bring a down gateway up and
//! `fall` bad ones take an up gateway down. The container's health is a signal shown in
//! status, never the verdict: a WARP client can report healthy while its egress is
//! blocked, and an unhealthy one can still carry traffic.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{GatewayConfig, WarpConfig};
use crate::metrics::WarpMetrics;
use crate::probe::{container_state, GatewayProber, ProbeError, Probed};
use crate::trace::WarpState;

/// The gateway's container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSignal {
    /// Container name.
    pub name: String,
    /// Engine state (`running`, `exited`, …), or `unknown`.
    pub state: String,
    /// Health check verdict (`healthy`, `unhealthy`, `starting`, `none`).
    pub health: String,
    /// Why it could not be inspected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One gateway's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Gateway name.
    pub name: String,
    /// How traffic leaves, e.g. `socks5 127.0.0.1:1080`.
    pub via: String,
    /// The verdict (false until the first probe).
    pub up: bool,
    /// `warp=` of the last trace answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warp: Option<WarpState>,
    /// Egress IP of the last trace answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Whether that IP differs from the node's public IP (unknown when either is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differs_from_node_ip: Option<bool>,
    /// Cloudflare data centre of the last answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colo: Option<String>,
    /// Duration of the last good probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Why the last probe was bad (cleared by a good one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Probes made.
    pub probes: u64,
    /// Good (positive) or bad (negative) probes in a row.
    pub streak: i64,
    /// When the verdict last changed (ms since the epoch), 0 before the first probe.
    pub since_unix_ms: u64,
    /// The gateway's container, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSignal>,
    /// Container restarts by the monitor in the last hour.
    pub restarts_last_hour: u32,
    /// What the restarter last did or refused to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_note: Option<String>,
}

impl GatewayStatus {
    fn new(g: &GatewayConfig) -> Self {
        GatewayStatus {
            name: g.name.clone(),
            via: g.via().map(|v| v.describe()).unwrap_or_default(),
            up: false,
            warp: None,
            ip: None,
            differs_from_node_ip: None,
            colo: None,
            latency_ms: None,
            last_error: Some("not probed yet".into()),
            probes: 0,
            streak: 0,
            since_unix_ms: 0,
            container: None,
            restarts_last_hour: 0,
            restart_note: None,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The outcome of one probe, judged.
#[derive(Debug)]
pub(crate) enum Verdict {
    Good(Probed),
    Bad { result: &'static str, message: String, probed: Option<Probed> },
}

/// Judge a probe against the node's public IP.
pub(crate) fn judge(r: Result<Probed, ProbeError>, node_ip: Option<IpAddr>) -> Verdict {
    match r {
        Ok(p) if !p.trace.warp.through_warp() => Verdict::Bad {
            result: "warp_off",
            message: format!("warp=off: egress {} does not go through WARP", p.trace.ip),
            probed: Some(p),
        },
        Ok(p) if node_ip == Some(p.trace.ip) => Verdict::Bad {
            result: "same_ip",
            message: format!("egress IP {} is this node's own public IP", p.trace.ip),
            probed: Some(p),
        },
        Ok(p) => Verdict::Good(p),
        Err(e) => {
            let result = match &e {
                ProbeError::Timeout(_) => "timeout",
                ProbeError::Unreachable { .. } => "unreachable",
                ProbeError::Status(_) => "status",
                ProbeError::Trace(_) | ProbeError::TooLong => "bad_trace",
                ProbeError::Docker(_) => "docker",
            };
            Verdict::Bad { result, message: e.to_string(), probed: None }
        }
    }
}

/// Apply a verdict to `st` with rise/fall; returns whether `up` changed.
pub(crate) fn apply(st: &mut GatewayStatus, v: &Verdict, rise: u32, fall: u32, node_ip: Option<IpAddr>) -> bool {
    let first = st.probes == 0;
    st.probes += 1;
    let probed = match v {
        Verdict::Good(p) => Some(p),
        Verdict::Bad { probed, .. } => probed.as_ref(),
    };
    if let Some(p) = probed {
        st.warp = Some(p.trace.warp);
        st.ip = Some(p.trace.ip);
        st.colo = p.trace.colo.clone();
        st.differs_from_node_ip = node_ip.map(|n| n != p.trace.ip);
        st.latency_ms = Some(p.latency.as_millis() as u64);
    }
    let good = matches!(v, Verdict::Good(_));
    match v {
        Verdict::Good(_) => st.last_error = None,
        Verdict::Bad { message, .. } => st.last_error = Some(message.clone()),
    }
    st.streak = match (good, st.streak) {
        (true, s) if s > 0 => s + 1,
        (true, _) => 1,
        (false, s) if s < 0 => s - 1,
        (false, _) => -1,
    };
    let next = if first {
        good
    } else if good {
        st.up || st.streak >= i64::from(rise)
    } else {
        st.up && -st.streak < i64::from(fall)
    };
    let changed = next != st.up || first;
    if changed {
        st.up = next;
        st.since_unix_ms = unix_ms();
    }
    changed
}

/// The restarter's memory for one gateway.
#[derive(Debug, Default)]
pub(crate) struct Restarts {
    /// When restarts happened (the last hour's).
    pub(crate) at: VecDeque<Instant>,
    /// When the gateway went down (cleared when up).
    pub(crate) down_since: Option<Instant>,
    /// The cap was reported for this down spell.
    pub(crate) capped_reported: bool,
}

/// What the restarter should do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RestartStep {
    Nothing,
    Restart,
    /// The cap is reached; `first` is true once per down spell.
    Capped {
        first: bool,
    },
}

impl Restarts {
    /// Decide at `now` for a gateway whose verdict is `up`.
    pub(crate) fn step(&mut self, up: bool, now: Instant, after: Duration, cap: u32) -> RestartStep {
        while self.at.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600)) {
            self.at.pop_front();
        }
        if up {
            self.down_since = None;
            self.capped_reported = false;
            return RestartStep::Nothing;
        }
        let since = *self.down_since.get_or_insert(now);
        // Each restart gets `after` to bring the gateway back before the next one.
        let last = self.at.back().copied().filter(|t| *t > since).unwrap_or(since);
        if now.duration_since(last) < after {
            return RestartStep::Nothing;
        }
        if self.at.len() >= cap as usize {
            let first = !self.capped_reported;
            self.capped_reported = true;
            return RestartStep::Capped { first };
        }
        self.at.push_back(now);
        RestartStep::Restart
    }
}

/// The running monitor: statuses of every gateway, in configuration order.
pub struct WarpMonitor {
    rx: watch::Receiver<Arc<Vec<GatewayStatus>>>,
}

impl WarpMonitor {
    /// Start one task per gateway of `cfg` (validated); they run until the returned
    /// monitor and every receiver of it are dropped… or the runtime stops. `node_ip` is the
    /// node's public IP as detected (the egress must differ from it).
    pub async fn start(cfg: &WarpConfig, node_ip: watch::Receiver<Option<IpAddr>>, metrics: WarpMetrics) -> Self {
        let initial: Vec<GatewayStatus> = cfg.gateways.iter().map(GatewayStatus::new).collect();
        let (tx, rx) = watch::channel(Arc::new(initial));
        let tx = Arc::new(tx);
        for (i, g) in cfg.gateways.iter().enumerate() {
            let needs_docker = g.network.is_some() || g.container.is_some();
            let docker = if needs_docker {
                match constellation_services::engine::connect(g.docker_endpoint.as_deref(), 30).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(gateway = %g.name, error = %e, "Docker engine unreachable for the WARP gateway");
                        None
                    }
                }
            } else {
                None
            };
            tokio::spawn(run_gateway(i, g.clone(), docker, node_ip.clone(), tx.clone(), metrics.clone()));
        }
        WarpMonitor { rx }
    }

    /// A receiver of every status change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<GatewayStatus>>> {
        self.rx.clone()
    }
}

async fn run_gateway(
    index: usize,
    g: GatewayConfig,
    docker: Option<Docker>,
    node_ip: watch::Receiver<Option<IpAddr>>,
    tx: Arc<watch::Sender<Arc<Vec<GatewayStatus>>>>,
    metrics: WarpMetrics,
) {
    let publish = |st: &GatewayStatus| {
        tx.send_modify(|all| {
            let mut v = (**all).clone();
            if let Some(slot) = v.get_mut(index) {
                *slot = st.clone();
            }
            *all = Arc::new(v);
        })
    };
    let mut st = GatewayStatus::new(&g);
    let prober = match GatewayProber::new(&g, docker.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(gateway = %g.name, error = %e, "WARP gateway cannot be probed; it stays down");
            st.last_error = Some(e);
            publish(&st);
            metrics.up.with_label_values(&[&g.name]).set(0);
            return;
        }
    };
    metrics.up.with_label_values(&[&g.name]).set(0);
    let mut restarts = Restarts::default();
    let mut tick = tokio::time::interval(Duration::from_millis(g.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let node = *node_ip.borrow();
        let started = Instant::now();
        let verdict = judge(prober.probe(&g).await, node);
        metrics.probe_seconds.with_label_values(&[&g.name]).observe(started.elapsed().as_secs_f64());
        let result = match &verdict {
            Verdict::Good(_) => "ok",
            Verdict::Bad { result, .. } => result,
        };
        metrics.probes.with_label_values(&[&g.name, result]).inc();
        if apply(&mut st, &verdict, g.rise, g.fall, node) {
            if st.up {
                tracing::info!(gateway = %g.name, ip = ?st.ip, warp = ?st.warp, "WARP egress up");
            } else {
                tracing::warn!(gateway = %g.name, error = st.last_error.as_deref().unwrap_or(""), "WARP egress down");
            }
        }
        metrics.up.with_label_values(&[&g.name]).set(i64::from(st.up));
        if let (Some(d), Some(c)) = (&docker, &g.container) {
            st.container = Some(match container_state(d, c).await {
                Ok((state, health)) => ContainerSignal { name: c.clone(), state, health, error: None },
                Err(e) => ContainerSignal {
                    name: c.clone(),
                    state: "unknown".into(),
                    health: "unknown".into(),
                    error: Some(e),
                },
            });
        }
        if g.restart {
            restart_step(&g, docker.as_ref(), &mut restarts, &mut st, &metrics).await;
        }
        publish(&st);
    }
}

async fn restart_step(
    g: &GatewayConfig,
    docker: Option<&Docker>,
    restarts: &mut Restarts,
    st: &mut GatewayStatus,
    metrics: &WarpMetrics,
) {
    let Some(container) = &g.container else { return };
    let step = restarts.step(st.up, Instant::now(), Duration::from_millis(g.restart_after_ms), g.max_restarts_per_hour);
    match step {
        RestartStep::Nothing => {}
        RestartStep::Restart => {
            let result = match docker {
                Some(d) => d
                    .restart_container(
                        container,
                        Some(bollard::query_parameters::RestartContainerOptionsBuilder::default().t(10).build()),
                    )
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("the Docker engine is not reachable".to_string()),
            };
            match result {
                Ok(()) => {
                    tracing::warn!(gateway = %g.name, container = %container, error = st.last_error.as_deref().unwrap_or(""), "WARP egress stayed down: gateway container restarted");
                    metrics.restarts.with_label_values(&[&g.name, "restarted"]).inc();
                    st.restart_note = Some(format!("restarted {container} at {} ms", unix_ms()));
                }
                Err(e) => {
                    tracing::error!(gateway = %g.name, container = %container, error = %e, "gateway container restart failed");
                    metrics.restarts.with_label_values(&[&g.name, "failed"]).inc();
                    st.restart_note = Some(format!("restart of {container} failed: {e}"));
                }
            }
        }
        RestartStep::Capped { first } => {
            if first {
                tracing::warn!(gateway = %g.name, container = %container, cap = g.max_restarts_per_hour, "WARP egress still down; restart cap reached, not restarting");
                metrics.restarts.with_label_values(&[&g.name, "capped"]).inc();
            }
            st.restart_note = Some(format!(
                "restart cap reached: {} in the last hour (max_restarts_per_hour = {})",
                restarts.at.len(),
                g.max_restarts_per_hour
            ));
        }
    }
    st.restarts_last_hour = restarts.at.len() as u32;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::trace::Trace;

    fn good(ip: &str) -> Verdict {
        judge(
            Ok(Probed {
                trace: Trace { ip: ip.parse().unwrap(), colo: None, warp: WarpState::On },
                latency: Duration::from_millis(5),
            }),
            None,
        )
    }

    fn bad() -> Verdict {
        judge(Err(ProbeError::Timeout(100)), None)
    }

    #[test]
    fn first_probe_decides_then_rise_and_fall() {
        let g = GatewayConfig::socks5("w", "127.0.0.1:1");
        let mut st = GatewayStatus::new(&g);
        assert!(apply(&mut st, &good("1.1.1.1"), 2, 3, None));
        assert!(st.up && st.last_error.is_none());
        assert!(!apply(&mut st, &bad(), 2, 3, None));
        assert!(!apply(&mut st, &bad(), 2, 3, None));
        assert!(st.up, "two bad of fall=3");
        assert!(apply(&mut st, &bad(), 2, 3, None));
        assert!(!st.up && st.last_error.as_deref() == Some("no trace answer within 100 ms"));
        assert!(!apply(&mut st, &good("1.1.1.1"), 2, 3, None));
        assert!(apply(&mut st, &good("1.1.1.1"), 2, 3, None), "rise=2");
        let mut fresh = GatewayStatus::new(&g);
        assert!(apply(&mut fresh, &bad(), 2, 3, None) && !fresh.up, "a first bad probe is a verdict too");
    }

    #[test]
    fn warp_off_and_own_ip_are_bad() {
        let off = Probed {
            trace: Trace { ip: "9.9.9.9".parse().unwrap(), colo: None, warp: WarpState::Off },
            latency: Duration::ZERO,
        };
        assert!(matches!(judge(Ok(off.clone()), None), Verdict::Bad { result: "warp_off", .. }));
        let on = Probed { trace: Trace { warp: WarpState::Plus, ..off.trace }, latency: Duration::ZERO };
        let node = Some("9.9.9.9".parse().unwrap());
        assert!(matches!(judge(Ok(on.clone()), node), Verdict::Bad { result: "same_ip", .. }));
        assert!(matches!(judge(Ok(on), Some("8.8.8.8".parse().unwrap())), Verdict::Good(_)));
    }

    #[test]
    fn restarts_wait_each_time_and_stop_at_the_cap() {
        let mut r = Restarts::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(10);
        let s = Duration::from_secs;
        assert_eq!(r.step(false, t0, after, 2), RestartStep::Nothing);
        assert_eq!(r.step(false, t0 + s(10), after, 2), RestartStep::Restart);
        assert_eq!(r.step(false, t0 + s(15), after, 2), RestartStep::Nothing, "the restart gets its time");
        assert_eq!(r.step(false, t0 + s(20), after, 2), RestartStep::Restart);
        assert_eq!(r.step(false, t0 + s(30), after, 2), RestartStep::Capped { first: true });
        assert_eq!(r.step(false, t0 + s(40), after, 2), RestartStep::Capped { first: false });
        assert_eq!(r.step(true, t0 + s(50), after, 2), RestartStep::Nothing);
        // An hour after the first restart, one is allowed again.
        assert_eq!(r.step(false, t0 + s(3611), after, 2), RestartStep::Nothing, "down again: wait first");
        assert_eq!(r.step(false, t0 + s(3621), after, 2), RestartStep::Restart);
    }
}

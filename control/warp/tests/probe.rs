//! Probes through a real SOCKS5 server (Debian's microsocks) to a trace server on
//! loopback: each fault gives a clear verdict and message, never a crash or a hang.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use constellation_testkit::warp::{HttpProxy, Socks, TraceMode, TraceServer};
use constellation_testkit::{eventually, take_port};
use constellation_warp::GatewayStatus;

type Rx = tokio::sync::watch::Receiver<std::sync::Arc<Vec<GatewayStatus>>>;

fn status(rx: &Rx) -> GatewayStatus {
    rx.borrow()[0].clone()
}

/// Wait until the first gateway's verdict is `up`.
async fn until_up(rx: &Rx, up: bool) {
    eventually(&format!("gateway up = {up}"), Duration::from_secs(5), || async move {
        let st = status(rx);
        if st.up == up {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
}

use constellation_warp::probe::{GatewayProber, ProbeError};
use constellation_warp::{GatewayConfig, WarpConfig, WarpMetrics, WarpMonitor, WarpState};

fn gateway(socks: &Socks, trace: &TraceServer, timeout_ms: u64) -> GatewayConfig {
    let mut g = GatewayConfig::socks5("warp", &socks.addr());
    g.trace_url = trace.url();
    g.interval_ms = timeout_ms.max(200);
    g.timeout_ms = Some(timeout_ms);
    g
}

#[tokio::test]
async fn probe_outcomes_through_microsocks() {
    let trace = TraceServer::start(0, "203.0.113.7").await;
    let mut socks = Socks::start(take_port());
    let g = gateway(&socks, &trace, 800);
    assert!(WarpConfig { gateways: vec![g.clone()] }.validate().is_empty());
    let prober = GatewayProber::new(&g, None).unwrap();

    let ok = prober.probe(&g).await.unwrap();
    assert_eq!(ok.trace.ip, "203.0.113.7".parse::<IpAddr>().unwrap());
    assert_eq!((ok.trace.warp, ok.trace.colo.as_deref()), (WarpState::On, Some("TST")));
    assert_eq!(trace.requests.load(std::sync::atomic::Ordering::Relaxed), 1, "the request went through");

    trace.set(TraceMode::Garbage);
    let e = prober.probe(&g).await.unwrap_err();
    assert!(matches!(e, ProbeError::Trace(_)), "{e}");
    assert!(e.to_string().contains("no ip= line"), "{e}");

    trace.set(TraceMode::Status(403));
    let e = prober.probe(&g).await.unwrap_err();
    assert_eq!(e.to_string(), "trace page answered HTTP 403");

    trace.set(TraceMode::Hang);
    let started = Instant::now();
    let e = prober.probe(&g).await.unwrap_err();
    assert!(matches!(e, ProbeError::Timeout(800)), "{e}");
    assert!(started.elapsed() < Duration::from_millis(1500), "bounded by the timeout: {:?}", started.elapsed());

    socks.stop();
    let e = prober.probe(&g).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ProbeError::Unreachable { .. }), "{text}");
    assert!(text.starts_with(&format!("through socks5 {}", socks.addr())), "{text}");
    eprintln!("killed gateway: {text}");

    // A SOCKS server that demands credentials refuses our greeting.
    let strict = Socks::start_with_auth(take_port(), "u", "secret");
    let g2 = gateway(&strict, &trace, 800);
    let e = GatewayProber::new(&g2, None).unwrap().probe(&g2).await.unwrap_err();
    assert!(matches!(e, ProbeError::Unreachable { .. }), "{e}");
    eprintln!("refusing gateway: {e}");
}

#[tokio::test]
async fn monitor_follows_the_gateway_with_rise_and_fall() {
    let trace = TraceServer::start(0, "203.0.113.8").await;
    let mut socks = Socks::start(take_port());
    let g = gateway(&socks, &trace, 150);
    let (_ip_tx, ip_rx) = tokio::sync::watch::channel(Some("198.51.100.1".parse::<IpAddr>().unwrap()));
    let metrics = WarpMetrics::unregistered();
    let monitor = WarpMonitor::start(&WarpConfig { gateways: vec![g] }, ip_rx, metrics.clone()).await;
    let rx = monitor.subscribe();
    until_up(&rx, true).await;
    let st = status(&rx);
    assert_eq!((st.warp, st.differs_from_node_ip), (Some(WarpState::On), Some(true)));
    assert_eq!(metrics.up.with_label_values(&["warp"]).get(), 1);

    // warp=off: connected, but not through WARP — down after `fall` (3) probes.
    trace.set(TraceMode::Trace { ip: "198.51.100.1".into(), warp: "off".into() });
    until_up(&rx, false).await;
    let st = status(&rx);
    assert!(st.last_error.as_deref().unwrap().starts_with("warp=off"), "{st:?}");
    assert!(st.streak <= -3, "fall = 3: {st:?}");

    trace.set(TraceMode::Trace { ip: "203.0.113.8".into(), warp: "plus".into() });
    until_up(&rx, true).await;
    assert!(status(&rx).streak >= 2, "rise = 2");

    socks.stop();
    until_up(&rx, false).await;
    assert_eq!(metrics.up.with_label_values(&["warp"]).get(), 0);
    assert!(metrics.probes.with_label_values(&["warp", "unreachable"]).get() >= 3);
    socks.restart();
    until_up(&rx, true).await;
    assert!(metrics.probes.with_label_values(&["warp", "warp_off"]).get() >= 3);
    assert!(metrics.probe_seconds.with_label_values(&["warp"]).get_sample_count() >= 10);
}

#[tokio::test]
async fn probe_through_an_http_proxy() {
    let trace = TraceServer::start(0, "203.0.113.10").await;
    let proxy = HttpProxy::start(take_port());
    let mut g = GatewayConfig::socks5("warp-http", "unused:1");
    g.socks5 = None;
    g.http_proxy = Some(proxy.addr());
    g.trace_url = trace.url();
    g.interval_ms = 1000;
    assert!(WarpConfig { gateways: vec![g.clone()] }.validate().is_empty());
    let prober = GatewayProber::new(&g, None).unwrap();
    let ok = prober.probe(&g).await.unwrap();
    assert_eq!(ok.trace.ip, "203.0.113.10".parse::<IpAddr>().unwrap());
    assert_eq!(trace.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(proxy);
    let e = prober.probe(&g).await.unwrap_err();
    assert!(e.to_string().starts_with("through http-proxy 127.0.0.1:"), "{e}");
}

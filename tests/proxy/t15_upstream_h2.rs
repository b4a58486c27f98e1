//! HTTP/2 to upstreams: `h2c://` servers (cleartext HTTP/2 with prior knowledge, what
//! gRPC backends speak) carry many concurrent requests on few connections; a dead h2c
//! server is failed over like any other; `https://` servers get h2 through ALPN.
//!
//! Not here: gRPC trailers end to end. Pingora 0.9.1 drops trailers towards an
//! HTTP/1.1 client (its h1 server does not write them), so they need an h2 client on
//! an h2/h2c entry point (the downstream HTTP/2 work).

use std::time::Duration;

use crate::support::*;

#[test]
fn h2c_upstream_multiplexes_concurrent_requests() {
    run_test(|| async {
        let b = Backend::start_with("grpc", "127.0.0.1:0".parse().unwrap(), Serve::H2c).await.unwrap();
        b.set(Behaviour::Delay(Duration::from_millis(300)));
        let url = format!("h2c://{}", b.addr);
        let agent = Agent::start(&routes("app", "Host(`app`)", &[url], ""), "").await;
        assert_eq!(agent.get("app", "/warm").await.status, 200, "{}", agent.log());

        tracing::info!("phase 1: 40 concurrent requests, each on its own client connection");
        let mut tasks = Vec::new();
        for i in 0..40 {
            let web = agent.web;
            tasks.push(tokio::spawn(async move { fetch(web, "GET", "app", &format!("/r{i}"), &[], &[]).await }));
        }
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            assert_eq!((r.status, r.text()), (200, "grpc\n".to_string()));
        }
        assert_eq!(b.count(), 41);
        assert!(b.hits().iter().all(|h| h.version == "HTTP/2.0"), "{:?}", b.hits());
        // Streams share connections: far fewer connections than requests in flight
        // (a burst opens some at once before the first are pooled: 11 seen under load).
        assert!(b.connections() <= 15, "{} connections for 40 concurrent requests", b.connections());
    });
}

#[test]
fn a_dead_h2c_server_is_failed_over() {
    run_test(|| async {
        let live = Backend::start_with("live", "127.0.0.1:0".parse().unwrap(), Serve::H2c).await.unwrap();
        let urls = vec![format!("h2c://{}", dead_addr()), format!("h2c://{}", live.addr)];
        let agent = Agent::start(&routes("app", "Host(`app`)", &urls, ""), "").await;
        for _ in 0..4 {
            let r = agent.get("app", "/").await;
            assert_eq!((r.status, r.text()), (200, "live\n".to_string()), "{}", agent.log());
        }
        assert!(agent.metric("constellation_upstream_attempts_total", &["outcome=\"connect_error\""]).await >= 1.0);
    });
}

#[test]
fn https_upstream_negotiates_h2_and_multiplexes() {
    run_test(|| async {
        let ca = TestCa::new("internal ca");
        let config = TestCa::server_config(&ca.issue(&["127.0.0.1"]), true, None);
        let b = Backend::start_with("tls", "127.0.0.1:0".parse().unwrap(), Serve::Tls(config)).await.unwrap();
        b.set(Behaviour::Delay(Duration::from_millis(300)));
        let lb = "        serversTransport: internal\n";
        let routes = format!(
            "{}  serversTransports:\n    internal:\n      rootCAs: [ca.pem]\n",
            routes("app", "Host(`app`)", &[format!("https://{}", b.addr)], lb)
        );
        let agent = start_agent_with(&routes, "", "", &[("ca.pem", &ca.cert_pem)], None).await;
        // One connection first: requests that arrive while no h2 connection exists yet
        // each open their own (Pingora does not wait for a handshake under way).
        assert_eq!(agent.get("app", "/warm").await.status, 200, "{}", agent.log());
        let mut tasks = Vec::new();
        for i in 0..30 {
            let web = agent.web;
            tasks.push(tokio::spawn(async move { fetch(web, "GET", "app", &format!("/r{i}"), &[], &[]).await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().status, 200, "{}", agent.log());
        }
        assert!(b.hits().iter().all(|h| h.version == "HTTP/2.0"), "{:?}", b.hits());
        // Streams share connections. Not all on one: a burst opens some at once before
        // the first are pooled (13 seen on a loaded 2-core machine); 30 would mean no
        // multiplexing at all.
        assert!(b.connections() <= 15, "{} connections for 30 concurrent requests", b.connections());
    });
}

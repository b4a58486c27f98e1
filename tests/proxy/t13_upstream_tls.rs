//! TLS to upstreams: `https://` servers verified against a transport's `rootCAs` (by
//! name or IP), the system roots by default, `insecureSkipVerify`, client certificates,
//! ALPN h2 unless `disableHTTP2`; a certificate the proxy refuses is a connect failure,
//! failed over for any method and counted as `tls_error`; https health checks trust
//! what requests trust.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn tls_backend(name: &str, cert: &Issued, h2: bool, client_ca: Option<&TestCa>) -> Backend {
    Backend::start_with(name, any(), Serve::Tls(TestCa::server_config(cert, h2, client_ca))).await.unwrap()
}

/// One router per service (`Host(<service>)`), each service a load balancer over
/// `servers` with an optional `serversTransport`, plus the transports' YAML.
fn config(services: &[(&str, Vec<String>, Option<&str>, &str)], transports: &str) -> String {
    let mut routers = String::new();
    let mut svcs = String::new();
    for (name, servers, transport, extra) in services {
        routers.push_str(&format!("    {name}:\n      rule: \"Host(`{name}`)\"\n      service: {name}\n"));
        let servers: String = servers.iter().map(|s| format!("          - url: \"{s}\"\n")).collect();
        let transport = transport.map(|t| format!("        serversTransport: {t}\n")).unwrap_or_default();
        svcs.push_str(&format!("    {name}:\n      loadBalancer:\n{transport}        servers:\n{servers}{extra}"));
    }
    format!("http:\n  routers:\n{routers}  services:\n{svcs}  serversTransports:\n{transports}")
}

const HOSTS: &str = "[resolver]\nhosts_file = \"hosts\"\n";

async fn agent(routes: &str, files: &[(&str, &str)]) -> Agent {
    let mut files = files.to_vec();
    files.push(("hosts", "127.0.0.1 app.test other.test\n"));
    start_agent_with(routes, "", HOSTS, &files, None).await
}

#[test]
fn https_upstream_verified_against_root_cas_by_name_and_ip_with_h2() {
    run_test(|| async {
        let ca = TestCa::new("internal ca");
        let cert = ca.issue(&["app.test", "127.0.0.1"]);
        let b = tls_backend("good", &cert, true, None).await;
        let by_name = format!("https://app.test:{}", b.addr.port());
        let by_ip = format!("https://127.0.0.1:{}", b.addr.port());
        let routes = config(
            &[
                ("named", vec![by_name], Some("internal"), ""),
                ("ip", vec![by_ip], Some("internal"), ""),
                ("h1", vec![format!("https://app.test:{}", b.addr.port())], Some("h1only"), ""),
            ],
            "    internal:\n      rootCAs: [ca.pem]\n    h1only:\n      rootCAs: [ca.pem]\n      disableHTTP2: true\n",
        );
        let agent = agent(&routes, &[("ca.pem", &ca.cert_pem)]).await;

        tracing::info!("phase 1: by name, verified; h2 negotiated by ALPN");
        let r = agent.get("named", "/x").await;
        assert_eq!((r.status, r.text()), (200, "good\n".to_string()), "{}", agent.log());
        assert_eq!(b.hits().last().unwrap().version, "HTTP/2.0");

        tracing::info!("phase 2: by IP literal: no SNI, the certificate's IP address is verified");
        let r = agent.get("ip", "/y").await;
        assert_eq!(r.status, 200, "{}", agent.log());

        tracing::info!("phase 3: disableHTTP2 speaks HTTP/1.1");
        let r = agent.get("h1", "/z").await;
        assert_eq!(r.status, 200, "{}", agent.log());
        let hit = b.hits().into_iter().find(|h| h.path == "/z").unwrap();
        assert_eq!(hit.version, "HTTP/1.1");
        assert_eq!(agent.metric("constellation_upstream_attempts_total", &["outcome=\"tls_error\""]).await, 0.0);
    });
}

#[test]
fn refused_certificates_fail_over_for_any_method_and_are_counted() {
    let _not_during_the_flood = FLOOD.blocking_read();
    run_test(|| async {
        let ca = TestCa::new("internal ca");
        // Not signed by the trusted CA; signed by it but for another name; good.
        let untrusted = tls_backend("untrusted", &TestCa::self_signed(&["app.test"]), false, None).await;
        let wrong_name = tls_backend("wrong-name", &ca.issue(&["other.test"]), false, None).await;
        let good = tls_backend("good", &ca.issue(&["app.test"]), false, None).await;
        let servers: Vec<String> =
            [&untrusted, &wrong_name, &good].iter().map(|b| format!("https://app.test:{}", b.addr.port())).collect();
        let routes = config(&[("app", servers, Some("internal"), "")], "    internal:\n      rootCAs: [ca.pem]\n");
        let agent = agent(&routes, &[("ca.pem", &ca.cert_pem)]).await;

        tracing::info!("phase 1: GETs and POSTs all reach the good server");
        let mut c = agent.client();
        for i in 0..6 {
            let method = if i % 2 == 0 { "GET" } else { "POST" };
            let r = c.request(method, "app", "/", &[], b"payload").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "good\n".to_string()), "{method}: {}", agent.log());
        }
        assert_eq!(good.count(), 6);
        assert_eq!((untrusted.count(), wrong_name.count()), (0, 0), "nothing is sent over a refused handshake");
        assert!(untrusted.handshake_failures() >= 1 && wrong_name.handshake_failures() >= 1);

        tracing::info!("phase 2: counted as TLS failures, blamed on those upstreams");
        let tls =
            agent.metric("constellation_upstream_attempts_total", &["service=\"app\"", "outcome=\"tls_error\""]).await;
        assert!(tls >= 2.0, "{}", agent.metrics().await);
        assert!(agent.metric("constellation_retries_total", &["reason=\"tls_error\""]).await >= 2.0);
        let status = agent.status().await;
        for b in [&untrusted, &wrong_name] {
            let url = format!("https://app.test:{}", b.addr.port());
            let failures = upstream_status(&status, "app", &url)["failures"].as_u64().unwrap_or(0);
            assert!(failures >= 1, "{url}: {status:#}");
        }
    });
}

#[test]
fn system_roots_by_default_and_insecure_skip_verify() {
    run_test(|| async {
        let b = tls_backend("selfsigned", &TestCa::self_signed(&["app.test"]), false, None).await;
        let url = format!("https://app.test:{}", b.addr.port());
        let routes = config(
            &[("default", vec![url.clone()], None, ""), ("insecure", vec![url], Some("skip"), "")],
            "    skip:\n      insecureSkipVerify: true\n",
        );
        let agent = agent(&routes, &[]).await;

        tracing::info!("phase 1: a certificate not in the system roots is refused");
        let r = agent.get("default", "/").await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(b.count(), 0);
        assert!(
            agent
                .metric("constellation_upstream_attempts_total", &["service=\"default\"", "outcome=\"tls_error\""])
                .await
                >= 1.0
        );

        tracing::info!("phase 2: insecureSkipVerify accepts it");
        let r = agent.get("insecure", "/").await;
        assert_eq!((r.status, r.text()), (200, "selfsigned\n".to_string()), "{}", agent.log());
    });
}

#[test]
fn client_certificates_are_presented_to_servers_requiring_them() {
    run_test(|| async {
        let ca = TestCa::new("server ca");
        let clients = TestCa::new("client ca");
        let client = clients.issue(&["proxy.test"]);
        let b = tls_backend("mtls", &ca.issue(&["app.test"]), false, Some(&clients)).await;
        let url = format!("https://app.test:{}", b.addr.port());
        let routes = config(
            &[("with", vec![url.clone()], Some("mtls"), ""), ("without", vec![url], Some("plain"), "")],
            "    mtls:\n      rootCAs: [ca.pem]\n      certificates:\n        - certFile: client.pem\n          keyFile: client.key\n\
             \x20   plain:\n      rootCAs: [ca.pem]\n",
        );
        let files =
            [("ca.pem", ca.cert_pem.as_str()), ("client.pem", &client.cert_pem), ("client.key", &client.key_pem)];
        let agent = agent(&routes, &files).await;

        let r = agent.get("with", "/").await;
        assert_eq!((r.status, r.text()), (200, "mtls\n".to_string()), "{}", agent.log());
        let r = agent.get("without", "/").await;
        assert_eq!(r.status, 502, "the server refuses a client without a certificate");
        assert_eq!(b.count(), 1);
        // The key never shows in status, the Traefik view or the log.
        let key_line = client.key_pem.lines().nth(1).unwrap();
        assert!(!agent.log().contains(key_line));
        assert!(!agent.admin_get("/api/v1/traefik").await.text().contains(key_line));
    });
}

#[test]
fn bad_transport_files_are_reload_errors_and_the_table_stays() {
    run_test(|| async {
        let ca = TestCa::new("internal ca");
        let b = tls_backend("good", &ca.issue(&["app.test"]), false, None).await;
        let url = format!("https://app.test:{}", b.addr.port());
        let good =
            config(&[("app", vec![url.clone()], Some("internal"), "")], "    internal:\n      rootCAs: [ca.pem]\n");
        let agent = agent(&good, &[("ca.pem", &ca.cert_pem), ("garbage.pem", "not a certificate\n")]).await;
        assert_eq!(agent.get("app", "/").await.status, 200, "{}", agent.log());

        for (file, expect) in [("missing.pem", "cannot read"), ("garbage.pem", "no PEM certificate")] {
            let bad = good.replace("rootCAs: [ca.pem]", &format!("rootCAs: [{file}]"));
            agent.dir.write("routes.yaml", &bad);
            wait_for("the reload error", Duration::from_secs(10), || async {
                agent.status().await["config"]["last_reload"]["errors"].to_string().contains(expect)
            })
            .await;
            let errors = agent.status().await["config"]["last_reload"]["errors"].to_string();
            assert!(errors.contains(file) && errors.contains("rootCAs[0]"), "{errors}");
            assert_eq!(agent.get("app", "/").await.status, 200, "the previous table stays");
        }
    });
}

#[test]
fn https_health_checks_use_the_transport_trust() {
    run_test(|| async {
        let ca = TestCa::new("internal ca");
        let trusted = tls_backend("trusted", &ca.issue(&["app.test"]), false, None).await;
        let untrusted = tls_backend("untrusted", &TestCa::self_signed(&["app.test"]), false, None).await;
        let urls: Vec<String> =
            [&trusted, &untrusted].iter().map(|b| format!("https://app.test:{}", b.addr.port())).collect();
        let check = "        healthCheck:\n          path: /healthz\n          interval: 100ms\n          timeout: 1s\n          rise: 1\n          fall: 1\n";
        let routes =
            config(&[("app", urls.clone(), Some("internal"), check)], "    internal:\n      rootCAs: [ca.pem]\n");
        let agent = agent(&routes, &[("ca.pem", &ca.cert_pem)]).await;
        wait_for("the untrusted server marked down", Duration::from_secs(10), || async {
            upstream_status(&agent.status().await, "app", &urls[1])["healthy"].as_bool() == Some(false)
        })
        .await;
        assert_eq!(upstream_status(&agent.status().await, "app", &urls[0])["healthy"].as_bool(), Some(true));
        assert!(trusted.hits().iter().any(|h| h.path == "/healthz"));
        assert_eq!(untrusted.count(), 0, "no check request is sent over a refused handshake");
        assert!(agent.log().contains("health check: upstream marked unhealthy"), "{}", agent.log());
    });
}

//! HTTP/2: ALPN h2 on the TLS entry point, many streams on one connection, h2c on an
//! `h2c = true` plain entry point, failover of a GET over h2.

use crate::support::*;

#[test]
fn h2_over_alpn_carries_100_concurrent_streams_on_one_connection() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let a = ca.leaf(&["a.test"]);
        let routes = tls_routes(
            &[("a", "Host(`a.test`)", Some("{}"))],
            &backend.url(),
            "tls:\n  certificates:\n    - {certFile: a.crt, keyFile: a.key}\n",
        );
        let (ep, secure) = websecure("");
        let agent = start_agent_with(&routes, "", &ep, &[("a.crt", &a.cert), ("a.key", &a.key)], None).await;
        let s = connect(secure, Some("a.test"), &["h2", "http/1.1"]).await.unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2 negotiated");
        drop(s);

        let ca_file = agent.dir.write("ca.pem", &ca.pem);
        let resolve = format!("a.test:{}:127.0.0.1", secure.port());
        let url = format!("https://a.test:{}/s[1-100]", secure.port());
        let (code, out, err) = curl(&[
            "--http2",
            "--parallel",
            "--parallel-max",
            "100",
            "--resolve",
            &resolve,
            "--cacert",
            ca_file.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code} %{num_connects}\n",
            &url,
        ]);
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 100, "{out}");
        assert!(lines.iter().all(|l| l.starts_with("2 200 ")), "{out}");
        let connects: u32 = lines.iter().map(|l| l.rsplit(' ').next().unwrap().parse::<u32>().unwrap()).sum();
        assert_eq!(connects, 1, "all 100 streams on one connection: {out}");
        assert_eq!(backend.count(), 100);

        // http2 = false on an entry point: ALPN picks HTTP/1.1.
        drop(agent);
        let (ep, secure) = websecure("http2 = false");
        let _agent = start_agent_with(&routes, "", &ep, &[("a.crt", &a.cert), ("a.key", &a.key)], None).await;
        let s = connect(secure, Some("a.test"), &["h2", "http/1.1"]).await.unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    });
}

#[test]
fn h2c_on_an_h2c_entry_point_and_failover_over_h2() {
    run_test(|| async {
        let live = Backend::start("live", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let a = ca.leaf(&["a.test"]);
        let dead = format!("http://{}", dead_addr());
        let routes = format!(
            "http:\n  routers:\n    a:\n      rule: \"Host(`a.test`)\"\n      service: app\n      tls: {{}}\n    p:\n      rule: \"Host(`p.test`)\"\n      service: app\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"{dead}\"\n          - url: \"{}\"\ntls:\n  certificates:\n    - {{certFile: a.crt, keyFile: a.key}}\n",
            live.url()
        );
        let h2c_port = free_port();
        let (mut ep, secure) = websecure("");
        ep.push_str(&format!("[entrypoints.cleartext]\naddress = \"127.0.0.1:{h2c_port}\"\nh2c = true\n"));
        let agent = start_agent_with(&routes, "", &ep, &[("a.crt", &a.cert), ("a.key", &a.key)], None).await;

        // h2c with prior knowledge on the h2c entry point; HTTP/1.1 still works there.
        let url = format!("http://127.0.0.1:{h2c_port}/");
        let (code, out, err) = curl(&["--http2-prior-knowledge", "-H", "Host: p.test", "-w", " %{http_version}", &url]);
        assert_eq!((code, out.as_str()), (0, "live\n 2"), "{err}");
        let (code, out, err) = curl(&["--http1.1", "-H", "Host: p.test", "-w", " %{http_version}", &url]);
        assert_eq!((code, out.as_str()), (0, "live\n 1.1"), "{err}");
        // Not on the plain `web` entry point without h2c.
        let web = format!("http://127.0.0.1:{}/", agent.web.port());
        let (code, _, _) = curl(&["--http2-prior-knowledge", "-H", "Host: p.test", &web]);
        assert_ne!(code, 0, "h2c refused where h2c = false");

        // Over h2, every GET reaches the live server although the dead one comes first
        // in turn.
        let ca_file = agent.dir.write("ca.pem", &ca.pem);
        let resolve = format!("a.test:{}:127.0.0.1", secure.port());
        let url = format!("https://a.test:{}/f[1-6]", secure.port());
        let (code, out, err) = curl(&[
            "--http2",
            "--resolve",
            &resolve,
            "--cacert",
            ca_file.to_str().unwrap(),
            "-w",
            " %{http_version} %{http_code}\n",
            &url,
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.matches("live\n 2 200\n").count(), 6, "{out}");
        // The dead server was tried (and failed over from) at least once.
        let retries = agent.metric("constellation_retries_total", &["service=\"app\""]).await;
        assert!(retries >= 1.0, "{}", agent.metrics().await);
    });
}

#[test]
fn grpc_style_trailers_pass_from_an_h2c_upstream_to_an_h2_client() {
    run_test(|| async {
        let backend = Backend::start_with("grpc", "127.0.0.1:0".parse().unwrap(), Serve::H2c).await.unwrap();
        backend.set(Behaviour::Trailers);
        let ca = Ca::new("Test CA");
        let a = ca.leaf(&["a.test"]);
        let server = format!("h2c://{}", backend.addr);
        let routes = tls_routes(
            &[("a", "Host(`a.test`)", Some("{}"))],
            &server,
            "tls:\n  certificates:\n    - {certFile: a.crt, keyFile: a.key}\n",
        );
        let (ep, secure) = websecure("");
        let agent = start_agent_with(&routes, "", &ep, &[("a.crt", &a.cert), ("a.key", &a.key)], None).await;
        let ca_file = agent.dir.write("ca.pem", &ca.pem);
        let resolve = format!("a.test:{}:127.0.0.1", secure.port());
        let url = format!("https://a.test:{}/pkg.Service/Call", secure.port());
        // curl prints HTTP/2 trailers with the headers (-D -), after the body's head.
        let (code, out, err) = curl(&[
            "--http2",
            "--resolve",
            &resolve,
            "--cacert",
            ca_file.to_str().unwrap(),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &url,
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("HTTP/2 200"), "{out}");
        let lower = out.to_ascii_lowercase();
        assert!(lower.contains("grpc-status: 0"), "trailer grpc-status kept: {out}");
        assert!(lower.contains("grpc-message: done"), "trailer grpc-message kept: {out}");
        assert_eq!(backend.count(), 1);
    });
}

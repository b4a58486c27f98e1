//! Routers with `tls` on TLS entry points only (and the others on plain ones only),
//! the redirect to HTTPS, and what the backend is told.

use std::time::Duration;

use crate::support::*;

#[test]
fn tls_routers_only_on_tls_entry_points_redirects_and_forwarded_proto() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let s = ca.leaf(&["secure.test"]);
        let routes = tls_routes(
            &[("secure", "Host(`secure.test`)", Some("{}")), ("plain", "Host(`plain.test`)", None)],
            &backend.url(),
            "tls:\n  certificates:\n    - {certFile: s.crt, keyFile: s.key}\n",
        );
        let redir_port = free_port();
        let (mut ep, secure) = websecure("");
        ep.push_str(&format!(
            "[entrypoints.redir]\naddress = \"127.0.0.1:{redir_port}\"\nredirect_to = \"websecure\"\n\
             [entrypoints.temp]\naddress = \"127.0.0.1:{}\"\nredirect_to = \"websecure\"\nredirect_permanent = false\n",
            free_port()
        ));
        let agent = start_agent_with(&routes, "", &ep, &[("s.crt", &s.cert), ("s.key", &s.key)], None).await;

        // The tls router is not served on the plain entry point, the plain one not on TLS.
        assert_eq!(agent.get("secure.test", "/").await.status, 404);
        assert_eq!(agent.get("plain.test", "/").await.status, 200);
        let mut c = connect(secure, Some("plain.test"), &["http/1.1"]).await.unwrap();
        assert_eq!(request(&mut c, "plain.test", "/", true).await.0, 404);

        // The backend hears https.
        backend.clear();
        let mut c = connect(secure, Some("secure.test"), &["http/1.1"]).await.unwrap();
        let (status, text) = request(&mut c, "secure.test", "/x", true).await;
        assert_eq!(status, 200, "{text}");
        let hit = backend.hits().pop().unwrap();
        assert_eq!(hit.header("x-forwarded-proto"), Some("https"));
        assert_eq!(hit.header("x-forwarded-port"), Some(secure.port().to_string().as_str()));

        // Redirects: 301 for GET, 308 for POST; 302/307 when not permanent.
        let redir = std::net::SocketAddr::from(([127, 0, 0, 1], redir_port));
        let r = fetch(redir, "GET", "secure.test", "/p?q=1", &[], &[]).await.unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(r.header("location"), Some(format!("https://secure.test:{}/p?q=1", secure.port()).as_str()));
        let r = fetch(redir, "POST", "secure.test", "/p", &[], b"x").await.unwrap();
        assert_eq!(r.status, 308);
        let temp = agent_port(&agent, "temp").await;
        let r = fetch(temp, "GET", "secure.test", "/", &[], &[]).await.unwrap();
        assert_eq!(r.status, 302);
        let r = fetch(temp, "DELETE", "secure.test", "/", &[], &[]).await.unwrap();
        assert_eq!(r.status, 307);

        // curl follows it to the TLS entry point and gets the router's answer.
        let ca_file = agent.dir.write("ca.pem", &ca.pem);
        let resolve = format!("secure.test:{}:127.0.0.1", secure.port());
        let resolve2 = format!("secure.test:{redir_port}:127.0.0.1");
        let url = format!("http://secure.test:{redir_port}/followed");
        let (code, out, err) = curl(&[
            "-L",
            "--resolve",
            &resolve,
            "--resolve",
            &resolve2,
            "--cacert",
            ca_file.to_str().unwrap(),
            "-w",
            " %{http_code} %{url_effective}",
            &url,
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("app\n 200 https://secure.test:{}/followed", secure.port()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
}

/// The address of entry point `name`, from status.
async fn agent_port(agent: &Agent, name: &str) -> std::net::SocketAddr {
    let s = agent.status().await;
    let ep = s["entrypoints"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap().clone();
    ep["address"].as_str().unwrap().parse().unwrap()
}

#[test]
fn redirect_to_must_name_a_tls_entry_point() {
    run_test(|| async {
        let dir = Scratch::new("tlsredir");
        dir.write(
            "agent.toml",
            "[entrypoints.web]\naddress = \"127.0.0.1:1\"\nredirect_to = \"web2\"\n[entrypoints.web2]\naddress = \"127.0.0.1:2\"\n",
        );
        let (code, out, err) =
            run(&["config", "check", dir.path("agent.toml").to_str().unwrap()], dir.path("").as_path());
        assert_eq!(code, 78, "{out}{err}");
        assert!(
            err.contains(":3:") && err.contains("entrypoints.web.redirect_to") && err.contains("tls = true"),
            "{err}"
        );
    });
}

#[test]
fn entry_point_tls_defaults_serve_plain_routers_there_with_tls_and_keep_their_plain_side() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let a = ca.leaf(&["a.test"]);
        // `both` lists no entry point (it is on web and websecure), `only` lists websecure.
        let routes = format!(
            "http:\n  routers:\n    both:\n      rule: \"Host(`a.test`)\"\n      service: app\n    only:\n      rule: \"Host(`a.test`) && PathPrefix(`/only`)\"\n      entryPoints: [websecure]\n      service: app\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"{}\"\ntls:\n  certificates:\n    - {{certFile: a.crt, keyFile: a.key}}\n  options:\n    modern:\n      minVersion: VersionTLS13\n",
            backend.url()
        );
        let (ep, secure) = websecure("[entrypoints.websecure.http.tls]\noptions = \"modern\"\n");
        let agent = start_agent_with(&routes, "", &ep, &[("a.crt", &a.cert), ("a.key", &a.key)], None).await;

        // Plain side unchanged; TLS side served with the entry point's options (TLS 1.3).
        assert_eq!(agent.get("a.test", "/").await.status, 200);
        let mut c = connect(secure, Some("a.test"), &["http/1.1"]).await.unwrap();
        assert_eq!(c.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(request(&mut c, "a.test", "/", true).await.0, 200);
        let mut c = connect(secure, Some("a.test"), &["http/1.1"]).await.unwrap();
        assert_eq!(request(&mut c, "a.test", "/only/x", true).await.0, 200);
        assert_eq!(agent.get("a.test", "/only/x").await.status, 200, "web: matched by `both`, not `only`");
        let (code, _, err) = curl(&[
            "-k",
            "--tls-max",
            "1.2",
            "--resolve",
            &format!("a.test:{}:127.0.0.1", secure.port()),
            &format!("https://a.test:{}/", secure.port()),
        ]);
        assert_ne!(code, 0, "TLS 1.2 refused by the entry point's options: {err}");

        let s = agent.status().await;
        let names: Vec<&str> = s["routes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"both") && names.contains(&"websecure-both") && names.contains(&"only"), "{names:?}");

        // A TLS default on a plain entry point is a configuration error naming the key.
        let dir = Scratch::new("eptls");
        let file = dir.write(
            "agent.toml",
            "[entrypoints.web]\naddress = \"127.0.0.1:18080\"\n[entrypoints.web.http.tls]\ncertResolver = \"default\"\n",
        );
        let out = std::process::Command::new(binary()).args(["config", "check"]).arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(78));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("entrypoints.web.http.tls") && err.contains("tls = true"), "{err}");
    });
}

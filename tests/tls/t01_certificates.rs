//! Which certificate a handshake gets: by SNI, wildcard, the default, sniStrict.

use std::time::Duration;

use crate::support::*;

fn certs_yaml(default: bool, strict: bool) -> String {
    let mut y = String::from(
        "tls:\n  certificates:\n    - certFile: a.crt\n      keyFile: a.key\n    - certFile: b.crt\n      keyFile: b.key\n    - certFile: w.crt\n      keyFile: w.key\n",
    );
    if default {
        y.push_str(
            "  stores:\n    default:\n      defaultCertificate:\n        certFile: d.crt\n        keyFile: d.key\n",
        );
    }
    if strict {
        y.push_str("  options:\n    strict:\n      sniStrict: true\n");
    }
    y
}

#[test]
fn each_name_gets_its_certificate_and_unknown_names_the_default() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let (a, b, w, d) =
            (ca.leaf(&["a.test"]), ca.leaf(&["b.test"]), ca.leaf(&["*.w.test"]), ca.leaf(&["default.test"]));
        let routes = tls_routes(
            &[("a", "Host(`a.test`)", Some("{}")), ("b", "Host(`b.test`)", Some("{}"))],
            &backend.url(),
            &certs_yaml(true, false),
        );
        let (ep, secure) = websecure("");
        let files = [
            ("a.crt", a.cert.as_str()),
            ("a.key", a.key.as_str()),
            ("b.crt", b.cert.as_str()),
            ("b.key", b.key.as_str()),
            ("w.crt", w.cert.as_str()),
            ("w.key", w.key.as_str()),
            ("d.crt", d.cert.as_str()),
            ("d.key", d.key.as_str()),
        ];
        let agent = start_agent_with(&routes, "", &ep, &files, None).await;
        assert_eq!(served_cert(secure, Some("a.test")).await.unwrap(), a.der);
        assert_eq!(served_cert(secure, Some("b.test")).await.unwrap(), b.der);
        assert_eq!(served_cert(secure, Some("x.w.test")).await.unwrap(), w.der, "wildcard");
        assert_eq!(served_cert(secure, Some("y.x.w.test")).await.unwrap(), d.der, "a wildcard covers one label");
        assert_eq!(served_cert(secure, Some("unknown.test")).await.unwrap(), d.der, "unknown name: the default");
        assert_eq!(served_cert(secure, None).await.unwrap(), d.der, "no SNI: the default");

        // curl verifies the chain against the test CA and gets the router's answer.
        let ca_file = agent.dir.write("ca.pem", &ca.pem);
        let resolve = format!("a.test:{}:127.0.0.1", secure.port());
        let url = format!("https://a.test:{}/hello", secure.port());
        let (code, body, err) = curl(&["--resolve", &resolve, "--cacert", ca_file.to_str().unwrap(), &url]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(body, "app\n");

        // Status lists them, with their source; no key material anywhere in it.
        let status = agent.status().await;
        let certs = status["certificates"].as_array().unwrap();
        let a_status = certs.iter().find(|c| c["names"][0] == "a.test").unwrap();
        assert_eq!(a_status["source"], "file");
        assert!(a_status["file"].as_str().unwrap().ends_with("/a.crt"), "{a_status}");
        assert_eq!(a_status["issuer"], "Test CA");
        assert!(a_status["days_left"].as_i64().unwrap() > 300, "{a_status}");
        assert_eq!(certs.last().unwrap()["source"], "default");
        assert!(!status.to_string().contains("PRIVATE KEY"));
        let expiry = agent.metric("constellation_cert_expiry_seconds", &["domain=\"*.w.test\""]).await;
        assert!(expiry > 300.0 * 86_400.0, "{expiry}");
    });
}

#[test]
fn without_a_default_the_self_signed_one_and_sni_strict_refuses_unknown_names() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let (a, b, w) = (ca.leaf(&["a.test"]), ca.leaf(&["b.test"]), ca.leaf(&["*.w.test"]));
        let files = [
            ("a.crt", a.cert.as_str()),
            ("a.key", a.key.as_str()),
            ("b.crt", b.cert.as_str()),
            ("b.key", b.key.as_str()),
            ("w.crt", w.cert.as_str()),
            ("w.key", w.key.as_str()),
        ];
        // `default` options are strict here: every name not covered is refused.
        let routes = tls_routes(&[("a", "Host(`a.test`)", Some("{}"))], &backend.url(), &certs_yaml(false, false))
            .replace("  certificates:", "  options:\n    default:\n      sniStrict: true\n  certificates:");
        let (ep, secure) = websecure("");
        let agent = start_agent_with(&routes, "", &ep, &files, None).await;
        assert_eq!(served_cert(secure, Some("a.test")).await.unwrap(), a.der);
        assert!(served_cert(secure, Some("unknown.test")).await.is_err(), "sniStrict: unknown name refused");
        assert!(served_cert(secure, None).await.is_err(), "sniStrict: no SNI refused");
        // The client sees the alert before the agent counts the failure: wait for it.
        eventually("both refused handshakes counted", std::time::Duration::from_secs(5), || async {
            let failures = agent.metric("constellation_tls_handshake_failures_total", &["reason=\"handshake\""]).await;
            (failures >= 2.0).then_some(()).ok_or_else(|| format!("{failures}"))
        })
        .await;

        // Not strict: the generated self-signed certificate for unknown names.
        agent
            .reload(&tls_routes(&[("a", "Host(`a.test`)", Some("{}"))], &backend.url(), &certs_yaml(false, false)))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let der = served_cert(secure, Some("unknown.test")).await.unwrap();
        assert!(!der.is_empty() && der != a.der && der != b.der);
        let status = agent.status().await;
        let last = status["certificates"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["source"], "self-signed", "{last}");
        assert_eq!(last["issuer"], "CONSTELLATION DEFAULT CERT", "{last}");
        // The same generated certificate every time (made once at start).
        assert_eq!(served_cert(secure, None).await.unwrap(), der);
    });
}

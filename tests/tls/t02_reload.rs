//! Certificate files change on disk: the next handshake gets the new one, open
//! connections keep working; a bad file is a reload error and the old one stays.

use std::time::Duration;

use crate::support::*;

const CERTS: &str = "tls:\n  certificates:\n    - certFile: a.crt\n      keyFile: a.key\n";

#[test]
fn a_rewritten_certificate_is_served_on_the_next_handshake_without_dropping_connections() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let (old, new) = (ca.leaf(&["a.test"]), ca.leaf(&["a.test"]));
        let routes = tls_routes(&[("a", "Host(`a.test`)", Some("{}"))], &backend.url(), CERTS);
        let (ep, secure) = websecure("");
        let files = [("a.crt", old.cert.as_str()), ("a.key", old.key.as_str())];
        let agent = start_agent_with(&routes, "", &ep, &files, None).await;
        let mut kept = connect(secure, Some("a.test"), &["http/1.1"]).await.unwrap();
        assert_eq!(request(&mut kept, "a.test", "/1", false).await.0, 200);
        assert_eq!(kept.get_ref().1.peer_certificates().unwrap()[0].to_vec(), old.der);

        // Key first, then certificate: in between, the pair does not match (an error,
        // the old pair stays served); then the new pair is served.
        agent.dir.write("a.key", &new.key);
        agent.dir.write("a.crt", &new.cert);
        let (_, took) = eventually("new certificate served", Duration::from_secs(10), || async {
            (served_cert(secure, Some("a.test")).await.ok() == Some(new.der.clone()))
                .then_some(())
                .ok_or_else(|| "old certificate".to_string())
        })
        .await;
        assert!(took < Duration::from_secs(5), "{took:?}");
        // The connection opened before the swap still works.
        assert_eq!(request(&mut kept, "a.test", "/2", false).await.0, 200);
        assert_eq!(backend.count(), 2);
    });
}

#[test]
fn a_key_not_matching_its_certificate_or_a_missing_file_keeps_the_old_certificate() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let (good, other) = (ca.leaf(&["a.test"]), ca.leaf(&["a.test"]));
        let routes = tls_routes(&[("a", "Host(`a.test`)", Some("{}"))], &backend.url(), CERTS);
        let (ep, secure) = websecure("");
        let files = [("a.crt", good.cert.as_str()), ("a.key", good.key.as_str())];
        let agent = start_agent_with(&routes, "", &ep, &files, None).await;
        assert_eq!(served_cert(secure, Some("a.test")).await.unwrap(), good.der);

        // Another certificate's key: rejected, naming the file and key.
        agent.dir.write("a.key", &other.key);
        let (errors, _) = eventually("reload rejected", Duration::from_secs(10), || async {
            let s = agent.status().await;
            (s["config"]["last_reload"]["result"] == "invalid")
                .then(|| s["config"]["last_reload"]["errors"].to_string())
                .ok_or_else(|| s["config"]["last_reload"].to_string())
        })
        .await;
        assert!(errors.contains("tls.certificates[0].keyFile"), "{errors}");
        assert!(errors.contains("a.key") && errors.contains("does not match"), "{errors}");
        let line = routes.lines().position(|l| l.contains("keyFile")).unwrap() + 1;
        assert!(errors.contains(&format!("routes.yaml:{line}:")), "file:line:col of the key: {errors}");
        assert!(!errors.contains("PRIVATE"), "{errors}");
        assert_eq!(served_cert(secure, Some("a.test")).await.unwrap(), good.der, "old certificate stays");
        let mut s = connect(secure, Some("a.test"), &["http/1.1"]).await.unwrap();
        assert_eq!(request(&mut s, "a.test", "/", true).await.0, 200);

        // Garbage in the certificate file.
        agent.dir.write("a.key", &good.key);
        agent.dir.write("a.crt", "not a certificate\n");
        let (errors, _) = eventually("garbage rejected", Duration::from_secs(10), || async {
            let s = agent.status().await;
            let e = s["config"]["last_reload"]["errors"].to_string();
            if e.contains("certFile") {
                Ok(e)
            } else {
                Err(e)
            }
        })
        .await;
        assert!(errors.contains("no PEM CERTIFICATE"), "{errors}");

        // The certificate file removed: unreadable, named.
        std::fs::remove_file(agent.dir.path("a.crt")).unwrap();
        let (errors, _) = eventually("missing file rejected", Duration::from_secs(10), || async {
            let s = agent.status().await;
            let e = s["config"]["last_reload"]["errors"].to_string();
            if e.contains("cannot read") {
                Ok(e)
            } else {
                Err(e)
            }
        })
        .await;
        assert!(errors.contains("tls.certificates[0].certFile") && errors.contains("a.crt"), "{errors}");
        assert_eq!(served_cert(secure, Some("a.test")).await.unwrap(), good.der, "old certificate stays");
        assert!(agent.log().contains("route configuration rejected"));
    });
}

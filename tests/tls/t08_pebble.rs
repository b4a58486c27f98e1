//! ACME end to end: real agents order from Pebble (Let's Encrypt's test CA, validating
//! for real through challtestsrv's DNS), and clients that trust only Pebble's issuing
//! root reach the backend over HTTPS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::support::*;

/// A TLS connection to `addr` for `name` that verifies the chain against `root_pem` only.
async fn verified(
    addr: SocketAddr,
    name: &str,
    root_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await
}

/// GET / for `name` over a verified connection: (status, body, served leaf DER).
pub(crate) async fn verified_get(
    addr: SocketAddr,
    name: &str,
    root_pem: &str,
) -> Result<(u16, String, Vec<u8>), String> {
    let mut s = verified(addr, name, root_pem).await.map_err(|e| format!("handshake with {addr}: {e}"))?;
    let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let (status, text) = request(&mut s, name, "/", true).await;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body, leaf))
}

/// GET / for `name` on every node in `addrs` (verified against `root_pem`): `Ok` with
/// the one leaf certificate when all answer 200 with the same certificate.
pub(crate) async fn one_certificate_everywhere(
    addrs: &[SocketAddr],
    name: &str,
    root_pem: &str,
) -> Result<Vec<u8>, String> {
    let mut leaves = Vec::new();
    for addr in addrs {
        let (status, _, leaf) = verified_get(*addr, name, root_pem).await?;
        if status != 200 {
            return Err(format!("{addr}: status {status}"));
        }
        leaves.push(leaf);
    }
    leaves.dedup();
    (leaves.len() == 1).then(|| leaves.remove(0)).ok_or_else(|| "nodes serve different certificates".into())
}

pub(crate) fn acme_toml(pebble: &Pebble, ca_file: &str, extra: &str) -> String {
    format!(
        "[acme]\nemail = \"ops@example.test\"\ndirectory = \"{}\"\nca_file = \"{ca_file}\"\nchallenge = \"http-01\"\n\
         retry_min_ms = 500\nretry_max_ms = 4000\n{extra}",
        pebble.directory_url()
    )
}

#[test]
fn a_single_agent_orders_from_pebble_and_serves_the_certificate_to_a_client_trusting_its_root() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let pebble = Pebble::start(PebbleSpec::default()).await;
        // Pebble validates http-01 on its http port: a second plain entry point there.
        let http01 = pebble.spec().http_port;
        let (ep, secure) = websecure("");
        let extra = format!(
            "{ep}[entrypoints.challenge]\naddress = \"127.0.0.1:{http01}\"\n{}",
            acme_toml(&pebble, "pebble.minica.pem", "")
        );
        let ca_pem = std::fs::read_to_string(pebble.ca_file()).unwrap();
        let routes = tls_routes(&[("app", "Host(`app.test`)", Some("{certResolver: default}"))], &backend.url(), "");
        let agent = start_agent_with(&routes, "", &extra, &[("pebble.minica.pem", &ca_pem)], None).await;
        let root = pebble.issuing_root_pem().await;

        let ((status, body, _), took) = eventually_or(
            "app.test served with a certificate from Pebble",
            Duration::from_secs(60),
            || format!("agent log:\n{}\npebble log:\n{}", agent.log(), pebble.log()),
            || async { verified_get(secure, "app.test", &root).await },
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "app\n"));
        eprintln!("issued and served {took:?} after the agent was ready");

        let s = agent.status().await;
        let acme = &s["acme"];
        assert_eq!(acme["storage"], "file", "{acme}");
        assert_eq!(acme["orderer"], true, "{acme}");
        assert_eq!(acme["certificates"][0]["domains"], serde_json::json!(["app.test"]), "{acme}");
        assert_eq!(acme["certificates"][0]["state"], "valid", "{acme}");
        let served: Vec<_> = s["certificates"].as_array().unwrap().iter().filter(|c| c["source"] == "acme").collect();
        assert_eq!(served.len(), 1, "{}", s["certificates"]);
        assert_eq!(served[0]["names"], serde_json::json!(["app.test"]));
        assert_eq!(agent.metric("constellation_acme_orders_total", &["outcome=\"issued\""]).await, 1.0);
        assert!(agent.metric("constellation_cert_expiry_seconds", &["domain=\"app.test\""]).await > 86_400.0);
        // Plain HTTP still answers on the web entry point; an unknown name gets the
        // default (self-signed) certificate, which a verifying client refuses.
        assert!(verified_get(secure, "other.test", &root).await.is_err());
    });
}

#[test]
fn three_agents_share_one_order_answer_http01_anywhere_fail_over_and_renew_without_a_failed_handshake() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        // Short-lived certificates: renewal comes a third into the lifetime.
        let lifetime = 45;
        let pebble = Pebble::start(PebbleSpec { validity_secs: Some(lifetime), ..PebbleSpec::default() }).await;
        let http01 = pebble.spec().http_port;
        let ca = pebble.ca_file().display().to_string();
        let mut secure = Vec::new();
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let (ep, addr) = websecure("");
            secure.push(addr);
            // Only n3 answers Pebble's http-01 validation, and n3 never orders (no `lb`
            // role): every validation reaches a node that did not place the order.
            let challenge = if i == 3 {
                format!("[entrypoints.challenge]\naddress = \"127.0.0.1:{http01}\"\n")
            } else {
                String::new()
            };
            let roles = if i == 3 { vec![] } else { vec!["lb".to_string()] };
            nodes.push(NodeSpec {
                extra_toml: format!("{ep}{challenge}{}", acme_toml(&pebble, &ca, "renew_before_days = 30\n")),
                roles: Some(roles),
                route_files: vec!["routes.yaml".into()],
                ..NodeSpec::default()
            });
        }
        let mut spec = FleetSpec::new("acme", nodes);
        spec.raft = Some(Timings::FAST);
        let mut fleet = Fleet::new(spec);
        let routes = tls_routes(&[("app", "Host(`app.test`)", Some("{certResolver: default}"))], &backend.url(), "");
        fleet.dir.write("routes.yaml", &routes);
        fleet.start_all(Duration::from_secs(20)).await;
        let root = pebble.issuing_root_pem().await;
        let context = |fleet: &Fleet, pebble: &Pebble| format!("{}\npebble log:\n{}", fleet.dump(), pebble.log());

        // One order; every node serves the same certificate.
        let (first, took) = eventually_or(
            "all three serve app.test with Pebble's certificate",
            Duration::from_secs(60),
            || context(&fleet, &pebble),
            || one_certificate_everywhere(&secure, "app.test", &root),
        )
        .await;
        eprintln!("issued and served by all three {took:?} after start");
        let mut orderers = Vec::new();
        let mut issued = 0.0;
        for i in 1..=3 {
            let s = fleet.node(i).must_status().await;
            assert_eq!(s["acme"]["storage"], "raft", "{}", s["acme"]);
            if s["acme"]["orderer"] == true {
                orderers.push(i);
            }
            issued += fleet.node(i).metric("constellation_acme_orders_total", &["outcome=\"issued\""]).await;
        }
        assert_eq!(orderers.len(), 1, "one orderer: {orderers:?}");
        assert_ne!(orderers[0], 3, "n3 has no lb role and never orders");
        assert_eq!(issued, 1.0, "one order for the cluster");
        let s = fleet.node(3).must_status().await;
        let holder = lease_seen(&s, "acme");
        assert_eq!(holder.holder.as_deref(), Some(fleet.node(orderers[0]).name.as_str()));

        // kill -9 the orderer: the other lb node takes the `acme` lease, and the
        // certificate keeps being served by the survivors without a new order.
        let old = orderers[0];
        let token = holder.token.unwrap();
        fleet.kill(old);
        let survivor = if old == 1 { 2 } else { 1 };
        let ((new_holder, _), moved) = fleet
            .wait_new_holder(
                &[survivor, 3],
                "acme",
                (&fleet.node(old).name.clone(), token),
                Duration::from_secs(20),
                || fleet.dump(),
            )
            .await;
        assert_eq!(new_holder, fleet.node(survivor).name);
        eprintln!("acme lease moved to {new_holder} {moved:?} after kill -9");
        for &i in &[survivor, 3] {
            let (status, _, leaf) = verified_get(secure[i - 1], "app.test", &root).await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(leaf, first, "n{i} serves the stored certificate after the fail-over");
        }

        // Renewal by the new orderer (due a third into the 45 s lifetime): handshakes on
        // both survivors never fail meanwhile, and both end up serving the new one.
        let failures = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let stop = Instant::now() + Duration::from_secs(lifetime);
        let mut probes = Vec::new();
        for &i in &[survivor, 3] {
            let (addr, root, failures, handshakes) =
                (secure[i - 1], root.clone(), failures.clone(), handshakes.clone());
            let first = first.clone();
            probes.push(tokio::spawn(async move {
                let mut last_error = None;
                while Instant::now() < stop {
                    match verified_get(addr, "app.test", &root).await {
                        Ok((200, _, leaf)) => {
                            handshakes.fetch_add(1, Ordering::Relaxed);
                            if leaf != first {
                                return (true, last_error);
                            }
                        }
                        Ok((status, _, _)) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            last_error = Some(format!("status {status}"));
                        }
                        Err(e) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            last_error = Some(e);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (false, last_error)
            }));
        }
        for (p, i) in probes.into_iter().zip([survivor, 3]) {
            let (renewed, last_error) = p.await.unwrap();
            assert!(
                renewed,
                "n{i} did not serve a renewed certificate within {lifetime} s\n{}",
                context(&fleet, &pebble)
            );
            assert!(last_error.is_none(), "n{i}: {last_error:?}");
        }
        assert_eq!(failures.load(Ordering::Relaxed), 0, "failed handshakes during renewal");
        eprintln!("renewed; {} verified handshakes during renewal, none failed", handshakes.load(Ordering::Relaxed));
        let renewed = fleet.node(survivor).metric("constellation_acme_orders_total", &["outcome=\"issued\""]).await;
        assert!(renewed >= 1.0, "the new orderer renewed: {renewed}");
    });
}

//! The ACME orderer against a real Pebble (real validation through challtestsrv): every
//! challenge answered by a real server from the snapshot, chains verified against
//! Pebble's issuing root, restarts, fencing, renewals, bad nonces and a failing CA.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use constellation_acme::{
    Acme, AcmeConfig, AcmeInputs, AcmeMetrics, AcmeSnapshot, AcmeStore, CertState, ChallengeKind, DnsChallenge, Fence,
    FileStore, LeaseFence, LeaseStore, Sealer, SoleNode, Wanted, ACME_LEASE, ACME_TLS_ALPN, HTTP01_PATH_PREFIX,
};
use constellation_lease::{LeaseNode, RaftConfig};
use constellation_testkit::{dead_addr, Pebble, PebbleSpec, Scratch};
use constellation_wire::{generate_key_hex, Keyring};
use http_body_util::Full;
use hyper::{Request, Response};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpListener;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn config(pebble: &Pebble, challenge: ChallengeKind) -> AcmeConfig {
    AcmeConfig {
        email: Some("ops@example.test".into()),
        directory: pebble.directory_url(),
        ca_file: Some(pebble.ca_file()),
        challenge,
        retry_min_ms: 200,
        retry_max_ms: 2_000,
        ..AcmeConfig::default()
    }
}

/// One node on its own: a file store in a fresh scratch directory (kept alive by the
/// returned guard), no sealing, always the orderer.
fn start_alone(
    pebble: &Pebble,
    challenge: ChallengeKind,
    tag: &str,
    names: &[&[&str]],
    dns: Option<Arc<dyn DnsChallenge>>,
) -> (Started, Scratch) {
    let dir = Scratch::new(tag);
    let store: Arc<dyn AcmeStore> = Arc::new(FileStore::open(&dir.path("acme")).unwrap());
    (start(config(pebble, challenge), store, Sealer::new(None), Arc::new(SoleNode), names, dns), dir)
}

fn wanted(names: &[&[&str]]) -> (watch::Sender<Wanted>, watch::Receiver<Wanted>) {
    let set = names.iter().map(|n| n.iter().map(|s| s.to_string()).collect()).collect();
    watch::channel(set)
}

struct Started {
    acme: Acme,
    registry: prometheus::Registry,
    _domains: watch::Sender<Wanted>,
}

fn start(
    config: AcmeConfig,
    store: Arc<dyn AcmeStore>,
    sealer: Sealer,
    fence: Arc<dyn Fence>,
    names: &[&[&str]],
    dns: Option<Arc<dyn DnsChallenge>>,
) -> Started {
    let registry = prometheus::Registry::new();
    let (tx, rx) = wanted(names);
    let acme = Acme::start(AcmeInputs {
        settings: config.validate().unwrap(),
        store,
        sealer,
        fence,
        domains: rx,
        dns,
        metrics: AcmeMetrics::register(&registry).unwrap(),
    })
    .unwrap();
    Started { acme, registry, _domains: tx }
}

fn metric(registry: &prometheus::Registry, name: &str, label: Option<(&str, &str)>) -> f64 {
    let mut total = 0.0;
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            if label.is_none_or(|(k, v)| m.get_label().iter().any(|l| l.name() == k && l.value() == v)) {
                total += m.get_counter().get_value() + m.get_gauge().get_value();
            }
        }
    }
    total
}

fn issued(s: &Started) -> f64 {
    metric(&s.registry, "constellation_acme_orders_total", Some(("outcome", "issued")))
}

async fn wait_snapshot(rx: &mut watch::Receiver<AcmeSnapshot>, what: &str, f: impl Fn(&AcmeSnapshot) -> bool) {
    let done = tokio::time::timeout(WAIT, rx.wait_for(|s| f(s))).await.map(|r| r.is_ok());
    match done {
        Ok(true) => {}
        _ => panic!("timed out waiting for {what}; snapshot status: {:?}", rx.borrow().status),
    }
}

/// The chain's leaf verifies for `name` against Pebble's issuing root.
async fn verify_chain(pebble: &Pebble, chain_pem: &str, name: &str) {
    let root_pem = pebble.issuing_root_pem().await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut chain_pem.as_bytes()).map(|c| c.unwrap()).collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("chain for {name} does not verify against pebble's root: {e}"));
    let other = verifier.verify_server_cert(
        &chain[0],
        &chain[1..],
        &ServerName::try_from("other.test".to_string()).unwrap(),
        &[],
        UnixTime::now(),
    );
    assert!(other.is_err(), "the chain must not verify for a name it does not cover");
}

/// A real HTTP server on `port` answering http-01 from `snapshot` (what every node's
/// proxy does); counts the challenge requests it answered.
async fn serve_http01(port: u16, snapshot: watch::Receiver<AcmeSnapshot>) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (snapshot, counter) = (snapshot.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let answer = req
                        .uri()
                        .path()
                        .strip_prefix(HTTP01_PATH_PREFIX)
                        .and_then(|token| snapshot.borrow().http01.get(token).cloned());
                    if answer.is_some() {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    async move {
                        Ok::<_, Infallible>(match answer {
                            Some(ka) => Response::new(Full::new(Bytes::from(ka))),
                            None => Response::builder().status(404).body(Full::new(Bytes::new())).unwrap(),
                        })
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    hits
}

/// Picks the tls-alpn-01 challenge certificate of the SNI name from the snapshot.
#[derive(Debug)]
struct AlpnResolver(watch::Receiver<AcmeSnapshot>);

impl rustls::server::ResolvesServerCert for AlpnResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let offered = hello.alpn().is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN));
        let name = hello.server_name()?.to_string();
        let cert = self.0.borrow().alpn01.get(&name).cloned()?;
        if !offered {
            return None;
        }
        let chain = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
        let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes()).unwrap().unwrap();
        let key = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
        Some(Arc::new(rustls::sign::CertifiedKey::new(chain, key)))
    }
}

/// A real TLS server on `port` answering tls-alpn-01 from `snapshot`; counts handshakes
/// that negotiated `acme-tls/1`.
async fn serve_alpn01(port: u16, snapshot: watch::Receiver<AcmeSnapshot>) -> Arc<AtomicUsize> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(AlpnResolver(snapshot)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (acceptor, counter) = (acceptor.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    hits
}

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::parse(&generate_key_hex()).unwrap())
}

fn files_under(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::read_dir(dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_order_verifies_and_a_restart_reuses_the_stored_certificate() {
    init_tracing();
    let pebble = Pebble::start(PebbleSpec::default()).await;
    let dir = Scratch::new("acme-http01");
    let ring = keyring();
    let store: Arc<dyn AcmeStore> = Arc::new(FileStore::open(&dir.path("acme")).unwrap());
    let cfg = config(&pebble, ChallengeKind::Http01);
    let first = start(
        cfg.clone(),
        store,
        Sealer::new(Some(Arc::clone(&ring))),
        Arc::new(SoleNode),
        &[&["app.test", "www.app.test"]],
        None,
    );
    let mut snap = first.acme.snapshot();
    let hits = serve_http01(pebble.spec().http_port, snap.clone()).await;
    wait_snapshot(&mut snap, "a certificate for app.test", |s| !s.certificates.is_empty()).await;
    let cert = snap.borrow().certificates[0].clone();
    assert_eq!(cert.domains, vec!["app.test".to_string(), "www.app.test".to_string()]);
    verify_chain(&pebble, &cert.chain_pem, "app.test").await;
    verify_chain(&pebble, &cert.chain_pem, "www.app.test").await;
    assert!(hits.load(Ordering::Relaxed) >= 2, "pebble validated both names through our server");
    wait_snapshot(&mut snap, "status valid", |s| {
        s.status.get("app.test").is_some_and(|st| st.state == CertState::Valid)
    })
    .await;
    assert!(snap.borrow().status["app.test"].renew_at.is_some());
    assert!(!format!("{cert:?}").contains("PRIVATE KEY"), "Debug never shows the key");
    // Challenge answers are cleaned once the order is done.
    wait_snapshot(&mut snap, "http-01 answers removed", |s| s.http01.is_empty()).await;
    assert_eq!(issued(&first), 1.0);
    // Sealed with the cluster key: no private key in the clear on disk.
    for file in files_under(&dir.path("acme")) {
        assert!(!file.windows(11).any(|w| w == b"PRIVATE KEY"), "a stored file holds a key in the clear");
    }
    drop(first);

    // A restarted orderer on the same directory serves the stored certificate at once and
    // does not talk to the CA at all.
    let store: Arc<dyn AcmeStore> = Arc::new(FileStore::open(&dir.path("acme")).unwrap());
    let second = start(cfg, store, Sealer::new(Some(ring)), Arc::new(SoleNode), &[&["app.test", "www.app.test"]], None);
    let mut snap = second.acme.snapshot();
    wait_snapshot(&mut snap, "the stored certificate", |s| s.certificates.len() == 1).await;
    assert_eq!(snap.borrow().certificates[0].chain_pem, cert.chain_pem);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(issued(&second), 0.0, "no second order after a restart");
    assert_eq!(metric(&second.registry, "constellation_acme_requests_total", None), 0.0);
    assert!(
        metric(&second.registry, "constellation_acme_cert_not_after_timestamp_seconds", Some(("domain", "app.test")))
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_order_is_validated_through_a_real_tls_server() {
    init_tracing();
    let pebble = Pebble::start(PebbleSpec::default()).await;
    let (s, dir) = start_alone(&pebble, ChallengeKind::TlsAlpn01, "acme-alpn", &[&["alpn.test"]], None);
    let mut snap = s.acme.snapshot();
    let hits = serve_alpn01(pebble.spec().tls_port, snap.clone()).await;
    wait_snapshot(&mut snap, "a certificate for alpn.test", |s| !s.certificates.is_empty()).await;
    verify_chain(&pebble, &snap.borrow().certificates[0].chain_pem.clone(), "alpn.test").await;
    assert!(hits.load(Ordering::Relaxed) >= 1, "validation used acme-tls/1");
    wait_snapshot(&mut snap, "alpn-01 answers removed", |s| s.alpn01.is_empty()).await;
    // Without a cluster key the files are private to the agent's user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for e in std::fs::read_dir(dir.path("acme")).unwrap() {
            assert_eq!(e.unwrap().metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}

/// dns-01 through challtestsrv's TXT records (what the plane's Cloudflare provider does
/// for real zones).
struct Challtest(Arc<Pebble>, AtomicUsize);

#[async_trait]
impl DnsChallenge for Challtest {
    async fn set_txt(&self, domain: &str, value: &str) -> Result<(), String> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.set_txt(domain, value).await;
        Ok(())
    }
    async fn clear_txt(&self, domain: &str) -> Result<(), String> {
        self.0.clear_txt(domain).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_order_with_a_wildcard_is_validated_through_txt_records() {
    init_tracing();
    let pebble = Arc::new(Pebble::start(PebbleSpec::default()).await);
    let dir = Scratch::new("acme-dns");
    let store: Arc<dyn AcmeStore> = Arc::new(FileStore::open(&dir.path("acme")).unwrap());
    let dns = Arc::new(Challtest(Arc::clone(&pebble), AtomicUsize::new(0)));
    let s = start(
        config(&pebble, ChallengeKind::Dns01),
        store,
        Sealer::new(None),
        Arc::new(SoleNode),
        &[&["dns.test", "*.dns.test"]],
        Some(dns.clone() as Arc<dyn DnsChallenge>),
    );
    let mut snap = s.acme.snapshot();
    wait_snapshot(&mut snap, "a certificate for dns.test", |s| !s.certificates.is_empty()).await;
    let chain = snap.borrow().certificates[0].chain_pem.clone();
    verify_chain(&pebble, &chain, "dns.test").await;
    verify_chain(&pebble, &chain, "api.dns.test").await;
    assert!(dns.1.load(Ordering::Relaxed) >= 2, "one TXT record per authorization");
    // Without a provider, dns-01 refuses to start.
    let store: Arc<dyn AcmeStore> = Arc::new(FileStore::open(&dir.path("other")).unwrap());
    let err = Acme::start(AcmeInputs {
        settings: config(&pebble, ChallengeKind::Dns01).validate().unwrap(),
        store,
        sealer: Sealer::new(None),
        fence: Arc::new(SoleNode),
        domains: wanted(&[&["x.test"]]).1,
        dns: None,
        metrics: AcmeMetrics::register(&prometheus::Registry::new()).unwrap(),
    })
    .err()
    .expect("dns-01 without a provider is refused");
    assert!(err.to_string().contains("dns-01"), "{err}");
}

/// A fence the test flips.
struct Switch(watch::Receiver<Option<u64>>);

#[async_trait]
impl Fence for Switch {
    async fn holder_token(&self) -> Option<u64> {
        *self.0.borrow()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_hold_the_lease_makes_no_ca_call_until_it_does() {
    init_tracing();
    let pebble = Pebble::start(PebbleSpec::default()).await;
    let dir = Scratch::new("acme-fence");
    let store: Arc<dyn AcmeStore> = Arc::new(FileStore::open(&dir.path("acme")).unwrap());
    let (flip, fence) = watch::channel(None);
    let s = start(
        config(&pebble, ChallengeKind::Http01),
        store,
        Sealer::new(None),
        Arc::new(Switch(fence)),
        &[&["fenced.test"]],
        None,
    );
    let mut snap = s.acme.snapshot();
    serve_http01(pebble.spec().http_port, snap.clone()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(&s.registry, "constellation_acme_requests_total", None), 0.0, "no CA call without the lease");
    assert!(!snap.borrow().orderer);
    assert_eq!(snap.borrow().status["fenced.test"].state, CertState::Pending);
    flip.send_replace(Some(7));
    wait_snapshot(&mut snap, "a certificate once holder", |s| !s.certificates.is_empty()).await;
    assert!(snap.borrow().orderer);
    assert_eq!(issued(&s), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_before_they_expire() {
    init_tracing();
    let pebble = Pebble::start(PebbleSpec { validity_secs: Some(15), ..PebbleSpec::default() }).await;
    let (s, _dir) = start_alone(&pebble, ChallengeKind::Http01, "acme-renew", &[&["renew.test"]], None);
    let mut snap = s.acme.snapshot();
    serve_http01(pebble.spec().http_port, snap.clone()).await;
    wait_snapshot(&mut snap, "a first certificate", |s| !s.certificates.is_empty()).await;
    let first = snap.borrow().certificates[0].clone();
    assert!(first.not_after - first.not_before <= 16, "pebble issued a short-lived certificate");
    // The 30-day window covers the whole lifetime: renewal comes after a third of it,
    // well before expiry, and the renewed certificate replaces the first.
    wait_snapshot(&mut snap, "a renewed certificate", |s| {
        s.certificates.first().is_some_and(|c| c.not_after > first.not_after)
    })
    .await;
    let renewed = snap.borrow().certificates[0].clone();
    assert!(renewed.not_before < first.not_after, "renewed before the first one expired");
    verify_chain(&pebble, &renewed.chain_pem, "renew.test").await;
    assert!(issued(&s) >= 2.0);
    assert!(issued(&s) <= 4.0, "renewals are paced, not a loop: {}", issued(&s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_succeed_when_pebble_rejects_half_of_all_nonces() {
    init_tracing();
    let pebble = Pebble::start(PebbleSpec { nonce_reject_percent: 50, ..PebbleSpec::default() }).await;
    let (s, _dir) = start_alone(&pebble, ChallengeKind::Http01, "acme-nonce", &[&["nonce.test"]], None);
    let mut snap = s.acme.snapshot();
    serve_http01(pebble.spec().http_port, snap.clone()).await;
    wait_snapshot(&mut snap, "a certificate despite bad nonces", |s| !s.certificates.is_empty()).await;
    verify_chain(&pebble, &snap.borrow().certificates[0].chain_pem.clone(), "nonce.test").await;
}

/// An https server answering `status` (with `Retry-After: retry_after` when given) to
/// everything, counting requests.
async fn failing_ca(
    dir: &Scratch,
    status: u16,
    retry_after: Option<u64>,
) -> (String, std::path::PathBuf, Arc<AtomicUsize>) {
    let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca_file = dir.write("failing-ca.pem", &ca.cert.pem());
    let key = PrivateKeyDer::try_from(ca.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ca.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (acceptor, counter) = (acceptor.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let mut reply = Response::builder().status(status);
                    if let Some(secs) = retry_after {
                        reply = reply
                            .header("retry-after", secs.to_string())
                            .header("content-type", "application/problem+json");
                    }
                    let body = r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"slow down","status":429}"#;
                    async move { Ok::<_, Infallible>(reply.body(Full::new(Bytes::from(body))).unwrap()) }
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (format!("https://{addr}/dir"), ca_file, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_answering_500_or_down_is_retried_with_backoff_and_reported() {
    init_tracing();
    let dir = Scratch::new("acme-500");
    let (directory, ca_file, hits) = failing_ca(&dir, 500, None).await;
    let cfg = AcmeConfig {
        directory,
        ca_file: Some(ca_file),
        retry_min_ms: 300,
        retry_max_ms: 1_200,
        ..AcmeConfig::default()
    };
    let store: Arc<dyn AcmeStore> = Arc::new(FileStore::open(&dir.path("acme")).unwrap());
    let s = start(cfg.clone(), store, Sealer::new(None), Arc::new(SoleNode), &[&["down.test"]], None);
    let mut snap = s.acme.snapshot();
    let started = Instant::now();
    wait_snapshot(&mut snap, "the failure reported", |s| {
        s.status.get("down.test").is_some_and(|st| st.state == CertState::Failed && st.next_attempt.is_some())
    })
    .await;
    let err = snap.borrow().status["down.test"].last_error.clone().unwrap();
    assert!(err.contains("500"), "the status names what the CA answered: {err}");
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    // Backoff 150–300 ms, then up to 600, 1200, 1200 ...: a handful of attempts in 5 s,
    // each one directory fetch; a loop would make thousands.
    let attempts = hits.load(Ordering::Relaxed);
    assert!((3..=14).contains(&attempts), "{attempts} requests to the failing CA in 5 s");
    let failed = metric(&s.registry, "constellation_acme_orders_total", Some(("outcome", "failed")));
    assert!((3.0..=14.0).contains(&failed), "{failed} failed orders counted");
    drop(s);

    // Nobody listening at all: the same, and the error says so.
    let cfg = AcmeConfig { directory: format!("https://{}/dir", dead_addr()), ..cfg };
    let store: Arc<dyn AcmeStore> = Arc::new(FileStore::open(&dir.path("acme2")).unwrap());
    let s = start(cfg, store, Sealer::new(None), Arc::new(SoleNode), &[&["down.test"]], None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failed = metric(&s.registry, "constellation_acme_orders_total", Some(("outcome", "failed")));
    assert!((2.0..=12.0).contains(&failed), "{failed} attempts against a dead CA in 4 s");
    let status = s.acme.snapshot().borrow().status["down.test"].clone();
    assert_eq!(status.state, CertState::Failed);
    assert!(status.failures >= 2);
}

// === across real lease nodes ===

struct LeaseCluster {
    nodes: Vec<LeaseNode>,
    _dir: Scratch,
}

async fn lease_cluster(n: usize) -> LeaseCluster {
    let dir = Scratch::new("acme-raft");
    let ring = keyring();
    let mut listeners = Vec::new();
    let mut voters = Vec::new();
    for i in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        voters.push((format!("n{}", i + 1), l.local_addr().unwrap()));
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let cfg = RaftConfig {
            node: voters[i].0.clone(),
            voters: voters.clone(),
            bind: voters[i].1,
            data_dir: dir.path(&voters[i].0),
            keyring: Arc::clone(&ring),
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            heartbeat: Duration::from_millis(50),
            lease_ttl: Duration::from_secs(3),
        };
        let node =
            LeaseNode::start_on(cfg, l, &prometheus::Registry::new(), std::future::pending::<()>()).await.unwrap();
        nodes.push(node);
    }
    let deadline = Instant::now() + WAIT;
    while nodes.iter().any(|n| n.view().borrow().leader.is_none()) {
        assert!(Instant::now() < deadline, "no raft leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    LeaseCluster { nodes, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_order_and_a_new_holder_reuses_it() {
    init_tracing();
    let pebble = Pebble::start(PebbleSpec::default()).await;
    let cluster = lease_cluster(3).await;
    let ring = keyring();
    let mut tokens = Vec::new();
    let mut started = Vec::new();
    for node in &cluster.nodes {
        let (tx, rx) = watch::channel(None);
        let store: Arc<dyn AcmeStore> = Arc::new(LeaseStore::new(node.clone(), ACME_LEASE));
        let fence: Arc<dyn Fence> = Arc::new(LeaseFence::new(node.clone(), ACME_LEASE, rx));
        let s = start(
            config(&pebble, ChallengeKind::Http01),
            store,
            Sealer::new(Some(Arc::clone(&ring))),
            fence,
            &[&["shared.test"]],
            None,
        );
        tokens.push(tx);
        started.push(s);
    }
    // n1 orders; the CA's validation is answered only by n3, from its replica of the store.
    let t1 = cluster.nodes[0].acquire(ACME_LEASE, Duration::from_secs(30)).await.unwrap();
    let hits = serve_http01(pebble.spec().http_port, started[2].acme.snapshot()).await;
    tokens[0].send_replace(Some(t1));
    for s in &started {
        let mut snap = s.acme.snapshot();
        wait_snapshot(&mut snap, "every node has the certificate", |s| !s.certificates.is_empty()).await;
    }
    assert!(hits.load(Ordering::Relaxed) >= 1, "validation reached the node that did not order");
    let chain = started[1].acme.snapshot().borrow().certificates[0].chain_pem.clone();
    verify_chain(&pebble, &chain, "shared.test").await;
    assert!(started[0].acme.snapshot().borrow().orderer);
    assert!(!started[1].acme.snapshot().borrow().orderer);
    let total = |started: &[Started]| started.iter().map(issued).sum::<f64>();
    assert_eq!(total(&started), 1.0);
    // Stored in the replicated data, sealed: no private key readable there.
    let data = cluster.nodes[2].data().borrow().clone();
    assert!(data.keys().any(|k| k.starts_with("acme/cert/")));
    assert!(data.values().all(|v| !v.windows(11).any(|w| w == b"PRIVATE KEY")));

    // The lease moves to n2: the old holder's token no longer writes; n2 has the
    // certificate already and orders nothing.
    tokens[0].send_replace(None);
    cluster.nodes[0].release(ACME_LEASE, t1).await.unwrap();
    let t2 = cluster.nodes[1].acquire(ACME_LEASE, Duration::from_secs(30)).await.unwrap();
    tokens[1].send_replace(Some(t2));
    let mut snap = started[1].acme.snapshot();
    wait_snapshot(&mut snap, "n2 to become the orderer", |s| s.orderer).await;
    let stale = LeaseStore::new(cluster.nodes[0].clone(), ACME_LEASE).put(t1, "acme/cert/shared.test", None).await;
    assert!(stale.is_err(), "a stale token cannot delete the certificate");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(total(&started), 1.0, "no second order after the fail-over");
    assert_eq!(snap.borrow().certificates.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_ca_is_left_alone_for_its_retry_after() {
    init_tracing();
    let dir = Scratch::new("acme-429");
    let (directory, ca_file, hits) = failing_ca(&dir, 429, Some(3)).await;
    let cfg =
        AcmeConfig { directory, ca_file: Some(ca_file), retry_min_ms: 100, retry_max_ms: 200, ..AcmeConfig::default() };
    let store: Arc<dyn AcmeStore> = Arc::new(FileStore::open(&dir.path("acme")).unwrap());
    let s = start(cfg, store, Sealer::new(None), Arc::new(SoleNode), &[&["limited.test"]], None);
    let mut snap = s.acme.snapshot();
    wait_snapshot(&mut snap, "the failure reported", |s| {
        s.status.get("limited.test").is_some_and(|st| st.state == CertState::Failed)
    })
    .await;
    let status = snap.borrow().status["limited.test"].clone();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(status.next_attempt.unwrap() > now + 1, "next attempt honours Retry-After: {status:?}");
    // With a 100-200 ms backoff alone there would be ~15 attempts in 2.5 s; Retry-After
    // (3 s) allows one.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(hits.load(Ordering::Relaxed), 1, "the CA was asked again before its Retry-After");
    wait_snapshot(&mut snap, "a second attempt after Retry-After", |s| {
        s.status.get("limited.test").is_some_and(|st| st.failures >= 2)
    })
    .await;
    assert_eq!(hits.load(Ordering::Relaxed), 2);
}

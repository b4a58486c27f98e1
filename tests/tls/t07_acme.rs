//! The ACME hook: material handed to the plane with `Reloader::set_acme` is served by
//! the real proxy path (LimitedApp → SmartFailoverProxy on real sockets, in-process,
//! as there is no ACME client yet to drive an agent): http-01 answers on plain entry
//! points, the tls-alpn-01 challenge certificate for `acme-tls/1`, issued certificates
//! joining the SNI choice.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use constellation_plane::{AdminState, Reloader, RouteSource};
use constellation_proxy::downstream::Protocols;
use constellation_proxy::{
    AcmeMaterial, DownstreamMetrics, Entrypoint, LimitedApp, ProxyMetrics, ProxySettings, RouteTable,
    SmartFailoverProxy, TlsHandle, TlsMetrics, TlsSnapshot, TransportConfig,
};
use pingora_core::apps::ServerApp;
use tokio::io::AsyncReadExt;

use crate::support::*;

/// One in-process entry point serving `app` on a fresh loopback port.
async fn serve<A: ServerApp + Send + Sync + 'static>(app: Arc<A>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _keep = _tx;
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (app, rx) = (app.clone(), rx.clone());
            tokio::spawn(async move {
                let stream: pingora_core::protocols::Stream =
                    Box::new(pingora_core::protocols::l4::stream::Stream::from(tcp));
                app.process_new(stream, &rx).await;
            });
        }
    });
    addr
}

struct Harness {
    reloader: Arc<Reloader>,
    admin: Arc<AdminState>,
    plain: SocketAddr,
    secure: SocketAddr,
    _dir: Scratch,
}

async fn harness(routes: &str, files: &[(&str, &str)]) -> Harness {
    let dir = Scratch::new("acme");
    for (n, t) in files {
        dir.write(n, t);
    }
    let path = dir.write("routes.yaml", routes);
    let registry = prometheus::Registry::new();
    let metrics = ProxyMetrics::register(&registry).unwrap();
    let downstream = DownstreamMetrics::register(&registry).unwrap();
    let tls_metrics = TlsMetrics::register(&registry).unwrap();
    let tls: TlsHandle = Arc::new(ArcSwap::from_pointee(TlsSnapshot::empty()));
    let table = Arc::new(ArcSwap::from_pointee(RouteTable::empty(ProxySettings::default())));
    let admin = Arc::new(AdminState::new("t", table.clone(), registry, None));
    let reloader = Arc::new(
        Reloader::new(
            vec![RouteSource::File(path)],
            ProxySettings::default(),
            Vec::new(),
            table.clone(),
            metrics.clone(),
            admin.clone(),
        )
        .with_tls(tls.clone(), tls_metrics.clone()),
    );
    reloader.reload_resolved().await.unwrap();
    let conf = Arc::new(pingora_core::server::configuration::ServerConf::default());
    let limits = TransportConfig::default().limits(1_000);
    let mut eps = Vec::new();
    for (name, tls_on) in [("web", false), ("websecure", true)] {
        let proxy = pingora_proxy::http_proxy(
            &conf,
            SmartFailoverProxy::new(table.clone(), metrics.clone()).with_tls(tls.clone()),
        );
        let ep = Entrypoint::new(name, "127.0.0.1:0".parse().unwrap(), limits.clone(), &downstream)
            .with_protocols(Protocols { tls: tls_on, http2: true, h2c: false });
        let app = Arc::new(LimitedApp::new(proxy, vec![Arc::new(ep)]).with_tls(tls.clone(), tls_metrics.clone()));
        eps.push(serve(app).await);
    }
    Harness { reloader, admin, plain: eps[0], secure: eps[1], _dir: dir }
}

#[test]
fn http01_and_tls_alpn01_challenges_and_acme_certificates_are_served() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let file_cert = ca.leaf(&["both.test"]);
        let routes = format!(
            "http:\n  routers:\n    all:\n      rule: \"PathPrefix(`/`)\"\n      service: app\n    secure:\n      rule: \"PathPrefix(`/`)\"\n      service: app\n      tls:\n        certResolver: default\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"{}\"\ntls:\n  certificates:\n    - {{certFile: both.crt, keyFile: both.key}}\n",
            backend.url()
        );
        let h = harness(&routes, &[("both.crt", &file_cert.cert), ("both.key", &file_cert.key)]).await;

        // Issued certificates and pending challenges, through the plane.
        let issued = Ca::new("ACME CA").leaf(&["acme.test", "both.test"]);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["challenge.test".to_string()]).unwrap();
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7u8; 32])];
        let challenge = params.self_signed(&key).unwrap();
        let mut m = AcmeMaterial::default();
        m.certificates.push((issued.cert.clone(), issued.key.clone()));
        m.http01.insert("tok-123".into(), "tok-123.thumbprint".into());
        m.alpn01.insert("challenge.test".into(), (challenge.pem(), key.serialize_pem()));
        h.reloader.set_acme(m).unwrap();

        // http-01 on the plain entry point, before routing.
        let r = fetch(h.plain, "GET", "anything.test", "/.well-known/acme-challenge/tok-123", &[], &[]).await.unwrap();
        assert_eq!((r.status, r.text()), (200, "tok-123.thumbprint".to_string()));
        assert_eq!(r.header("content-type"), Some("text/plain"));
        // An unknown token routes normally.
        let r = fetch(h.plain, "GET", "anything.test", "/.well-known/acme-challenge/other", &[], &[]).await.unwrap();
        assert_eq!((r.status, r.text()), (200, "app\n".to_string()));

        // tls-alpn-01: the challenge certificate with ALPN acme-tls/1, then closed.
        let mut s = connect(h.secure, Some("challenge.test"), &["acme-tls/1"]).await.unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"acme-tls/1"[..]));
        let der = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        assert_eq!(der, challenge.der().to_vec());
        let acme_identifier_oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        assert!(der.windows(acme_identifier_oid.len()).any(|w| w == acme_identifier_oid), "acmeIdentifier extension");
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0, "closed after the validation handshake");
        // The same name without acme-tls/1 is an ordinary handshake (the default cert).
        assert_ne!(served_cert(h.secure, Some("challenge.test")).await.unwrap(), challenge.der().to_vec());

        // The issued certificate is served by name; a file certificate wins a shared name.
        assert_eq!(served_cert(h.secure, Some("acme.test")).await.unwrap(), issued.der);
        assert_eq!(served_cert(h.secure, Some("both.test")).await.unwrap(), file_cert.der);
        let mut c = connect(h.secure, Some("acme.test"), &["http/1.1"]).await.unwrap();
        assert_eq!(request(&mut c, "acme.test", "/.well-known/acme-challenge/tok-123", true).await.0, 200);
        assert_eq!(backend.count(), 2, "the token is not answered on the TLS entry point: routed");
        let status = h.admin.status();
        assert!(status.certificates.iter().any(|c| c.source == "acme" && c.names.contains(&"acme.test".to_string())));

        // Material withdrawn: the challenge is gone, nothing else changed.
        h.reloader.set_acme(AcmeMaterial::default()).unwrap();
        let r = fetch(h.plain, "GET", "anything.test", "/.well-known/acme-challenge/tok-123", &[], &[]).await.unwrap();
        assert_eq!((r.status, r.text()), (200, "app\n".to_string()));
        assert_ne!(served_cert(h.secure, Some("acme.test")).await.unwrap(), issued.der);

        // What ACME would order for this configuration.
        let cfg = constellation_plane::load_sources(&[RouteSource::File(h._dir.path("routes.yaml"))]).unwrap();
        assert!(constellation_proxy::tls::acme_domains(&cfg).is_empty(), "no Host names, no domains: nothing to order");
    });
}

//! Unit tests of TCP rules, compile and the PROXY protocol header.

use super::*;
use crate::dynamic::{parse_str, Format};

fn cfg(yaml: &str) -> DynamicConfig {
    parse_str(yaml, Format::Yaml, "t.yaml").unwrap()
}

fn build(yaml: &str) -> Result<(TcpTable, Vec<String>), Vec<SectionError>> {
    let reg = TcpRegistry::default();
    compile(
        &cfg(yaml),
        &["redis".into(), "websecure".into()],
        &reg,
        &AddressMap::new(),
        &Arc::new(BreakerConfig::default()),
        50,
    )
}

const SNI: &str = "tcp:\n  routers:\n    a:\n      rule: \"HostSNI(`a.test`)\"\n      service: sa\n      entryPoints: [websecure]\n      tls:\n        passthrough: true\n    b:\n      rule: \"HostSNI(`b.test`) || HostSNIRegexp(`^.+\\\\.b\\\\.test$`)\"\n      service: sb\n      entryPoints: [websecure]\n      tls: {}\n    plain:\n      rule: \"HostSNI(`*`)\"\n      service: sa\n      entryPoints: [redis]\n  services:\n    sa:\n      loadBalancer:\n        servers:\n          - address: \"127.0.0.1:7001\"\n    sb:\n      loadBalancer:\n        proxyProtocol:\n          version: 1\n        servers:\n          - address: \"127.0.0.1:7002\"\n          - address: \"127.0.0.1:7003\"\n";

#[test]
fn routes_by_sni_and_tls_kind() {
    let (t, _) = build(SNI).unwrap();
    let hello = |sni: &str| Peeked { tls: true, sni: Some(sni.into()), ..Peeked::default() };
    assert_eq!(pick(&t, "websecure", &hello("a.test"), None).map(|r| r.name.as_str()), Some("a"));
    assert_eq!(pick(&t, "websecure", &hello("x.b.test"), None).map(|r| r.name.as_str()), Some("b"));
    assert!(pick(&t, "websecure", &hello("c.test"), None).is_none());
    // The non-TLS catch-all lives on `redis` only.
    assert!(pick(&t, "websecure", &Peeked::default(), None).is_none());
    assert_eq!(pick(&t, "redis", &Peeked::default(), None).map(|r| r.name.as_str()), Some("plain"));
    assert_eq!(t.routes.iter().find(|r| r.name == "a").unwrap().tls, TcpTls::Passthrough);
    let b = t.pools.iter().find(|p| p.name == "sb").unwrap();
    assert_eq!(b.proxy_protocol, Some(1));
    assert_eq!(b.termination_delay, Some(DEFAULT_TERMINATION_DELAY));
    assert!(!needs_peek(&t, "redis", false));
    assert!(needs_peek(&t, "websecure", false));
}

#[test]
fn sni_names_need_a_tls_router_and_http_matchers_are_refused() {
    let bad = "tcp:\n  routers:\n    a:\n      rule: \"HostSNI(`a.test`)\"\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - address: \"127.0.0.1:1\"\n";
    let errs = build(bad).unwrap_err();
    assert!(errs[0].2.contains("need a TLS router"), "{errs:?}");
    assert!(TcpRule::parse("Host(`a`)").unwrap_err().message.contains("HTTP matcher"));
    assert!(TcpRule::parse("ALPN(`acme-tls/1`)").is_err());
    let r = TcpRule::parse("HostSNI(`*`) && ClientIP(`10.0.0.0/8`)").unwrap();
    assert!(!r.needs_hello());
    assert!(r.matches(&ConnInfo { client_ip: Some("10.1.2.3".parse().unwrap()), ..ConnInfo::default() }));
    assert!(!r.matches(&ConnInfo { client_ip: Some("192.0.2.1".parse().unwrap()), ..ConnInfo::default() }));
    let alpn = TcpRule::parse("ALPN(`h2`)").unwrap();
    let protos = vec![b"h2".to_vec()];
    assert!(alpn.matches(&ConnInfo { tls: true, alpn: &protos, ..ConnInfo::default() }));
}

#[test]
fn unapplied_options_refuse_the_router() {
    let yaml = "tcp:\n  routers:\n    a:\n      rule: \"HostSNI(`*`)\"\n      service: s\n      middlewares: [m]\n  middlewares:\n    m:\n      somethingElse: {}\n  services:\n    s:\n      loadBalancer:\n        serversTransport: x\n        servers:\n          - address: \"127.0.0.1:1\"\n";
    let (t, _) = build(yaml).unwrap();
    let why = t.routes[0].refused.as_deref().unwrap();
    assert!(why.contains("middleware m") && why.contains("serversTransport"), "{why}");
}

#[test]
fn proxy_protocol_headers() {
    let src: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    let dst: SocketAddr = "198.51.100.2:6379".parse().unwrap();
    assert_eq!(proxy_header(1, src, dst), b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 6379\r\n");
    let v2 = proxy_header(2, src, dst);
    assert_eq!(&v2[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(v2[12], 0x21);
    assert_eq!(v2[13], 0x11);
    assert_eq!(u16::from_be_bytes([v2[14], v2[15]]), 12);
    assert_eq!(&v2[16..20], &[192, 0, 2, 1]);
    assert_eq!(u16::from_be_bytes([v2[24], v2[25]]), 40000);
    assert_eq!(v2.len(), 28);
    let v6 = proxy_header(2, "[::1]:1".parse().unwrap(), dst);
    assert_eq!(v6[13], 0x21);
    assert_eq!(v6.len(), 16 + 36);
}

#[test]
fn a_removed_server_is_retired_and_a_kept_one_is_not() {
    let reg = TcpRegistry::default();
    let one = "tcp:\n  routers:\n    a:\n      rule: \"HostSNI(`*`)\"\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - address: \"127.0.0.1:7001\"\n          - address: \"127.0.0.1:7002\"\n";
    let two = one.replace("          - address: \"127.0.0.1:7002\"\n", "");
    let b = Arc::new(BreakerConfig::default());
    let go = |y: &str| {
        let t = compile(&cfg(y), &[], &reg, &AddressMap::new(), &b, 50).unwrap().0;
        reg.retain_table(&t, Duration::ZERO);
        t
    };
    let first = go(one);
    let kept = first.pools[0].servers[0].clone();
    let gone = first.pools[0].servers[1].clone();
    let second = go(&two);
    assert!(Arc::ptr_eq(&kept, &second.pools[0].servers[0]), "state survives the swap");
    assert!(!kept.is_retired());
    assert!(gone.is_retired());
}

//! Tests of the trusted-IP matcher and the forwarding-header rewrite: fixed cases and
//! property tests against a bit-by-bit reference.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn req(headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/", None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

fn values(r: &RequestHeader, name: &str) -> Vec<String> {
    r.headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect()
}

const UNTRUSTED_SENT: &[(&str, &str)] = &[
    ("X-Forwarded-For", "1.2.3.4"),
    ("X-Forwarded-For", "5.6.7.8"),
    ("X-Real-Ip", "1.2.3.4"),
    ("Forwarded", "for=1.2.3.4;proto=https"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "bank.example"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Server", "edge"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Tls-Client-Cert", "MIIB"),
    ("X_Forwarded_For", "9.9.9.9"),
    ("x-real_ip", "9.9.9.9"),
    ("X-Scheme", "https"),
    ("X-Request-Id", "kept"),
];

fn origin() -> Origin {
    Origin { peer: Some(ip("127.0.0.1")), scheme: Scheme::Http, port: Some(8080), websocket: false }
}

#[test]
fn networks_and_single_addresses_parse() {
    assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
    assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
    assert!(net("192.168.1.7").contains(ip("192.168.1.7")));
    assert!(!net("192.168.1.7").contains(ip("192.168.1.8")));
    assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
    assert!(!net("0.0.0.0/0").contains(ip("::1")), "an IPv4 network holds no IPv6 address");
    assert!(net("fd00::/8").contains(ip("fd12:3456::1")));
    assert!(!net("fd00::/8").contains(ip("fe80::1")));
    assert!(net("::1").contains(ip("::1")));
    assert!(net("::/0").contains(ip("2001:db8::1")));
    // Host bits are cleared, as Traefik does.
    assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
    assert_eq!(net("2001:db8::1/32").to_string(), "2001:db8::/32");
}

#[test]
fn ipv4_mapped_peers_and_networks_count_as_ipv4() {
    assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
    assert!(net("::ffff:10.0.0.0/104").contains(ip("10.9.9.9")));
    assert_eq!(net("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
}

#[test]
fn bad_entries_are_refused_with_a_reason() {
    for (entry, reason) in [
        ("", "not an IP address"),
        ("10.0.0.0/33", "prefix length out of range"),
        ("::/129", "prefix length out of range"),
        ("10.0.0.0/", "prefix length is not a number"),
        ("10.0.0.0/+8", "prefix length is not a number"),
        ("10.0.0.0/8/8", "prefix length is not a number"),
        ("localhost", "not an IP address"),
        ("10.0.0", "not an IP address"),
        ("10.0.0.0/999", "prefix length out of range"),
    ] {
        let e = entry.parse::<IpNet>().unwrap_err();
        assert_eq!(e.reason, reason, "{entry:?}");
        assert!(e.to_string().contains(&format!("{entry:?}")), "{e}");
    }
    let e = ForwardedPolicy::parse(&["10.0.0.0/8".into(), "nope".into()], false).unwrap_err();
    assert_eq!(e.entry, "nope");
}

#[test]
fn default_policy_trusts_nobody_not_even_loopback() {
    let p = ForwardedPolicy::default();
    assert!(!p.trusts(Some(ip("127.0.0.1"))));
    assert!(!p.trusts(Some(ip("::1"))));
    assert!(!p.trusts(None));
    let insecure = ForwardedPolicy { insecure: true, ..ForwardedPolicy::default() };
    assert!(insecure.trusts(Some(ip("203.0.113.1"))));
    let p = ForwardedPolicy::parse(&["127.0.0.0/8".into(), "2001:db8::/32".into()], false).unwrap();
    assert!(p.trusts(Some(ip("127.0.0.1"))));
    assert!(p.trusts(Some(ip("2001:db8::7"))));
    assert!(!p.trusts(Some(ip("10.0.0.1"))));
}

#[test]
fn managed_names_include_underscore_spellings() {
    for n in ["x-forwarded-for", "X-Forwarded-For", "X_FORWARDED_FOR", "x-real_ip", "Forwarded", "X-Scheme"] {
        assert!(is_managed(n), "{n}");
    }
    for n in ["x-forwarded", "x-forwarded-for-x", "x-request-id", "host", "forwarded-for", "xforwardedfor"] {
        assert!(!is_managed(n), "{n}");
    }
}

#[test]
fn untrusted_peer_headers_are_replaced_not_appended() {
    let mut r = req(UNTRUSTED_SENT);
    assert_eq!(strip(&mut r), 12);
    apply(&mut r, &origin(), "app.example:8080").unwrap();
    assert_eq!(values(&r, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&r, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(values(&r, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&r, "x-forwarded-port"), ["8080"]);
    assert_eq!(values(&r, "x-forwarded-host"), ["app.example:8080"]);
    for gone in ["forwarded", "x-forwarded-server", "x-forwarded-prefix", "x-forwarded-tls-client-cert", "x-scheme"] {
        assert!(values(&r, gone).is_empty(), "{gone}: {:?}", r.headers);
    }
    assert!(r.headers.keys().all(|k| !k.as_str().contains('_')), "{:?}", r.headers);
    assert_eq!(values(&r, "x-request-id"), ["kept"]);
}

#[test]
fn trusted_peer_headers_are_kept_and_extended() {
    let mut r = req(&[
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Real-Ip", "1.2.3.4"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "bank.example"),
        ("X-Forwarded-Port", "443"),
    ]);
    apply(&mut r, &origin(), "internal:8080").unwrap();
    assert_eq!(values(&r, "x-forwarded-for"), ["1.2.3.4, 10.0.0.1, 127.0.0.1"]);
    assert_eq!(values(&r, "x-real-ip"), ["1.2.3.4"]);
    assert_eq!(values(&r, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&r, "x-forwarded-host"), ["bank.example"]);
    assert_eq!(values(&r, "x-forwarded-port"), ["443"]);
    // What the trusted peer left out is filled in.
    let mut r = req(&[("X-Forwarded-For", "1.2.3.4")]);
    apply(&mut r, &Origin { scheme: Scheme::Https, port: Some(443), ..origin() }, "").unwrap();
    assert_eq!(values(&r, "x-forwarded-for"), ["1.2.3.4, 127.0.0.1"]);
    assert_eq!(values(&r, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(values(&r, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&r, "x-forwarded-port"), ["443"]);
    assert!(values(&r, "x-forwarded-host").is_empty(), "no host, no X-Forwarded-Host");
}

#[test]
fn websocket_handshakes_say_ws() {
    let mut r = req(&[("Connection", "keep-alive, Upgrade"), ("Upgrade", "WebSocket")]);
    assert!(is_websocket(&r));
    apply(&mut r, &Origin { websocket: true, ..origin() }, "h").unwrap();
    assert_eq!(values(&r, "x-forwarded-proto"), ["ws"]);
    assert!(!is_websocket(&req(&[("Upgrade", "websocket")])), "no Connection: upgrade");
}

#[test]
fn ipv4_mapped_peer_is_written_as_ipv4() {
    let mut r = req(&[]);
    apply(&mut r, &Origin { peer: Some(ip("::ffff:192.0.2.1")), ..origin() }, "h").unwrap();
    assert_eq!(values(&r, "x-forwarded-for"), ["192.0.2.1"]);
}

#[test]
fn entry_point_is_found_by_local_address() {
    let ep = |name: &str, addr: &str| EntryPoint {
        name: name.into(),
        address: addr.parse().unwrap(),
        scheme: Scheme::Http,
        forwarded: ForwardedPolicy::default(),
        redirect: None,
    };
    let all = [ep("web", "127.0.0.1:8080"), ep("any", "0.0.0.0:9090"), ep("v6", "[::]:7070")];
    let find = |l: &str| EntryPoint::find(&all, Some(l.parse().unwrap())).map(|e| e.name.as_str());
    assert_eq!(find("127.0.0.1:8080"), Some("web"));
    assert_eq!(find("127.0.0.2:8080"), None);
    assert_eq!(find("10.1.1.1:9090"), Some("any"));
    assert_eq!(find("[::ffff:10.1.1.1]:7070"), Some("v6"));
    assert_eq!(EntryPoint::find(&all, None), None);
}

/// Membership bit by bit: the first `prefix` bits of both addresses agree.
fn reference(net: &[u8], prefix: u8, ip: &[u8]) -> bool {
    (0..usize::from(prefix)).all(|i| (net[i / 8] >> (7 - i % 8)) & 1 == (ip[i / 8] >> (7 - i % 8)) & 1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn v4_matcher_agrees_with_reference(n in any::<u32>(), prefix in 0u8..=32, peer in any::<u32>(), flip in 0u8..32) {
        let network = Ipv4Addr::from(n);
        let parsed: IpNet = format!("{network}/{prefix}").parse().unwrap();
        // Half the time, a peer inside the network differing only past the prefix.
        let peer = if peer % 2 == 0 && flip >= prefix { n ^ (1u32 << (31 - u32::from(flip))) } else { peer };
        let want = reference(&n.to_be_bytes(), prefix, &peer.to_be_bytes());
        prop_assert_eq!(parsed.contains(IpAddr::V4(Ipv4Addr::from(peer))), want);
        prop_assert_eq!(parsed.contains(IpAddr::V6(Ipv4Addr::from(peer).to_ipv6_mapped())), want);
        prop_assert!(parsed.contains(IpAddr::V4(network)));
    }

    #[test]
    fn v6_matcher_agrees_with_reference(n in any::<u128>(), prefix in 0u8..=128, peer in any::<u128>()) {
        let network = Ipv6Addr::from(n);
        prop_assume!(network.to_ipv4_mapped().is_none());
        let parsed: IpNet = format!("{network}/{prefix}").parse().unwrap();
        let want = reference(&n.to_be_bytes(), prefix, &peer.to_be_bytes());
        let peer = Ipv6Addr::from(peer);
        prop_assume!(peer.to_ipv4_mapped().is_none());
        prop_assert_eq!(parsed.contains(IpAddr::V6(peer)), want);
        prop_assert!(parsed.contains(IpAddr::V6(network)));
    }

    #[test]
    fn parser_never_panics(s in "\\PC{0,40}") {
        let _ = s.parse::<IpNet>();
    }
}

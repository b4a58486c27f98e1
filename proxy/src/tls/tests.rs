#![allow(clippy::unwrap_used)]
use super::*;

fn pair(names: &[&str]) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn cfg(yaml: &str) -> DynamicConfig {
    crate::dynamic::parse_str(yaml, crate::dynamic::Format::Yaml, "t.yaml").unwrap()
}

#[test]
fn options_are_checked_with_their_keys() {
    let c = cfg("tls:\n  options:\n    old:\n      minVersion: VersionTLS10\n    bad:\n      cipherSuites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n      clientAuth:\n        clientAuthType: RequireAnyClientCert\n        caFiles: [ca.pem]\n");
    let errs = check(&c);
    let keys: Vec<String> = errs.iter().map(|e| format!("{}.{}", e.object, e.field)).collect();
    assert!(keys.contains(&"tls.options.old.minVersion".to_string()), "{errs:?}");
    assert!(keys.contains(&"tls.options.bad.cipherSuites".to_string()), "{errs:?}");
    assert!(keys.contains(&"tls.options.bad.clientAuth.clientAuthType".to_string()), "{errs:?}");
    assert!(errs[0].message.contains("rustls") || errs.iter().any(|e| e.message.contains("TLS 1.2 and 1.3")));
}

#[test]
fn snapshot_picks_certificates_and_options_by_name() {
    let (a, ak) = pair(&["a.test"]);
    let (w, wk) = pair(&["*.w.test"]);
    let yaml = "http:\n  routers:\n    a:\n      rule: \"Host(`a.test`)\"\n      service: s\n      tls:\n        options: modern\n  services:\n    s:\n      loadBalancer:\n        servers: [{url: \"http://127.0.0.1:1\"}]\ntls:\n  certificates:\n    - {certFile: /a.crt, keyFile: /a.key}\n    - {certFile: /w.crt, keyFile: /w.key}\n  options:\n    modern:\n      minVersion: VersionTLS13\n";
    let mut files = TlsFiles::new();
    files.insert("/a.crt".into(), a.into_bytes());
    files.insert("/a.key".into(), ak.into_bytes());
    files.insert("/w.crt".into(), w.into_bytes());
    files.insert("/w.key".into(), wk.clone().into_bytes());
    let (snap, warnings) = TlsSnapshot::build(&cfg(yaml), &files, &AcmeMaterial::default()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(snap.store().lookup("x.w.test").unwrap().names, ["*.w.test"]);
    assert_eq!(snap.host_options.get("a.test").map(String::as_str), Some("modern"));
    assert!(!Arc::ptr_eq(snap.acceptor(Some("a.test"), true), snap.acceptor(Some("b.test"), true)));
    let infos = snap.certificates();
    assert_eq!(infos.last().unwrap().source, "self-signed");
    // A key that is not the certificate's: an error naming the key file.
    files.insert("/a.key".into(), wk.into_bytes());
    let errs = TlsSnapshot::build(&cfg(yaml), &files, &AcmeMaterial::default()).unwrap_err();
    assert_eq!((errs[0].object.as_str(), errs[0].field.as_str()), ("tls.certificates[0]", "keyFile"), "{errs:?}");
    assert!(errs[0].message.contains("/a.key") && errs[0].message.contains("does not match"), "{errs:?}");
}

#[test]
fn acme_domains_follow_traefik() {
    let yaml = "http:\n  routers:\n    a:\n      rule: \"Host(`a.test`) || (Host(`b.test`) && !Host(`c.test`))\"\n      service: s\n      tls:\n        certResolver: default\n    w:\n      rule: \"HostRegexp(`.+`)\"\n      service: s\n      tls:\n        certResolver: le\n        domains:\n          - main: \"*.w.test\"\n            sans: [w.test]\n    plain:\n      rule: \"Host(`p.test`)\"\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers: [{url: \"http://127.0.0.1:1\"}]\n";
    let d = acme_domains(&cfg(yaml));
    let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(d["default"], BTreeSet::from([list(&["a.test", "b.test"])]));
    assert_eq!(d["le"], BTreeSet::from([list(&["*.w.test", "w.test"])]));
    assert_eq!(d.len(), 2);
}

#[test]
fn acme_domains_of_terminating_tcp_routers_but_not_passthrough_ones() {
    let yaml = "tcp:\n  routers:\n    db:\n      rule: \"HostSNI(`db.test`) || HostSNI(`db2.test`)\"\n      service: s\n      tls:\n        certResolver: default\n    pass:\n      rule: \"HostSNI(`pass.test`)\"\n      service: s\n      tls:\n        passthrough: true\n        certResolver: default\n  services:\n    s:\n      loadBalancer:\n        servers: [{address: \"127.0.0.1:1\"}]\n";
    let d = acme_domains(&cfg(yaml));
    assert_eq!(d["default"], BTreeSet::from([vec!["db.test".to_string(), "db2.test".to_string()]]));
    assert_eq!(d.len(), 1);
}

#[test]
fn acme_material_serves_challenges() {
    let (c, k) = pair(&["ch.test"]);
    let mut m = AcmeMaterial::default();
    m.http01.insert("tok".into(), "tok.thumb".into());
    m.alpn01.insert("ch.test".into(), (c, k));
    let (snap, _) = TlsSnapshot::build(&DynamicConfig::default(), &TlsFiles::new(), &m).unwrap();
    assert_eq!(snap.http01("tok"), Some("tok.thumb"));
    assert!(snap.http01("other").is_none());
    assert!(snap.acme_alpn("ch.test").is_some());
    assert!(!format!("{m:?}").contains("thumb"));
}

#[test]
fn tls_alpn01_challenge_certificates_with_the_critical_acme_extension_are_served() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["ch.test".to_string()]).unwrap();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7u8; 32])];
    let cert = params.self_signed(&key).unwrap();
    let mut m = AcmeMaterial::default();
    m.alpn01.insert("ch.test".into(), (cert.pem(), key.serialize_pem()));
    let (snap, warnings) = TlsSnapshot::build(&DynamicConfig::default(), &TlsFiles::new(), &m).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(snap.acme_alpn("ch.test").is_some());
}

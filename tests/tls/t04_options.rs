//! `tls.options`: minVersion, client certificates (mTLS), per-router options by SNI.

use crate::support::*;

/// Python client: connect to 127.0.0.1:PORT as SNI NAME trusting CA, optionally with a
/// client certificate and a TLS 1.2 cap; prints the status line or `refused: <error>`.
const CLIENT: &str = r#"
import socket, ssl, sys
port, name, ca, cert, key, cap = sys.argv[1:7]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
if cert != "-":
    ctx.load_cert_chain(cert, key)
if cap == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
try:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % name).encode())
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            if not data:
                print("refused: closed")
            else:
                print(data.split(b"\r\n")[0].decode(), s.version())
except (ssl.SSLError, ConnectionError, OSError) as e:
    print("refused:", e)
"#;

#[test]
fn min_version_13_refuses_a_tls12_client_and_client_auth_needs_a_cert_from_the_ca() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let client_ca = Ca::new("Client CA");
        let (modern, mtls, plain) = (ca.leaf(&["modern.test"]), ca.leaf(&["mtls.test"]), ca.leaf(&["plain.test"]));
        let good_client = client_ca.leaf(&["client.test"]);
        let stranger = Ca::new("Other CA").leaf(&["client.test"]);
        let extra = "tls:\n  certificates:\n    - {certFile: modern.crt, keyFile: modern.key}\n    - {certFile: mtls.crt, keyFile: mtls.key}\n    - {certFile: plain.crt, keyFile: plain.key}\n  options:\n    modern:\n      minVersion: VersionTLS13\n    mutual:\n      clientAuth:\n        caFiles: [client-ca.pem]\n        clientAuthType: RequireAndVerifyClientCert\n";
        let routes = tls_routes(
            &[
                ("modern", "Host(`modern.test`)", Some("{options: modern}")),
                ("mtls", "Host(`mtls.test`)", Some("{options: mutual}")),
                ("plain", "Host(`plain.test`)", Some("{}")),
            ],
            &backend.url(),
            extra,
        );
        let (ep, secure) = websecure("");
        let files = [
            ("modern.crt", modern.cert.as_str()),
            ("modern.key", modern.key.as_str()),
            ("mtls.crt", mtls.cert.as_str()),
            ("mtls.key", mtls.key.as_str()),
            ("plain.crt", plain.cert.as_str()),
            ("plain.key", plain.key.as_str()),
            ("client-ca.pem", client_ca.pem.as_str()),
        ];
        let agent = start_agent_with(&routes, "", &ep, &files, None).await;
        let ca_file = agent.dir.write("ca.pem", &ca.pem);
        let ca_path = ca_file.to_str().unwrap();
        let port = secure.port().to_string();
        let good_crt = agent.dir.write("client.crt", &good_client.cert);
        let good_key = agent.dir.write("client.key", &good_client.key);
        let bad_crt = agent.dir.write("stranger.crt", &stranger.cert);
        let bad_key = agent.dir.write("stranger.key", &stranger.key);
        let run = |name: &str, cert: &str, key: &str, cap: &str| {
            let (code, out, err) = python(CLIENT, &[&port, name, ca_path, cert, key, cap]);
            assert_eq!(code, 0, "{err}");
            out.trim().to_string()
        };

        // minVersion 1.3: a client capped at 1.2 is refused; 1.3 works. Other names
        // still take 1.2 (the options follow the router of the name).
        assert!(run("modern.test", "-", "-", "1.2").starts_with("refused"), "TLS 1.2 client on minVersion 1.3");
        assert_eq!(run("modern.test", "-", "-", "any"), "HTTP/1.1 200 OK TLSv1.3");
        assert_eq!(run("plain.test", "-", "-", "1.2"), "HTTP/1.1 200 OK TLSv1.2");

        // RequireAndVerifyClientCert: none, or one from another CA, is refused.
        assert!(run("mtls.test", "-", "-", "any").starts_with("refused"), "no client certificate");
        assert!(
            run("mtls.test", bad_crt.to_str().unwrap(), bad_key.to_str().unwrap(), "any").starts_with("refused"),
            "a certificate from another CA"
        );
        assert_eq!(
            run("mtls.test", good_crt.to_str().unwrap(), good_key.to_str().unwrap(), "any"),
            "HTTP/1.1 200 OK TLSv1.3"
        );
        // plain.test asks for no client certificate.
        assert_eq!(run("plain.test", "-", "-", "any"), "HTTP/1.1 200 OK TLSv1.3");
        assert_eq!(backend.count(), 4);
    });
}

#[test]
fn options_rustls_cannot_apply_are_config_errors_with_their_place() {
    run_test(|| async {
        let dir = Scratch::new("tlscheck");
        dir.write(
            "routes.yaml",
            "http:\n  routers:\n    r:\n      rule: \"Host(`a.test`)\"\n      service: s\n      tls:\n        options: old\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"http://127.0.0.1:1\"\ntls:\n  options:\n    old:\n      minVersion: VersionTLS11\n      cipherSuites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n      clientAuth:\n        clientAuthType: RequireAnyClientCert\n",
        );
        dir.write("agent.toml", "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[routes]\nfiles = [\"routes.yaml\"]\n");
        let (code, out, err) =
            run(&["config", "check", dir.path("agent.toml").to_str().unwrap()], dir.path("").as_path());
        let text = format!("{out}{err}");
        assert_ne!(code, 0, "{text}");
        assert!(text.contains("routes.yaml:16:") && text.contains("minVersion") && text.contains("rustls"), "{text}");
        assert!(text.contains("cipherSuites") && text.contains("TLS_RSA_WITH_AES_128_CBC_SHA"), "{text}");
        assert!(text.contains("RequireAnyClientCert"), "{text}");
    });
}

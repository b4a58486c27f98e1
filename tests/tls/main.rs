//! End-to-end tests of TLS termination: a real agent process with a TLS entry point,
//! certificates made here with rcgen (a test CA and its leaves), and real clients —
//! rustls from Rust, curl, python3's `ssl`.

#![allow(clippy::unwrap_used)]

mod t01_certificates;
mod t02_reload;
mod t03_bad_input;
mod t04_options;
mod t05_routing;
mod t06_http2;
mod t07_acme;
mod t08_pebble;
mod t09_dns01;

/// The shared kit, plus what only this suite needs.
mod support {
    use std::net::SocketAddr;
    use std::process::Command;
    use std::sync::Arc;

    pub use constellation_testkit::*;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::client::TlsStream;

    /// A test certificate authority.
    pub struct Ca {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        /// Its certificate, PEM.
        pub pem: String,
    }

    /// A leaf certificate and its key.
    #[derive(Clone)]
    pub struct Leaf {
        /// Certificate, PEM.
        pub cert: String,
        /// Private key, PEM.
        pub key: String,
        /// Certificate, DER (what a client sees).
        pub der: Vec<u8>,
    }

    impl Ca {
        pub fn new(name: &str) -> Ca {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
            let cert = params.self_signed(&key).unwrap();
            Ca { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
        }

        /// A server certificate for `names`.
        pub fn leaf(&self, names: &[&str]) -> Leaf {
            let mut params =
                rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
            params.extended_key_usages =
                vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Leaf { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec() }
        }
    }

    /// `[entrypoints.websecure]` on a free port with `tls = true` (plus `extra` keys), and
    /// its address.
    pub fn websecure(extra: &str) -> (String, SocketAddr) {
        let port = free_port();
        (
            format!("[entrypoints.websecure]\naddress = \"127.0.0.1:{port}\"\ntls = true\n{extra}\n"),
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    }

    /// Accepts any server certificate: the tests compare what was served themselves.
    #[derive(Debug)]
    struct AnyCert;

    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            // A tls-alpn-01 challenge certificate has a critical extension webpki does
            // not know, so its key cannot be read for the check: accepted as served.
            match rustls::crypto::verify_tls12_signature(m, c, d, &provider().signature_verification_algorithms) {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(_))) => {
                    Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
                }
                other => other,
            }
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            // A tls-alpn-01 challenge certificate has a critical extension webpki does
            // not know, so its key cannot be read for the check: accepted as served.
            match rustls::crypto::verify_tls13_signature(m, c, d, &provider().signature_verification_algorithms) {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(_))) => {
                    Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
                }
                other => other,
            }
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            provider().signature_verification_algorithms.supported_schemes()
        }
    }

    fn provider() -> rustls::crypto::CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    /// A TLS connection to `addr` sending `sni` (none when `None`) and offering `alpn`.
    pub async fn connect(
        addr: SocketAddr,
        sni: Option<&str>,
        alpn: &[&str],
    ) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = match sni {
            Some(n) => ServerName::try_from(n.to_string()).unwrap(),
            // An IP address as the name: rustls sends no SNI.
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
    }

    /// The leaf certificate (DER) the server sent for `sni`.
    pub async fn served_cert(addr: SocketAddr, sni: Option<&str>) -> std::io::Result<Vec<u8>> {
        let s = connect(addr, sni, &["http/1.1"]).await?;
        let certs = s.get_ref().1.peer_certificates().unwrap_or_default();
        Ok(certs.first().map(|c| c.to_vec()).unwrap_or_default())
    }

    /// One HTTP/1.1 request on an open TLS stream; returns (status, head+body text).
    pub async fn request(
        s: &mut TlsStream<tokio::net::TcpStream>,
        host: &str,
        path: &str,
        close: bool,
    ) -> (u16, String) {
        let conn = if close { "close" } else { "keep-alive" };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end].lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                });
                if let Some(len) = len {
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
        }
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, text)
    }

    /// Runs curl with `args`; returns (exit code, stdout, stderr).
    pub fn curl(args: &[&str]) -> (i32, String, String) {
        let out = Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Runs a python3 script; returns (exit code, stdout, stderr).
    pub fn python(script: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("python3").arg("-c").arg(script).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// A routes file with router `name` for `rule` (with `tls_yaml` under `tls:` when
    /// given, e.g. `{}`) to `server`, plus `extra` top-level YAML.
    pub fn tls_routes(routers: &[(&str, &str, Option<&str>)], server: &str, extra: &str) -> String {
        let mut out = String::from("http:\n  routers:\n");
        for (name, rule, tls) in routers {
            out.push_str(&format!("    {name}:\n      rule: \"{rule}\"\n      service: app\n"));
            if let Some(t) = tls {
                out.push_str(&format!("      tls: {t}\n"));
            }
        }
        out.push_str(&format!(
            "  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"{server}\"\n{extra}"
        ));
        out
    }
}

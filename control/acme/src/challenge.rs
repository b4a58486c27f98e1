//! Challenge material: the dns-01 provider interface the control plane implements, and
//! tls-alpn-01 challenge certificates (RFC 8737).

use async_trait::async_trait;

/// Publishes dns-01 TXT records (the control plane backs it with its Cloudflare client).
#[async_trait]
pub trait DnsChallenge: Send + Sync + 'static {
    /// Serves `value` as a TXT record of `_acme-challenge.<domain>` (`domain` without a
    /// wildcard label). Returns once the record is published.
    async fn set_txt(&self, domain: &str, value: &str) -> Result<(), String>;
    /// Removes the TXT records of `_acme-challenge.<domain>` this orderer set.
    async fn clear_txt(&self, domain: &str) -> Result<(), String>;
}

/// A self-signed certificate for `domain` carrying the critical `acmeIdentifier`
/// extension with the SHA-256 digest of the key authorization, as the CA expects it on
/// a TLS connection negotiated with ALPN `acme-tls/1`. Returns (certificate, key) PEM.
pub(crate) fn alpn_certificate(domain: &str, key_authorization_digest: &[u8]) -> Result<(String, String), String> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(key_authorization_digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn alpn_certificate_carries_the_critical_acme_identifier() {
        let digest = [7u8; 32];
        let (cert_pem, key_pem) = alpn_certificate("app.test", &digest).unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        let der = rustls_pemfile::certs(&mut cert_pem.as_bytes()).next().unwrap().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap_or_else(|| panic!("no acmeIdentifier extension"));
        assert!(ext.critical);
        // An OCTET STRING (tag 4, length 32) holding the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(format!("{:?}", san.value.general_names), "[DNSName(\"app.test\")]");
    }
}

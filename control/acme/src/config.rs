//! `[acme]`: the ACME resolver's configuration, its defaults and its validation.

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// Let's Encrypt's production directory, the default `directory`.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Default `renew_before_days`: renew 30 days before expiry (Let's Encrypt's advice for
/// 90-day certificates).
pub const DEFAULT_RENEW_BEFORE_DAYS: u32 = 30;
/// Default `retry_min_ms`: the first retry of a failed order waits about 10 s.
pub const DEFAULT_RETRY_MIN_MS: u64 = 10_000;
/// Default `retry_max_ms`: retries back off to at most one hour apart.
pub const DEFAULT_RETRY_MAX_MS: u64 = 3_600_000;

/// How the CA checks that we control a name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChallengeKind {
    /// `http-01`: the CA fetches `http://<name>/.well-known/acme-challenge/<token>` on
    /// port 80; every node answers from the replicated store.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// `tls-alpn-01`: the CA connects to port 443 with ALPN `acme-tls/1` and expects a
    /// challenge certificate (RFC 8737); every node serves it from the replicated store.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// `dns-01`: a TXT record `_acme-challenge.<name>` (through the DNS provider the
    /// control plane hands in); the only kind that works for wildcard names.
    #[serde(rename = "dns-01")]
    Dns01,
}

impl ChallengeKind {
    /// The name used in configuration and status (`http-01`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        }
    }
}

/// Key type of the certificates ordered (account keys are always ECDSA P-256).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256.
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
}

impl KeyType {
    pub(crate) fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }
}

/// `[acme]` as written in the agent file: the certificate resolver named `default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// Contact address given to the CA for expiry and policy mail (`mailto:` is added).
    /// Default: none (the account has no contact).
    #[serde(default)]
    pub email: Option<String>,
    /// The ACME directory URL (https). Default: Let's Encrypt production,
    /// `https://acme-v02.api.letsencrypt.org/directory`.
    #[serde(default = "default_directory")]
    pub directory: String,
    /// PEM file of extra roots trusted for the CA's own API (a private ACME server such as
    /// Pebble), on top of the public web roots. A relative path is relative to the agent
    /// file (the control plane resolves it). Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Challenge type: `http-01`, `tls-alpn-01` or `dns-01`. Default: `http-01`.
    #[serde(default)]
    pub challenge: ChallengeKind,
    /// Renew a certificate this many days before it expires. Default: 30. A value larger
    /// than a certificate's lifetime renews it on every pass (tests use this).
    #[serde(default = "default_renew_before_days")]
    pub renew_before_days: u32,
    /// Key type of issued certificates: `ecdsa-p256` or `ecdsa-p384`. Default: `ecdsa-p256`.
    #[serde(default)]
    pub key_type: KeyType,
    /// First delay after a failed order, in milliseconds; it doubles per failure of the
    /// same certificate (with jitter) up to `retry_max_ms`. Default: 10000.
    #[serde(default = "default_retry_min_ms")]
    pub retry_min_ms: u64,
    /// Longest delay between attempts for one certificate, in milliseconds. A CA's
    /// `Retry-After` (rate limits) is honoured even when longer. Default: 3600000 (1 h).
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_directory() -> String {
    LETS_ENCRYPT_PRODUCTION.to_string()
}
fn default_renew_before_days() -> u32 {
    DEFAULT_RENEW_BEFORE_DAYS
}
fn default_retry_min_ms() -> u64 {
    DEFAULT_RETRY_MIN_MS
}
fn default_retry_max_ms() -> u64 {
    DEFAULT_RETRY_MAX_MS
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            email: None,
            directory: default_directory(),
            ca_file: None,
            challenge: ChallengeKind::default(),
            renew_before_days: DEFAULT_RENEW_BEFORE_DAYS,
            key_type: KeyType::default(),
            retry_min_ms: DEFAULT_RETRY_MIN_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
        }
    }
}

/// A problem in `[acme]`, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key has a value that cannot work.
    #[error("acme.{key}: {problem}")]
    Invalid {
        /// The key (`email`, `directory`, …).
        key: &'static str,
        /// What is wrong and what to write instead.
        problem: String,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into() }
}

/// A validated `[acme]`: the configuration plus the roots read from `ca_file`.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The configuration as written.
    pub config: AcmeConfig,
    /// Certificates from `ca_file` (empty without one).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl AcmeSettings {
    /// `renew_before_days` as a duration.
    pub fn renew_before(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.renew_before_days) * 86_400)
    }

    /// The backoff bounds.
    pub fn retry_bounds(&self) -> (Duration, Duration) {
        (Duration::from_millis(self.config.retry_min_ms), Duration::from_millis(self.config.retry_max_ms))
    }
}

impl AcmeConfig {
    /// Checks every key and reads `ca_file` (an error names the key and the file).
    pub fn validate(&self) -> Result<AcmeSettings, ConfigError> {
        if let Some(email) = &self.email {
            let ok = email.split_once('@').is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
                && !email.chars().any(|c| c.is_whitespace() || c == ',' || c == ':');
            if !ok {
                return Err(invalid("email", format!("{email:?} is not a mail address like ops@example.com")));
            }
        }
        let Some(rest) = self.directory.strip_prefix("https://") else {
            return Err(invalid("directory", format!("{:?} must be an https:// URL", self.directory)));
        };
        if rest.is_empty() || rest.starts_with('/') || self.directory.parse::<http::Uri>().is_err() {
            return Err(invalid("directory", format!("{:?} is not a valid URL", self.directory)));
        }
        if self.retry_min_ms == 0 {
            return Err(invalid("retry_min_ms", "must be at least 1 (a failed order is never retried at once)"));
        }
        if self.retry_max_ms < self.retry_min_ms {
            return Err(invalid(
                "retry_max_ms",
                format!("{} is below retry_min_ms ({})", self.retry_max_ms, self.retry_min_ms),
            ));
        }
        if self.renew_before_days == 0 {
            return Err(invalid("renew_before_days", "must be at least 1 (0 would renew only after expiry)"));
        }
        let mut extra_roots = Vec::new();
        if let Some(path) = &self.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| invalid("ca_file", format!("cannot read {}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| invalid("ca_file", format!("{}: bad PEM: {e}", path.display())))?;
                extra_roots.push(cert);
            }
            if extra_roots.is_empty() {
                return Err(invalid("ca_file", format!("{} holds no PEM certificate", path.display())));
            }
        }
        Ok(AcmeSettings { config: self.clone(), extra_roots })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AcmeConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_the_acceptance_shape_parse() {
        let c = parse("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c, AcmeConfig::default());
        assert_eq!(c.directory, LETS_ENCRYPT_PRODUCTION);
        assert_eq!(c.challenge, ChallengeKind::Http01);
        assert_eq!(c.renew_before_days, 30);
        let c = parse(
            r#"
            email = "ops@example.test"
            directory = "https://127.0.0.1:14000/dir"
            challenge = "tls-alpn-01"
            key_type = "ecdsa-p384"
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.challenge, ChallengeKind::TlsAlpn01);
        assert_eq!(c.key_type, KeyType::EcdsaP384);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = parse("challenge = \"http-02\"").unwrap_err();
        assert!(err.contains("http-02"), "{err}");
        let err = parse("emial = \"a@b.c\"").unwrap_err();
        assert!(err.contains("emial"), "{err}");
        let cases = [
            (AcmeConfig { email: Some("ops".into()), ..Default::default() }, "acme.email"),
            (AcmeConfig { directory: "http://ca.test/dir".into(), ..Default::default() }, "acme.directory"),
            (AcmeConfig { retry_min_ms: 0, ..Default::default() }, "acme.retry_min_ms"),
            (AcmeConfig { retry_min_ms: 10, retry_max_ms: 5, ..Default::default() }, "acme.retry_max_ms"),
            (AcmeConfig { renew_before_days: 0, ..Default::default() }, "acme.renew_before_days"),
            (AcmeConfig { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() }, "/nonexistent/ca.pem"),
        ];
        for (config, needle) in cases {
            let err = config.validate().map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should name {needle}");
        }
    }
}

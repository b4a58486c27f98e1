//! Pebble, Let's Encrypt's ACME test server, and `pebble-challtestsrv`, its test DNS
//! server, as real processes for a test: a CA with real validation.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::scratch::{free_port, Scratch};

/// How a [`Pebble`] is started. Every field has a working default.
#[derive(Debug, Clone)]
pub struct PebbleSpec {
    /// Port Pebble's validator connects to for http-01 (on 127.0.0.1, where challtestsrv
    /// resolves every name).
    pub http_port: u16,
    /// Port Pebble's validator connects to for tls-alpn-01.
    pub tls_port: u16,
    /// Percentage of good nonces Pebble rejects as `badNonce` (`PEBBLE_WFE_NONCEREJECT`;
    /// Pebble's own default is 5).
    pub nonce_reject_percent: u8,
    /// Percentage of valid authorizations reused for a new order (`PEBBLE_AUTHZREUSE`;
    /// Pebble's default is 50). 0 makes every order validate again.
    pub authz_reuse_percent: u8,
    /// Validity of issued certificates in seconds (`certificateValidityPeriod`); `None`:
    /// Pebble's default (five years).
    pub validity_secs: Option<u64>,
}

impl Default for PebbleSpec {
    fn default() -> Self {
        PebbleSpec {
            http_port: free_port(),
            tls_port: free_port(),
            nonce_reject_percent: 0,
            authz_reuse_percent: 0,
            validity_secs: None,
        }
    }
}

/// A running Pebble and challtestsrv; both are killed on drop.
pub struct Pebble {
    spec: PebbleSpec,
    dir: Scratch,
    pebble: Child,
    challtest: Child,
    api_port: u16,
    management_port: u16,
    challtest_management_port: u16,
    dns_port: u16,
}

impl Pebble {
    /// Starts challtestsrv (every A query answered 127.0.0.1, only its DNS and management
    /// servers on) and Pebble using it as its DNS server, with `PEBBLE_VA_NOSLEEP=1` and
    /// real validation; waits until the directory answers.
    ///
    /// # Panics
    /// When `pebble` is not installed (`scripts/setup.sh` installs it) or does not come up.
    pub async fn start(spec: PebbleSpec) -> Pebble {
        let dir = Scratch::new("pebble");
        let (api_port, management_port) = (free_port(), free_port());
        let (dns_port, challtest_management_port) = (free_port(), free_port());
        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap_or_else(|e| panic!("pebble API certificate: {e}"));
        dir.write("pebble.minica.pem", &ca.cert.pem());
        dir.write("pebble.key.pem", &ca.signing_key.serialize_pem());
        let mut config = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{api_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": dir.path("pebble.minica.pem"),
            "privateKey": dir.path("pebble.key.pem"),
            "httpPort": spec.http_port,
            "tlsPort": spec.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(secs) = spec.validity_secs {
            config["certificateValidityPeriod"] = serde_json::json!(secs);
        }
        let config_path = dir.write("pebble-config.json", &serde_json::json!({ "pebble": config }).to_string());

        let log =
            |name: &str| std::fs::File::create(dir.path(name)).unwrap_or_else(|e| panic!("cannot create {name}: {e}"));
        let challtest = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{challtest_management_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pebble-challtestsrv (run scripts/setup.sh): {e}"));
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .env("PEBBLE_WFE_NONCEREJECT", spec.nonce_reject_percent.to_string())
            .env("PEBBLE_AUTHZREUSE", spec.authz_reuse_percent.to_string())
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pebble (run scripts/setup.sh): {e}"));
        let guard =
            Pebble { spec, dir, pebble, challtest, api_port, management_port, challtest_management_port, dns_port };
        guard.wait_up().await;
        guard
    }

    async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = self.https_client();
        loop {
            let api = client.get(self.directory_url()).send().await.map(|r| r.status().is_success());
            let dns = reqwest::Client::new()
                .post(format!("http://127.0.0.1:{}/clear-txt", self.challtest_management_port))
                .body(r#"{"host":"up.test."}"#)
                .send()
                .await
                .map(|r| r.status().is_success());
            if matches!((api, dns), (Ok(true), Ok(true))) {
                return;
            }
            if Instant::now() > deadline {
                panic!("pebble did not come up in 20 s; its log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn https_client(&self) -> reqwest::Client {
        let pem = std::fs::read(self.ca_file()).unwrap_or_else(|e| panic!("pebble CA file: {e}"));
        let cert = reqwest::Certificate::from_pem(&pem).unwrap_or_else(|e| panic!("pebble CA file: {e}"));
        reqwest::Client::builder()
            .add_root_certificate(cert)
            .build()
            .unwrap_or_else(|e| panic!("https client for pebble: {e}"))
    }

    /// The ACME directory, `https://127.0.0.1:<port>/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api_port)
    }

    /// The self-signed certificate of Pebble's API (what `[acme] ca_file` names).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path("pebble.minica.pem")
    }

    /// The directory holding Pebble's config, certificate and logs.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// How it was started.
    pub fn spec(&self) -> &PebbleSpec {
        &self.spec
    }

    /// The challtestsrv DNS server Pebble resolves names with (`127.0.0.1:<port>`).
    pub fn dns_addr(&self) -> String {
        format!("127.0.0.1:{}", self.dns_port)
    }

    /// The root that issued certificates chain to (management API `/roots/0`; new on
    /// every start).
    ///
    /// # Panics
    /// When the management API does not answer.
    pub async fn issuing_root_pem(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management_port);
        let reply = self.https_client().get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(reply.status().is_success(), "GET {url}: {}", reply.status());
        reply.text().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// Serves `value` as a TXT record of `_acme-challenge.<domain>.` (dns-01), through
    /// challtestsrv's management API.
    ///
    /// # Panics
    /// When challtestsrv refuses.
    pub async fn set_txt(&self, domain: &str, value: &str) {
        let body = serde_json::json!({ "host": challenge_host(domain), "value": value });
        self.challtest("set-txt", body).await;
    }

    /// Removes every TXT record of `_acme-challenge.<domain>.`.
    ///
    /// # Panics
    /// When challtestsrv refuses.
    pub async fn clear_txt(&self, domain: &str) {
        self.challtest("clear-txt", serde_json::json!({ "host": challenge_host(domain) })).await;
    }

    async fn challtest(&self, path: &str, body: serde_json::Value) {
        let url = format!("http://127.0.0.1:{}/{path}", self.challtest_management_port);
        let reply = reqwest::Client::new()
            .post(&url)
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert!(reply.status().is_success(), "POST {url}: {}", reply.status());
    }

    /// challtestsrv's management API (`set-txt`, `clear-txt`), e.g. for
    /// [`crate::cloudflare::FakeCloudflare::mirror_txt_to`].
    pub fn challtest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.challtest_management_port)
    }

    /// Pebble's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path(n)).unwrap_or_default();
        format!("{}{}", read("pebble.log"), read("pebble.err"))
    }
}

fn challenge_host(domain: &str) -> String {
    format!("_acme-challenge.{}.", domain.trim_end_matches('.'))
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.challtest] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

//! The HTTP client instant-acme talks to the CA through: hyper + rustls (ring), the
//! public web roots plus `ca_file`, bounded connect and request times, and a record of
//! the CA's `Retry-After` and of every request made (for backoff and metrics).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls::pki_types::CertificateDer;

/// Longest a TCP connect to the CA may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one request to the CA may take, response head included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the client observed, shared with the orderer.
#[derive(Default)]
pub(crate) struct Observed {
    pub(crate) retry_after: Mutex<Option<SystemTime>>,
    pub(crate) requests: Option<prometheus::IntCounter>,
}

impl Observed {
    /// The latest `Retry-After` the CA sent (on a 429 or 503), taken.
    pub(crate) fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The client handed to instant-acme.
pub(crate) struct CaClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    observed: Arc<Observed>,
}

impl CaClient {
    pub(crate) fn new(extra_roots: &[CertificateDer<'static>], observed: Arc<Observed>) -> Result<CaClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra_roots {
            roots.add(cert.clone()).map_err(|e| format!("acme.ca_file: certificate not usable as a root: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS for the CA: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(CaClient { client, observed })
    }
}

impl HttpClient for CaClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        if let Some(c) = &self.observed.requests {
            c.inc();
        }
        let uri = req.uri().clone();
        let fut = self.client.request(req);
        let observed = Arc::clone(&self.observed);
        Box::pin(async move {
            let rsp = match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(rsp)) => rsp,
                Ok(Err(e)) => return Err(Error::Other(format!("{uri}: {e}").into())),
                Err(_) => return Err(Error::Other(format!("{uri}: no answer within {REQUEST_TIMEOUT:?}").into())),
            };
            let status = rsp.status();
            if status == http::StatusCode::TOO_MANY_REQUESTS || status == http::StatusCode::SERVICE_UNAVAILABLE {
                let after = rsp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|secs| SystemTime::now() + Duration::from_secs(secs));
                if after.is_some() {
                    *observed.retry_after.lock().unwrap_or_else(|e| e.into_inner()) = after;
                }
            }
            if status.is_server_error() {
                // A 5xx is rarely a problem document: say which URL failed and how.
                return Err(Error::Other(format!("{uri}: the CA answered {status}").into()));
            }
            Ok(BytesResponse::from(rsp))
        })
    }
}

//! The demo's requests: one GET per fresh connection (no pooling, so a failed request is
//! never silently resent), the answer read whole.

use std::time::Duration;

use anyhow::Context;

/// What came back.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client that opens a new connection per request.
pub fn client(limit: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder().pool_max_idle_per_host(0).timeout(limit).build().context("cannot build an HTTP client")
}

/// `GET url`, the whole answer.
pub async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Answer> {
    let resp = client.get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.with_context(|| format!("GET {url}: body cut short"))?.to_vec();
    Ok(Answer { status, body })
}

//! The CLI's and the demo's requests to a local agent: one request per connection over
//! Pingora's HTTP/1.1 client (already the proxy's HTTP stack), the answer read whole.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;

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

/// Sends `method path` to `addr` with `extra` headers and `body`, and waits up to `limit`
/// for the whole answer.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    limit: Duration,
) -> anyhow::Result<Answer> {
    tokio::time::timeout(limit, exchange(addr, method, path, extra, body))
        .await
        .map_err(|_| anyhow!("{addr} did not answer {method} {path} within {limit:?}"))?
        .with_context(|| format!("{method} http://{addr}{path}"))
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Answer> {
    let mut head = http::Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in extra {
        head = head.header(*name, *value);
    }
    let has_body = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    if has_body {
        head = head.header("content-length", body.len());
    }
    let (parts, ()) = head.body(())?.into_parts();
    let connector = Connector::new(None);
    let peer = HttpPeer::new(addr, false, String::new());
    let (mut session, _) = connector.get_http_session(&peer).await?;
    session.write_request_header(Box::new(parts.into())).await?;
    if has_body {
        session.write_request_body(body.to_vec().into(), true).await?;
    }
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let status = session.response_header().map(|h| h.status.as_u16()).context("no response header")?;
    let mut out = Vec::new();
    while let Some(chunk) = session.read_response_body().await? {
        out.extend_from_slice(&chunk);
    }
    session.shutdown().await;
    Ok(Answer { status, body: out })
}

//! The demo's and the CLI's one-shot HTTP/1.1 exchange with a local agent: one request
//! per connection (`Connection: close`), the answer read until the server closes.
//! Deliberately tiny; the agent's admin API and the demo's backends are all it talks to.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// The body, de-chunked when it was chunked.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` to `addr` with `extra` header lines and `body`, and waits up to
/// `limit` for the whole answer.
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
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Answer> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in extra {
        out += &format!("{name}: {value}\r\n");
    }
    out += &format!("Content-Length: {}\r\n\r\n", body.len());
    let mut sock = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    sock.write_all(out.as_bytes()).await?;
    sock.write_all(body).await?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await?;
    parse(&raw).with_context(|| format!("unreadable answer from {addr}"))
}

/// Splits a whole closed-connection answer into status and body.
fn parse(raw: &[u8]) -> anyhow::Result<Answer> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { bail!("no end of headers") };
    let head = std::str::from_utf8(&raw[..split])?;
    let rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok());
    let Some(status) = status else { bail!("no status line") };
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { unchunk(rest)? } else { rest.to_vec() };
    Ok(Answer { status, body })
}

fn unchunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = std::str::from_utf8(&rest[..eol])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let Some(chunk) = rest.get(..size) else { bail!("chunk cut short") };
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    bail!("chunked body without its last chunk")
}

//! Body middlewares end to end: `compress` (gzip, br and zstd decode to the original;
//! small, excluded, already encoded and `identity` responses untouched), `buffering`
//! (413 for a body over the limit, the upstream never sees a too-large declared body,
//! 500 for a too-large response) and `errors` (the error service's page with the
//! upstream's status, the query carrying `{status}` and `{url}`, other statuses
//! untouched).
//!
//! The origin is a small HTTP/1.1 server in this file (the kit's `Backend` cannot set
//! `Content-Type` or `Content-Encoding`). Decoding: gzip with Python's `gzip`, zstd with
//! the `zstd` command, brotli with Pingora's own decoder (Python has no brotli module
//! here).

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// A compressible body of `n` bytes.
fn text(n: usize) -> Vec<u8> {
    b"Constellation compresses what Traefik compresses. ".iter().copied().cycle().take(n).collect()
}

/// Bytes that are "already encoded": passed through as they are.
fn opaque() -> Vec<u8> {
    (0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// What the origin received: (request target, body length).
type Seen = Arc<Mutex<Vec<(String, usize)>>>;

struct Origin {
    addr: SocketAddr,
    seen: Seen,
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, s.clone()));
            }
        });
        Origin { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self, prefix: &str) -> Vec<(String, usize)> {
        self.seen.lock().unwrap().iter().filter(|(p, _)| p.starts_with(prefix)).cloned().collect()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request per connection, answered by the last path segment, then closed.
async fn serve(mut stream: tokio::net::TcpStream, seen: Seen) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let target = String::from_utf8_lossy(&buf[..head_end]).split(' ').nth(1).unwrap_or("/").to_string();
    let length: Option<usize> =
        head.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)));
    let chunked = head.contains("transfer-encoding: chunked");
    let mut body = buf[head_end..].to_vec();
    loop {
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => find(&body, b"0\r\n\r\n").is_some(),
            None => true,
        };
        if done {
            break;
        }
        match stream.read(&mut tmp).await {
            Ok(0) | Err(_) => {
                // Cut off mid-body: record what did arrive.
                let got = if chunked { decode_chunked(&body).len() } else { body.len() };
                seen.lock().unwrap().push((format!("{target} (incomplete)"), got));
                return;
            }
            Ok(n) => body.extend_from_slice(&tmp[..n]),
        }
    }
    let body_len = if chunked { decode_chunked(&body).len() } else { body.len() };
    seen.lock().unwrap().push((target.clone(), body_len));
    let path = target.split('?').next().unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    let fixed = |status: &str, ct: &str, extra: &str, body: Vec<u8>| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {ct}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    };
    let out = if path.starts_with("/page/") {
        fixed("200 OK", "text/html", "", format!("<h1>error page {target}</h1>").into_bytes())
    } else {
        match last {
            "big" | "huge" => fixed("200 OK", "text/plain; charset=utf-8", "", text(5000)),
            "small" => fixed("200 OK", "text/plain", "", text(100)),
            "png" => fixed("200 OK", "image/png", "", text(5000)),
            "encoded" => fixed("200 OK", "text/plain", "content-encoding: gzip\r\n", opaque()),
            "fail" => fixed("503 Service Unavailable", "text/plain", "", b"upstream failure body".to_vec()),
            "missing" => fixed("404 Not Found", "text/plain", "", b"upstream 404 body".to_vec()),
            "stream" => {
                let mut out =
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                        .to_vec();
                for c in text(6000).chunks(2000) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            }
            _ => fixed("200 OK", "text/plain", "", b"ok".to_vec()),
        }
    };
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

fn decode_chunked(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(b, b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap_or("0").trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < i + 2 + n {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}

/// The decoded bytes are the original (a failure says how long each is, not every byte).
fn same(decoded: &[u8], original: &[u8]) {
    assert!(decoded == original, "decoded {} bytes, expected {}", decoded.len(), original.len());
}

/// Pipe `input` through a command and return its output.
fn pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    pipe(
        Command::new("python3")
            .args(["-c", "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))"]),
        b,
    )
}

fn unzstd(b: &[u8]) -> Vec<u8> {
    pipe(Command::new("zstd").args(["-d", "-c", "-q"]), b)
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut d = pingora_core::protocols::http::compression::Algorithm::Brotli.decompressor(true).unwrap();
    d.encode(b, true).unwrap().to_vec()
}

const ROUTES: &str = "http:
  routers:
    c:
      rule: \"PathPrefix(`/c/`)\"
      service: app
      middlewares: [squeeze]
    z:
      rule: \"PathPrefix(`/z/`)\"
      service: app
      middlewares: [squeeze-zstd]
    b:
      rule: \"PathPrefix(`/b/`)\"
      service: app
      middlewares: [limit]
    e:
      rule: \"PathPrefix(`/e/`)\"
      service: app
      middlewares: [pages]
    r:
      rule: \"PathPrefix(`/r/`)\"
      service: app
      middlewares: [rewritten]
  middlewares:
    squeeze:
      compress:
        excludedContentTypes: [\"image/png\"]
    squeeze-zstd:
      compress:
        encodings: [zstd, br]
        includedContentTypes: [\"text/plain\"]
    limit:
      buffering:
        maxRequestBodyBytes: 100
        maxResponseBodyBytes: 1000
    pages:
      errors:
        status: [\"500-599\"]
        service: errpages
        query: \"/page/{status}?u={url}\"
    rewritten:
      errors:
        status: [\"404\", \"503\"]
        statusRewrites:
          \"500-503\": 500
        service: errpages
        query: \"/page/{status}-{originalStatus}\"
  services:
    app:
      loadBalancer:
        servers:
          - url: \"ORIGIN\"
    errpages:
      loadBalancer:
        servers:
          - url: \"ORIGIN\"
";

async fn start() -> (Origin, Agent) {
    let origin = Origin::start().await;
    let agent = Agent::start(&ROUTES.replace("ORIGIN", &origin.url()), "").await;
    (origin, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_encodes_what_it_should_and_nothing_else() {
    let (_origin, agent) = start().await;
    let mut c = agent.client();
    let ae = |v: &'static str| [("accept-encoding", v)];
    let original = text(5000);

    // gzip: Traefik's first choice when the client's q-values tie.
    let r = c.request("GET", "app", "/c/big", &ae("br, zstd, gzip"), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", agent.log());
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("content-length"), None);
    assert!(r.body.len() < original.len() / 4, "{} bytes", r.body.len());
    same(&gunzip(&r.body), &original);

    // br, by q-value.
    let r = c.request("GET", "app", "/c/big", &ae("gzip;q=0.5, br;q=0.9"), &[]).await.unwrap();
    assert_eq!(r.header("content-encoding"), Some("br"));
    same(&unbrotli(&r.body), &original);

    // zstd, on a streamed (chunked) response too.
    let r = c.request("GET", "app", "/c/stream", &ae("zstd"), &[]).await.unwrap();
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    same(&unzstd(&r.body), &text(6000));

    // `encodings` sets the order: zstd before br for a client that takes anything.
    let r = c.request("GET", "app", "/z/big", &ae("gzip, br, zstd"), &[]).await.unwrap();
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    same(&unzstd(&r.body), &original);
    // gzip is not among them: untouched.
    let r = c.request("GET", "app", "/z/big", &ae("gzip"), &[]).await.unwrap();
    assert_eq!((r.header("content-encoding"), r.body.clone()), (None, original.clone()));

    // Smaller than minResponseBodyBytes (1024): untouched.
    let r = c.request("GET", "app", "/c/small", &ae("gzip"), &[]).await.unwrap();
    assert_eq!((r.header("content-encoding"), r.body.clone()), (None, text(100)));
    assert_eq!(r.header("content-length"), Some("100"));

    // An excluded type (and, for `includedContentTypes`, a type not included): untouched.
    let r = c.request("GET", "app", "/c/png", &ae("gzip"), &[]).await.unwrap();
    assert_eq!((r.header("content-encoding"), r.body.clone()), (None, original.clone()));
    let r = c.request("GET", "app", "/z/png", &ae("zstd"), &[]).await.unwrap();
    assert_eq!((r.header("content-encoding"), r.body.clone()), (None, original.clone()));

    // Already encoded: passed through byte for byte.
    let r = c.request("GET", "app", "/c/encoded", &ae("gzip, br"), &[]).await.unwrap();
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, opaque());

    // identity, or no Accept-Encoding at all: untouched.
    let r = c.request("GET", "app", "/c/big", &ae("identity"), &[]).await.unwrap();
    assert_eq!((r.header("content-encoding"), r.body.clone()), (None, original.clone()));
    let r = c.get("app", "/c/big").await.unwrap();
    assert_eq!((r.header("content-encoding"), r.body.clone()), (None, original.clone()));

    // HEAD: never encoded.
    let r = c.request("HEAD", "app", "/c/big", &ae("gzip"), &[]).await.unwrap();
    assert_eq!((r.status, r.header("content-encoding")), (200, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffering_refuses_bodies_over_the_limit() {
    let (origin, agent) = start().await;
    let mut c = agent.client();

    // A declared length over the limit: 413, and the origin never hears of it.
    let r = c.request("POST", "app", "/b/declared", &[], &[b'x'; 500]).await.unwrap();
    assert_eq!(r.status, 413, "{}", agent.log());
    assert!(origin.seen("/b/declared").is_empty(), "{:?}", origin.seen("/b/"));

    // Chunked, growing past the limit: 413.
    let mut c = agent.client();
    let r = c
        .request_chunked(
            "POST",
            "app",
            "/b/chunked",
            &[],
            &[&[b'y'; 80], &[b'y'; 80]],
            std::time::Duration::from_millis(20),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", agent.log());
    // The origin got the head at most, never a byte of the body.
    assert!(origin.seen("/b/chunked").iter().all(|(_, n)| *n == 0), "{:?}", origin.seen("/b/"));

    // Within the limit, chunked or not: the origin gets the whole body.
    let mut c = agent.client();
    let r = c
        .request_chunked(
            "POST",
            "app",
            "/b/okchunks",
            &[],
            &[&[b'z'; 40], &[b'z'; 40]],
            std::time::Duration::from_millis(20),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "ok".to_string()), "{}", agent.log());
    assert_eq!(origin.seen("/b/okchunks"), vec![("/b/okchunks".to_string(), 80)]);
    let r = c.request("POST", "app", "/b/oksized", &[], &[b'z'; 100]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(origin.seen("/b/oksized"), vec![("/b/oksized".to_string(), 100)]);

    // A response over maxResponseBodyBytes: 500.
    let r = c.get("app", "/b/huge").await.unwrap();
    assert_eq!(r.status, 500, "{}", agent.log());
    assert_eq!(r.text(), "Internal Server Error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_serve_the_error_service_page_with_the_original_status() {
    let (origin, agent) = start().await;
    let mut c = agent.client();

    let r = c.get("app", "/e/fail").await.unwrap();
    assert_eq!(r.status, 503, "{}", agent.log());
    assert_eq!(r.text(), "<h1>error page /page/503?u=%2Fe%2Ffail</h1>");
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(origin.seen("/page/"), vec![("/page/503?u=%2Fe%2Ffail".to_string(), 0)]);

    // Outside the range: the upstream's own answer.
    let r = c.get("app", "/e/missing").await.unwrap();
    assert_eq!((r.status, r.text()), (404, "upstream 404 body".to_string()));
    let r = c.get("app", "/e/big").await.unwrap();
    assert_eq!((r.status, r.body.len()), (200, 5000));
    assert_eq!(origin.seen("/page/").len(), 1);

    // statusRewrites: the client gets the rewritten status; the query has both.
    let r = c.get("app", "/r/fail").await.unwrap();
    assert_eq!((r.status, r.text()), (500, "<h1>error page /page/500-503</h1>".to_string()));
    let r = c.get("app", "/r/missing").await.unwrap();
    assert_eq!((r.status, r.text()), (404, "<h1>error page /page/404-404</h1>".to_string()));
}

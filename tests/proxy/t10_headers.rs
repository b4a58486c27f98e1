//! Headers and framing at the front door, byte for byte: forwarding headers from
//! untrusted and trusted peers, list-form `Content-Length` that could smuggle a request
//! to a lenient backend, response hop-by-hop fields, bodiless statuses, a missing
//! `Host`, and clients that leave mid-headers. The backend is a raw socket that records
//! what it receives; requests are written by a raw client.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const LIMIT: Duration = Duration::from_secs(10);

async fn start(backend: &RawBackend, extra_toml: &str) -> Agent {
    Agent::start(&routes("app", "PathPrefix(`/`)", &[backend.url()], ""), extra_toml).await
}

async fn send(agent: &Agent, request: &str) -> RawReply {
    raw_exchange(agent.web, request.as_bytes(), LIMIT).await.unwrap()
}

const SPOOFED: &str = "GET /fwd HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 1.2.3.4\r\nX-Real-Ip: 1.2.3.4\r\n\
                       Forwarded: for=1.2.3.4;proto=https\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: bank.example\r\n\
                       X-Forwarded-Port: 443\r\nX_Forwarded_For: 9.9.9.9\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_replaced_from_untrusted_peers_and_extended_from_trusted_ones() {
    let backend = RawBackend::start(OK).await.unwrap();

    tracing::info!("default config: nobody is trusted, loopback included");
    let agent = start(&backend, "").await;
    let r = send(&agent, SPOOFED).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", agent.log());
    let seen = backend.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let h = &seen[0];
    assert_eq!(h.headers("x-forwarded-for"), ["127.0.0.1"], "{}", h.head);
    assert_eq!(h.headers("x-real-ip"), ["127.0.0.1"], "{}", h.head);
    assert!(h.headers("forwarded").is_empty(), "{}", h.head);
    assert!(h.headers("x_forwarded_for").is_empty(), "{}", h.head);
    assert_eq!(h.headers("x-forwarded-proto"), ["http"], "{}", h.head);
    assert_eq!(h.headers("x-forwarded-port"), [agent.web.port().to_string()], "{}", h.head);
    assert_eq!(h.headers("x-forwarded-host"), ["app"], "{}", h.head);
    drop(agent);

    tracing::info!("loopback trusted: the peer's headers are kept and X-Forwarded-For extended");
    backend.clear();
    let agent = start(&backend, "[entrypoints.web.forwarded_headers]\ntrusted_ips = [\"127.0.0.0/8\"]\n").await;
    let r = send(&agent, SPOOFED).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", agent.log());
    let seen = backend.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let h = &seen[0];
    assert_eq!(h.headers("x-forwarded-for"), ["1.2.3.4, 127.0.0.1"], "{}", h.head);
    assert_eq!(h.headers("x-real-ip"), ["1.2.3.4"], "{}", h.head);
    assert_eq!(h.headers("forwarded"), ["for=1.2.3.4;proto=https"], "{}", h.head);
    assert_eq!(h.headers("x-forwarded-proto"), ["https"], "{}", h.head);
    assert_eq!(h.headers("x-forwarded-port"), ["443"], "{}", h.head);
    assert_eq!(h.headers("x-forwarded-host"), ["bank.example"], "{}", h.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_form_content_length_cannot_smuggle_a_request() {
    let backend = RawBackend::start(OK).await.unwrap();
    let agent = start(&backend, "").await;
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
    let n = hidden.len();

    for lengths in [format!("Content-Length: {n}, {n}\r\n"), format!("Content-Length: {n}\r\nContent-Length: {n}\r\n")]
    {
        tracing::info!(lengths = lengths.trim(), "agreeing lengths with a request hidden in the body");
        backend.clear();
        let r =
            send(&agent, &format!("POST /upload HTTP/1.1\r\nHost: app\r\n{lengths}Connection: close\r\n\r\n{hidden}"))
                .await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen = backend.requests();
        let lines: Vec<&str> = seen.iter().map(RawRequest::line).collect();
        assert_eq!(lines, ["POST /upload HTTP/1.1"], "the lenient backend framed a second request: {seen:?}");
        assert_eq!(seen[0].headers("content-length"), [n.to_string()], "{}", seen[0].head);
        assert_eq!(seen[0].body, hidden.as_bytes());
    }

    tracing::info!("disagreeing lengths: 400, nothing reaches the backend");
    backend.clear();
    let r =
        send(&agent, &format!("POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: {n}, 43\r\n\r\n{hidden}")).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(backend.received().is_empty(), "{:?}", String::from_utf8_lossy(&backend.received()));

    tracing::info!("Transfer-Encoding with Content-Length: the encoding frames, the length is dropped");
    let r = send(
        &agent,
        "POST /te HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = backend.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].headers("content-length").is_empty(), "{}", seen[0].head);
    assert_eq!(seen[0].body, b"5\r\nhello\r\n0\r\n\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_bodiless_lengths_and_missing_host() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\nX-Kept: k\r\n\r\nok",
    )
    .await
    .unwrap();
    let agent = start(&backend, "").await;

    tracing::info!("response hop-by-hop fields never reach the client; request ones never reach the backend");
    let r = send(
        &agent,
        "GET /hop HTTP/1.1\r\nHost: app\r\nConnection: X-Hop, close\r\nX-Hop: h\r\nKeep-Alive: 300\r\n\
         Proxy-Connection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"ok");
    for gone in ["x-secret", "keep-alive", "proxy-connection", "proxy-authenticate"] {
        assert!(r.headers(gone).is_empty(), "{gone} reached the client:\n{}", r.head);
    }
    assert_eq!(r.headers("x-kept"), ["k"]);
    let seen = backend.requests();
    for gone in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(seen[0].headers(gone).is_empty(), "{gone} reached the backend:\n{}", seen[0].head);
    }

    tracing::info!("204 and 304 lose their Content-Length");
    for (status, line) in [(204, "204 No Content"), (304, "304 Not Modified")] {
        backend.set_response(format!("HTTP/1.1 {line}\r\nContent-Length: 7\r\nETag: \"e\"\r\n\r\n").as_bytes());
        let r = send(&agent, "GET /empty HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").await;
        assert_eq!(r.status, status, "{r:?}");
        assert!(r.headers("content-length").is_empty(), "{status}:\n{}", r.head);
        assert!(r.headers("transfer-encoding").is_empty(), "{status}:\n{}", r.head);
    }

    tracing::info!("HTTP/1.1 without Host: 400 without contacting the backend; HTTP/1.0 routes as before");
    backend.set_response(OK);
    backend.clear();
    let r = send(&agent, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(backend.received().is_empty());
    let r = send(&agent, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    let rejected = agent.metric("constellation_requests_rejected_total", &["reason=\"missing_host\""]).await;
    assert_eq!(rejected, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_leaving_mid_headers_are_counted_not_logged_as_errors() {
    let backend = RawBackend::start(OK).await.unwrap();
    let agent = start(&backend, "").await;
    const CLIENTS: usize = 50;
    for _ in 0..CLIENTS {
        let mut s = tokio::net::TcpStream::connect(agent.web).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nX-Half").await.unwrap();
        s.shutdown().await.unwrap();
    }
    let metric = "constellation_downstream_disconnects_total";
    eventually_or(
        "every disconnect counted",
        LIMIT,
        || agent.log(),
        || async {
            let n = agent.metric(metric, &["stage=\"headers\""]).await;
            if n >= CLIENTS as f64 {
                Ok(n)
            } else {
                Err(format!("{n} counted"))
            }
        },
    )
    .await;
    assert_eq!(agent.metric(metric, &["stage=\"headers\""]).await, CLIENTS as f64);
    // A normal request still works, and nothing reached the backend before it.
    assert!(backend.received().is_empty());
    assert_eq!(send(&agent, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").await.status, 200);

    tracing::info!("a client leaving mid-body is counted at stage body");
    let mut s = tokio::net::TcpStream::connect(agent.web).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
    s.shutdown().await.unwrap();
    wait_for("the mid-body disconnect counted", LIMIT, || async {
        agent.metric(metric, &["stage=\"body\""]).await == 1.0
    })
    .await;
    let log = agent.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{} ERROR lines, first: {:?}", errors.len(), errors.first());
}

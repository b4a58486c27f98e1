//! Tests of the frame codec (round trips, truncation, tampering, wrong keys, oversize,
//! versions) and of the admission limits on real loopback sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::admission::DEFAULT_MAX_PENDING;
use crate::*;

const CAP: usize = 64 * 1024;

fn ring() -> Arc<Keyring> {
    Arc::new(Keyring::parse(&generate_key_hex()).unwrap())
}

fn codec(ring: &Arc<Keyring>) -> FrameCodec {
    FrameCodec::new(Arc::clone(ring), CAP)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Decodes one frame from `bytes`; the error, or the message.
fn decode(codec: &FrameCodec, bytes: &[u8]) -> Result<Option<Vec<String>>, FrameError> {
    block_on(codec.read::<Vec<String>, _>(&mut &bytes[..]))
}

#[test]
fn frames_round_trip_and_follow_each_other() {
    let ring = ring();
    let codec = codec(&ring);
    let first = vec!["state".to_string(), "pull".to_string()];
    let second: Vec<String> = Vec::new();
    let mut stream = codec.encode(&first).unwrap();
    let one = stream.len();
    assert_eq!(one, FRAME_OVERHEAD + postcard::to_allocvec(&first).unwrap().len());
    assert_eq!(stream[0], PROTOCOL_VERSION);
    assert_eq!(stream[FRAME_HEADER_LEN], PROTOCOL_VERSION, "the body is an envelope of its own");
    stream.extend(codec.encode(&second).unwrap());
    let mut reader = &stream[..];
    block_on(async {
        assert_eq!(codec.read::<Vec<String>, _>(&mut reader).await.unwrap(), Some(first));
        assert_eq!(codec.read::<Vec<String>, _>(&mut reader).await.unwrap(), Some(second));
        assert!(codec.read::<Vec<String>, _>(&mut reader).await.unwrap().is_none(), "clean end of stream");
    });
}

#[test]
fn truncated_frames_are_io_errors() {
    let ring = ring();
    let codec = codec(&ring);
    let frame = codec.encode(&vec!["x".to_string(); 10]).unwrap();
    for cut in 1..frame.len() {
        match decode(&codec, &frame[..cut]) {
            Err(FrameError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "cut at {cut}"),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn tampering_anywhere_fails_to_open() {
    let ring = ring();
    let codec = codec(&ring);
    let frame = codec.encode(&vec!["payload".to_string()]).unwrap();
    for i in 0..frame.len() {
        let mut bad = frame.clone();
        bad[i] ^= 0x01;
        let expected = match i {
            0 => OpenError::BadVersion,
            1..=4 => OpenError::UnknownKey,
            i if i == FRAME_HEADER_LEN => OpenError::BadVersion,
            i if (FRAME_HEADER_LEN + 1..FRAME_HEADER_LEN + 5).contains(&i) => OpenError::UnknownKey,
            _ => OpenError::Forged,
        };
        match decode(&codec, &bad) {
            Err(FrameError::Open(e)) => assert_eq!(e, expected, "flipped byte {i}"),
            other => panic!("flipped byte {i}: {other:?}"),
        }
    }
}

#[test]
fn bodies_cannot_move_between_headers() {
    let ring = ring();
    let codec = codec(&ring);
    let a = codec.encode(&vec!["a".to_string()]).unwrap();
    let b = codec.encode(&vec!["b".to_string()]).unwrap();
    let mut spliced = a[..FRAME_HEADER_LEN].to_vec();
    spliced.extend_from_slice(&b[FRAME_HEADER_LEN..]);
    assert!(matches!(decode(&codec, &spliced), Err(FrameError::Open(OpenError::Forged))));
    // Nor does a header open as a body or a datagram, or a datagram as a header.
    assert_eq!(ring.open(&a[..FRAME_HEADER_LEN]), Err(OpenError::Forged));
    let mut datagram = ring.seal(&[0, 0, 0, 1]);
    datagram.extend_from_slice(&ring.seal(b""));
    assert!(matches!(decode(&codec, &datagram), Err(FrameError::Open(OpenError::Forged))));
}

#[test]
fn wrong_key_is_unknown_and_rotation_opens() {
    let ring = ring();
    let frame = codec(&ring).encode(&vec!["x".to_string()]).unwrap();
    assert!(matches!(decode(&codec(&self::ring()), &frame), Err(FrameError::Open(OpenError::UnknownKey))));
    // A ring holding the old key second (a rotation under way) opens it.
    let key = generate_key_hex();
    let old = Arc::new(Keyring::parse(&key).unwrap());
    let both = Arc::new(Keyring::parse(&format!("{}\n{key}", generate_key_hex())).unwrap());
    let frame = codec(&old).encode(&vec!["old".to_string()]).unwrap();
    assert_eq!(decode(&codec(&both), &frame).unwrap(), Some(vec!["old".to_string()]));
}

#[test]
fn another_protocol_version_is_refused_by_name() {
    let key = generate_key_hex();
    let ours = codec(&Arc::new(Keyring::parse(&key).unwrap()));
    let theirs = codec(&Arc::new(Keyring::parse(&key).unwrap().speaking(PROTOCOL_VERSION + 1)));
    let frame = theirs.encode(&vec!["hello".to_string()]).unwrap();
    match decode(&ours, &frame) {
        Err(FrameError::Open(OpenError::OtherVersion { theirs, ours })) => {
            assert_eq!((theirs, ours), (PROTOCOL_VERSION + 1, PROTOCOL_VERSION));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(decode(&ours, &frame).unwrap_err().reason(), "version");
}

#[test]
fn oversize_is_refused_both_ways() {
    let ring = ring();
    let small = FrameCodec::new(Arc::clone(&ring), 16);
    assert!(matches!(small.encode(&vec![0u8; 100]), Err(FrameError::Oversize { limit: 16, .. })));
    let frame = codec(&ring).encode(&vec![0u8; 100]).unwrap();
    match decode_bytes(&small, &frame) {
        Err(e @ FrameError::Oversize { len: 101, limit: 16 }) => assert_eq!(e.reason(), "oversize"),
        other => panic!("{other:?}"),
    }
}

fn decode_bytes(codec: &FrameCodec, bytes: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
    block_on(codec.read::<Vec<u8>, _>(&mut &bytes[..]))
}

/// A 1 GiB length, unauthenticated or authentic but over the cap: the reader takes the
/// 37 header bytes and stops; the body is never read, so never allocated (its buffer is
/// made only after `read_header` returns a length).
#[test]
fn a_gigabyte_length_costs_only_the_header() {
    let ring = ring();
    let codec = codec(&ring);
    let gib: u32 = 1 << 30;
    let mut old_style = gib.to_be_bytes().to_vec();
    old_style.extend_from_slice(&[PROTOCOL_VERSION; 64]);
    let mut forged = codec.seal_header(gib);
    forged[FRAME_HEADER_LEN - 1] ^= 0x80;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("a bare 1 GiB length prefix", old_style, "bad_version"),
        ("a 1 GiB header with a broken seal", forged, "forged"),
        ("an authentic 1 GiB header", codec.seal_header(gib), "oversize"),
    ];
    for (what, prefix, reason) in cases {
        // The claimed body would follow: an endless stream of bytes.
        let budget = 2 * u64::from(gib);
        let mut stream = (&prefix[..]).chain(tokio::io::repeat(0x5a)).take(budget);
        let error = block_on(codec.read::<Vec<u8>, _>(&mut stream)).unwrap_err();
        assert_eq!(error.reason(), reason, "{what}: {error}");
        let consumed = budget - stream.limit();
        assert_eq!(consumed, FRAME_HEADER_LEN as u64, "{what}: read {consumed} bytes");
    }
}

proptest! {
    #[test]
    fn any_message_round_trips(message in proptest::collection::vec(any::<String>(), 0..8)) {
        let ring = ring();
        let codec = codec(&ring);
        let frame = codec.encode(&message).unwrap();
        prop_assert_eq!(decode(&codec, &frame).unwrap(), Some(message));
    }

    #[test]
    fn any_bit_flip_or_cut_is_refused(
        message in proptest::collection::vec(any::<String>(), 0..4),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<bool>(),
    ) {
        let ring = ring();
        let codec = codec(&ring);
        let mut frame = codec.encode(&message).unwrap();
        let i = at.index(frame.len());
        if cut {
            frame.truncate(i.max(1));
            prop_assert!(matches!(decode(&codec, &frame), Err(FrameError::Io(_))));
        } else {
            frame[i] ^= 1 << bit;
            prop_assert!(matches!(decode(&codec, &frame), Err(FrameError::Open(_))));
        }
    }

    #[test]
    fn random_bytes_never_decode(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let codec = codec(&ring());
        match decode(&codec, &bytes) {
            Ok(None) => prop_assert!(bytes.is_empty()),
            Ok(Some(_)) => prop_assert!(false, "random bytes decoded"),
            Err(e) => prop_assert!(matches!(e, FrameError::Io(_) | FrameError::Open(_)), "{e}"),
        }
    }
}

// === admission ===

/// Echoes requests; counts rejections.
struct Echo {
    rejected: AtomicUsize,
}

impl Service for Echo {
    type Request = String;
    type Response = String;

    async fn call(&self, _peer: SocketAddr, request: String) -> Option<String> {
        Some(request)
    }

    fn rejected(&self, _peer: SocketAddr, _error: &FrameError) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

struct Server {
    addr: SocketAddr,
    codec: FrameCodec,
    registry: Registry,
    echo: Arc<Echo>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let codec = codec(&ring());
    let registry = Registry::new();
    let metrics = AdmissionMetrics::register(&registry, "test").unwrap();
    let echo = Arc::new(Echo { rejected: AtomicUsize::new(0) });
    let task = tokio::spawn(admission::serve(listener, codec.clone(), limits, metrics, Arc::clone(&echo)));
    Server { addr, codec, registry, echo, task }
}

impl Server {
    fn count(&self, name: &str, label: &str) -> i64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.value() == label))
            .map(|m| m.get_counter().get_value() as i64 + m.get_gauge().get_value() as i64)
            .sum()
    }

    fn event(&self, event: &str) -> i64 {
        self.count("constellation_cluster_connections_total", event)
    }

    /// One request on a fresh connection, within a second.
    async fn ask(&self, text: &str) -> Result<String, String> {
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await.map_err(|e| e.to_string())?;
            self.codec.write(&mut stream, text).await.map_err(|e| e.to_string())?;
            self.codec.read::<String, _>(&mut stream).await.map_err(|e| e.to_string())?.ok_or("closed".to_string())
        };
        tokio::time::timeout(Duration::from_secs(1), exchange).await.map_err(|_| "timed out".to_string())?
    }

    async fn wait(&self, what: &str, pred: impl Fn(&Server) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !pred(self) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// True once the server has closed `stream`.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_do_not_starve_a_real_peer() {
    let server = server(Limits::new(Duration::from_secs(5))).await;
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let evictions = 500 - DEFAULT_MAX_PENDING as i64;
    server.wait("500 accepted", |s| s.event("accepted") == 500 && s.event("evicted") >= evictions).await;
    for i in 0..20 {
        assert_eq!(server.ask(&format!("ping {i}")).await.unwrap(), format!("ping {i}"));
    }
    assert_eq!(server.event("admitted"), 20);
    // The oldest idle connections were closed to make room.
    assert!(closed(&mut idle[0]).await);
    server.wait("answered peers gone", |s| s.count("constellation_cluster_connections", "admitted") == 0).await;
    assert!(server.count("constellation_cluster_connections", "pending") <= DEFAULT_MAX_PENDING as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_time_out_and_garbage_is_rejected() {
    let mut limits = Limits::new(Duration::from_secs(5));
    limits.handshake_timeout = Duration::from_millis(200);
    let server = server(limits).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed(&mut silent).await);
    assert_eq!(server.event("timed_out"), 1);
    // Half a header, then nothing: also a timeout, not a rejection.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(&[PROTOCOL_VERSION; 10]).await.unwrap();
    assert!(closed(&mut slow).await);
    assert_eq!(server.event("timed_out"), 2);
    let mut junk = TcpStream::connect(server.addr).await.unwrap();
    junk.write_all(&[0x55; FRAME_HEADER_LEN]).await.unwrap();
    assert!(closed(&mut junk).await);
    server.wait("rejection", |s| s.echo.rejected.load(Ordering::Relaxed) == 1).await;
    assert_eq!(server.event("admitted"), 0);
    assert_eq!(server.ask("still here").await.unwrap(), "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_connections_are_capped_and_new_ones_refused() {
    let mut limits = Limits::new(Duration::from_secs(5));
    limits.max_pending = 2;
    limits.max_connections = 3;
    let server = server(limits).await;
    // Three peers that authenticated and stay connected fill every slot.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        server.codec.write(&mut stream, &format!("hold {i}")).await.unwrap();
        assert!(server.codec.read::<String, _>(&mut stream).await.unwrap().is_some());
        held.push(stream);
    }
    assert_eq!(server.count("constellation_cluster_connections", "admitted"), 3);
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed(&mut refused).await);
    assert_eq!(server.event("refused"), 1);
    // One leaves; its slot is free again.
    drop(held.pop());
    server.wait("slot freed", |s| s.count("constellation_cluster_connections", "admitted") == 2).await;
    assert_eq!(server.ask("room again").await.unwrap(), "room again");
}

#[test]
fn two_listeners_share_a_registry() {
    let registry = Registry::new();
    AdmissionMetrics::register(&registry, "state").unwrap();
    AdmissionMetrics::register(&registry, "raft").unwrap();
    let families = registry.gather();
    let total = families.iter().find(|f| f.name() == "constellation_cluster_connections_total").unwrap();
    assert_eq!(total.get_metric().len(), 10);
}

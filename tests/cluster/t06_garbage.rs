//! Garbage on the gossip (UDP) and cluster (TCP) ports is refused and counted, by
//! reason; the agent stays up and membership does not change.

use std::collections::BTreeMap;
use std::time::Duration;

use constellation_wire::{FrameCodec, Keyring, FRAME_HEADER_LEN, PROTOCOL_VERSION, SEAL_OVERHEAD};
use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::*;
use crate::*;

const REASONS: [&str; 7] = ["truncated", "bad_version", "unknown_key", "forged", "decode", "oversize", "version"];

async fn rejected(node: &Node) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for reason in REASONS {
        let label = format!("reason=\"{reason}\"");
        out.insert(reason, node.metric("constellation_gossip_packets_rejected_total", &[&label]).await);
    }
    out
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill(&mut v[..]);
    v
}

/// Random bytes whose first byte is not our protocol version.
fn not_sealed(len: usize) -> Vec<u8> {
    let mut v = random_bytes(len);
    if let Some(b) = v.first_mut() {
        if *b == PROTOCOL_VERSION {
            *b ^= 0x80;
        }
    }
    v
}

/// The reason the agent must give for a random datagram of `len` bytes from [`not_sealed`].
fn reason_for_not_sealed(len: usize) -> &'static str {
    if len < SEAL_OVERHEAD {
        "truncated"
    } else {
        "bad_version"
    }
}

/// Sends one frame's worth of `bytes` on a fresh connection and waits until the agent
/// closes it (it does after any bad frame, or at end of stream).
async fn tcp_garbage(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the agent kept a garbage connection open");
    assert!(sink.is_empty(), "the agent answered garbage with {} bytes", sink.len());
}

fn frame(len: u32, body: &[u8]) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn garbage_on_gossip_and_cluster_ports_is_counted_and_harmless() {
    run_test(|| async {
        let mut cluster = Cluster::start(vec![NodeSpec::default(); 3]).await;
        let target = cluster.node(1);
        let key = Keyring::parse(&std::fs::read_to_string(cluster.dir.path("cluster.key")).unwrap()).unwrap();
        let other_key = Keyring::parse(&constellation_wire::generate_key_hex()).unwrap();
        let our_id = key.seal(b"")[1..5].to_vec();
        // Let public-IP updates settle so state versions do not move while we compare.
        eventually("public IPs known", Duration::from_secs(10), || async {
            let s = target.must_status().await;
            if members(&s).iter().all(|m| m["public_ip"].is_string()) {
                Ok(())
            } else {
                Err(format!("{:?}", members(&s)))
            }
        })
        .await;
        let mut before = Vec::new();
        for n in &cluster.nodes {
            before.push(identities(&n.must_status().await));
        }
        let start = rejected(target).await;
        let packets_in_before = target.metric("constellation_gossip_packets_total", &["direction=\"in\""]).await;
        let mut expect: BTreeMap<&'static str, f64> = REASONS.iter().map(|r| (*r, 0.0)).collect();

        // --- UDP ---
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut datagrams: Vec<(Vec<u8>, &'static str)> = Vec::new();
        for len in [0, 1, 4, 20, 32, 33, 100, 1399, 1400, 9000] {
            datagrams.push((not_sealed(len), reason_for_not_sealed(len)));
        }
        for _ in 0..60 {
            let len = rand::rng().random_range(0..=1400);
            datagrams.push((not_sealed(len), reason_for_not_sealed(len)));
        }
        // The right version byte and a key id we do not hold.
        let mut foreign = vec![PROTOCOL_VERSION];
        foreign.extend_from_slice(&random_bytes(1399));
        if foreign[1..5] == our_id[..] {
            foreign[1] ^= 0xff;
        }
        datagrams.push((foreign.clone(), "unknown_key"));
        datagrams.push((foreign[..SEAL_OVERHEAD].to_vec(), "unknown_key"));
        datagrams.push((other_key.seal(&[0, 1, 2, 3]), "unknown_key"));
        // A genuine datagram cut short, or with one bit flipped: authentication fails.
        let genuine = key.seal(&[0u8; 200]);
        datagrams.push((genuine[..genuine.len() - 1].to_vec(), "forged"));
        datagrams.push((genuine[..SEAL_OVERHEAD + 7].to_vec(), "forged"));
        datagrams.push((genuine[..SEAL_OVERHEAD].to_vec(), "forged"));
        datagrams.push((genuine[..SEAL_OVERHEAD - 1].to_vec(), "truncated"));
        let mut flipped = genuine.clone();
        flipped[60] ^= 0x01;
        datagrams.push((flipped, "forged"));
        // Sealed with our key by a peer of another protocol version: authentic, refused.
        let newer = key.clone().speaking(PROTOCOL_VERSION.wrapping_add(1));
        datagrams.push((newer.seal(&[0u8; 40]), "version"));
        // Sealed with the right key but not a message we know.
        datagrams.push((key.seal(&[]), "decode"));
        datagrams.push((key.seal(&[7, 1, 2, 3]), "decode"));
        datagrams.push((key.seal(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), "decode"));
        // A foca packet (kind 0) that foca cannot decode.
        datagrams.push((key.seal(&[0]), "decode"));
        datagrams
            .push((key.seal(&[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), "decode"));
        let sent_udp = datagrams.len();
        // In batches, each waited for, so a burst never overflows the socket buffer.
        for batch in datagrams.chunks(16) {
            for (bytes, reason) in batch {
                udp.send_to(bytes, target.gossip).await.unwrap();
                *expect.get_mut(reason).unwrap() += 1.0;
            }
            let want: f64 = expect.values().sum::<f64>() + start.values().sum::<f64>();
            eventually("rejections counted", Duration::from_secs(10), || async {
                let got: f64 = rejected(target).await.values().sum();
                if got >= want {
                    Ok(())
                } else {
                    Err(format!("{got} < {want}"))
                }
            })
            .await;
        }

        // --- TCP ---
        let mut tcp_counted = 0;
        let mut counted = |reason: &'static str, expect: &mut BTreeMap<&'static str, f64>| {
            *expect.get_mut(reason).unwrap() += 1.0;
            tcp_counted += 1;
        };
        // Only an authentic 37-byte header is believed: whatever garbage claims, the
        // agent reads that much and no more before refusing it.
        let frames = FrameCodec::new(std::sync::Arc::new(key.clone()), constellation_cluster::MAX_FRAME);
        tcp_garbage(target.cluster, &not_sealed(64)).await;
        counted("bad_version", &mut expect);
        tcp_garbage(target.cluster, b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").await;
        counted("bad_version", &mut expect);
        // A 1 GiB length prefix with no valid seal, and the largest one.
        tcp_garbage(target.cluster, &frame(1 << 30, &not_sealed(60))).await;
        counted("bad_version", &mut expect);
        tcp_garbage(target.cluster, &frame(u32::MAX, &[0u8; 40])).await;
        counted("bad_version", &mut expect);
        tcp_garbage(target.cluster, &foreign[..FRAME_HEADER_LEN]).await;
        counted("unknown_key", &mut expect);
        // A genuine frame with one bit flipped in its header, or in its body.
        let genuine_frame = frames.encode(&[0u8; 200][..]).unwrap();
        for at in [20, FRAME_HEADER_LEN + 20] {
            let mut flipped = genuine_frame.clone();
            flipped[at] ^= 0x01;
            tcp_garbage(target.cluster, &flipped).await;
            counted("forged", &mut expect);
        }
        // Authentic, announcing 1 GiB: over the 4 MiB cap, refused before the body.
        tcp_garbage(target.cluster, &frames.seal_header(1 << 30)).await;
        counted("oversize", &mut expect);
        // Opens, but is not a push-pull message.
        tcp_garbage(target.cluster, &frames.encode(&[0xffu8; 12]).unwrap()).await;
        counted("decode", &mut expect);
        // A frame of another protocol version, sealed with our key.
        let newer_frames = FrameCodec::new(std::sync::Arc::new(newer.clone()), constellation_cluster::MAX_FRAME);
        tcp_garbage(target.cluster, &newer_frames.encode(&[0u8; 32][..]).unwrap()).await;
        counted("version", &mut expect);
        // Incomplete frames: nothing to judge, the connection just ends (not counted).
        tcp_garbage(target.cluster, &[]).await;
        tcp_garbage(target.cluster, &[PROTOCOL_VERSION, 0]).await;
        tcp_garbage(target.cluster, &genuine_frame[..FRAME_HEADER_LEN - 1]).await;
        tcp_garbage(target.cluster, &genuine_frame[..FRAME_HEADER_LEN + 10]).await;

        // Exactly what was sent, by reason; nothing else was refused meanwhile.
        let want: BTreeMap<&'static str, f64> = REASONS.iter().map(|r| (*r, start[r] + expect[r])).collect();
        eventually_or(
            "rejections counted by reason",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                let got = rejected(target).await;
                if got == want {
                    Ok(())
                } else {
                    Err(format!("got {got:?}, want {want:?}"))
                }
            },
        )
        .await;
        let total: f64 = expect.values().sum();
        assert_eq!(total as usize, sent_udp + tcp_counted);
        let packets_in = target.metric("constellation_gossip_packets_total", &["direction=\"in\""]).await;
        assert!(packets_in - packets_in_before >= sent_udp as f64, "{packets_in_before} -> {packets_in}");

        // Still up, still ready, membership unchanged everywhere.
        for n in &mut cluster.nodes {
            n.assert_alive();
        }
        for (i, n) in cluster.nodes.iter().enumerate() {
            assert_eq!(n.admin_status("/readyz").await, Some(200), "{}", n.name);
            assert_eq!(identities(&n.must_status().await), before[i], "{}", n.name);
        }
        // And it still gossips: a change of membership is still seen.
        cluster.kill(2);
        let expect_view: Vec<(String, &str)> =
            vec![("n1".into(), "alive"), ("n2".into(), "down"), ("n3".into(), "alive")];
        cluster.wait_view(&[1, 3], &expect_view, Duration::from_secs(12)).await;
        eprintln!("refused {sent_udp} datagrams and {tcp_counted} connections: {expect:?}");
    });
}

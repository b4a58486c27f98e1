//! Multi-member tests on loopback: real UDP and TCP sockets, several `Cluster`s in one
//! process, waits on the view with deadlines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;

use super::*;
use constellation_wire::{FrameCodec, FrameError};

const DEADLINE: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

struct Node {
    cluster: Cluster,
    registry: Registry,
}

/// Fast failure detection so crash tests finish in seconds.
fn config(name: &str, seeds: &[SocketAddr], key: &str) -> ClusterConfig {
    let mut cfg = ClusterConfig::new(name, loopback(), loopback(), Arc::new(Keyring::parse(key).unwrap()));
    cfg.seeds = seeds.to_vec();
    cfg.probe_period = Duration::from_millis(300);
    cfg.probe_rtt = Duration::from_millis(100);
    cfg.suspect_to_down_after = Some(Duration::from_millis(1500));
    cfg.push_pull_interval = Duration::from_secs(1);
    cfg.roles = vec!["voter".into()];
    cfg
}

async fn start(cfg: ClusterConfig) -> Node {
    let registry = Registry::new();
    let name = cfg.node.clone();
    let mut initial = NodeState::new("ignored");
    initial.instances = vec![Instance {
        service: format!("svc-{name}"),
        url: format!("http://{name}.test:80"),
        healthy: true,
        egress: None,
    }];
    let cluster = Cluster::start(cfg, initial, &registry, std::future::pending::<()>()).await.unwrap();
    Node { cluster, registry }
}

/// Waits until `pred` holds for the view, or panics with the last view after `DEADLINE`.
async fn wait_for(node: &Node, what: &str, pred: impl FnMut(&ClusterView) -> bool) {
    let mut rx = node.cluster.view();
    if tokio::time::timeout(DEADLINE, rx.wait_for(pred)).await.is_err() {
        panic!("{}: timed out waiting for {what}; view: {:#?}", node.cluster.shared.local, *rx.borrow());
    }
}

fn metric(registry: &Registry, name: &str, label: (&str, &str)) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.name() == label.0 && l.value() == label.1))
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

fn all_alive_with_states(view: &ClusterView, names: &[&str]) -> bool {
    names.iter().all(|n| {
        view.member(n).is_some_and(|m| m.state == MemberState::Alive)
            && view.states.get(*n).is_some_and(|s| s.instances.iter().any(|i| i.service == format!("svc-{n}")))
    })
}

async fn three(key: &str) -> (Node, Node, Node) {
    let a = start(config("a", &[], key)).await;
    let seed = [a.cluster.gossip_addr()];
    let b = start(config("b", &seed, key)).await;
    let c = start(config("c", &seed, key)).await;
    for node in [&a, &b, &c] {
        wait_for(node, "3 alive members with states", |v| all_alive_with_states(v, &["a", "b", "c"])).await;
    }
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_join_through_one_seed_and_share_states() {
    let key = generate_key_hex();
    let (a, b, _c) = three(&key).await;
    let view = b.cluster.view().borrow().clone();
    assert_eq!(view.members.len(), 3);
    assert_eq!(view.alive_states().count(), 3);
    let me = view.member("b").unwrap();
    assert!(me.is_self && me.roles == ["voter"] && me.gossip_addr == b.cluster.gossip_addr());
    assert_eq!(view.states["a"].cluster_addr, a.cluster.cluster_addr());
    assert_eq!(metric(&a.registry, "constellation_members", ("state", "alive")), 3.0);
    assert!(metric(&b.registry, "constellation_state_pulls_total", ("result", "ok")) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_update_reaches_peers_through_digest_and_pull() {
    let key = generate_key_hex();
    let mut cfg_a = config("a", &[], &key);
    // No periodic anti-entropy within the test: only the digest broadcast can carry it.
    cfg_a.push_pull_interval = Duration::from_secs(600);
    let a = start(cfg_a).await;
    let mut cfg_b = config("b", &[a.cluster.gossip_addr()], &key);
    cfg_b.push_pull_interval = Duration::from_secs(600);
    let b = start(cfg_b).await;
    wait_for(&b, "a alive with state", |v| all_alive_with_states(v, &["a", "b"])).await;
    wait_for(&a, "b alive with state", |v| all_alive_with_states(v, &["a", "b"])).await;

    let before = a.cluster.local_state().version;
    a.cluster.update_local(|s| {
        s.instances.push(Instance {
            service: "api".into(),
            url: "http://a.test:9000".into(),
            healthy: false,
            egress: None,
        });
        s.version = 999; // ignored: only the cluster bumps versions
    });
    assert_eq!(a.cluster.local_state().version, before + 1);
    // No change, no bump.
    a.cluster.update_local(|_| {});
    assert_eq!(a.cluster.local_state().version, before + 1);

    let started = std::time::Instant::now();
    wait_for(&b, "a's new instance", |v| {
        v.states.get("a").is_some_and(|s| s.version == before + 1 && s.instances.iter().any(|i| i.service == "api"))
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());

    // Hints travel the same way.
    a.cluster.publish_hint("api", "http://a.test:9000", Duration::from_secs(60));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !b.cluster.hints().iter().any(|h| h.from_node == "a" && h.upstream_url == "http://a.test:9000") {
        assert!(tokio::time::Instant::now() < deadline, "hint never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.cluster.hints().len(), 1);
    a.cluster.publish_hint("api", "http://a.test:9001", Duration::ZERO);
    assert_eq!(a.cluster.hints().len(), 1, "expired hints are not listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_key_and_garbage_are_rejected_and_counted() {
    let key = generate_key_hex();
    let a = start(config("a", &[], &key)).await;
    let b = start(config("b", &[a.cluster.gossip_addr()], &key)).await;
    let intruder = start(config("intruder", &[a.cluster.gossip_addr()], &generate_key_hex())).await;

    let probe = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    let target = a.cluster.gossip_addr();
    for len in [0usize, 3, 20, 200, 1200] {
        let junk: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        probe.send_to(&junk, target).await.unwrap();
    }
    // A well-formed header with our key id but a bad tag: forged.
    let mut forged = Keyring::parse(&key).unwrap().seal(b"\0hello");
    let last = forged.len() - 1;
    forged[last] ^= 0xff;
    probe.send_to(&forged, target).await.unwrap();
    // A correctly sealed datagram whose body is not a foca packet: decode.
    probe.send_to(&Keyring::parse(&key).unwrap().seal(b"\x07nonsense"), target).await.unwrap();
    // And garbage on the TCP port: an old-style length prefix, so not our version byte.
    let mut tcp = tokio::net::TcpStream::connect(a.cluster.cluster_addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0, 0, 0, 40, 1, 2, 3]).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0u8; 40]).await.unwrap();

    wait_for(&a, "b alive", |v| all_alive_with_states(v, &["a", "b"])).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let rejected = |reason| metric(&a.registry, "constellation_gossip_packets_rejected_total", ("reason", reason));
    loop {
        let ok = rejected("truncated") >= 3.0
            && rejected("forged") >= 1.0
            && rejected("decode") >= 1.0
            && rejected("unknown_key") + rejected("bad_version") >= 3.0;
        if ok {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rejections not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The intruder keeps knocking (seed retries) and is never admitted, on either side.
    tokio::time::sleep(SEED_RETRY_INTERVAL + Duration::from_millis(500)).await;
    for node in [&a, &b] {
        let view = node.cluster.view().borrow().clone();
        assert!(view.member("intruder").is_none() && !view.states.contains_key("intruder"), "{view:#?}");
    }
    assert_eq!(intruder.cluster.view().borrow().members.len(), 1);
    // Still working: a change on b reaches a.
    b.cluster.update_local(|s| s.roles.push("lb".into()));
    wait_for(&a, "b's new role", |v| v.member("b").is_some_and(|m| m.roles.contains(&"lb".to_string()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_member_goes_down_and_its_restart_replaces_it() {
    let key = generate_key_hex();
    let (a, b, c) = three(&key).await;
    let old_incarnation = c.cluster.id().incarnation;
    let started = std::time::Instant::now();
    drop(c); // no leave: peers must detect it
    wait_for(&a, "c down", |v| v.member("c").is_some_and(|m| m.state == MemberState::Down)).await;
    wait_for(&b, "c down", |v| v.member("c").is_some_and(|m| m.state == MemberState::Down)).await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // Down members stay listed but leave the routing set.
    let view = a.cluster.view().borrow().clone();
    assert_eq!(view.alive_states().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);

    let c2 = start(config("c", &[a.cluster.gossip_addr()], &key)).await;
    c2.cluster.update_local(|s| s.instances[0].healthy = false);
    let new_incarnation = c2.cluster.id().incarnation;
    assert!(new_incarnation > old_incarnation);
    for node in [&a, &b] {
        wait_for(node, "c back with its new state", |v| {
            v.member("c").is_some_and(|m| m.state == MemberState::Alive && m.incarnation == new_incarnation)
                && v.states.get("c").is_some_and(|s| s.incarnation == new_incarnation && !s.instances[0].healthy)
        })
        .await;
        assert_eq!(node.cluster.view().borrow().members.len(), 3);
    }
    wait_for(&c2, "full picture", |v| all_alive_with_states(v, &["a", "b", "c"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_marks_the_member_down_promptly() {
    let key = generate_key_hex();
    let (a, b, c) = three(&key).await;
    let started = std::time::Instant::now();
    c.cluster.leave().await;
    for node in [&a, &b] {
        wait_for(node, "c down", |v| v.member("c").is_some_and(|m| m.state == MemberState::Down)).await;
    }
    // Well below what failure detection would take (probe + suspicion > 1.5 s).
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_future_leaves_and_bind_errors_name_the_address() {
    let key = generate_key_hex();
    let a = start(config("a", &[], &key)).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = config("b", &[a.cluster.gossip_addr()], &key);
    let b = Cluster::start(cfg, NodeState::new("b"), &Registry::new(), async move {
        let _ = stop_rx.await;
    })
    .await
    .unwrap();
    wait_for(&a, "b alive", |v| v.member("b").is_some_and(|m| m.state == MemberState::Alive)).await;
    stop_tx.send(()).unwrap();
    wait_for(&a, "b down", |v| v.member("b").is_some_and(|m| m.state == MemberState::Down)).await;
    drop(b);

    let mut cfg = config("x", &[], &key);
    cfg.gossip_bind = a.cluster.gossip_addr();
    let err = Cluster::start(cfg, NodeState::new("x"), &Registry::new(), std::future::pending::<()>())
        .await
        .err()
        .expect("binding a used port fails");
    assert!(err.to_string().contains(&a.cluster.gossip_addr().to_string()), "{err}");
}

/// Opens `n` TCP connections to `addr` that never send a byte.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    idle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_do_not_stop_state_pulls() {
    let key = generate_key_hex();
    let a = start(config("a", &[], &key)).await;
    let b = start(config("b", &[a.cluster.gossip_addr()], &key)).await;
    wait_for(&a, "b alive with state", |v| all_alive_with_states(v, &["a", "b"])).await;
    let pulls_before = metric(&a.registry, "constellation_state_pulls_total", ("result", "ok"));

    // Both cluster ports flooded with connections that never authenticate.
    let mut flood = idle_connections(b.cluster.cluster_addr(), 500).await;
    flood.extend(idle_connections(a.cluster.cluster_addr(), 500).await);
    let evicted = |node: &Node| metric(&node.registry, "constellation_cluster_connections_total", ("event", "evicted"));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while evicted(&a) < 400.0 || evicted(&b) < 400.0 {
        assert!(tokio::time::Instant::now() < deadline, "evictions not counted: {} {}", evicted(&a), evicted(&b));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A digest-triggered pull (a from b) and anti-entropy both still get through.
    let started = std::time::Instant::now();
    b.cluster.update_local(|s| s.roles.push("flooded".into()));
    wait_for(&a, "b's new role", |v| v.states.get("b").is_some_and(|s| s.roles.contains(&"flooded".to_string()))).await;
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metric(&a.registry, "constellation_state_pulls_total", ("result", "ok")) < pulls_before + 3.0 {
        assert!(tokio::time::Instant::now() < deadline, "anti-entropy stalled under the flood");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&b.registry, "constellation_cluster_connections_total", ("event", "admitted")) >= 1.0);
    assert!(metric(&b.registry, "constellation_cluster_connections", ("state", "pending")) <= 64.0);
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_version_is_refused_and_counted() {
    let key = generate_key_hex();
    let a = start(config("a", &[], &key)).await;
    let rejected = |reason| metric(&a.registry, "constellation_gossip_packets_rejected_total", ("reason", reason));
    let newer = Arc::new(Keyring::parse(&key).unwrap().speaking(PROTOCOL_VERSION + 1));

    // A datagram: the right key, another version.
    let probe = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    probe.send_to(&newer.seal(b"\0whatever"), a.cluster.gossip_addr()).await.unwrap();
    // A frame: the right key, another version. The server closes without an answer.
    let codec = FrameCodec::new(Arc::clone(&newer), MAX_FRAME);
    let mut tcp = tokio::net::TcpStream::connect(a.cluster.cluster_addr()).await.unwrap();
    codec.write(&mut tcp, &pull::Request::Push { states: Vec::new() }).await.unwrap();
    let answer = tokio::time::timeout(DEADLINE, codec.read::<pull::Response, _>(&mut tcp)).await.unwrap();
    assert!(matches!(answer, Ok(None) | Err(FrameError::Io(_))), "{answer:?}");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while rejected("version") < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "version rejections: {}", rejected("version"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A whole member of the other release never joins, and is counted, not admitted.
    let mut cfg = config("future", &[a.cluster.gossip_addr()], &key);
    cfg.keyring = newer;
    let future = start(cfg).await;
    tokio::time::sleep(SEED_RETRY_INTERVAL + Duration::from_millis(500)).await;
    assert!(rejected("version") > 2.0);
    assert!(a.cluster.view().borrow().member("future").is_none());
    assert_eq!(future.cluster.view().borrow().members.len(), 1);
    for reason in ["forged", "unknown_key", "bad_version", "decode"] {
        assert_eq!(rejected(reason), 0.0, "{reason}");
    }
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_length_prefixes_are_refused_before_allocation() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = generate_key_hex();
    let a = start(config("a", &[], &key)).await;
    let rejected = |reason| metric(&a.registry, "constellation_gossip_packets_rejected_total", ("reason", reason));
    let gib: u32 = 1 << 30;
    // Without the key: a 1 GiB length prefix and no valid seal. With it: an authentic
    // header announcing 1 GiB, over the 4 MiB cap. Each connection then offers more data.
    let mut unsealed = gib.to_be_bytes().to_vec();
    unsealed.extend_from_slice(&[0u8; 60]);
    let authentic = FrameCodec::new(Arc::new(Keyring::parse(&key).unwrap()), usize::MAX).seal_header(gib);
    let before = rss();
    let mut connections = Vec::new();
    for i in 0..40 {
        let mut tcp = tokio::net::TcpStream::connect(a.cluster.cluster_addr()).await.unwrap();
        tcp.write_all(if i % 2 == 0 { &unsealed } else { &authentic }).await.unwrap();
        let _ = tcp.write_all(&[0x5a; 64 * 1024]).await;
        connections.push(tcp);
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while rejected("bad_version") < 20.0 || rejected("oversize") < 20.0 {
        assert!(tokio::time::Instant::now() < deadline, "{} {}", rejected("bad_version"), rejected("oversize"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every one of them closed, without an answer.
    for tcp in &mut connections {
        let mut sink = Vec::new();
        let read = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut sink)).await.unwrap();
        assert!(read.is_err() || sink.is_empty());
    }
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 * 1024 * 1024, "resident memory grew by {grown} bytes");
    // The cap is checked with the header, so not even the authentic ones were admitted.
    assert_eq!(metric(&a.registry, "constellation_cluster_connections_total", ("event", "admitted")), 0.0);
}

//! Multi-node tests of the lease group over real TCP on loopback, each node with its own
//! temporary data directory and Prometheus registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::holder::LostReason;
use super::*;
use constellation_wire::generate_key_hex;

const HEARTBEAT: Duration = Duration::from_millis(50);
const ELECTION: (Duration, Duration) = (Duration::from_millis(300), Duration::from_millis(600));
const TTL: Duration = Duration::from_millis(1500);
const WAIT: Duration = Duration::from_secs(15);

static DIRS: AtomicUsize = AtomicUsize::new(0);

struct TestCluster {
    keyring: Arc<Keyring>,
    voters: Vec<(String, SocketAddr)>,
    root: PathBuf,
    nodes: Vec<Option<LeaseNode>>,
    registries: Vec<prometheus::Registry>,
}

impl TestCluster {
    async fn start(tag: &str, n: usize) -> TestCluster {
        let root = std::env::temp_dir().join(format!(
            "constellation-raft-{tag}-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let keyring = Arc::new(Keyring::parse(&generate_key_hex()).unwrap());
        let mut listeners = Vec::new();
        let mut voters = Vec::new();
        for i in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            voters.push((format!("n{}", i + 1), listener.local_addr().unwrap()));
            listeners.push(listener);
        }
        let mut cluster = TestCluster { keyring, voters, root, nodes: Vec::new(), registries: Vec::new() };
        for (i, listener) in listeners.into_iter().enumerate() {
            let (node, registry) = cluster.start_node(i, listener).await.unwrap();
            cluster.nodes.push(Some(node));
            cluster.registries.push(registry);
        }
        tracing::info!(n, "cluster started");
        cluster
    }

    fn config(&self, i: usize) -> RaftConfig {
        RaftConfig {
            node: self.voters[i].0.clone(),
            voters: self.voters.clone(),
            bind: self.voters[i].1,
            data_dir: self.root.join(&self.voters[i].0),
            keyring: Arc::clone(&self.keyring),
            election_timeout: ELECTION,
            heartbeat: HEARTBEAT,
            lease_ttl: TTL,
        }
    }

    async fn start_node(
        &self,
        i: usize,
        listener: TcpListener,
    ) -> Result<(LeaseNode, prometheus::Registry), RaftError> {
        let registry = prometheus::Registry::new();
        let node = LeaseNode::start_on(self.config(i), listener, &registry, std::future::pending::<()>()).await?;
        Ok((node, registry))
    }

    async fn stop(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("node is running");
        node.shutdown().await;
        tracing::info!(node = %self.voters[i].0, "node stopped");
    }

    async fn restart(&mut self, i: usize) -> Result<(), RaftError> {
        let listener = TcpListener::bind(self.voters[i].1).await.unwrap();
        let (node, registry) = self.start_node(i, listener).await?;
        self.nodes[i] = Some(node);
        self.registries[i] = registry;
        Ok(())
    }

    /// Starts one more node (`n<k>`, not yet a member: it waits to be added) whose
    /// configuration lists every voter so far and itself; returns its index.
    async fn add_node(&mut self) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let i = self.voters.len();
        self.voters.push((format!("n{}", i + 1), listener.local_addr().unwrap()));
        let (node, registry) = self.start_node(i, listener).await.unwrap();
        self.nodes.push(Some(node));
        self.registries.push(registry);
        i
    }

    fn voter_names(&self, i: usize) -> Vec<String> {
        self.node(i).membership().into_iter().filter(|(_, _, voter)| *voter).map(|(n, _, _)| n).collect()
    }

    /// Waits until the leader (index `leader`) reports `name` unreachable.
    async fn wait_unreachable(&self, leader: usize, name: &str) {
        wait_for(&format!("the leader to see {name} unreachable"), || {
            let status = self.node(leader).status();
            status.voters.iter().any(|v| v.name == name && v.reachable == Some(false)).then_some(())
        })
        .await
    }

    fn node(&self, i: usize) -> &LeaseNode {
        self.nodes[i].as_ref().expect("node is running")
    }

    fn index_of(&self, name: &str) -> usize {
        self.voters.iter().position(|(n, _)| n == name).unwrap()
    }

    /// Waits until every running node names the same running leader; returns its index.
    async fn leader(&self) -> usize {
        wait_for("all running nodes to agree on a running leader", || {
            let mut leaders = self.nodes.iter().flatten().map(|n| n.view().borrow().leader.clone());
            let first = leaders.next()??;
            let i = self.index_of(&first);
            (self.nodes[i].is_some() && leaders.all(|l| l.as_deref() == Some(first.as_str()))).then_some(i)
        })
        .await
    }

    fn metric(&self, i: usize, name: &str, label: Option<(&str, &str)>) -> f64 {
        for family in self.registries[i].gather() {
            if family.name() != name {
                continue;
            }
            for m in family.get_metric() {
                let matches = label.is_none_or(|(k, v)| m.get_label().iter().any(|l| l.name() == k && l.value() == v));
                if matches {
                    return m.get_counter().get_value() + m.get_gauge().get_value();
                }
            }
        }
        0.0
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_form_a_cluster_and_grant_fenced_leases() {
    let c = TestCluster::start("grant", 3).await;
    let leader = c.leader().await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    tracing::info!(leader = %c.voters[leader].0, "leader elected without a manual init");

    // A follower acquires through the leader; another node is refused while it is held.
    let t1 = c.node(a).acquire("lb-leader", TTL).await.unwrap();
    let err = c.node(b).acquire("lb-leader", TTL).await.unwrap_err();
    assert_eq!(err, LeaseError::Refused { holder: c.voters[a].0.clone(), token: t1 });
    // Renewing keeps the token.
    assert_eq!(c.node(a).acquire("lb-leader", TTL).await.unwrap(), t1);
    assert!(c.node(a).check("lb-leader", t1).await.unwrap());
    assert!(!c.node(b).check("lb-leader", t1).await.unwrap(), "b does not hold it");
    assert!(!c.node(a).check("lb-leader", t1 + 1).await.unwrap(), "wrong token");

    // Stale tokens change nothing and say so.
    let stale = c.node(b).release("lb-leader", t1).await.unwrap_err();
    assert_eq!(stale, LeaseError::Stale { current: t1, holder: Some(c.voters[a].0.clone()) });
    let stale = c.node(b).revoke("lb-leader", t1 - 1).await.unwrap_err();
    assert!(matches!(stale, LeaseError::Stale { current, .. } if current == t1), "{stale:?}");
    assert!(c.node(a).check("lb-leader", t1).await.unwrap());

    // Released, the lease goes to the next node with a larger token.
    c.node(a).release("lb-leader", t1).await.unwrap();
    // Releasing again (a client retry) is still fine.
    c.node(a).release("lb-leader", t1).await.unwrap();
    let t2 = c.node(b).acquire("lb-leader", TTL).await.unwrap();
    assert!(t2 > t1, "{t2} > {t1}");
    let t3 = c.node(leader).acquire("dns-writer", TTL).await.unwrap();
    assert!(t3 > t2);

    // Every node's view converges on the same leases.
    for i in 0..3 {
        let mut view = c.node(i).view();
        let v = view.wait_for(|v| v.leases.get("dns-writer").is_some_and(|l| l.token == t3)).await.unwrap().clone();
        assert_eq!(v.leases["lb-leader"].holder.as_deref(), Some(c.voters[b].0.as_str()));
        assert_eq!(v.leases["lb-leader"].token, t2);
        assert_eq!(c.metric(i, "constellation_lease_token", Some(("lease", "dns-writer"))), t3 as f64);
    }
    let leaders: f64 = (0..3).map(|i| c.metric(i, "constellation_raft_is_leader", None)).sum();
    assert_eq!(leaders, 1.0);
    assert!(c.metric(leader, "constellation_raft_term", None) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_data_reaches_every_node_and_survives_a_restart_and_a_new_holder() {
    let mut c = TestCluster::start("data", 3).await;
    let leader = c.leader().await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    let t1 = c.node(a).acquire("acme", TTL).await.unwrap();

    // The holder writes through the leader; every replica sees it on its data channel.
    c.node(a).put("acme", t1, "acme/account", Some(b"sealed".to_vec())).await.unwrap();
    for i in 0..3 {
        let mut data = c.node(i).data();
        let seen = data.wait_for(|d| d.get("acme/account").is_some_and(|v| v == b"sealed")).await.unwrap();
        drop(seen);
    }
    // Another node, and the holder with a wrong token, are refused; nothing changes.
    let err = c.node(b).put("acme", t1, "acme/account", Some(b"evil".to_vec())).await.unwrap_err();
    assert_eq!(err, LeaseError::Stale { current: t1, holder: Some(c.voters[a].0.clone()) });
    let err = c.node(a).put("acme", t1 + 1, "acme/account", None).await.unwrap_err();
    assert!(matches!(err, LeaseError::Stale { .. }), "{err:?}");
    let err = c.node(a).put("acme", t1, "big", Some(vec![0; MAX_VALUE + 1])).await.unwrap_err();
    assert!(matches!(&err, LeaseError::TooLarge { reason } if reason.contains("big")), "{err:?}");
    assert_eq!(c.node(b).data().borrow().get("acme/account").map(Vec::as_slice), Some(&b"sealed"[..]));

    // A follower restarts and gets the data back from its own store.
    c.stop(b).await;
    c.restart(b).await.unwrap();
    let mut data = c.node(b).data();
    data.wait_for(|d| d.get("acme/account").is_some_and(|v| v == b"sealed")).await.unwrap();

    // The lease moves: the old holder's token no longer writes, the new holder's does.
    c.node(a).release("acme", t1).await.unwrap();
    let t2 = c.node(b).acquire("acme", TTL).await.unwrap();
    let err = c.node(a).put("acme", t1, "acme/account", Some(b"late".to_vec())).await.unwrap_err();
    assert!(matches!(err, LeaseError::Stale { current, .. } if current == t2), "{err:?}");
    c.node(b).put("acme", t2, "acme/account", Some(b"newer".to_vec())).await.unwrap();
    c.node(b).put("acme", t2, "acme/http01/tok", Some(b"ka".to_vec())).await.unwrap();
    c.node(b).put("acme", t2, "acme/http01/tok", None).await.unwrap();
    for i in 0..3 {
        let mut data = c.node(i).data();
        data.wait_for(|d| d.get("acme/account").is_some_and(|v| v == b"newer") && !d.contains_key("acme/http01/tok"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_leader_loss_lease_is_granted_again_only_after_ttl_with_a_larger_token() {
    let mut c = TestCluster::start("failover", 3).await;
    let old = c.leader().await;
    let t1 = c.node(old).acquire("lb-leader", TTL).await.unwrap();
    let stopped = Instant::now();
    c.stop(old).await;
    tracing::info!("old leader (and holder) stopped");

    let new = c.leader().await;
    assert_ne!(new, old);
    let other = (0..3).find(|i| *i != old && *i != new).unwrap();
    let t2 = loop {
        match c.node(other).acquire("lb-leader", TTL).await {
            Ok(t) => break t,
            Err(LeaseError::Refused { holder, token }) => {
                assert_eq!((holder.as_str(), token), (c.voters[old].0.as_str(), t1));
                assert!(stopped.elapsed() < WAIT, "lease never expired");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("acquire failed: {e}"),
        }
    };
    let waited = stopped.elapsed();
    tracing::info!(?waited, t1, t2, "lease granted again");
    assert!(t2 > t1, "{t2} > {t1}");
    // The new leader extended the lease by TTL + election timeout from its election, which
    // came after the stop.
    assert!(waited >= TTL + ELECTION.1, "granted again after only {waited:?}");
    let view = c.node(new).view().borrow().clone();
    assert_eq!(view.leases["lb-leader"].holder.as_deref(), Some(c.voters[other].0.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_recovers_log_and_snapshot_and_rejoins_as_follower() {
    let mut c = TestCluster::start("restart", 3).await;
    let leader = c.leader().await;
    let f = (leader + 1) % 3;
    let t1 = c.node(leader).acquire("dns-writer", TTL).await.unwrap();
    let mut view = c.node(f).view();
    view.wait_for(|v| v.leases.contains_key("dns-writer")).await.unwrap();

    // A snapshot on the follower, then one more entry after it: the restart needs both.
    c.node(f).inner.raft.trigger().snapshot().await.unwrap();
    let mut m = c.node(f).inner.raft.metrics();
    m.wait_for(|m| m.snapshot.is_some()).await.unwrap();
    let t2 = c.node(leader).acquire("lb-leader", TTL).await.unwrap();
    view.wait_for(|v| v.leases.contains_key("lb-leader")).await.unwrap();

    c.stop(f).await;
    c.restart(f).await.unwrap();
    tracing::info!("follower restarted on the same data dir");
    let mut view = c.node(f).view();
    let v = view.wait_for(|v| v.leases.get("lb-leader").is_some_and(|l| l.token == t2)).await.unwrap().clone();
    assert_eq!(v.leases["dns-writer"].token, t1);
    assert_eq!(v.leases["dns-writer"].holder.as_deref(), Some(c.voters[leader].0.as_str()));

    assert_eq!(c.leader().await, leader, "the restarted node follows the same leader");
    let mut m = c.node(f).inner.raft.metrics();
    m.wait_for(|m| m.state == ServerState::Follower).await.unwrap();
    let t3 = c.node(leader).acquire("third", TTL).await.unwrap();
    view.wait_for(|v| v.leases.get("third").is_some_and(|l| l.token == t3)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sealed_with_another_key_are_rejected_and_counted() {
    let c = TestCluster::start("forged", 1).await;
    c.leader().await;
    let addr = c.voters[0].1;
    let check = Request::Check { lease: "lb-leader".into(), node: "n1".into(), token: 1 };

    let stranger = Arc::new(Keyring::parse(&generate_key_hex()).unwrap());
    let err = PeerClient::new(addr, stranger).call(&check, Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, network::CallError::Io { .. }), "{err}");
    assert_eq!(c.metric(0, "constellation_raft_frames_rejected_total", Some(("reason", "unknown_key"))), 1.0);

    // Sealed with the right key but not a request: dropped as undecodable.
    let frames = network::codec(Arc::clone(&c.keyring));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    frames.write(&mut stream, &[0xffu8; 12]).await.unwrap();
    assert!(frames.read::<Response, _>(&mut stream).await.unwrap().is_none(), "connection closed without a reply");
    assert_eq!(c.metric(0, "constellation_raft_frames_rejected_total", Some(("reason", "decode"))), 1.0);

    // The right key from a node of another release: refused by version, no reply.
    let newer = Arc::new((*c.keyring).clone().speaking(constellation_wire::PROTOCOL_VERSION + 1));
    let err = PeerClient::new(addr, newer).call(&check, Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, network::CallError::Io { .. }), "{err}");
    assert_eq!(c.metric(0, "constellation_raft_frames_rejected_total", Some(("reason", "version"))), 1.0);

    // An authentic header announcing more than the cap: refused before the body.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let header = frames.seal_header(u32::try_from(network::MAX_FRAME + 1).unwrap());
    tokio::io::AsyncWriteExt::write_all(&mut stream, &header).await.unwrap();
    assert!(frames.read::<Response, _>(&mut stream).await.unwrap().is_none(), "connection closed without a reply");
    assert_eq!(c.metric(0, "constellation_raft_frames_rejected_total", Some(("reason", "oversize"))), 1.0);

    // The right key works.
    let resp = PeerClient::new(addr, Arc::clone(&c.keyring)).call(&check, Duration::from_secs(2)).await.unwrap();
    assert!(matches!(resp, Response::Check(Ok(false))), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_or_garbage_store_is_an_error_naming_the_file() {
    let mut c = TestCluster::start("corrupt", 1).await;
    c.leader().await;
    c.node(0).acquire("lb-leader", TTL).await.unwrap();
    c.stop(0).await;
    let file = c.config(0).data_dir.join(STORE_FILE);

    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = c.restart(0).await.expect_err("a truncated store must not start");
    let text = err.to_string();
    tracing::info!(error = %text, "truncated store refused");
    assert!(matches!(err, RaftError::Store(_)), "{err:?}");
    assert!(text.contains(&file.display().to_string()), "{text}");

    std::fs::write(&file, b"this is not a redb file at all, just some text that is long enough").unwrap();
    let err = c.restart(0).await.expect_err("a garbage store must not start");
    assert!(err.to_string().contains(&file.display().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_goes_to_the_waiting_contender_at_once_and_the_leader_hands_over() {
    let c = TestCluster::start("release", 3).await;
    let leader = c.leader().await;
    let f = (leader + 1) % 3;
    let holder = LeaseHolder::spawn(c.node(f).clone(), HolderConfig::new("lb-leader", TTL));
    let token = holder.held().wait_for(|h| h.is_some()).await.unwrap().unwrap();
    // The contender's retry pause is far longer than the test: only seeing the release
    // in its state machine can make it ask again in time.
    let cfg = HolderConfig { retry: Duration::from_secs(60), ..HolderConfig::new("lb-leader", TTL * 20) };
    let contender = LeaseHolder::spawn(c.node(leader).clone(), cfg);
    wait_for("the contender's refusal", || {
        (c.metric(leader, "constellation_lease_renewals_total", Some(("result", "refused"))) >= 1.0).then_some(())
    })
    .await;

    let released_at = Instant::now();
    assert_eq!(holder.release().await, Some(token));
    assert_eq!(*holder.held().borrow(), None, "not held once released");
    let mut held = contender.held();
    let new = tokio::time::timeout(Duration::from_secs(2), held.wait_for(|h| h.is_some()))
        .await
        .expect("the contender takes the released lease at once, not after its retry pause or the TTL")
        .unwrap()
        .unwrap();
    let took = released_at.elapsed();
    assert!(new > token, "tokens grow: {token} then {new}");
    assert!(matches!(holder.history().last(), Some(HolderEvent::Lost { reason: LostReason::Released, .. })));
    assert!(!c.node(f).check("lb-leader", token).await.unwrap());
    tracing::info!(?took, "released lease taken");

    // The leader (the new holder) hands Raft leadership to a caught-up voter.
    let moved_to = c.node(leader).step_down(Duration::from_secs(5)).await;
    let me = c.node(leader).name().to_string();
    assert!(moved_to.is_some_and(|l| l != me), "leadership left {me}");
    assert_ne!(c.leader().await, leader);
    drop(contender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_renews_and_steps_down_before_its_deadline_when_cut_off() {
    let mut c = TestCluster::start("stepdown", 3).await;
    let leader = c.leader().await;
    let f = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    let holder = LeaseHolder::spawn(c.node(f).clone(), HolderConfig::new("lb-leader", TTL));
    let mut held = holder.held();
    let token = held.wait_for(|h| h.is_some()).await.unwrap().unwrap();

    // It renews, keeping its token.
    wait_for("two renewals", || {
        (holder.history().iter().filter(|e| matches!(e, HolderEvent::Renewed { .. })).count() >= 2).then_some(())
    })
    .await;
    assert!(holder.history().iter().all(|e| match e {
        HolderEvent::Acquired { token: t, .. } | HolderEvent::Renewed { token: t, .. } => *t == token,
        HolderEvent::Lost { .. } => false,
    }));
    assert!(c.node(third).check("lb-leader", token).await.is_ok_and(|held_by_third| !held_by_third));
    assert!(c.node(f).check("lb-leader", token).await.unwrap());

    // Cut it off: the leader and the third node stop, so no renewal can commit.
    c.stop(leader).await;
    c.stop(third).await;
    held.wait_for(|h| h.is_none()).await.unwrap();
    let history = holder.history();
    let last_ack = history
        .iter()
        .rev()
        .find_map(|e| match e {
            HolderEvent::Acquired { sent, .. } | HolderEvent::Renewed { sent, .. } => Some(*sent),
            HolderEvent::Lost { .. } => None,
        })
        .unwrap();
    let Some(HolderEvent::Lost { token: lost, at, deadline, reason }) = history.last().cloned() else {
        panic!("last event is not a loss: {history:?}");
    };
    assert_eq!((lost, reason), (token, LostReason::Deadline));
    assert!(at >= deadline, "stepped down at its deadline, not before");
    assert!(at < last_ack + TTL, "stepped down {:?} after the last acked send; TTL is {TTL:?}", at - last_ack);
    assert_eq!(c.metric(f, "constellation_lease_stepdowns_total", Some(("lease", "lb-leader"))), 1.0);
    assert!(c.metric(f, "constellation_lease_renewals_total", Some(("result", "renewed"))) >= 2.0);
}

#[test]
fn node_ids_are_stable_and_config_is_validated() {
    assert_eq!(node_id("n1"), node_id("n1"));
    assert_ne!(node_id("n1"), node_id("n2"));
    // FNV-1a of the empty string is its offset basis.
    assert_eq!(node_id(""), 0xcbf2_9ce4_8422_2325);
    let keyring = Arc::new(Keyring::parse(&generate_key_hex()).unwrap());
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut cfg = RaftConfig {
        node: "x".into(),
        voters: vec![("a".into(), addr)],
        bind: addr,
        data_dir: PathBuf::from("/nonexistent"),
        keyring,
        election_timeout: ELECTION,
        heartbeat: HEARTBEAT,
        lease_ttl: TTL,
    };
    assert!(validate(&cfg).unwrap_err().to_string().contains("not among the voters"));
    cfg.node = "a".into();
    cfg.voters.push(("a".into(), addr));
    assert!(validate(&cfg).unwrap_err().to_string().contains("listed twice"));
    cfg.voters.pop();
    cfg.heartbeat = Duration::from_secs(1);
    assert!(validate(&cfg).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_node_joins_as_learner_then_voter_and_receives_the_log() {
    let mut c = TestCluster::start("add-voter", 3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let t1 = c.node(leader).acquire("lb-leader", TTL).await.unwrap();

    let new = c.add_node().await;
    let (name, addr) = c.voters[new].clone();
    assert!(c.node(new).membership().is_empty(), "a node not yet added knows no membership");
    // Asked of a follower: carried out by the leader.
    c.node(follower).add_voter(&name, addr).await.unwrap();
    for i in [leader, follower] {
        assert!(c.node(i).membership().contains(&(name.clone(), addr, true)), "{:?}", c.node(i).membership());
        assert_eq!(c.voter_names(i), ["n1", "n2", "n3", "n4"]);
    }
    // The new voter received the log: its view shows the lease granted before it joined.
    let mut view = c.node(new).view();
    view.wait_for(|v| v.leases.get("lb-leader").is_some_and(|l| l.token == t1)).await.unwrap();
    wait_for("the new voter to know its membership", || (c.voter_names(new).len() == 4).then_some(())).await;
    assert_eq!(c.leader().await, leader);
    let status = c.node(leader).status();
    assert!(status.learners.is_empty(), "{status:?}");
    assert!(status.voters.iter().all(|v| v.reachable == Some(true)), "{status:?}");

    // It takes part: it acquires a lease through the leader, which every node then sees.
    let t2 = c.node(new).acquire("dns-writer", TTL).await.unwrap();
    assert!(t2 > t1);
    let mut view = c.node(follower).view();
    view.wait_for(|v| v.leases.get("dns-writer").is_some_and(|l| l.holder.as_deref() == Some("n4"))).await.unwrap();

    // Duplicates and address clashes are refused, changing nothing.
    let err = c.node(leader).add_voter(&name, addr).await.unwrap_err();
    assert_eq!(err, MembershipError::AlreadyVoter(name.clone()));
    let err = c.node(follower).add_voter("n5", addr).await.unwrap_err();
    assert_eq!(err, MembershipError::AddressInUse { addr, name: name.clone() });
    assert_eq!(c.voter_names(leader).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_voter_leaves_the_membership_and_the_rest_still_grants_leases() {
    let mut c = TestCluster::start("remove-voter", 3).await;
    let leader = c.leader().await;
    let (gone, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let gone_name = c.voters[gone].0.clone();

    // Asked of the other follower; the leader carries it out.
    c.node(other).remove_voter(&gone_name).await.unwrap();
    for i in [leader, other] {
        let names = c.voter_names(i);
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(!names.contains(&gone_name), "{names:?}");
        assert!(c.node(i).membership().iter().all(|(n, _, _)| *n != gone_name), "not kept as a learner");
    }
    c.stop(gone).await;
    let t = c.node(other).acquire("lb-leader", TTL).await.unwrap();
    assert!(c.node(leader).check("lb-leader", t).await.is_ok_and(|held_by_leader| !held_by_leader));
    assert!(c.node(other).check("lb-leader", t).await.unwrap());

    let err = c.node(leader).remove_voter(&gone_name).await.unwrap_err();
    assert_eq!(err, MembershipError::UnknownNode(gone_name.clone()));
    let err = c.node(leader).remove_voter("nobody").await.unwrap_err();
    assert_eq!(err, MembershipError::UnknownNode("nobody".into()));

    // Down to one voter (both remaining are reachable), but never to none.
    let other_name = c.voters[other].0.clone();
    c.node(leader).remove_voter(&other_name).await.unwrap();
    assert_eq!(c.voter_names(leader), [c.voters[leader].0.clone()]);
    let err = c.node(leader).remove_voter(&c.voters[leader].0).await.unwrap_err();
    assert_eq!(err, MembershipError::LastVoter(c.voters[leader].0.clone()));
    let t2 = c.node(leader).acquire("dns-writer", TTL).await.unwrap();
    assert!(t2 > t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_that_would_lose_quorum_is_refused_but_removing_the_dead_voter_is_not() {
    let mut c = TestCluster::start("quorum", 3).await;
    let leader = c.leader().await;
    let (dead, alive) = ((leader + 1) % 3, (leader + 2) % 3);
    let (dead_name, alive_name) = (c.voters[dead].0.clone(), c.voters[alive].0.clone());
    c.stop(dead).await;
    c.wait_unreachable(leader, &dead_name).await;
    let before = c.node(leader).membership();

    // Removing a second, running voter would leave {leader, dead}: 1 of 2 reachable.
    for asked in [leader, alive] {
        let err = c.node(asked).remove_voter(&alive_name).await.unwrap_err();
        tracing::info!(error = %err, "refused");
        let MembershipError::WouldLoseQuorum { reachable, unreachable, needed, .. } = &err else {
            panic!("expected WouldLoseQuorum, got {err:?}");
        };
        assert_eq!((reachable.len(), unreachable.as_slice(), *needed), (1, [dead_name.clone()].as_slice(), 2));
        assert!(err.to_string().contains(&dead_name), "{err}");
    }
    // Nor may the leader remove itself.
    let err = c.node(alive).remove_voter(&c.voters[leader].0).await.unwrap_err();
    assert!(matches!(err, MembershipError::WouldLoseQuorum { .. }), "{err:?}");
    assert_eq!(c.node(leader).membership(), before, "membership unchanged");
    assert_eq!(c.node(alive).membership(), before, "membership unchanged");

    // Removing the stopped one leaves two voters, both reachable: allowed.
    c.node(alive).remove_voter(&dead_name).await.unwrap();
    let mut names = vec![c.voters[leader].0.clone(), alive_name.clone()];
    names.sort();
    assert_eq!(c.voter_names(leader), names);
    assert_eq!(c.voter_names(alive), names);
    let t = c.node(alive).acquire("lb-leader", TTL).await.unwrap();
    assert!(c.node(alive).check("lb-leader", t).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_that_never_answers_is_not_promoted_and_is_taken_out_again() {
    let c = TestCluster::start("unreachable", 3).await;
    let leader = c.leader().await;
    let before = c.node(leader).membership();
    // Nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = c.node((leader + 1) % 3).add_voter("ghost", addr).await.unwrap_err();
    assert!(matches!(&err, MembershipError::NotCaughtUp { name, .. } if name == "ghost"), "{err:?}");
    wait_for("the learner to be removed again", || (c.node(leader).membership() == before).then_some(())).await;
    c.node(leader).acquire("lb-leader", TTL).await.unwrap();
}

/// Every Raft request and response, with openraft's own types in every shape we send
/// (entries of each payload, memberships, snapshots, storage errors), survives the frame
/// codec's postcard: none of them relies on a self-describing format.
#[test]
fn every_raft_message_round_trips_through_the_frame_codec() {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::error::{Fatal, InstallSnapshotError, SnapshotMismatch};
    use openraft::{
        AnyError, CommittedLeaderId, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, Membership, SnapshotMeta,
        SnapshotSegmentId, StorageError, StorageIOError, StoredMembership, Vote,
    };

    let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, node_id("n1")), index);
    let nodes: BTreeMap<NodeId, PeerNode> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| (node_id(n), PeerNode { name: n.to_string(), addr: "127.0.0.1:7948".into() }))
        .collect();
    let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
    let joint = Membership::new(vec![voters.clone(), voters.iter().copied().take(2).collect()], nodes.clone());
    let entries = vec![
        Entry::<TypeConfig> { log_id: log_id(1, 1), payload: EntryPayload::Blank },
        Entry { log_id: log_id(1, 2), payload: EntryPayload::Membership(joint.clone()) },
        Entry {
            log_id: log_id(2, 3),
            payload: EntryPayload::Normal(LeaseCommand::Acquire {
                lease: "lb-leader".into(),
                node: "n2".into(),
                ttl_ms: 1500,
            }),
        },
        Entry {
            log_id: log_id(2, 4),
            payload: EntryPayload::Normal(LeaseCommand::Revoke { lease: "x".into(), token: 3, granted_index: None }),
        },
    ];
    let vote = Vote::new_committed(2, node_id("n1"));
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(2, 4)),
        last_membership: StoredMembership::new(Some(log_id(1, 2)), joint),
        snapshot_id: "2-4-1".into(),
    };
    let storage = StorageError::IO {
        source: StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, AnyError::error("disk full")),
    };
    let requests = vec![
        Request::AppendEntries(openraft::raft::AppendEntriesRequest {
            vote,
            prev_log_id: None,
            entries,
            leader_commit: Some(log_id(2, 3)),
        }),
        Request::Vote(openraft::raft::VoteRequest {
            vote: Vote::new(3, node_id("n2")),
            last_log_id: Some(log_id(2, 4)),
        }),
        Request::InstallSnapshot(openraft::raft::InstallSnapshotRequest {
            vote,
            meta,
            offset: 0,
            data: (0..=255u8).collect(),
            done: true,
        }),
        Request::Write(LeaseCommand::Acquire { lease: "dns-writer".into(), node: "n3".into(), ttl_ms: 10 }),
        Request::Check { lease: "lb-leader".into(), node: "n1".into(), token: 7 },
        Request::AddVoter { name: "n4".into(), addr: "127.0.0.1:9".parse().unwrap() },
        Request::RemoveVoter { name: "n4".into() },
        Request::Elect,
    ];
    let responses = vec![
        Response::AppendEntries(Ok(openraft::raft::AppendEntriesResponse::Success)),
        Response::AppendEntries(Ok(openraft::raft::AppendEntriesResponse::PartialSuccess(Some(log_id(2, 3))))),
        Response::AppendEntries(Ok(openraft::raft::AppendEntriesResponse::Conflict)),
        Response::AppendEntries(Ok(openraft::raft::AppendEntriesResponse::HigherVote(vote))),
        Response::AppendEntries(Err(OrError::Fatal(Fatal::StorageError(storage)))),
        Response::Vote(Ok(openraft::raft::VoteResponse { vote, vote_granted: false, last_log_id: Some(log_id(2, 4)) })),
        Response::Vote(Err(OrError::Fatal(Fatal::Stopped))),
        Response::InstallSnapshot(Ok(openraft::raft::InstallSnapshotResponse { vote })),
        Response::InstallSnapshot(Err(OrError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
            expect: SnapshotSegmentId { id: "a".into(), offset: 0 },
            got: SnapshotSegmentId { id: "b".into(), offset: 9 },
        })))),
        Response::Write(Ok(LeaseResponse::Granted { token: 5 })),
        Response::Write(Err(ForwardError::NotLeader { leader: Some(node_id("n2")) })),
        Response::Write(Err(ForwardError::NotLeader { leader: None })),
        Response::Check(Ok(true)),
        Response::Check(Err(ForwardError::Failed("quorum lost".into()))),
        Response::Membership(Ok(Ok(vec![("n1".into(), "127.0.0.1:1".parse().unwrap(), true)]))),
        Response::Membership(Ok(Err(MembershipError::UnknownNode("n9".into())))),
        Response::Membership(Err(ForwardError::Failed("no leader".into()))),
        Response::Elect(Ok(())),
        Response::Elect(Err(ForwardError::Failed("raft is shut down".into()))),
    ];
    let frames = network::codec(Arc::new(Keyring::parse(&generate_key_hex()).unwrap()));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for request in &requests {
        let frame = frames.encode(request).unwrap();
        let back: Request = rt.block_on(frames.read(&mut &frame[..])).unwrap().unwrap();
        assert_eq!(format!("{back:?}"), format!("{request:?}"));
    }
    for response in &responses {
        let frame = frames.encode(response).unwrap();
        let back: Response = rt.block_on(frames.read(&mut &frame[..])).unwrap().unwrap();
        assert_eq!(format!("{back:?}"), format!("{response:?}"));
    }
}

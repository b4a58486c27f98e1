//! Guards against a lease-safety race in the leader's expiry (found by this test, fixed by
//! making the expiry revoke conditional on the lease's `granted_index`).
//!
//! The contract a holder relies on: once a renewal it sent at `S` is acknowledged, nobody
//! else is granted the lease before `S + TTL` (the holder itself stops at
//! `S + TTL − TTL/5`). The leader's expiry task decides from a snapshot of its deadlines
//! that a lease expired and then proposes `Revoke { lease, token }`; a renewal by the
//! holder that is already in the log (appended, not yet applied, so the snapshot did not
//! see it) is applied first and acknowledged (`Renewed`, same token), and the revoke,
//! matching that same token, is applied right after it and vacates the lease. Another node
//! can then be granted the lease while the holder believes it holds it for a whole TTL.
//!
//! Three in-process lease nodes (the library API the agent uses), short timings so many
//! trials fit: a follower acquires a lease, lets it run out, and renews it at a random
//! moment around the leader's deadline; a trial fails the contract when the lease is seen
//! vacated (or held by someone else) less than `TTL − TTL/5` after the acknowledged
//! renewal was sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use constellation_lease::{LeaseNode, RaftConfig};
use constellation_wire::{generate_key_hex, Keyring};
use rand::RngExt;

use crate::support::*;

const HEARTBEAT: Duration = Duration::from_millis(20);
const ELECTION: (Duration, Duration) = (Duration::from_millis(150), Duration::from_millis(300));
const TTL: Duration = Duration::from_millis(200);
const LEASE: &str = "race";

#[test]
fn renewal_acknowledged_near_the_deadline_is_not_revoked_behind_the_holders_back() {
    run_test(|| async {
        let dir = Scratch::new("revoke-race");
        let keyring = Arc::new(Keyring::parse(&generate_key_hex()).unwrap());
        let mut listeners = Vec::new();
        let mut voters: Vec<(String, SocketAddr)> = Vec::new();
        for i in 1..=3 {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            voters.push((format!("n{i}"), l.local_addr().unwrap()));
            listeners.push(l);
        }
        let mut nodes: BTreeMap<String, LeaseNode> = BTreeMap::new();
        let mut registries = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let cfg = RaftConfig {
                node: voters[i].0.clone(),
                voters: voters.clone(),
                bind: voters[i].1,
                data_dir: dir.path(&voters[i].0),
                keyring: Arc::clone(&keyring),
                election_timeout: ELECTION,
                heartbeat: HEARTBEAT,
                lease_ttl: TTL,
            };
            let registry = prometheus::Registry::new();
            let node = LeaseNode::start_on(cfg, listener, &registry, std::future::pending::<()>()).await.unwrap();
            nodes.insert(voters[i].0.clone(), node);
            registries.push(registry);
        }
        let leader = {
            let started = Instant::now();
            loop {
                let leaders: Vec<Option<String>> = nodes.values().map(|n| n.view().borrow().leader.clone()).collect();
                if let Some(Some(l)) = leaders.first() {
                    if leaders.iter().all(|x| x.as_deref() == Some(l.as_str())) {
                        break l.clone();
                    }
                }
                assert!(started.elapsed() < Duration::from_secs(15), "no leader: {leaders:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let holder_name = nodes.keys().find(|n| **n != leader).unwrap().clone();
        let holder = nodes[&holder_name].clone();
        let watch = nodes[&leader].clone();
        let mut rng = rand::rng();
        let trials = 100;
        let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
        let mut broken: Option<String> = None;
        let mut token = holder.acquire(LEASE, TTL).await.unwrap();
        let mut acked = Instant::now();
        for trial in 0..trials {
            // Let the lease run out at the leader, then renew at a random moment between
            // just before its deadline and one expiry tick (a heartbeat) after it.
            let offset = Duration::from_micros(rng.random_range(0..(HEARTBEAT.as_micros() as u64 + 10_000)));
            tokio::time::sleep_until((acked + TTL - Duration::from_millis(5) + offset).into()).await;
            let sent = Instant::now();
            let prev_ack = acked;
            let got = match holder.acquire(LEASE, TTL).await {
                Ok(t) => t,
                Err(e) => {
                    *outcomes.entry("error").or_default() += 1;
                    eprintln!("trial {trial}: {e}");
                    token = holder.acquire(LEASE, TTL).await.unwrap();
                    acked = Instant::now();
                    continue;
                }
            };
            acked = Instant::now();
            if got != token {
                // The revoke came first; this is a fresh grant.
                *outcomes.entry("revoked first, granted anew").or_default() += 1;
                token = got;
                continue;
            }
            // Acknowledged as a renewal of `token`: the lease must stay ours until at least
            // `sent + TTL − TTL/5`.
            let until = sent + TTL - TTL / 5;
            let mut view = watch.view();
            let lost = loop {
                let state = view.borrow_and_update().leases.get(LEASE).cloned().unwrap_or_default();
                if state.token != token || state.holder.as_deref() != Some(holder_name.as_str()) {
                    break Some((Instant::now(), state));
                }
                match tokio::time::timeout_at(until.into(), view.changed()).await {
                    Ok(Ok(())) => {}
                    _ => break None,
                }
            };
            match lost {
                None => *outcomes.entry("renewed and kept").or_default() += 1,
                Some((at, state)) => {
                    *outcomes.entry("renewed, then revoked").or_default() += 1;
                    broken.get_or_insert(format!(
                        "trial {trial}: a renewal of token {token} sent {:+.1} ms from the leader's deadline (the \
                         previous acknowledgement + TTL) was acknowledged as a renewal, yet the lease was {state:?} \
                         {:?} after it was sent (the holder may act until {:?} after)",
                        (sent.duration_since(prev_ack).as_secs_f64() - TTL.as_secs_f64()) * 1e3,
                        at.duration_since(sent),
                        TTL - TTL / 5
                    ));
                    // Take it back for the next trial.
                    token = holder.acquire(LEASE, TTL).await.unwrap();
                    acked = Instant::now();
                }
            }
        }
        eprintln!("revoke-after-renewal race, {trials} trials, leader {leader}, holder {holder_name}: {outcomes:?}");
        for n in nodes.values() {
            n.shutdown().await;
        }
        drop(registries);
        if let Some(b) = broken {
            panic!("a renewal acknowledged to the holder was revoked behind its back: {b}; outcomes {outcomes:?}");
        }
    });
}

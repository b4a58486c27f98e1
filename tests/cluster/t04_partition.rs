//! A partition (iptables drops node 3's gossip and cluster traffic) makes both sides
//! declare the other down; once it heals, all three converge back to alive.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

/// iptables rules that cut all loopback traffic to and from some ports; deleted on drop,
/// panic or not.
struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    fn iptables(args: &[String]) -> Result<(), String> {
        let out = Command::new("iptables").arg("-w").args(args).output().map_err(|e| {
            format!("cannot run iptables ({e}); this test needs root and iptables (CI runs it as root)")
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`iptables -w {}` failed ({}): {}; this test needs root and iptables (CI runs it as root)",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Drops UDP to and from `udp_port` and TCP to and from `tcp_port`.
    fn cut(udp_port: u16, tcp_port: u16) -> Partition {
        let mut p = Partition { rules: Vec::new() };
        for (proto, port) in [("udp", udp_port), ("tcp", tcp_port)] {
            for dir in ["--dport", "--sport"] {
                let rule: Vec<String> = ["INPUT", "-p", proto, dir, &port.to_string(), "-j", "DROP"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                let mut insert = vec!["-I".to_string()];
                insert.extend(rule.iter().cloned());
                if let Err(e) = Partition::iptables(&insert) {
                    drop(p);
                    panic!("{e}");
                }
                p.rules.push(rule);
            }
        }
        p
    }

    fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            let mut delete = vec!["-D".to_string()];
            delete.extend(rule);
            if let Err(e) = Partition::iptables(&delete) {
                eprintln!("warning: could not remove a partition rule: {e}");
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

#[test]
fn partition_heals_and_all_converge_back_to_alive() {
    run_test(|| async {
        let bs = backends(3).await;
        let urls: Vec<String> = bs.iter().map(Backend::url).collect();
        let mut cluster = Cluster::start(urls.iter().map(|u| NodeSpec::app(u.clone())).collect()).await;
        cluster.wait_upstreams(&[1, 2, 3], "app", &urls, Duration::from_secs(10)).await;
        let (g3, c3) = (cluster.node(3).gossip.port(), cluster.node(3).cluster.port());
        let cut_at = Instant::now();
        let mut partition = Partition::cut(g3, c3);
        let survivors_view: Vec<(String, &str)> =
            vec![("n1".into(), "alive"), ("n2".into(), "alive"), ("n3".into(), "down")];
        let n3_view: Vec<(String, &str)> = vec![("n1".into(), "down"), ("n2".into(), "down"), ("n3".into(), "alive")];
        let survivors = cluster.wait_view(&[1, 2], &survivors_view, Duration::from_secs(15)).await;
        let isolated = cluster.wait_view(&[3], &n3_view, Duration::from_secs(15)).await;
        // Each side routes only to its own side's instances.
        cluster.wait_upstreams(&[1, 2], "app", &urls[..2], Duration::from_secs(3)).await;
        cluster.wait_upstreams(&[3], "app", &urls[2..], Duration::from_secs(3)).await;
        let split = cut_at.elapsed();
        for n in &mut cluster.nodes {
            n.assert_alive();
        }

        let healed_at = Instant::now();
        partition.heal();
        let back = cluster.wait_all_alive(Duration::from_secs(20)).await;
        // States flow again: every node routes to all three instances.
        cluster.wait_upstreams(&[1, 2, 3], "app", &urls, Duration::from_secs(10)).await;
        // Same identities on all sides afterwards (n3 may have renewed its incarnation).
        let own = cluster.node(3).must_status().await;
        let n3_incarnation = member(&own, "n3")["incarnation"].as_u64().unwrap();
        eventually_or(
            "everyone to agree on n3's incarnation",
            Duration::from_secs(5),
            || cluster.dump(),
            || async {
                for i in [1, 2] {
                    let seen = member(&cluster.node(i).must_status().await, "n3")["incarnation"].as_u64().unwrap();
                    if seen != n3_incarnation {
                        return Err(format!("n{i} holds n3#{seen}, n3 is #{n3_incarnation}"));
                    }
                }
                Ok(())
            },
        )
        .await;
        drop(partition);
        eprintln!(
            "partition: survivors saw n3 down after {survivors:?}, n3 saw both down after {isolated:?} \
             (split complete {split:?}); healed to 3 alive in {back:?} ({:?} incl. checks)",
            healed_at.elapsed()
        );
    });
}

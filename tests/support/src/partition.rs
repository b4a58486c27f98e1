//! Network partitions between agents on loopback, with iptables.
//!
//! All agents share 127.0.0.1, and the connections a node opens leave from ephemeral
//! ports, so rules on a node's own ports would only stop what reaches it: its outgoing
//! state pulls and Raft RPCs would still get through. A partition therefore matches the
//! sending process instead: every agent of an isolatable fleet runs under its own uid,
//! and for each pair (cut-off node, other node) and each plane, two `OUTPUT` rules drop
//! with the `owner` match what either uid sends to the other's port of that plane. New
//! connections fail both ways (their first packet is dropped), datagrams are lost both
//! ways, and on a connection open before the cut the initiator's requests stop.
//!
//! Every rule carries the comment `constellation-test-<pid>`; rules whose test process
//! is gone (killed mid-partition) are deleted before new ones are added.

use std::path::Path;
use std::process::Command;

use crate::node::Node;

/// A kind of traffic between agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// SWIM gossip: UDP to the gossip port.
    Gossip,
    /// State pulls: TCP to the cluster port.
    State,
    /// Raft RPCs: TCP to the cluster port + 1.
    Raft,
}

impl Plane {
    /// Every plane.
    pub const ALL: [Plane; 3] = [Plane::Gossip, Plane::State, Plane::Raft];

    fn proto(self) -> &'static str {
        match self {
            Plane::Gossip => "udp",
            Plane::State | Plane::Raft => "tcp",
        }
    }

    fn port(self, node: &Node) -> u16 {
        match self {
            Plane::Gossip => node.gossip.port(),
            Plane::State => node.cluster.port(),
            Plane::Raft => node.raft_port(),
        }
    }
}

const TAG: &str = "constellation-test-";
/// Tags of earlier harness copies, whose leftovers are cleaned the same way.
const OLD_TAGS: [&str; 2] = ["constellation-leases-test-", "constellation-dns-test-"];

/// iptables rules cutting nodes apart; deleted on drop, panic or not.
pub struct Partition {
    rules: Vec<Vec<String>>,
}

fn iptables(args: &[String]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables ({e}); partition tests need root and iptables"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`iptables -w {}` failed ({}): {}; partition tests need root and iptables",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the rules of test processes that no longer exist.
pub(crate) fn remove_orphan_rules() {
    for chain in ["INPUT", "OUTPUT"] {
        let Ok(out) = Command::new("iptables").args(["-w", "-S", chain]).output() else { return };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let found = std::iter::once(TAG).chain(OLD_TAGS).find_map(|t| line.find(t).map(|at| at + t.len()));
            let Some(at) = found else { continue };
            let pid: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
            if pid.is_empty() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let mut args: Vec<String> = line.split_whitespace().map(|s| s.trim_matches('"').to_string()).collect();
            if args.first().map(String::as_str) == Some("-A") {
                args[0] = "-D".to_string();
                let _ = iptables(&args);
            }
        }
    }
}

impl Partition {
    /// Cuts `node` off `others` on every plane.
    pub fn isolate(node: &Node, others: &[&Node]) -> Partition {
        Partition::cut(node, others, &Plane::ALL)
    }

    /// Cuts `node` off the Raft traffic of `others` (gossip and state pulls still flow).
    pub fn raft(node: &Node, others: &[&Node]) -> Partition {
        Partition::cut(node, others, &[Plane::Raft])
    }

    /// Cuts `node` off `others` on `planes`, in both directions.
    ///
    /// # Panics
    /// When a node has no uid of its own (the fleet is not isolatable) or iptables fails.
    pub fn cut(node: &Node, others: &[&Node], planes: &[Plane]) -> Partition {
        let uid = |n: &Node| match n.uid {
            Some(u) => u.to_string(),
            None => panic!("{}: a partition needs an isolatable fleet (agents under their own uids)", n.name),
        };
        remove_orphan_rules();
        let tag = format!("{TAG}{}", std::process::id());
        let mut p = Partition { rules: Vec::new() };
        for other in others {
            for &plane in planes {
                for (from, to) in [(node, *other), (*other, node)] {
                    let rule: Vec<String> = [
                        "OUTPUT",
                        "-o",
                        "lo",
                        "-p",
                        plane.proto(),
                        "-m",
                        "owner",
                        "--uid-owner",
                        &uid(from),
                        "--dport",
                        &plane.port(to).to_string(),
                        "-m",
                        "comment",
                        "--comment",
                        &tag,
                        "-j",
                        "DROP",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                    let mut insert = vec!["-I".to_string()];
                    insert.extend(rule.iter().cloned());
                    if let Err(e) = iptables(&insert) {
                        drop(p);
                        panic!("{e}");
                    }
                    p.rules.push(rule);
                }
            }
        }
        p
    }

    /// Deletes the rules (idempotent).
    pub fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            let mut delete = vec!["-D".to_string()];
            delete.extend(rule);
            if let Err(e) = iptables(&delete) {
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

//! Rate-limited log lines about refused cluster messages: at most one line per peer
//! address and kind of problem per interval, however many messages are refused.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default interval between two lines about the same peer address and problem.
pub const REJECT_LOG_EVERY: Duration = Duration::from_secs(60);
/// Bound on the (address, problem) pairs remembered.
const MAX_REMEMBERED: usize = 4096;

/// Decides which refusals get a log line. Keyed by IP address, not socket address: TCP
/// peers connect from ever-changing ports.
pub struct RejectLog {
    every: Duration,
    seen: Mutex<HashMap<(IpAddr, &'static str), Instant>>,
}

impl Default for RejectLog {
    fn default() -> Self {
        RejectLog::new(REJECT_LOG_EVERY)
    }
}

impl RejectLog {
    /// At most one line per address and problem every `every`.
    pub fn new(every: Duration) -> RejectLog {
        RejectLog { every, seen: Mutex::new(HashMap::new()) }
    }

    /// True if a line about `problem` from `peer` is due now (and records that it was).
    pub fn due(&self, peer: IpAddr, problem: &'static str) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, at| now.duration_since(*at) < self.every);
        }
        let due = seen.get(&(peer, problem)).is_none_or(|at| now.duration_since(*at) >= self.every);
        if due && seen.len() < MAX_REMEMBERED {
            seen.insert((peer, problem), now);
        }
        due
    }

    /// Logs, if due, that `peer` speaks protocol `theirs` while we speak `ours`, on
    /// `channel` (`udp`, `tcp`, `raft`).
    pub fn other_version(&self, peer: SocketAddr, channel: &'static str, theirs: u8, ours: u8) {
        if self.due(peer.ip(), "version") {
            tracing::warn!(
                peer = %peer,
                channel,
                peer_version = theirs,
                our_version = ours,
                "cluster peer {peer} speaks protocol version {theirs}, this node speaks {ours}: its messages \
                 are refused; run the same Constellation release on every node (upgrade or roll back one \
                 side). Further messages from this address are counted, not logged, for a while"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_address_and_problem() {
        let log = RejectLog::new(Duration::from_secs(3600));
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert!(log.due(a, "version"));
        assert!(!log.due(a, "version"));
        assert!(log.due(a, "forged"), "another problem gets its own line");
        assert!(log.due(b, "version"), "another address gets its own line");
        let quick = RejectLog::new(Duration::ZERO);
        assert!(quick.due(a, "version") && quick.due(a, "version"));
    }
}

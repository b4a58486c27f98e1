//! The lease state machine: named leases with fencing tokens, applied identically on every
//! replica from the Raft log, and the leader's in-memory lease clock.
//!
//! Nothing in [`LeaseTable::apply`] reads a clock: whether a lease has expired is decided
//! by the leader alone (as etcd's lessor does), which then revokes it through the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A command proposed to the lease state machine (the Raft application data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseCommand {
    /// Grant `lease` to `node` if it is vacant, or renew it if `node` already holds it.
    Acquire {
        /// Lease name (`lb-leader`, `dns-writer`, …).
        lease: String,
        /// The node asking.
        node: String,
        /// Time to live the holder asks for, in milliseconds.
        ttl_ms: u64,
    },
    /// Give the lease up; only the holder with the current token can.
    Release {
        /// Lease name.
        lease: String,
        /// The node releasing.
        node: String,
        /// The token it holds.
        token: u64,
    },
    /// Take the lease away from whoever holds it with `token` (the leader does this when a
    /// lease expires).
    Revoke {
        /// Lease name.
        lease: String,
        /// The token being revoked; any other token makes this a no-op.
        token: u64,
        /// The lease's `granted_index` when the leader decided it had expired. A renewal
        /// applied in between moves `granted_index`, and then this revoke is a no-op:
        /// without it, a renewal already in the log could be acknowledged and then undone
        /// by a revoke decided before it. `None` revokes whatever the renewals (manual
        /// revoke by token).
        #[serde(default)]
        granted_index: Option<u64>,
    },
    /// Set (`Some`) or delete (`None`) `key` in the replicated data, fenced: applied only
    /// when `node` holds `lease` with `token`, else [`LeaseResponse::Stale`] and nothing
    /// changes. Values are capped at [`MAX_VALUE`] bytes and all data at [`MAX_DATA`].
    Put {
        /// The lease whose holder may write (`acme`, …).
        lease: String,
        /// The node writing.
        node: String,
        /// The token it holds.
        token: u64,
        /// Key, at most [`MAX_KEY`] bytes.
        key: String,
        /// New value; `None` deletes the key.
        value: Option<Vec<u8>>,
    },
}

/// Largest key of the replicated data, in bytes.
pub const MAX_KEY: usize = 512;
/// Largest value of the replicated data, in bytes (a certificate chain and its sealed key
/// fit many times over).
pub const MAX_VALUE: usize = 64 * 1024;
/// Largest total of the replicated data (keys plus values), in bytes. Snapshots carry it
/// whole, so it stays well under the Raft frame cap.
pub const MAX_DATA: usize = 2 * 1024 * 1024;

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseResponse {
    /// Not a lease command (blank or membership entry).
    #[default]
    None,
    /// The lease was vacant and is now held with this new token.
    Granted {
        /// The fencing token: the index of the log entry that granted it.
        token: u64,
    },
    /// The node already held the lease; its deadline is renewed, the token unchanged.
    Renewed {
        /// The unchanged token.
        token: u64,
    },
    /// Someone else holds the lease.
    Refused {
        /// The current holder.
        holder: String,
        /// Its token.
        token: u64,
    },
    /// The lease is vacant now (released or revoked with the current token; repeating the
    /// command says so again).
    Vacated {
        /// The token that ended.
        token: u64,
    },
    /// The token given is not the current one (or the node is not the holder): nothing changed.
    Stale {
        /// The current token (0 if the lease was never granted).
        current: u64,
        /// The current holder, if any.
        holder: Option<String>,
    },
    /// A fenced [`LeaseCommand::Put`] was applied (also when it changed nothing).
    Written,
    /// A [`LeaseCommand::Put`] was refused for its size: nothing changed.
    TooLarge {
        /// What was too large, with the sizes (`value of 70000 bytes exceeds 65536`).
        reason: String,
    },
}

/// One lease as the state machine records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseState {
    /// Node holding it, `None` when vacant.
    pub holder: Option<String>,
    /// Fencing token of the latest grant (kept after release, so the next grant is larger).
    pub token: u64,
    /// Log index of the latest grant or renewal.
    pub granted_index: u64,
    /// Time to live asked for at the latest grant or renewal, in milliseconds.
    pub ttl_ms: u64,
}

/// All leases by name and the fenced replicated data. The state machine proper: pure,
/// deterministic, clock-free.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTable {
    /// Leases by name.
    pub leases: BTreeMap<String, LeaseState>,
    /// Replicated key/value data written by lease holders ([`LeaseCommand::Put`]).
    /// Shared behind an `Arc` so that publishing the table on every apply copies no
    /// values; absent in snapshots of older versions (then empty).
    #[serde(default, with = "shared_map")]
    pub data: Data,
}

/// Serde for [`Data`] without serde's `rc` feature: the map itself, shared on load.
mod shared_map {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(data: &Data, s: S) -> Result<S::Ok, S::Error> {
        data.as_ref().serialize(s)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Data, D::Error> {
        BTreeMap::deserialize(d).map(Arc::new)
    }
}

/// The replicated key/value data: keys to opaque bytes, cheap to clone.
pub type Data = Arc<BTreeMap<String, Vec<u8>>>;

fn data_size(data: &BTreeMap<String, Vec<u8>>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// A grant or renewal seen while applying; the lease clock turns it into a deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    /// Lease name.
    pub lease: String,
    /// Token held.
    pub token: u64,
    /// Time to live in milliseconds.
    pub ttl_ms: u64,
}

// === impl LeaseTable ===

impl LeaseTable {
    /// Applies `cmd`, found in the log at `index`. Commands are idempotent: a client retry
    /// that lands twice in the log gives the same state (an `Acquire` repeated by the holder
    /// is a renewal that keeps the token; a repeated `Release`/`Revoke` finds the lease
    /// vacant at that token and reports `Vacated` again).
    pub fn apply(&mut self, index: u64, cmd: &LeaseCommand) -> (LeaseResponse, Option<Touch>) {
        match cmd {
            LeaseCommand::Acquire { lease, node, ttl_ms } => {
                let state = self.leases.entry(lease.clone()).or_default();
                match &state.holder {
                    Some(holder) if holder != node => {
                        (LeaseResponse::Refused { holder: holder.clone(), token: state.token }, None)
                    }
                    Some(_) => {
                        state.granted_index = index;
                        state.ttl_ms = *ttl_ms;
                        let touch = Touch { lease: lease.clone(), token: state.token, ttl_ms: *ttl_ms };
                        (LeaseResponse::Renewed { token: state.token }, Some(touch))
                    }
                    None => {
                        // Log indexes only grow, so every grant's token is larger than any
                        // earlier one. Guard anyway against a replayed older index.
                        let token = index.max(state.token + 1);
                        *state =
                            LeaseState { holder: Some(node.clone()), token, granted_index: index, ttl_ms: *ttl_ms };
                        let touch = Touch { lease: lease.clone(), token, ttl_ms: *ttl_ms };
                        (LeaseResponse::Granted { token }, Some(touch))
                    }
                }
            }
            LeaseCommand::Release { lease, node, token } => {
                self.vacate(lease, *token, |state| state.holder.as_deref() == Some(node.as_str()))
            }
            LeaseCommand::Revoke { lease, token, granted_index } => {
                self.vacate(lease, *token, |state| granted_index.is_none_or(|g| g == state.granted_index))
            }
            LeaseCommand::Put { lease, node, token, key, value } => (self.put(lease, node, *token, key, value), None),
        }
    }

    fn put(&mut self, lease: &str, node: &str, token: u64, key: &str, value: &Option<Vec<u8>>) -> LeaseResponse {
        if !self.holds(lease, node, token) {
            let state = self.leases.get(lease);
            return LeaseResponse::Stale {
                current: state.map_or(0, |s| s.token),
                holder: state.and_then(|s| s.holder.clone()),
            };
        }
        if key.len() > MAX_KEY {
            return LeaseResponse::TooLarge { reason: format!("key of {} bytes exceeds {MAX_KEY}", key.len()) };
        }
        match value {
            None => {
                if self.data.contains_key(key) {
                    Arc::make_mut(&mut self.data).remove(key);
                }
            }
            Some(value) => {
                if value.len() > MAX_VALUE {
                    return LeaseResponse::TooLarge {
                        reason: format!("value of {} bytes for {key} exceeds {MAX_VALUE}", value.len()),
                    };
                }
                let old = self.data.get(key).map_or(0, |v| key.len() + v.len());
                let total = data_size(&self.data) - old + key.len() + value.len();
                if total > MAX_DATA {
                    return LeaseResponse::TooLarge {
                        reason: format!("writing {key} would make the replicated data {total} bytes, over {MAX_DATA}"),
                    };
                }
                if self.data.get(key) != Some(value) {
                    Arc::make_mut(&mut self.data).insert(key.to_string(), value.clone());
                }
            }
        }
        LeaseResponse::Written
    }

    fn vacate(&mut self, lease: &str, token: u64, may: impl Fn(&LeaseState) -> bool) -> (LeaseResponse, Option<Touch>) {
        let Some(state) = self.leases.get_mut(lease) else {
            return (LeaseResponse::Stale { current: 0, holder: None }, None);
        };
        if state.token != token {
            return (LeaseResponse::Stale { current: state.token, holder: state.holder.clone() }, None);
        }
        if state.holder.is_none() {
            // Already vacated at this token: the same command applied again.
            return (LeaseResponse::Vacated { token }, None);
        }
        if !may(state) {
            return (LeaseResponse::Stale { current: state.token, holder: state.holder.clone() }, None);
        }
        state.holder = None;
        (LeaseResponse::Vacated { token }, None)
    }

    /// The lease if `node` holds it with `token`.
    pub fn holds(&self, lease: &str, node: &str, token: u64) -> bool {
        self.leases.get(lease).is_some_and(|s| s.token == token && s.holder.as_deref() == Some(node))
    }
}

/// The leader's view of lease deadlines, in its own monotonic clock. Every replica keeps
/// one (fed by [`Touch`]es as it applies), but only the leader acts on it, and a new
/// leader first extends every deadline by TTL + the maximum election timeout: a holder
/// whose renewal the old leader acknowledged cannot have a later deadline than that.
#[derive(Debug, Default)]
pub struct LeaseClock {
    deadlines: HashMap<String, (u64, Instant)>,
}

// === impl LeaseClock ===

impl LeaseClock {
    /// Records a grant or renewal applied at `now`.
    pub fn touch(&mut self, touch: &Touch, now: Instant) {
        let deadline = now + Duration::from_millis(touch.ttl_ms);
        let entry = self.deadlines.entry(touch.lease.clone()).or_insert((touch.token, deadline));
        if entry.0 != touch.token || entry.1 < deadline {
            *entry = (touch.token, deadline);
        }
    }

    /// On becoming leader: every held lease gets `now + ttl + grace`, whatever an earlier
    /// term recorded.
    pub fn extend_all(&mut self, table: &LeaseTable, now: Instant, grace: Duration) {
        self.deadlines.clear();
        for (name, state) in &table.leases {
            if state.holder.is_some() {
                let deadline = now + Duration::from_millis(state.ttl_ms) + grace;
                self.deadlines.insert(name.clone(), (state.token, deadline));
            }
        }
    }

    /// Held leases whose deadline passed at `now`, as `(lease, token)`. A held lease the
    /// clock has not seen yet (or saw with another token) gets a fresh deadline instead.
    pub fn expired(&mut self, table: &LeaseTable, now: Instant, grace: Duration) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        for (name, state) in &table.leases {
            if state.holder.is_none() {
                continue;
            }
            match self.deadlines.get(name) {
                Some((token, deadline)) if *token == state.token => {
                    if *deadline <= now {
                        out.push((name.clone(), state.token, state.granted_index));
                    }
                }
                _ => {
                    let deadline = now + Duration::from_millis(state.ttl_ms) + grace;
                    self.deadlines.insert(name.clone(), (state.token, deadline));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_revoke_decided_before_a_renewal_is_a_no_op() {
        let mut t = LeaseTable::default();
        let acquire = LeaseCommand::Acquire { lease: "lb".into(), node: "n1".into(), ttl_ms: 1000 };
        let (granted, _) = t.apply(5, &acquire);
        assert_eq!(granted, LeaseResponse::Granted { token: 5 });
        // The leader decides expiry while the lease was granted at index 5 ...
        let revoke = LeaseCommand::Revoke { lease: "lb".into(), token: 5, granted_index: Some(5) };
        // ... but the holder's renewal was already in the log ahead of the revoke.
        assert_eq!(t.apply(6, &acquire).0, LeaseResponse::Renewed { token: 5 });
        let (r, _) = t.apply(7, &revoke);
        assert!(matches!(r, LeaseResponse::Stale { current: 5, .. }), "{r:?}");
        assert!(t.holds("lb", "n1", 5), "an acknowledged renewal must not be undone");
        // With no renewal in between the same revoke vacates.
        let revoke = LeaseCommand::Revoke { lease: "lb".into(), token: 5, granted_index: Some(6) };
        assert_eq!(t.apply(8, &revoke).0, LeaseResponse::Vacated { token: 5 });
    }

    fn acquire(lease: &str, node: &str) -> LeaseCommand {
        LeaseCommand::Acquire { lease: lease.into(), node: node.into(), ttl_ms: 1000 }
    }

    #[test]
    fn grant_renew_refuse_and_tokens_grow() {
        let mut t = LeaseTable::default();
        assert_eq!(t.apply(5, &acquire("lb", "a")).0, LeaseResponse::Granted { token: 5 });
        assert_eq!(t.apply(6, &acquire("lb", "a")).0, LeaseResponse::Renewed { token: 5 });
        assert_eq!(t.apply(7, &acquire("lb", "b")).0, LeaseResponse::Refused { holder: "a".into(), token: 5 });
        assert_eq!(t.leases["lb"].granted_index, 6);
        let release = LeaseCommand::Release { lease: "lb".into(), node: "a".into(), token: 5 };
        assert_eq!(t.apply(8, &release).0, LeaseResponse::Vacated { token: 5 });
        // Applied again (client retry): same answer, same state.
        let before = t.clone();
        assert_eq!(t.apply(9, &release).0, LeaseResponse::Vacated { token: 5 });
        assert_eq!(t, before);
        assert_eq!(t.apply(10, &acquire("lb", "b")).0, LeaseResponse::Granted { token: 10 });
        // A lease of another name is independent.
        assert_eq!(t.apply(11, &acquire("dns", "a")).0, LeaseResponse::Granted { token: 11 });
    }

    #[test]
    fn stale_release_and_revoke_are_no_ops() {
        let mut t = LeaseTable::default();
        t.apply(3, &acquire("lb", "a"));
        let before = t.clone();
        let stale = LeaseResponse::Stale { current: 3, holder: Some("a".into()) };
        assert_eq!(t.apply(4, &LeaseCommand::Revoke { lease: "lb".into(), token: 2, granted_index: None }).0, stale);
        let wrong_node = LeaseCommand::Release { lease: "lb".into(), node: "b".into(), token: 3 };
        assert_eq!(t.apply(5, &wrong_node).0, stale);
        assert_eq!(t, before);
        assert_eq!(
            t.apply(6, &LeaseCommand::Revoke { lease: "nope".into(), token: 1, granted_index: None }).0,
            LeaseResponse::Stale { current: 0, holder: None }
        );
        assert_eq!(
            t.apply(7, &LeaseCommand::Revoke { lease: "lb".into(), token: 3, granted_index: None }).0,
            LeaseResponse::Vacated { token: 3 }
        );
        // A revoke for the old token after a new grant does nothing to the new holder.
        t.apply(8, &acquire("lb", "b"));
        assert_eq!(
            t.apply(9, &LeaseCommand::Revoke { lease: "lb".into(), token: 3, granted_index: None }).0,
            LeaseResponse::Stale { current: 8, holder: Some("b".into()) }
        );
        assert!(t.holds("lb", "b", 8));
    }

    fn put(lease: &str, node: &str, token: u64, key: &str, value: Option<&[u8]>) -> LeaseCommand {
        LeaseCommand::Put {
            lease: lease.into(),
            node: node.into(),
            token,
            key: key.into(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn puts_are_fenced_by_holder_and_token() {
        let mut t = LeaseTable::default();
        // Nobody holds the lease yet: refused.
        assert_eq!(
            t.apply(1, &put("acme", "a", 0, "k", Some(b"v0"))).0,
            LeaseResponse::Stale { current: 0, holder: None }
        );
        t.apply(2, &acquire("acme", "a"));
        assert_eq!(t.apply(3, &put("acme", "a", 2, "k", Some(b"v1"))).0, LeaseResponse::Written);
        assert_eq!(t.data.get("k").map(Vec::as_slice), Some(&b"v1"[..]));
        // Right token, wrong node; right node, wrong token; another lease's token.
        let stale = LeaseResponse::Stale { current: 2, holder: Some("a".into()) };
        assert_eq!(t.apply(4, &put("acme", "b", 2, "k", Some(b"x"))).0, stale);
        assert_eq!(t.apply(5, &put("acme", "a", 1, "k", Some(b"x"))).0, stale);
        t.apply(6, &acquire("dns", "a"));
        assert!(matches!(t.apply(7, &put("acme", "a", 6, "k", Some(b"x"))).0, LeaseResponse::Stale { .. }));
        assert_eq!(t.data.get("k").map(Vec::as_slice), Some(&b"v1"[..]));
        // The lease moves: the old holder's token is stale, the new holder's write wins.
        t.apply(8, &LeaseCommand::Revoke { lease: "acme".into(), token: 2, granted_index: None });
        t.apply(9, &acquire("acme", "b"));
        assert!(matches!(t.apply(10, &put("acme", "a", 2, "k", Some(b"old"))).0, LeaseResponse::Stale { .. }));
        assert_eq!(t.apply(11, &put("acme", "b", 9, "k", Some(b"new"))).0, LeaseResponse::Written);
        assert_eq!(t.data.get("k").map(Vec::as_slice), Some(&b"new"[..]));
        // Deleting, and deleting again (a retried command), both succeed.
        assert_eq!(t.apply(12, &put("acme", "b", 9, "k", None)).0, LeaseResponse::Written);
        assert_eq!(t.apply(13, &put("acme", "b", 9, "k", None)).0, LeaseResponse::Written);
        assert!(t.data.is_empty());
    }

    #[test]
    fn puts_over_the_size_caps_are_refused_and_change_nothing() {
        let mut t = LeaseTable::default();
        t.apply(1, &acquire("acme", "a"));
        let big = vec![0u8; MAX_VALUE + 1];
        let r = t.apply(2, &put("acme", "a", 1, "k", Some(&big))).0;
        assert!(matches!(&r, LeaseResponse::TooLarge { reason } if reason.contains("65537")), "{r:?}");
        let long_key = "k".repeat(MAX_KEY + 1);
        assert!(matches!(t.apply(3, &put("acme", "a", 1, &long_key, Some(b"v"))).0, LeaseResponse::TooLarge { .. }));
        // Fill up to the total cap, then one more value is refused; replacing a value in
        // place is still allowed.
        let value = vec![1u8; MAX_VALUE];
        let mut i = 0;
        loop {
            let r = t.apply(10 + i, &put("acme", "a", 1, &format!("v{i:03}"), Some(&value))).0;
            if r != LeaseResponse::Written {
                assert!(matches!(&r, LeaseResponse::TooLarge { reason } if reason.contains("over")), "{r:?}");
                break;
            }
            i += 1;
        }
        assert!(data_size(&t.data) <= MAX_DATA);
        assert!(!t.data.contains_key(&format!("v{i:03}")));
        assert_eq!(t.apply(500, &put("acme", "a", 1, "v000", Some(b"small"))).0, LeaseResponse::Written);
    }

    #[test]
    fn a_snapshot_without_data_still_loads() {
        let old = r#"{"leases":{"lb":{"holder":"a","token":3,"granted_index":3,"ttl_ms":1000}}}"#;
        let t: LeaseTable = serde_json::from_str(old).unwrap_or_else(|e| panic!("old snapshot: {e}"));
        assert!(t.data.is_empty());
        assert!(t.holds("lb", "a", 3));
    }

    #[test]
    fn clock_expires_only_past_deadline_and_new_leader_extends() {
        let mut t = LeaseTable::default();
        let (_, touch) = t.apply(3, &acquire("lb", "a"));
        let mut clock = LeaseClock::default();
        let t0 = Instant::now();
        clock.touch(&touch.unwrap_or_else(|| panic!("grant touches")), t0);
        let grace = Duration::from_millis(500);
        assert!(clock.expired(&t, t0 + Duration::from_millis(999), grace).is_empty());
        assert_eq!(clock.expired(&t, t0 + Duration::from_millis(1000), grace), vec![("lb".to_string(), 3, 3)]);
        clock.extend_all(&t, t0 + Duration::from_millis(1000), grace);
        assert!(clock.expired(&t, t0 + Duration::from_millis(2499), grace).is_empty());
        assert_eq!(clock.expired(&t, t0 + Duration::from_millis(2500), grace).len(), 1);
    }
}

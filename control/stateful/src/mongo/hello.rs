//! What one member says of itself (`hello`), and which member is the primary: a pure
//! function of those answers.

use mongodb::bson::{Bson, Document};

/// The parts of a member's `hello` answer the follower uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelloView {
    /// `setName`: absent until the member has a replica-set config.
    pub set_name: Option<String>,
    /// `isWritablePrimary` (or the legacy `ismaster`).
    pub writable: bool,
    /// `secondary`.
    pub secondary: bool,
    /// `arbiterOnly`.
    pub arbiter: bool,
    /// `setVersion`: the config version the member has.
    pub set_version: Option<i64>,
    /// `electionId` (12 bytes, a primary's term): higher is newer.
    pub election_id: Option<[u8; 12]>,
    /// `hosts`, `passives` and `arbiters`: every member of the config the member shows.
    pub hosts: Vec<String>,
    /// `primary`: who the member believes is primary.
    pub primary: Option<String>,
}

fn as_i64(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) if f.fract() == 0.0 && f.is_finite() => Some(*f as i64),
        _ => None,
    }
}

fn as_bool(v: Option<&Bson>) -> bool {
    matches!(v, Some(Bson::Boolean(true)))
}

// === impl HelloView ===

impl HelloView {
    /// Reads a `hello` (or legacy `isMaster`) reply; missing or mistyped fields read as
    /// absent/false.
    pub fn from_document(doc: &Document) -> HelloView {
        let mut hosts = Vec::new();
        for key in ["hosts", "passives", "arbiters"] {
            if let Ok(list) = doc.get_array(key) {
                hosts.extend(list.iter().filter_map(Bson::as_str).map(str::to_string));
            }
        }
        HelloView {
            set_name: doc.get_str("setName").ok().map(str::to_string),
            writable: as_bool(doc.get("isWritablePrimary")) || as_bool(doc.get("ismaster")),
            secondary: as_bool(doc.get("secondary")),
            arbiter: as_bool(doc.get("arbiterOnly")),
            set_version: as_i64(doc.get("setVersion")),
            election_id: doc.get_object_id("electionId").ok().map(|id| id.bytes()),
            hosts,
            primary: doc.get_str("primary").ok().map(str::to_string),
        }
    }

    /// The member's state as MongoDB names it, judged against the set we follow.
    pub fn state(&self, replica_set: &str) -> &'static str {
        match self.set_name.as_deref() {
            None => "UNINITIATED",
            Some(name) if name != replica_set => "FOREIGN",
            Some(_) if self.writable => "PRIMARY",
            Some(_) if self.secondary => "SECONDARY",
            Some(_) if self.arbiter => "ARBITER",
            Some(_) => "OTHER",
        }
    }
}

/// Which member is the primary, from every member's answer (`None`: unreachable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryChoice {
    /// Exactly one trustworthy primary: its index in the answers.
    One(usize),
    /// No member of our set says it is writable.
    None,
    /// Several claim it and neither `electionId` nor `setVersion` tells them apart.
    Split(Vec<usize>),
}

/// Picks the primary: a member whose own `hello` says writable and whose `setName` is
/// `replica_set`. Two or more such claims are settled by the higher (`electionId`,
/// `setVersion`) pair, as the drivers' SDAM rules do for wire version 17 and later; a
/// claim with an `electionId` beats one without. When the highest pair is shared, or no
/// claim carries either field, the answer is a split.
pub fn choose_primary(replica_set: &str, answers: &[Option<HelloView>]) -> PrimaryChoice {
    let claims: Vec<(usize, &HelloView)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.as_ref().map(|a| (i, a)))
        .filter(|(_, a)| a.writable && a.set_name.as_deref() == Some(replica_set))
        .collect();
    match claims.as_slice() {
        [] => PrimaryChoice::None,
        [(i, _)] => PrimaryChoice::One(*i),
        _ => {
            let key = |a: &HelloView| (a.election_id, a.set_version);
            let best = claims.iter().map(|(_, a)| key(a)).max().unwrap_or((None, None));
            let top: Vec<usize> = claims.iter().filter(|(_, a)| key(a) == best).map(|(i, _)| *i).collect();
            if best == (None, None) || top.len() > 1 {
                PrimaryChoice::Split(claims.iter().map(|(i, _)| *i).collect())
            } else {
                PrimaryChoice::One(top[0])
            }
        }
    }
}

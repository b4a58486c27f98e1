//! The minimal diff between the desired records and the zone: what to create, update and
//! delete, and which records we may not touch.

use std::collections::{BTreeMap, BTreeSet};

use super::desired::Desired;
use super::record::{Record, RecordType, RemoteRecord};

/// Who we are when reading the zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// The exact comment our records carry.
    pub marker: String,
    /// Take over records of managed names that lack the marker.
    pub adopt: bool,
}

/// An in-place update of an existing record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The record as it is.
    pub from: RemoteRecord,
    /// What it must become (the marker comment is written too).
    pub to: Record,
    /// The record did not carry our marker: this update takes it over.
    pub adopt: bool,
}

/// The writes that bring the zone to the desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Records to create.
    pub create: Vec<Record>,
    /// Records to update in place.
    pub update: Vec<Update>,
    /// Our records that are no longer desired (or duplicates of a desired one).
    pub delete: Vec<RemoteRecord>,
    /// Records without our marker in the way of a desired one; left untouched.
    pub skipped_unowned: Vec<RemoteRecord>,
}

impl Plan {
    /// Number of write requests this plan makes.
    pub fn writes(&self) -> usize {
        self.create.len() + self.update.len() + self.delete.len()
    }

    /// True iff nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.writes() == 0
    }
}

/// Computes the minimal diff. Only A/AAAA records of desired names, and our own A/AAAA
/// records anywhere, are considered; held names are never changed; a record without the
/// marker is changed only when `owner.adopt` is set, and a CNAME never.
pub fn plan(desired: &Desired, current: &[RemoteRecord], owner: &Ownership) -> Plan {
    let mut seen_ids = BTreeSet::new();
    let current: Vec<&RemoteRecord> = current.iter().filter(|r| seen_ids.insert(r.id.clone())).collect();
    let mut by_name: BTreeMap<&str, Vec<&RemoteRecord>> = BTreeMap::new();
    for r in &current {
        by_name.entry(r.name.as_str()).or_default().push(r);
    }
    let mut out = Plan::default();
    let mut skipped = BTreeSet::new();
    let want: BTreeSet<(String, RecordType)> = desired.records.iter().map(Record::key).collect();

    for want_rec in &desired.records {
        let at_name = by_name.get(want_rec.name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let same: Vec<&RemoteRecord> =
            at_name.iter().copied().filter(|r| r.managed_kind() == Some(want_rec.kind)).collect();
        let cname: Vec<&RemoteRecord> = at_name.iter().copied().filter(|r| r.kind == "CNAME").collect();
        let (mut owned, unowned): (Vec<&RemoteRecord>, Vec<&RemoteRecord>) =
            same.into_iter().partition(|r| r.owned_by(&owner.marker));
        if !cname.is_empty() {
            // A CNAME excludes every other record at its name: never ours to replace.
            for r in cname.into_iter().chain(unowned).filter(|r| !r.owned_by(&owner.marker)) {
                if skipped.insert(r.id.clone()) {
                    out.skipped_unowned.push(r.clone());
                }
            }
            continue;
        }
        // Prefer a record that already has the right content, so a duplicate goes, not it.
        owned.sort_by_key(|r| !r.matches(want_rec));
        if let Some((keep, extra)) = owned.split_first() {
            if !keep.matches(want_rec) {
                out.update.push(Update { from: (*keep).clone(), to: want_rec.clone(), adopt: false });
            }
            out.delete.extend(extra.iter().map(|r| (*r).clone()));
            for r in unowned {
                if owner.adopt {
                    out.delete.push(r.clone());
                } else if skipped.insert(r.id.clone()) {
                    out.skipped_unowned.push(r.clone());
                }
            }
        } else if !unowned.is_empty() {
            if owner.adopt {
                let mut unowned = unowned;
                unowned.sort_by_key(|r| !r.matches(want_rec));
                if let Some((take, extra)) = unowned.split_first() {
                    out.update.push(Update { from: (*take).clone(), to: want_rec.clone(), adopt: true });
                    out.delete.extend(extra.iter().map(|r| (*r).clone()));
                }
            } else {
                for r in unowned {
                    if skipped.insert(r.id.clone()) {
                        out.skipped_unowned.push(r.clone());
                    }
                }
            }
        } else {
            out.create.push(want_rec.clone());
        }
    }

    // Our own records that nothing desires any more (a node gone past its grace period, a
    // name dropped from the config) go, unless their name is held.
    for r in &current {
        let Some(kind) = r.managed_kind() else { continue };
        if r.owned_by(&owner.marker)
            && !want.contains(&(r.name.clone(), kind))
            && !desired.held.contains(&r.name)
            && !out.delete.iter().any(|d| d.id == r.id)
        {
            out.delete.push((*r).clone());
        }
    }
    out
}

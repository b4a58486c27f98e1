//! Custom SWIM broadcasts piggybacked on foca's messages: state digests ("node N is at
//! version V") and outlier hints ("my breaker for upstream U opened").

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::pull::PullRequest;
use super::state::NodeId;
use super::{unix_ms, Shared};

/// "Node `node` has published state `(incarnation, version)`." Peers holding an older
/// state pull the new one over TCP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Node name.
    pub node: String,
    /// The state's incarnation (owner boot time in ms).
    pub incarnation: u64,
    /// The state's version.
    pub version: u64,
}

/// An outlier hint: `from_node`'s circuit breaker for `upstream_url` of `service` opened.
/// Other nodes may treat the upstream with suspicion until `expires_unix_ms`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hint {
    /// Node that saw the failures.
    pub from_node: String,
    /// Service name.
    pub service: String,
    /// The upstream's URL.
    pub upstream_url: String,
    /// Expiry, in ms since the Unix epoch.
    pub expires_unix_ms: u64,
}

/// A broadcast item as encoded (postcard) inside foca's custom-broadcast section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Item {
    Digest(Digest),
    Hint(Hint),
}

impl Item {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }
}

/// What foca keeps per broadcast to decide which older items a newer one replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemKey {
    Digest { node: String, fresh: (u64, u64) },
    Hint { from: String, service: String, url: String, expires: u64 },
}

impl foca::Invalidates for ItemKey {
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (ItemKey::Digest { node, fresh }, ItemKey::Digest { node: n, fresh: f }) => node == n && fresh > f,
            (
                ItemKey::Hint { from, service, url, expires },
                ItemKey::Hint { from: f, service: s, url: u, expires: e },
            ) => from == f && service == s && url == u && expires > e,
            _ => false,
        }
    }
}

/// A broadcast item that did not decode.
#[derive(Debug, thiserror::Error)]
#[error("undecodable broadcast item: {0}")]
pub(crate) struct BroadcastError(#[from] postcard::Error);

/// foca's `BroadcastHandler`: decides what is news (and so worth relaying), records it
/// and asks the puller for states announced by digests.
pub(crate) struct Handler {
    shared: Arc<Shared>,
    pulls: mpsc::UnboundedSender<PullRequest>,
}

impl Handler {
    pub(crate) fn new(shared: Arc<Shared>, pulls: mpsc::UnboundedSender<PullRequest>) -> Handler {
        Handler { shared, pulls }
    }
}

impl foca::BroadcastHandler<NodeId> for Handler {
    type Key = ItemKey;
    type Error = BroadcastError;

    /// `sender` is `None` for items we add ourselves: those are always disseminated.
    /// Others are relayed only when they are news, or the cluster would flood itself.
    fn receive_item(&mut self, data: &[u8], sender: Option<&NodeId>) -> Result<Option<ItemKey>, BroadcastError> {
        let item: Item = postcard::from_bytes(data)?;
        match item {
            Item::Digest(d) => {
                let fresh = (d.incarnation, d.version);
                let key = ItemKey::Digest { node: d.node.clone(), fresh };
                let Some(sender) = sender else { return Ok(Some(key)) };
                let mut store = self.shared.store();
                if !store.announce(&d.node, fresh) {
                    return Ok(None);
                }
                // Pull from the owner when we know where it is, else from whoever told us
                // (it relays only digests it has seen, and usually holds the state too).
                let addr = store
                    .members
                    .iter()
                    .find(|(id, state)| id.name == d.node && state.is_up())
                    .map_or(sender.cluster, |(id, _)| id.cluster);
                drop(store);
                let _closed = self.pulls.send(PullRequest::Digest { node: d.node, fresh, addr, since: Instant::now() });
                Ok(Some(key))
            }
            Item::Hint(h) => {
                if h.expires_unix_ms <= unix_ms() {
                    return Ok(None);
                }
                let key = ItemKey::Hint {
                    from: h.from_node.clone(),
                    service: h.service.clone(),
                    url: h.upstream_url.clone(),
                    expires: h.expires_unix_ms,
                };
                let mut store = self.shared.store();
                let slot = (h.from_node.clone(), h.service.clone(), h.upstream_url.clone());
                let seen = store.hints.get(&slot).is_some_and(|old| old.expires_unix_ms >= h.expires_unix_ms);
                if seen && sender.is_some() {
                    return Ok(None);
                }
                store.hints.insert(slot, h);
                Ok(Some(key))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use foca::Invalidates;

    use super::*;

    #[test]
    fn newer_items_invalidate_older_ones_of_the_same_subject() {
        let d = |node: &str, v| ItemKey::Digest { node: node.into(), fresh: (1, v) };
        assert!(d("a", 2).invalidates(&d("a", 1)));
        assert!(!d("a", 1).invalidates(&d("a", 2)));
        assert!(!d("b", 2).invalidates(&d("a", 1)));
        let h = |url: &str, e| ItemKey::Hint { from: "a".into(), service: "s".into(), url: url.into(), expires: e };
        assert!(h("u", 2).invalidates(&h("u", 1)));
        assert!(!h("v", 2).invalidates(&h("u", 1)));
        assert!(!h("u", 2).invalidates(&d("a", 1)));
    }
}

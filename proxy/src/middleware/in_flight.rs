//! `inFlightReq`: at most `amount` requests of one source (`sourceCriterion`; Traefik's
//! default is the request's host) are in progress at once; one more is answered 429
//! `max connections reached: <amount>`. A request holds its slot from the request phase
//! until it ends ([`Apply::finish`]), however it ends.

use std::collections::HashMap;
use std::sync::Mutex;

use pingora_proxy::Session;
use serde::Deserialize;
use serde_json::Value;

use super::ip_strategy::{SourceCriterion, SourceCriterionOptions, SourceKey};
use super::{options, Apply, BuildCx, BuildError, MwState, Reply, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    amount: i64,
    #[serde(default, rename = "sourceCriterion")]
    source_criterion: Option<SourceCriterionOptions>,
}

/// A compiled `inFlightReq`.
#[derive(Debug)]
pub struct InFlight {
    amount: u64,
    source: SourceCriterion,
    // One counter per source with requests in progress: a map keyed by source needs a
    // lock (held for one lookup, never across an await); a source's entry goes when its
    // last request ends, so the map holds only sources with requests in progress.
    counts: Mutex<HashMap<SourceKey, u64>>,
    full: Reply,
}

/// The slot a request holds (in its [`MwState`]).
struct Held(SourceKey);

/// Build `inFlightReq`.
pub fn build(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    Ok(Box::new(InFlight::new(config)?))
}

impl InFlight {
    fn new(config: &Value) -> Result<InFlight, BuildError> {
        let o: Options = options("inFlightReq", config)?;
        let amount = u64::try_from(o.amount).ok().filter(|a| *a > 0).ok_or_else(|| {
            BuildError::new("inFlightReq.amount", format!("{} is not a positive number of requests", o.amount))
        })?;
        let source =
            SourceCriterion::build(o.source_criterion.as_ref(), "inFlightReq.sourceCriterion", SourceCriterion::Host)?;
        let full = Reply::text(429, &format!("max connections reached: {amount}"));
        Ok(InFlight { amount, source, counts: Mutex::new(HashMap::new()), full })
    }

    /// Take a slot for `key`; false when the source is at its limit.
    fn acquire(&self, key: &SourceKey) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(key) {
            if *n >= self.amount {
                return false;
            }
            *n += 1;
        } else {
            counts.insert(key.clone(), 1);
        }
        true
    }

    fn release(&self, key: &SourceKey) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(key);
            }
        }
    }
}

#[async_trait::async_trait]
impl Apply for InFlight {
    async fn request(&self, session: &mut Session, state: &mut MwState, index: usize) -> pingora_core::Result<Verdict> {
        let key = self.source.key(session.req_header(), state);
        if !self.acquire(&key) {
            tracing::debug!(source = %key, amount = self.amount, "inFlightReq: limiting request source");
            return Ok(Verdict::Respond(self.full.clone()));
        }
        state.put(index, Held(key));
        Ok(Verdict::Next)
    }

    fn finish(&self, state: &mut MwState, index: usize) {
        if let Some(Held(key)) = state.take::<Held>(index) {
            self.release(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn slots_are_counted_per_source_and_released() {
        let f = InFlight::new(&serde_json::json!({"amount": 2})).unwrap();
        let a = SourceKey::Text("a".into());
        let b = SourceKey::Text("b".into());
        assert!(f.acquire(&a) && f.acquire(&a));
        assert!(!f.acquire(&a));
        assert!(f.acquire(&b));
        f.release(&a);
        assert!(f.acquire(&a));
        f.release(&a);
        f.release(&a);
        f.release(&b);
        assert!(f.counts.lock().unwrap().is_empty());
        assert_eq!(&f.full.body[..], b"max connections reached: 2");
    }

    #[test]
    fn finish_releases_the_held_slot_once() {
        let f = InFlight::new(&serde_json::json!({"amount": 1})).unwrap();
        let key = SourceKey::Text("app".into());
        let mut state = MwState::default();
        assert!(f.acquire(&key));
        state.put(3, Held(key.clone()));
        assert!(!f.acquire(&key));
        f.finish(&mut state, 3);
        // A second finish (or one for a request that never took a slot) frees nothing.
        f.finish(&mut state, 3);
        f.finish(&mut MwState::default(), 3);
        assert!(f.acquire(&key));
        assert!(!f.acquire(&key));
    }

    #[test]
    fn amount_must_be_positive() {
        for bad in [serde_json::json!({}), serde_json::json!({"amount": 0}), serde_json::json!({"amount": -3})] {
            assert_eq!(InFlight::new(&bad).unwrap_err().field, "inFlightReq.amount");
        }
        let e = InFlight::new(
            &serde_json::json!({"amount": 1, "sourceCriterion": {"requestHost": true, "ipStrategy": {}}}),
        )
        .unwrap_err();
        assert_eq!(e.field, "inFlightReq.sourceCriterion");
    }
}

//! Coalesces rapid changes (lb-leader flapping) into one DNS update once the value settles.

use std::time::{Duration, Instant};

/// Passes a value on only after it stayed the same for `settle`, and only when it differs
/// from the last value passed on. Pure: the caller passes the time.
#[derive(Clone, Debug)]
pub struct Debouncer<T> {
    settle: Duration,
    candidate: Option<(T, Instant)>,
    applied: Option<T>,
}

impl<T: Clone + PartialEq> Debouncer<T> {
    /// A debouncer that waits `settle` before passing a change on.
    pub fn new(settle: Duration) -> Debouncer<T> {
        Debouncer { settle, candidate: None, applied: None }
    }

    /// Feeds the current value at `now`; returns `Some(value)` when it should be applied.
    pub fn observe(&mut self, value: T, now: Instant) -> Option<T> {
        match &self.candidate {
            Some((v, _)) if *v == value => {}
            _ => self.candidate = Some((value, now)),
        }
        let (v, since) = self.candidate.as_ref()?;
        let settled = now.saturating_duration_since(*since) >= self.settle;
        if settled && self.applied.as_ref() != Some(v) {
            self.applied = Some(v.clone());
            return Some(v.clone());
        }
        None
    }

    /// When to call [`Debouncer::observe`] again for a pending change to be applied.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.candidate {
            Some((v, since)) if self.applied.as_ref() != Some(v) => Some(*since + self.settle),
            _ => None,
        }
    }

    /// The value last passed on.
    pub fn applied(&self) -> Option<&T> {
        self.applied.as_ref()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn flapping_leader_is_applied_once_it_settles() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut d = Debouncer::new(Duration::from_secs(2));
        assert_eq!(d.observe("a", s(0)), None);
        assert_eq!(d.deadline(), Some(s(2000)));
        assert_eq!(d.observe("a", s(1999)), None);
        assert_eq!(d.observe("a", s(2000)), Some("a"));
        assert_eq!(d.observe("a", s(5000)), None, "unchanged: nothing to apply");
        assert_eq!(d.deadline(), None);
        // Flaps a → b → a → b within the window: only the final b, 2 s after its last change.
        assert_eq!(d.observe("b", s(6000)), None);
        assert_eq!(d.observe("a", s(6500)), None);
        assert_eq!(d.observe("b", s(7000)), None);
        assert_eq!(d.observe("b", s(8999)), None);
        assert_eq!(d.observe("b", s(9000)), Some("b"));
        // A flap back to the applied value that does not settle applies nothing.
        assert_eq!(d.observe("a", s(9500)), None);
        assert_eq!(d.observe("b", s(9600)), None);
        assert_eq!(d.observe("b", s(20000)), None);
        assert_eq!(d.applied(), Some(&"b"));
    }
}

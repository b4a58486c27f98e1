//! The history checker itself, on hand-made histories (no agents).

use std::time::Duration;

use crate::*;

const MS: i128 = 1_000_000;
const EPS: Duration = Duration::from_millis(250);

fn ev(t_ms: i128, node: &str, token: u64, kind: &str) -> Event {
    Event { t_ns: t_ms * MS, node: node.into(), lease: LB.into(), token, kind: kind.into() }
}

#[test]
fn clean_handover_passes_and_reports_the_gap() {
    let events = vec![
        ev(0, "n1", 2, "acquired"),
        ev(600, "n1", 2, "renewed"),
        ev(1_000, "n1", 2, "lost"),
        ev(1_500, "n2", 9, "acquired"),
    ];
    let audit = check_history(&events, &[], 3_000 * MS, EPS, None);
    assert!(audit.violations.is_empty(), "{:?}", audit.violations);
    assert_eq!(audit.acquisitions, 2);
    assert_eq!(audit.min_gap(), Some(500 * MS));
    assert_eq!(audit.min_gap_of(End::Lost), Some(500 * MS));
}

#[test]
fn overlap_and_shrinking_tokens_are_violations() {
    let events = vec![ev(0, "n1", 5, "acquired"), ev(1_000, "n1", 5, "lost"), ev(900, "n2", 4, "acquired")];
    let audit = check_history(&events, &[], 2_000 * MS, EPS, None);
    assert_eq!(audit.violations.len(), 2, "{:#?}", audit.violations);
    assert!(audit.violations.iter().any(|v| v.contains("overlap by 100.0 ms")));
    assert!(audit.violations.iter().any(|v| v.contains("token did not grow")));
}

#[test]
fn a_kill_ends_an_open_interval_and_the_same_node_may_get_its_token_back() {
    let events = vec![
        ev(0, "n1", 2, "acquired"),
        ev(500, "n1", 2, "renewed"),
        // killed at 700, restarted, gets its own token back (never revoked)
        ev(1_200, "n1", 2, "acquired"),
        ev(1_500, "n1", 2, "lost"),
        ev(3_000, "n2", 7, "acquired"),
    ];
    let faults = vec![Fault::Kill { node: "n1".into(), at: 700 * MS, restart: 1_000 * MS }];
    let audit = check_history(&events, &faults, 4_000 * MS, EPS, None);
    assert!(audit.violations.is_empty(), "{:?}", audit.violations);
    assert_eq!(audit.same_token_reacquired, 1);
    let first = &audit.intervals[LB][0];
    assert_eq!((first.end, first.how), (700 * MS, End::Killed));
}

#[test]
fn a_holder_paused_past_its_deadline_counts_until_the_pause_and_must_wake_quickly() {
    // n1 paused 1000..3000; n2 acquires at 2500; n1 records lost 5 ms after SIGCONT.
    let events = vec![ev(0, "n1", 2, "acquired"), ev(3_005, "n1", 2, "lost"), ev(2_500, "n2", 8, "acquired")];
    let faults = vec![Fault::Pause { node: "n1".into(), from: 1_000 * MS, to: 3_000 * MS }];
    let audit = check_history(&events, &faults, 4_000 * MS, EPS, None);
    assert!(audit.violations.is_empty(), "{:?}", audit.violations);
    assert_eq!(audit.stale_after_resume, vec![(LB.to_string(), "n1".to_string(), 5 * MS)]);
    assert_eq!(audit.min_gap(), Some(1_500 * MS));
    // Waking slowly (400 ms > EPS) while n2 holds it is a violation.
    let slow = vec![ev(0, "n1", 2, "acquired"), ev(3_400, "n1", 2, "lost"), ev(2_500, "n2", 8, "acquired")];
    let audit = check_history(&slow, &faults, 4_000 * MS, EPS, None);
    assert!(!audit.violations.is_empty());
}

#[test]
fn the_revoke_after_renewal_signature_is_set_apart_only_when_asked() {
    let events = vec![
        ev(0, "n1", 2, "acquired"),
        ev(1_600, "n1", 2, "lost"),
        ev(1_630, "n1", 2, "acquired"), // its own token back: a renewal...
        ev(1_650, "n2", 9, "acquired"), // ...revoked right after, and granted to n2
        ev(2_300, "n1", 2, "lost"),
    ];
    let strict = check_history(&events, &[], 3_000 * MS, EPS, None);
    assert_eq!(strict.violations.len(), 1, "{:?}", strict.violations);
    let lenient = check_history(&events, &[], 3_000 * MS, EPS, Some(Duration::from_millis(666)));
    assert!(lenient.violations.is_empty(), "{:?}", lenient.violations);
    assert_eq!(lenient.revoke_races, vec![(LB.to_string(), "n1".to_string(), "n2".to_string(), 650 * MS)]);
    // Without the re-acquisition it is a plain violation either way.
    let plain = vec![ev(0, "n1", 2, "acquired"), ev(1_650, "n2", 9, "acquired"), ev(2_300, "n1", 2, "lost")];
    let audit = check_history(&plain, &[], 3_000 * MS, EPS, Some(Duration::from_millis(666)));
    assert_eq!(audit.violations.len(), 1);
}

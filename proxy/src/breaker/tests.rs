//! Tests of the circuit breaker: deterministic scenarios with explicit time, a
//! multithreaded smoke test and property tests.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicUsize;
use std::thread;

use proptest::prelude::*;
use rand::RngExt;

use super::*;

const SEC: Duration = Duration::from_secs(1);

/// Defaults without jitter (deterministic ejection times).
fn cfg() -> BreakerConfig {
    BreakerConfig { jitter: 0.0, ..BreakerConfig::default() }
}

/// Only the consecutive-failure trigger.
fn consecutive_only() -> BreakerConfig {
    BreakerConfig { failure_rate_threshold: 0.0, ..cfg() }
}

/// Only the failure-rate trigger.
fn rate_only() -> BreakerConfig {
    BreakerConfig { consecutive_failures: 0, ..cfg() }
}

fn standalone(cfg: BreakerConfig) -> Breaker {
    Breaker::standalone(Arc::new(cfg))
}

fn run(b: &Breaker, outcome: Outcome, now: Instant) -> Option<Transition> {
    let a = b.admit(now);
    assert_eq!(a, Admission::Allowed, "expected a closed breaker");
    b.record(a, outcome, now)
}

fn fail(b: &Breaker, now: Instant) -> Option<Transition> {
    run(b, Outcome::Failure, now)
}

fn succeed(b: &Breaker, now: Instant) -> Option<Transition> {
    run(b, Outcome::Success, now)
}

/// Trip a closed breaker with consecutive failures at `now`.
fn trip(b: &Breaker, now: Instant) {
    let n = b.config().consecutive_failures;
    for i in 1..=n {
        let t = fail(b, now);
        assert_eq!(t, (i == n).then_some(Transition::Opened), "failure {i}");
    }
}

/// Take a probe at `now` (the ejection must have elapsed).
fn probe(b: &Breaker, now: Instant) -> Admission {
    let a = b.admit(now);
    assert!(a.is_probe(), "expected a probe, got {a:?}");
    a
}

/// Close a breaker whose ejection has elapsed at `now` with successful probes.
fn close(b: &Breaker, now: Instant) {
    let n = b.config().half_open_successes;
    for i in 1..=n {
        let a = probe(b, now);
        let t = b.record(a, Outcome::Success, now);
        assert_eq!(t, (i == n).then_some(Transition::Closed), "probe success {i}");
    }
    assert_eq!(b.state(now), BreakerState::Closed);
}

/// Take a probe when the ejection ends and fail it; returns that time.
fn reopen(b: &Breaker) -> Instant {
    let t = b.open_until().unwrap();
    let a = probe(b, t);
    assert_eq!(b.record(a, Outcome::Failure, t), Some(Transition::Reopened));
    t
}

fn ejection_len(b: &Breaker, now: Instant) -> Duration {
    b.open_until().unwrap().duration_since(now)
}

#[test]
fn is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Breaker>();
    check::<EjectionBudget>();
}

#[test]
fn opens_after_consecutive_failures_and_not_before() {
    let t0 = Instant::now();
    let b = standalone(consecutive_only());
    for _ in 0..4 {
        assert_eq!(fail(&b, t0), None);
    }
    assert_eq!(b.state(t0), BreakerState::Closed);
    assert!(b.is_available(t0));
    assert_eq!(b.open_until(), None);
    assert_eq!(fail(&b, t0), Some(Transition::Opened));
    assert_eq!(b.state(t0), BreakerState::Open);
    assert_eq!(b.ejections(), 1);
    assert_eq!(b.open_until(), Some(t0 + 5 * SEC));
    assert_eq!(b.budget().ejected(), 1);
}

#[test]
fn success_resets_consecutive_count() {
    let t0 = Instant::now();
    let b = standalone(consecutive_only());
    for _ in 0..4 {
        fail(&b, t0);
    }
    assert_eq!(succeed(&b, t0), None);
    assert_eq!(b.stats(t0).consecutive_failures, 0);
    for _ in 0..4 {
        assert_eq!(fail(&b, t0), None);
    }
    assert_eq!(fail(&b, t0), Some(Transition::Opened));
}

#[test]
fn failure_rate_trips_only_with_min_requests() {
    let t0 = Instant::now();
    // 50 % failures, but only 19 requests: no trip.
    let b = standalone(rate_only());
    for i in 0..19 {
        let outcome = if i % 2 == 0 { Outcome::Success } else { Outcome::Failure };
        assert_eq!(run(&b, outcome, t0), None);
    }
    // The 20th request makes 10 failures out of 20: trips.
    assert_eq!(fail(&b, t0), Some(Transition::Opened));

    // Below the threshold: 9 failures out of 25 never trip.
    let b = standalone(rate_only());
    for i in 0..25 {
        let outcome = if i % 3 == 0 { Outcome::Failure } else { Outcome::Success };
        assert_eq!(run(&b, outcome, t0), None);
    }
    assert_eq!(b.state(t0), BreakerState::Closed);
    assert_eq!(b.stats(t0).window_requests, 25);
    assert_eq!(b.stats(t0).window_failures, 9);
}

#[test]
fn window_expiry_forgets_old_failures() {
    let t0 = Instant::now();
    // 19 failures, then one more 8.5 s later: still in the 10 s window.
    let b = standalone(rate_only());
    for _ in 0..19 {
        fail(&b, t0);
    }
    assert_eq!(fail(&b, t0 + Duration::from_millis(8_500)), Some(Transition::Opened));

    // The same, 11 s later: the old failures are gone.
    let b = standalone(rate_only());
    for _ in 0..19 {
        fail(&b, t0);
    }
    let later = t0 + 11 * SEC;
    assert_eq!(fail(&b, later), None);
    assert_eq!(b.stats(later).window_requests, 1);
    assert_eq!(b.state(later), BreakerState::Closed);
}

#[test]
fn open_rejects_then_half_open_admits_one_probe() {
    let t0 = Instant::now();
    let b = standalone(cfg());
    trip(&b, t0);
    let before = t0 + Duration::from_millis(4_999);
    assert_eq!(b.admit(before), Admission::Rejected);
    assert!(!b.is_available(before));
    assert_eq!(b.state(before), BreakerState::Open);

    let t = t0 + 5 * SEC;
    assert_eq!(b.state(t), BreakerState::HalfOpen);
    assert!(b.is_available(t));
    let (a, tr) = b.admit_observed(t);
    assert!(a.is_probe());
    assert_eq!(tr, Some(Transition::HalfOpened));
    assert_eq!(b.probes_in_flight(), 1);
    assert_eq!(b.admit(t), Admission::Rejected);
    assert!(!b.is_available(t));
    assert_eq!(b.open_until(), None);
    // Releasing the probe frees the slot without deciding anything.
    b.release(a);
    assert_eq!(b.probes_in_flight(), 0);
    assert!(b.is_available(t));
    assert_eq!(b.admit_observed(t).1, None, "already half-open");
}

#[test]
fn half_open_admits_only_the_configured_probes() {
    let t0 = Instant::now();
    let b = standalone(BreakerConfig { half_open_probes: 3, ..cfg() });
    trip(&b, t0);
    let t = t0 + 5 * SEC;
    let probes: Vec<_> = (0..3).map(|_| probe(&b, t)).collect();
    assert_eq!(b.admit(t), Admission::Rejected);
    b.release(probes[0]);
    let again = probe(&b, t);
    assert_eq!(b.admit(t), Admission::Rejected);
    assert_eq!(b.probes_in_flight(), 3);
    // Allowed/Rejected releases are no-ops.
    b.release(Admission::Allowed);
    b.release(Admission::Rejected);
    assert_eq!(b.probes_in_flight(), 3);
    b.record(again, Outcome::Success, t);
    assert_eq!(b.probes_in_flight(), 2);
}

#[test]
fn closes_after_half_open_successes() {
    let t0 = Instant::now();
    let b = standalone(cfg());
    trip(&b, t0);
    let t = t0 + 5 * SEC;
    let a = probe(&b, t);
    assert_eq!(b.record(a, Outcome::Success, t), None);
    assert_eq!(b.state(t), BreakerState::HalfOpen);
    let a = probe(&b, t);
    assert_eq!(b.record(a, Outcome::Success, t), Some(Transition::Closed));
    assert_eq!(b.state(t), BreakerState::Closed);
    assert_eq!(b.budget().ejected(), 0);
    assert_eq!(b.ejections(), 1, "the multiplier only decays after a quiet period");
    assert_eq!(b.admit(t), Admission::Allowed);
    // The counters start afresh after closing.
    assert_eq!(b.stats(t).window_requests, 0);
    for _ in 0..4 {
        assert_eq!(fail(&b, t), None);
    }
}

#[test]
fn half_open_failure_reopens_with_growing_capped_ejection() {
    let t0 = Instant::now();
    let b = standalone(cfg());
    trip(&b, t0);
    assert_eq!(ejection_len(&b, t0), 5 * SEC);
    for (n, expected) in [(2, 10), (3, 20), (4, 40), (5, 60), (6, 60), (7, 60)] {
        let t = reopen(&b);
        assert_eq!(b.ejections(), n);
        assert_eq!(ejection_len(&b, t), expected * SEC, "ejection {n}");
        assert_eq!(b.state(t), BreakerState::Open);
    }
    assert_eq!(b.budget().ejected(), 1, "reopening keeps the one slot");
    // The ejection counter saturates instead of wrapping.
    let t = (0..300).map(|_| reopen(&b)).last().unwrap();
    assert_eq!(b.ejections(), EJECTIONS_MAX);
    assert_eq!(ejection_len(&b, t), 60 * SEC);
}

#[test]
fn jitter_stays_within_bounds() {
    let config = Arc::new(BreakerConfig { jitter: 0.1, ..BreakerConfig::default() });
    let t0 = Instant::now();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let b = Breaker::standalone(config.clone());
        trip(&b, t0);
        let d = ejection_len(&b, t0);
        assert!(d >= Duration::from_millis(4_500) && d <= Duration::from_millis(5_500), "{d:?}");
        seen.insert(d);
        // Capped ejections jitter around the cap.
        let t = (0..6).map(|_| reopen(&b)).last().unwrap();
        let d = ejection_len(&b, t);
        assert!(d >= Duration::from_secs(54) && d <= Duration::from_secs(66), "{d:?}");
    }
    assert!(seen.len() > 1, "jitter should vary the ejection time");
}

#[test]
fn multiplier_decays_after_staying_closed() {
    let t0 = Instant::now();
    let b = standalone(cfg());
    trip(&b, t0);
    let t = t0 + 5 * SEC;
    let a = probe(&b, t);
    b.record(a, Outcome::Failure, t); // second ejection: 10 s
    let closed_at = t + 10 * SEC;
    close(&b, closed_at);
    assert_eq!(b.ejections(), 2);

    // Tripping again within max_ejection continues the sequence: 20 s.
    let soon = closed_at + 59 * SEC;
    trip(&b, soon);
    assert_eq!(b.ejections(), 3);
    assert_eq!(ejection_len(&b, soon), 20 * SEC);

    // Closed for max_ejection: an admission resets the multiplier...
    let closed_at = soon + 20 * SEC;
    close(&b, closed_at);
    assert_eq!(b.admit(closed_at + 59 * SEC), Admission::Allowed);
    assert_eq!(b.ejections(), 3);
    assert_eq!(b.admit(closed_at + 60 * SEC), Admission::Allowed);
    assert_eq!(b.ejections(), 0);
    // ... and the next ejection is a first one.
    let later = closed_at + 70 * SEC;
    trip(&b, later);
    assert_eq!(b.ejections(), 1);
    assert_eq!(ejection_len(&b, later), 5 * SEC);
}

#[test]
fn decay_applies_at_trip_without_admissions() {
    let t0 = Instant::now();
    let b = standalone(cfg());
    trip(&b, t0);
    let t = t0 + 5 * SEC;
    let a = probe(&b, t);
    b.record(a, Outcome::Failure, t);
    let closed_at = t + 10 * SEC;
    close(&b, closed_at);
    // Outcomes recorded without admit() (e.g. panic-mode traffic) still trip correctly.
    let later = closed_at + 61 * SEC;
    for _ in 0..5 {
        b.record(Admission::Allowed, Outcome::Failure, later);
    }
    assert_eq!(b.ejections(), 1);
    assert_eq!(ejection_len(&b, later), 5 * SEC);
}

#[test]
fn outcomes_of_stale_admissions_are_ignored() {
    let t0 = Instant::now();
    let b = standalone(cfg());
    trip(&b, t0);
    // Allowed requests finishing while open (in flight at the trip, or panic mode).
    for _ in 0..10 {
        assert_eq!(b.record(Admission::Allowed, Outcome::Failure, t0), None);
        assert_eq!(b.record(Admission::Allowed, Outcome::Success, t0), None);
    }
    assert_eq!(b.record(Admission::Rejected, Outcome::Failure, t0), None);
    assert_eq!(b.state(t0), BreakerState::Open);

    // A probe of an earlier round cannot close or reopen the current one.
    let t = t0 + 5 * SEC;
    let old = probe(&b, t);
    assert_eq!(b.record(old, Outcome::Failure, t), Some(Transition::Reopened));
    let t = b.open_until().unwrap();
    let current = probe(&b, t);
    assert_eq!(b.record(old, Outcome::Success, t), None);
    assert_eq!(b.record(old, Outcome::Failure, t), None);
    b.release(old);
    assert_eq!(b.probes_in_flight(), 1);
    assert_eq!(b.record(current, Outcome::Success, t), None);
    assert_eq!(b.state(t), BreakerState::HalfOpen);
}

#[test]
fn lost_probes_are_reclaimed_after_probe_timeout() {
    let t0 = Instant::now();
    let b = standalone(cfg());
    trip(&b, t0);
    let t = t0 + 5 * SEC;
    let lost = probe(&b, t);
    assert_eq!(b.admit(t + 59 * SEC), Admission::Rejected);
    assert!(!b.is_available(t + 59 * SEC));
    assert!(b.is_available(t + 60 * SEC));
    let (fresh, tr) = b.admit_observed(t + 60 * SEC);
    assert!(fresh.is_probe());
    assert_eq!(tr, None, "still half-open");
    assert_eq!(b.admit(t + 60 * SEC), Admission::Rejected);
    assert_eq!(b.record(lost, Outcome::Failure, t + 61 * SEC), None);
    assert_eq!(b.state(t + 61 * SEC), BreakerState::HalfOpen);
    assert_eq!(b.record(fresh, Outcome::Success, t + 61 * SEC), None);
}

#[test]
fn ejection_budget_caps_and_rounds() {
    for (total, pct, cap) in [
        (0, 50, 0),
        (1, 50, 1),
        (2, 50, 1),
        (3, 50, 1),
        (4, 50, 2),
        (5, 50, 2),
        (10, 50, 5),
        (3, 10, 1),
        (10, 10, 1),
        (20, 10, 2),
        (5, 0, 0),
        (5, 100, 5),
        (7, 200, 7),
    ] {
        assert_eq!(EjectionBudget::new(total, pct).cap(), cap, "{total} upstreams at {pct} %");
    }
    let budget = EjectionBudget::new(4, 50);
    assert!(budget.try_eject());
    assert!(budget.try_eject());
    assert!(!budget.try_eject());
    budget.set_total(2); // cap 1, two already ejected
    budget.release();
    assert!(!budget.try_eject());
    budget.release();
    assert!(budget.try_eject());
    budget.release();
    budget.release(); // never below zero
    assert_eq!(budget.ejected(), 0);
    budget.set_max_percent(0);
    assert!(!budget.try_eject());
    assert_eq!(budget.total(), 2);
}

#[test]
fn ejection_budget_refuses_beyond_cap_and_releases_on_close() {
    let t0 = Instant::now();
    let budget = Arc::new(EjectionBudget::new(4, 50));
    let config = Arc::new(consecutive_only());
    let bs: Vec<_> = (0..3).map(|_| Breaker::new(config.clone(), budget.clone())).collect();
    trip(&bs[0], t0);
    trip(&bs[1], t0);
    assert_eq!(budget.ejected(), 2);
    for _ in 0..4 {
        assert_eq!(fail(&bs[2], t0), None);
    }
    // Refused: stays closed, keeps counting, asks again on every failure.
    assert_eq!(fail(&bs[2], t0), Some(Transition::EjectionRefused));
    assert_eq!(fail(&bs[2], t0), Some(Transition::EjectionRefused));
    assert_eq!(bs[2].state(t0), BreakerState::Closed);
    assert_eq!(bs[2].admit(t0), Admission::Allowed);
    assert_eq!(bs[2].stats(t0).consecutive_failures, 6);
    assert_eq!(budget.ejected(), 2);
    // Closing one breaker frees a slot for the next failure.
    close(&bs[0], t0 + 5 * SEC);
    assert_eq!(budget.ejected(), 1);
    assert_eq!(fail(&bs[2], t0 + 5 * SEC), Some(Transition::Opened));
    assert_eq!(budget.ejected(), 2);
    // Dropping an ejected breaker gives its slot back.
    drop(bs);
    assert_eq!(budget.ejected(), 0);
}

#[test]
fn panic_mode_follows_envoy_threshold() {
    assert!(!panic_mode(5, 10, 50));
    assert!(panic_mode(4, 10, 50));
    assert!(panic_mode(0, 1, 50));
    assert!(!panic_mode(1, 1, 50));
    assert!(!panic_mode(0, 0, 50));
    assert!(!panic_mode(0, 10, 0));
    assert!(panic_mode(9, 10, 100));
    assert!(!panic_mode(10, 10, 100));
    assert!(panic_mode(9, 10, 255));
    assert!(!panic_mode(20, 10, 50));
    assert!(!panic_mode(usize::MAX, usize::MAX, 50));
}

#[test]
fn config_defaults_serde_and_validation() {
    let d = BreakerConfig::default();
    assert_eq!(d.consecutive_failures, DEFAULT_CONSECUTIVE_FAILURES);
    assert_eq!(d.window(), Duration::from_secs(10));
    assert_eq!(d.base_ejection(), Duration::from_secs(5));
    assert_eq!(d.max_ejection(), Duration::from_secs(60));
    assert_eq!(d.validate(), Ok(()));

    let parsed: BreakerConfig = serde_json::from_str(r#"{"consecutive_failures": 3}"#).unwrap();
    assert_eq!(parsed, BreakerConfig { consecutive_failures: 3, ..BreakerConfig::default() });
    assert!(serde_json::from_str::<BreakerConfig>(r#"{"consecutive": 3}"#).is_err());
    let round: BreakerConfig = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(round, d);

    for (bad, key) in [
        (BreakerConfig { failure_rate_threshold: 1.5, ..cfg() }, "failure_rate_threshold"),
        (BreakerConfig { failure_rate_threshold: f64::NAN, ..cfg() }, "failure_rate_threshold"),
        (BreakerConfig { jitter: 1.0, ..cfg() }, "jitter"),
        (BreakerConfig { window_ms: 0, ..cfg() }, "window_ms"),
        (BreakerConfig { max_ejection_ms: 1_000, ..cfg() }, "max_ejection_ms"),
        (BreakerConfig { half_open_probes: 0, ..cfg() }, "half_open_probes"),
        (BreakerConfig { half_open_successes: 70_000, ..cfg() }, "half_open_successes"),
    ] {
        assert_eq!(bad.validate().map_err(|e| e.0), Err(key));
    }

    assert_eq!(serde_json::to_string(&BreakerState::HalfOpen).unwrap(), r#""half_open""#);
    assert_eq!(serde_json::from_str::<BreakerState>(r#""open""#).unwrap(), BreakerState::Open);
    assert_eq!(Transition::Closed.to(), Some(BreakerState::Closed));
    assert_eq!(Transition::EjectionRefused.to(), None);
}

#[test]
fn invalid_config_is_clamped_not_panicking() {
    let t0 = Instant::now();
    let b = standalone(BreakerConfig {
        consecutive_failures: 1,
        failure_rate_threshold: f64::NAN,
        window_ms: 0,
        min_requests: 0,
        base_ejection_ms: 0,
        max_ejection_ms: 0,
        jitter: 7.0,
        half_open_probes: 0,
        half_open_successes: 0,
        probe_timeout_ms: 0,
    });
    assert_eq!(fail(&b, t0), Some(Transition::Opened));
    let t = t0 + SEC;
    let a = probe(&b, t);
    assert_eq!(b.record(a, Outcome::Success, t), Some(Transition::Closed));
}

#[test]
fn window_matches_a_naive_model() {
    // Monotonic samples: the ring must agree exactly with "slots within the last 10".
    let w = Window::new();
    let mut samples: Vec<(u64, bool)> = Vec::new();
    let mut slot = (1u64 << 40) + 3;
    for i in 0..2_000u64 {
        slot += [0, 0, 1, 3, 11][(i * 7 % 5) as usize];
        let failure = i % 3 == 0;
        w.add(slot, failure);
        samples.push((slot, failure));
        // Also look ahead: a query later than the last sample sees only what is still in.
        for ahead in [0, 1, 9, 10, 11] {
            let at = slot + ahead;
            let expect = samples
                .iter()
                .filter(|(s, _)| at - s < WINDOW_BUCKETS as u64)
                .fold((0, 0), |(n, f), (_, fail)| (n + 1, f + u64::from(*fail)));
            assert_eq!(w.sum(at), expect, "at sample {i}, {ahead} slots later");
        }
    }
    // Late samples for a bucket already reused are dropped, not counted in the new slot.
    let before = w.sum(slot);
    w.add(slot - WINDOW_BUCKETS as u64, true);
    assert_eq!(w.sum(slot), before);
    w.clear();
    assert_eq!(w.sum(slot), (0, 0));
}

#[test]
fn window_halves_counts_instead_of_overflowing() {
    let w = Window::new();
    for i in 0..(COUNT_MASK + 10) {
        w.add(5, i % 4 == 0);
    }
    let (n, f) = w.sum(5);
    assert!(n <= COUNT_MASK && n > COUNT_MASK / 2, "{n}");
    let rate = f as f64 / n as f64;
    assert!((rate - 0.25).abs() < 0.01, "{rate}");
}

/// Threads hammer shared breakers with admit/record/release while a virtual clock
/// advances; checks probe limits per probe round, the ejection budget, and that the
/// accounting settles.
#[test]
fn concurrent_smoke() {
    const THREADS: usize = 4;
    const ITERS: usize = 20_000;
    const BREAKERS: usize = 4;
    let config = Arc::new(BreakerConfig {
        consecutive_failures: 3,
        failure_rate_threshold: 0.5,
        window_ms: 100,
        min_requests: 10,
        base_ejection_ms: 1,
        max_ejection_ms: 8,
        jitter: 0.1,
        half_open_probes: 2,
        half_open_successes: 3,
        probe_timeout_ms: 50,
    });
    let budget = Arc::new(EjectionBudget::new(BREAKERS, 50));
    let breakers: Arc<Vec<Breaker>> =
        Arc::new((0..BREAKERS).map(|_| Breaker::new(config.clone(), budget.clone())).collect());
    // Probes we hold, per breaker and probe round (generation).
    let held: Arc<Vec<AtomicU32>> = Arc::new((0..BREAKERS << 20).map(|_| AtomicU32::new(0)).collect());
    let clock_us = Arc::new(AtomicU64::new(0));
    let transitions = Arc::new((0..5).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
    let t0 = Instant::now();

    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (config, breakers, budget) = (config.clone(), breakers.clone(), budget.clone());
            let (held, clock_us, transitions) = (held.clone(), clock_us.clone(), transitions.clone());
            thread::spawn(move || {
                let mut rng = rand::rng();
                let count = |t: Option<Transition>| {
                    if let Some(t) = t {
                        transitions[t as usize].fetch_add(1, Ordering::Relaxed);
                    }
                };
                for _ in 0..ITERS {
                    let now =
                        t0 + Duration::from_micros(clock_us.fetch_add(rng.random_range(0..40), Ordering::Relaxed));
                    let i = rng.random_range(0..BREAKERS);
                    let b = &breakers[i];
                    let (a, tr) = b.admit_observed(now);
                    count(tr);
                    let slot = match a {
                        Admission::Probe(ticket) => {
                            let s = &held[(i << 20) | ticket.generation as usize];
                            let n = s.fetch_add(1, Ordering::AcqRel) + 1;
                            assert!(n <= config.half_open_probes, "{n} probes in one round");
                            Some(s)
                        }
                        _ => None,
                    };
                    if a.is_admitted() {
                        if rng.random_range(0..100) < 3 {
                            thread::yield_now();
                        }
                        if let Some(s) = slot {
                            s.fetch_sub(1, Ordering::AcqRel);
                        }
                        let failing = [70, 40, 10, 10][i];
                        let roll = rng.random_range(0..100);
                        if roll < 5 {
                            b.release(a);
                        } else {
                            let outcome = Outcome::from_failed(roll < failing);
                            let end = t0 + Duration::from_micros(clock_us.load(Ordering::Relaxed));
                            count(b.record(a, outcome, end));
                        }
                    }
                    assert!(budget.ejected() <= budget.cap());
                    assert!(b.probes_in_flight() <= config.half_open_probes);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let now = t0 + Duration::from_micros(clock_us.load(Ordering::Relaxed));
    let ejected = breakers.iter().filter(|b| b.state(now) != BreakerState::Closed).count();
    assert_eq!(budget.ejected() as usize, ejected);
    for b in breakers.iter() {
        assert_eq!(b.probes_in_flight(), 0, "every probe was completed: {b:?}");
        assert!(!Ctl::unpack(b.ctl.load(Ordering::Relaxed)).busy);
        assert!(!Ctl::unpack(b.ctl.load(Ordering::Relaxed)).tripping);
    }
    let seen: Vec<_> = transitions.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert!(seen[Transition::Opened as usize] > 0, "{seen:?}");
    assert!(seen[Transition::HalfOpened as usize] > 0, "{seen:?}");
    assert!(seen[Transition::Reopened as usize] > 0, "{seen:?}");
    assert!(seen[Transition::Closed as usize] > 0, "{seen:?}");
}

/// Many threads failing at once on a breaker that trips on every failure: exactly one
/// opens it, nobody reports a refusal, and only one budget slot is taken.
#[test]
fn concurrent_trip_opens_once_and_takes_one_slot() {
    let t0 = Instant::now();
    let config = Arc::new(BreakerConfig { consecutive_failures: 1, ..cfg() });
    for _ in 0..300 {
        let budget = Arc::new(EjectionBudget::new(2, 50)); // cap 1
        let b = Arc::new(Breaker::new(config.clone(), budget.clone()));
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (b, barrier) = (b.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    (0..20).map(|_| b.record(Admission::Allowed, Outcome::Failure, t0)).collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).flatten().collect();
        assert_eq!(all, vec![Transition::Opened]);
        assert_eq!(budget.ejected(), 1);
        assert_eq!(b.state(t0), BreakerState::Open);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Admit,
    Record {
        which: usize,
        fail: bool,
    },
    Release {
        which: usize,
    },
    /// An outcome without admission (panic-mode traffic).
    Unadmitted {
        fail: bool,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Admit),
        4 => (any::<usize>(), prop::bool::weighted(0.5)).prop_map(|(which, fail)| Op::Record { which, fail }),
        1 => any::<usize>().prop_map(|which| Op::Release { which }),
        1 => any::<bool>().prop_map(|fail| Op::Unadmitted { fail }),
        3 => (0u64..4_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_random_histories(ops in prop::collection::vec(op(), 1..300)) {
        let config = BreakerConfig {
            consecutive_failures: 3,
            failure_rate_threshold: 0.5,
            window_ms: 2_000,
            min_requests: 4,
            base_ejection_ms: 1_000,
            max_ejection_ms: 8_000,
            jitter: 0.25,
            half_open_probes: 2,
            half_open_successes: 2,
            probe_timeout_ms: 5_000,
        };
        let limit = config.half_open_probes;
        let max_open = Duration::from_millis(10_000); // 8 s × 1.25
        let b = standalone(config);
        let t0 = Instant::now();
        let mut now = t0;
        let mut held: Vec<Admission> = Vec::new();
        for op in ops {
            let before = Ctl::unpack(b.ctl.load(Ordering::Relaxed));
            let transition = match op {
                Op::Admit => {
                    let (a, t) = b.admit_observed(now);
                    match (before.state, a) {
                        (ST_CLOSED, Admission::Allowed) => prop_assert_eq!(t, None),
                        (ST_OPEN | ST_HALF_OPEN, Admission::Probe(_) | Admission::Rejected) => {}
                        other => prop_assert!(false, "admission {:?} in state {}", other.1, other.0),
                    }
                    if a.is_admitted() {
                        held.push(a);
                    }
                    t
                }
                Op::Record { which, fail } if !held.is_empty() => {
                    let a = held.swap_remove(which % held.len());
                    b.record(a, Outcome::from_failed(fail), now)
                }
                Op::Release { which } if !held.is_empty() => {
                    b.release(held.swap_remove(which % held.len()));
                    None
                }
                Op::Unadmitted { fail } => b.record(Admission::Allowed, Outcome::from_failed(fail), now),
                Op::Advance { ms } => {
                    now += Duration::from_millis(ms);
                    None
                }
                _ => None,
            };
            let c = Ctl::unpack(b.ctl.load(Ordering::Relaxed));
            prop_assert!(!c.busy && !c.tripping);
            // Transitions are reported exactly when the state changes as they say.
            let expected = match (before.state, c.state) {
                (ST_CLOSED, ST_OPEN) => Some(Transition::Opened),
                (ST_OPEN, ST_HALF_OPEN) => Some(Transition::HalfOpened),
                (ST_HALF_OPEN, ST_CLOSED) => Some(Transition::Closed),
                (ST_HALF_OPEN, ST_OPEN) => Some(Transition::Reopened),
                (x, y) if x == y => None,
                (x, y) => { prop_assert!(false, "impossible change {} -> {}", x, y); None }
            };
            if transition != Some(Transition::EjectionRefused) {
                prop_assert_eq!(transition, expected);
            }
            // Probe accounting: the breaker counts exactly the probes of this round we hold.
            let ours = held
                .iter()
                .filter(|a| matches!(a, Admission::Probe(t) if t.generation == c.generation))
                .count() as u32;
            if c.state == ST_HALF_OPEN {
                prop_assert_eq!(c.probes, ours);
            } else {
                prop_assert_eq!(c.probes, 0);
            }
            prop_assert!(b.probes_in_flight() <= limit);
            // State, deadline and budget agree.
            let state = b.state(now);
            match c.state {
                ST_CLOSED => {
                    prop_assert_eq!(state, BreakerState::Closed);
                    prop_assert_eq!(b.open_until(), None);
                    prop_assert_eq!(b.budget().ejected(), 0);
                    prop_assert!(b.is_available(now));
                }
                ST_OPEN => {
                    let until = b.open_until();
                    prop_assert!(until.is_some());
                    let until = until.unwrap_or(now);
                    prop_assert!(until <= now + max_open, "open until {:?} after now", until - now);
                    prop_assert_eq!(state == BreakerState::Open, now < until);
                    prop_assert_eq!(b.is_available(now), now >= until);
                    prop_assert_eq!(b.budget().ejected(), 1);
                    prop_assert!(b.ejections() >= 1);
                }
                _ => {
                    prop_assert_eq!(state, BreakerState::HalfOpen);
                    prop_assert_eq!(b.open_until(), None);
                    prop_assert_eq!(b.budget().ejected(), 1);
                    prop_assert!(c.successes < 2);
                }
            }
            if transition == Some(Transition::Opened) || transition == Some(Transition::Reopened) {
                let len = b.open_until().map(|u| u - now);
                let n = b.ejections();
                let nominal = Duration::from_millis((1_000u64 << (n - 1).min(10)).min(8_000));
                prop_assert!(len.is_some());
                let len = len.unwrap_or_default();
                let (low, high) = (nominal.mul_f64(0.75), nominal.mul_f64(1.25));
                prop_assert!(len >= low && len <= high, "{:?} for ejection {}", len, n);
            }
        }
    }
}

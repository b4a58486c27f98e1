//! Per-upstream circuit breaker (Envoy-style outlier detection plus a classic breaker).
//!
//! # State machine
//!
//! ```text
//!            consecutive failures ≥ N, or failure rate ≥ R over the window
//!            (with ≥ min_requests), and the service's EjectionBudget grants a slot
//!   Closed ───────────────────────────────────────────────────────────────▶ Open
//!     ▲                                                                     │
//!     │ half_open_successes probe successes                                 │ ejection time elapsed,
//!     │ (releases the budget slot)                                          │ next admit() takes a probe
//!     │                                  one probe failure                  ▼
//!     └──────────────────────────── HalfOpen ─────────────────────────▶ Open (longer ejection)
//! ```
//!
//! The ejection time is `base_ejection × 2^(n-1)` for the `n`-th consecutive ejection,
//! capped at `max_ejection`, then multiplied by a random factor in `[1 - jitter, 1 + jitter]`.
//! `n` goes back to zero once the breaker has stayed closed for `max_ejection`.
//!
//! # Concurrency
//!
//! Everything is atomics. The state, probe slots, half-open successes, ejection count and
//! a generation number live in one `AtomicU64` changed by compare-and-swap, so every
//! transition has exactly one winner. A winner that must also publish a timestamp
//! (ejection deadline, start of the phase) marks the word *busy*, writes the timestamp and
//! then stores the final word with `Release`; while busy (a few instructions), `admit`
//! rejects and `record` ignores outcomes. The failure-rate window is a ring of
//! [`WINDOW_BUCKETS`] single-word buckets, also updated by CAS.
//!
//! # Time
//!
//! Every decision takes `now: Instant` from the caller; nothing in here reads the clock
//! (construction captures one `Instant` as a reference point only, and any `Instant`,
//! earlier or later, is handled exactly). Tests drive time explicitly.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// Default consecutive failures that open a breaker.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default failure rate (0.0–1.0) over the window that opens a breaker.
pub const DEFAULT_FAILURE_RATE_THRESHOLD: f64 = 0.5;
/// Default length of the failure-rate window (ms).
pub const DEFAULT_WINDOW_MS: u64 = 10_000;
/// Default minimum requests in the window before the failure rate is considered.
pub const DEFAULT_MIN_REQUESTS: u32 = 20;
/// Default open time of a first ejection (ms).
pub const DEFAULT_BASE_EJECTION_MS: u64 = 5_000;
/// Default cap on the open time of repeated ejections (ms); also the decay period.
pub const DEFAULT_MAX_EJECTION_MS: u64 = 60_000;
/// Default relative jitter of the open time (0.1 = ±10 %).
pub const DEFAULT_JITTER: f64 = 0.1;
/// Default concurrent probe requests admitted while half-open.
pub const DEFAULT_HALF_OPEN_PROBES: u32 = 1;
/// Default probe successes needed to close a half-open breaker.
pub const DEFAULT_HALF_OPEN_SUCCESSES: u32 = 2;
/// Default time after which a half-open breaker whose probe slots are all still taken
/// presumes the probes lost and starts a new probe round (ms).
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 60_000;
/// Number of buckets in the failure-rate ring (each covers `window / WINDOW_BUCKETS`).
pub const WINDOW_BUCKETS: usize = 10;
/// Largest accepted `half_open_probes` and `half_open_successes` (16-bit fields).
pub const MAX_HALF_OPEN_COUNT: u32 = 0xFFFF;

/// Settings of the per-upstream circuit breakers. Every field has a default, so any
/// subset may be given in configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive gateway failures (connect errors, timeouts, 502/503/504 — the caller
    /// decides) that open the breaker. `0` disables this trigger. Default 5.
    pub consecutive_failures: u32,
    /// Failure share (0.0–1.0) over the sliding window that opens the breaker, once the
    /// window holds at least `min_requests` requests. `0.0` disables this trigger.
    /// Default 0.5.
    pub failure_rate_threshold: f64,
    /// Length of the sliding failure-rate window, in milliseconds (kept as a ring of
    /// [`WINDOW_BUCKETS`] buckets, so the effective window is 90–100 % of it).
    /// Default 10000.
    pub window_ms: u64,
    /// Requests the window must hold before the failure rate can open the breaker.
    /// Default 20.
    pub min_requests: u32,
    /// Open time of a first ejection, in milliseconds; the `n`-th consecutive ejection
    /// lasts `base × 2^(n-1)`, capped at `max_ejection_ms`. Default 5000.
    pub base_ejection_ms: u64,
    /// Cap on the open time, in milliseconds. It is also the decay period: after the
    /// breaker has stayed closed this long, the next ejection is a first one again.
    /// Default 60000.
    pub max_ejection_ms: u64,
    /// Random relative jitter applied to every open time (0.1 = ±10 %), in `[0, 1)`.
    /// Default 0.1.
    pub jitter: f64,
    /// Concurrent probe requests admitted while half-open. Default 1.
    pub half_open_probes: u32,
    /// Probe successes needed to close a half-open breaker; one probe failure reopens
    /// it with the next, longer ejection. Default 2.
    pub half_open_successes: u32,
    /// When every probe slot of a half-open breaker has been taken for this long (in
    /// milliseconds, counted from the start of the probe round), the probes are presumed
    /// lost — never recorded nor released — and a new round starts, so a leaked probe
    /// cannot eject an upstream for ever. Should exceed the request timeout. Default 60000.
    pub probe_timeout_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            failure_rate_threshold: DEFAULT_FAILURE_RATE_THRESHOLD,
            window_ms: DEFAULT_WINDOW_MS,
            min_requests: DEFAULT_MIN_REQUESTS,
            base_ejection_ms: DEFAULT_BASE_EJECTION_MS,
            max_ejection_ms: DEFAULT_MAX_EJECTION_MS,
            jitter: DEFAULT_JITTER,
            half_open_probes: DEFAULT_HALF_OPEN_PROBES,
            half_open_successes: DEFAULT_HALF_OPEN_SUCCESSES,
            probe_timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
        }
    }
}

impl BreakerConfig {
    /// Check ranges; returns `(key, message)` for the first bad value. A [`Breaker`]
    /// built from an invalid config still works (values are clamped), but configuration
    /// loading should reject it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let rate = self.failure_rate_threshold;
        if !(0.0..=1.0).contains(&rate) {
            return Err(("failure_rate_threshold", format!("{rate} is not a share between 0.0 and 1.0")));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(("jitter", format!("{} is not in [0.0, 1.0)", self.jitter)));
        }
        for (key, v) in [
            ("window_ms", self.window_ms),
            ("base_ejection_ms", self.base_ejection_ms),
            ("probe_timeout_ms", self.probe_timeout_ms),
        ] {
            if v == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        if self.max_ejection_ms < self.base_ejection_ms {
            return Err((
                "max_ejection_ms",
                format!("{} is less than base_ejection_ms ({})", self.max_ejection_ms, self.base_ejection_ms),
            ));
        }
        for (key, v) in [("half_open_probes", self.half_open_probes), ("half_open_successes", self.half_open_successes)]
        {
            if v == 0 || v > MAX_HALF_OPEN_COUNT {
                return Err((key, format!("{v} is not in 1..={MAX_HALF_OPEN_COUNT}")));
            }
        }
        Ok(())
    }

    /// The failure-rate window.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// Open time of a first ejection.
    pub fn base_ejection(&self) -> Duration {
        Duration::from_millis(self.base_ejection_ms)
    }

    /// Cap on the open time (and decay period).
    pub fn max_ejection(&self) -> Duration {
        Duration::from_millis(self.max_ejection_ms)
    }
}

/// Breaker state as seen by the load balancer and status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Requests flow; outcomes are counted.
    Closed,
    /// Ejected: requests are rejected until the ejection time has elapsed.
    Open,
    /// Trial: a limited number of probe requests decide whether to close or reopen.
    /// Also reported for an open breaker whose ejection time has elapsed (the next
    /// admission will be a probe).
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name (`closed`, `open`, `half_open`), as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Opaque token of a half-open probe admission; it ties the probe's outcome to the
/// probe round that admitted it, so late outcomes of an earlier round are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeTicket {
    generation: u32,
}

/// The breaker's answer to "may I send a request to this upstream?".
///
/// `Allowed` and `Probe` must be completed with [`Breaker::record`] (or, for a request
/// abandoned without an outcome, [`Breaker::release`]) exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use = "an admitted request must be completed with Breaker::record or Breaker::release"]
pub enum Admission {
    /// Closed: send the request.
    Allowed,
    /// Half-open: send the request as one of the limited probes. Until it is recorded or
    /// released it holds a probe slot.
    Probe(ProbeTicket),
    /// Open, or half-open with every probe slot taken: pick another upstream.
    Rejected,
}

impl Admission {
    /// Whether the request may be sent (`Allowed` or `Probe`).
    pub fn is_admitted(self) -> bool {
        !matches!(self, Admission::Rejected)
    }

    /// Whether this is a half-open probe.
    pub fn is_probe(self) -> bool {
        matches!(self, Admission::Probe(_))
    }
}

/// Result of one request as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The upstream answered (any status the caller does not count as a gateway failure).
    Success,
    /// Gateway failure: connect error, timeout, reset, 502/503/504, as the caller decides.
    Failure,
}

impl Outcome {
    /// `Failure` if `failed`, else `Success`.
    pub fn from_failed(failed: bool) -> Self {
        if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// A state change made by one call, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// Closed → Open: a trip condition was met and the ejection budget granted a slot.
    Opened,
    /// Open → HalfOpen: the ejection time elapsed and a probe was admitted.
    HalfOpened,
    /// HalfOpen → Closed: enough probes succeeded; the budget slot was released.
    Closed,
    /// HalfOpen → Open: a probe failed; the ejection is longer than the previous one.
    Reopened,
    /// A trip condition was met but the service's [`EjectionBudget`] is exhausted, so
    /// the breaker stays closed (and keeps counting: the next failure asks again).
    EjectionRefused,
}

impl Transition {
    /// The state entered, or `None` for [`Transition::EjectionRefused`].
    pub fn to(self) -> Option<BreakerState> {
        match self {
            Transition::Opened | Transition::Reopened => Some(BreakerState::Open),
            Transition::HalfOpened => Some(BreakerState::HalfOpen),
            Transition::Closed => Some(BreakerState::Closed),
            Transition::EjectionRefused => None,
        }
    }

    /// Snake-case name, e.g. `half_opened`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Opened => "opened",
            Transition::HalfOpened => "half_opened",
            Transition::Closed => "closed",
            Transition::Reopened => "reopened",
            Transition::EjectionRefused => "ejection_refused",
        }
    }
}

/// Whether a load balancer should ignore breakers (and health) and spread over every
/// upstream: true when fewer than `panic_threshold_percent` % of `total` upstreams are
/// `available`, as in Envoy's panic threshold (whose default, 50 %, is also ours:
/// `settings::DEFAULT_PANIC_THRESHOLD_PERCENT`).
///
/// A threshold of 0 disables panic mode; values above 100 count as 100 (panic as soon as
/// one upstream is unavailable). An empty set is never in panic (there is nothing to
/// spread over).
pub fn panic_mode(available: usize, total: usize, panic_threshold_percent: u8) -> bool {
    if total == 0 || panic_threshold_percent == 0 {
        return false;
    }
    let threshold = u128::from(panic_threshold_percent.min(100));
    (available.min(total) as u128) * 100 < threshold * total as u128
}

// ---------------------------------------------------------------------------------------
// Ejection budget
// ---------------------------------------------------------------------------------------

/// Cap on how many upstreams of one service may be ejected (open or half-open) at once,
/// shared by the service's breakers.
///
/// The cap is `floor(total × max_percent / 100)`, but at least 1 when `total ≥ 1` and
/// `max_percent > 0`: like Envoy, the first ejection of a service is always allowed (so a
/// small service, even a single upstream, can fail fast; the load balancer's panic mode
/// then decides whether to use ejected upstreams anyway). `max_percent = 0` disables
/// ejection altogether. With the default 50 % (`settings::DEFAULT_MAX_EJECTION_PERCENT`):
/// 1 → 1, 2 → 1, 3 → 1, 4 → 2, 5 → 2, 10 → 5.
///
/// Shrinking `total` below the number already ejected ejects nobody back: new ejections
/// are refused until closes bring the count under the cap.
#[derive(Debug)]
pub struct EjectionBudget {
    ejected: AtomicU32,
    total: AtomicU32,
    max_percent: AtomicU8,
}

impl EjectionBudget {
    /// A budget for a service with `total` upstreams, of which at most `max_percent` %
    /// (at least one, see the type docs) may be ejected.
    pub fn new(total: usize, max_percent: u8) -> Self {
        Self {
            ejected: AtomicU32::new(0),
            total: AtomicU32::new(clamp_u32(total)),
            max_percent: AtomicU8::new(max_percent.min(100)),
        }
    }

    /// A budget that never refuses, for a breaker that stands alone.
    pub fn unlimited() -> Self {
        Self::new(u32::MAX as usize, 100)
    }

    /// Number of upstreams that may be ejected at once now.
    pub fn cap(&self) -> u32 {
        ejection_cap(self.total.load(Ordering::Relaxed), self.max_percent.load(Ordering::Relaxed))
    }

    /// Take an ejection slot if the cap allows (CAS loop). A breaker calls it before
    /// opening; returns `false` when the service already has `cap()` upstreams ejected.
    pub fn try_eject(&self) -> bool {
        let cap = self.cap();
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| if n < cap { Some(n + 1) } else { None })
            .is_ok()
    }

    /// Give back a slot taken by [`EjectionBudget::try_eject`] (a breaker calls it when it
    /// closes or is dropped while ejected). Never goes below zero.
    pub fn release(&self) {
        let _ = self.ejected.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Upstreams currently ejected.
    pub fn ejected(&self) -> u32 {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Upstreams the service has.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed) as usize
    }

    /// Update the service's upstream count (the route table was swapped).
    pub fn set_total(&self, total: usize) {
        self.total.store(clamp_u32(total), Ordering::Relaxed);
    }

    /// The configured share, in percent.
    pub fn max_percent(&self) -> u8 {
        self.max_percent.load(Ordering::Relaxed)
    }

    /// Update the share (values above 100 count as 100).
    pub fn set_max_percent(&self, max_percent: u8) {
        self.max_percent.store(max_percent.min(100), Ordering::Relaxed);
    }
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn ejection_cap(total: u32, max_percent: u8) -> u32 {
    if total == 0 || max_percent == 0 {
        return 0;
    }
    let floor = u64::from(total) * u64::from(max_percent.min(100)) / 100;
    (floor as u32).max(1)
}

// ---------------------------------------------------------------------------------------
// Control word
// ---------------------------------------------------------------------------------------

const ST_CLOSED: u64 = 0;
const ST_OPEN: u64 = 1;
const ST_HALF_OPEN: u64 = 2;

const STATE_MASK: u64 = 0b11;
const BUSY_BIT: u64 = 1 << 2;
const TRIP_BIT: u64 = 1 << 3;
const PROBES_SHIFT: u32 = 4;
const SUCCESSES_SHIFT: u32 = 20;
const EJECTIONS_SHIFT: u32 = 36;
const GEN_SHIFT: u32 = 44;
const FIELD16: u64 = 0xFFFF;
const EJECTIONS_MAX: u32 = 0xFF;
const GEN_MASK: u32 = (1 << 20) - 1;

/// Decoded control word. `busy`: a transition winner is publishing timestamps; `state`
/// is already the target. `tripping`: (closed only) one thread is asking the budget for
/// a slot, others do not ask too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ctl {
    state: u64,
    busy: bool,
    tripping: bool,
    probes: u32,
    successes: u32,
    ejections: u32,
    generation: u32,
}

impl Ctl {
    fn unpack(w: u64) -> Self {
        Self {
            state: w & STATE_MASK,
            busy: w & BUSY_BIT != 0,
            tripping: w & TRIP_BIT != 0,
            probes: ((w >> PROBES_SHIFT) & FIELD16) as u32,
            successes: ((w >> SUCCESSES_SHIFT) & FIELD16) as u32,
            ejections: ((w >> EJECTIONS_SHIFT) & u64::from(EJECTIONS_MAX)) as u32,
            generation: ((w >> GEN_SHIFT) & u64::from(GEN_MASK)) as u32,
        }
    }

    fn pack(self) -> u64 {
        (self.state & STATE_MASK)
            | if self.busy { BUSY_BIT } else { 0 }
            | if self.tripping { TRIP_BIT } else { 0 }
            | ((u64::from(self.probes) & FIELD16) << PROBES_SHIFT)
            | ((u64::from(self.successes) & FIELD16) << SUCCESSES_SHIFT)
            | ((u64::from(self.ejections.min(EJECTIONS_MAX))) << EJECTIONS_SHIFT)
            | ((u64::from(self.generation & GEN_MASK)) << GEN_SHIFT)
    }

    /// A fresh word for entering `state` (new generation, empty counters), busy.
    fn enter(self, state: u64, ejections: u32) -> Self {
        Ctl {
            state,
            busy: true,
            tripping: false,
            probes: 0,
            successes: 0,
            ejections: ejections.min(EJECTIONS_MAX),
            generation: self.generation.wrapping_add(1) & GEN_MASK,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Failure-rate window
// ---------------------------------------------------------------------------------------

const TAG_BITS: u32 = 28;
const COUNT_BITS: u32 = 18;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const COUNTS_MASK: u64 = (1 << (2 * COUNT_BITS)) - 1;
const TAG_SHIFT: u32 = 2 * COUNT_BITS;

/// Ring of buckets; each is one word `tag:28 | requests:18 | failures:18` where the tag
/// is the bucket's slot number (`time / bucket width`) modulo 2^28. A bucket whose tag is
/// not one of the last [`WINDOW_BUCKETS`] slots is stale and counts as empty. Counts that
/// would overflow are halved together (the rate is what matters).
struct Window {
    buckets: [AtomicU64; WINDOW_BUCKETS],
}

impl Window {
    fn new() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)) }
    }

    fn add(&self, slot: u64, failure: bool) {
        let tag = slot & TAG_MASK;
        let bucket = &self.buckets[(slot % WINDOW_BUCKETS as u64) as usize];
        let mut cur = bucket.load(Ordering::Relaxed);
        loop {
            let (mut total, mut failures) = if cur & COUNTS_MASK == 0 {
                (0, 0)
            } else if cur >> TAG_SHIFT == tag {
                ((cur >> COUNT_BITS) & COUNT_MASK, cur & COUNT_MASK)
            } else if tag.wrapping_sub(cur >> TAG_SHIFT) & TAG_MASK < (1 << (TAG_BITS - 1)) {
                (0, 0) // the bucket holds an older slot: recycle it
            } else {
                return; // a newer slot already took the bucket: this sample is out of the window
            };
            if total == COUNT_MASK {
                total >>= 1;
                failures >>= 1;
            }
            total += 1;
            failures += u64::from(failure);
            let next = (tag << TAG_SHIFT) | (total << COUNT_BITS) | failures;
            match bucket.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// `(requests, failures)` of the slots `slot - WINDOW_BUCKETS + 1 ..= slot`.
    fn sum(&self, slot: u64) -> (u64, u64) {
        let tag = slot & TAG_MASK;
        let mut total = 0;
        let mut failures = 0;
        for bucket in &self.buckets {
            let w = bucket.load(Ordering::Relaxed);
            if w & COUNTS_MASK == 0 {
                continue;
            }
            let age = tag.wrapping_sub(w >> TAG_SHIFT) & TAG_MASK;
            if age < WINDOW_BUCKETS as u64 {
                total += (w >> COUNT_BITS) & COUNT_MASK;
                failures += w & COUNT_MASK;
            }
        }
        (total, failures)
    }

    fn clear(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Breaker
// ---------------------------------------------------------------------------------------

/// Internal times are nanoseconds from the breaker's reference instant, shifted by this
/// so that instants before the reference point are representable too (±146 years).
const TIME_OFFSET: u64 = 1 << 62;

/// Config converted to the units and ranges the hot path uses.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    consecutive: u64,
    rate: f64,
    min_requests: u64,
    bucket_ns: u64,
    base_ns: u64,
    max_ns: u64,
    jitter: f64,
    probes: u32,
    successes: u32,
    probe_timeout_ns: u64,
}

impl Tuning {
    fn from_config(cfg: &BreakerConfig) -> Self {
        let ns = |ms: u64| ms.saturating_mul(1_000_000);
        let base_ns = ns(cfg.base_ejection_ms).max(1);
        let rate = cfg.failure_rate_threshold;
        let jitter = cfg.jitter;
        Self {
            consecutive: u64::from(cfg.consecutive_failures),
            rate: if rate.is_finite() { rate.clamp(0.0, 1.0) } else { 0.0 },
            min_requests: u64::from(cfg.min_requests.max(1)),
            bucket_ns: (ns(cfg.window_ms) / WINDOW_BUCKETS as u64).max(1),
            base_ns,
            max_ns: ns(cfg.max_ejection_ms).max(base_ns),
            jitter: if jitter.is_finite() { jitter.clamp(0.0, 0.99) } else { 0.0 },
            probes: cfg.half_open_probes.clamp(1, MAX_HALF_OPEN_COUNT),
            successes: cfg.half_open_successes.clamp(1, MAX_HALF_OPEN_COUNT),
            probe_timeout_ns: ns(cfg.probe_timeout_ms).max(1),
        }
    }
}

/// Counters of a breaker for status pages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BreakerStats {
    /// State now.
    pub state: BreakerState,
    /// Consecutive ejections (the backoff exponent).
    pub ejections: u32,
    /// Time left until the ejection ends (open only).
    pub open_for: Option<Duration>,
    /// Consecutive failures counted while closed.
    pub consecutive_failures: u64,
    /// Requests in the failure-rate window.
    pub window_requests: u64,
    /// Failures in the failure-rate window.
    pub window_failures: u64,
    /// Probes admitted and not yet completed in the current half-open round.
    pub probes_in_flight: u32,
}

/// Circuit breaker of one upstream. Lock-free; share it through `Arc` (it is `Send` and
/// `Sync`). See the [module docs](self) for the state machine.
pub struct Breaker {
    cfg: Arc<BreakerConfig>,
    tuning: Tuning,
    budget: Arc<EjectionBudget>,
    /// Reference point of the internal nanosecond clock.
    epoch: Instant,
    /// Packed [`Ctl`].
    ctl: AtomicU64,
    /// End of the ejection; meaningful while open.
    open_until: AtomicU64,
    /// When the current phase began (closed: when it closed; half-open: start of the
    /// probe round). Written while busy.
    since: AtomicU64,
    /// Consecutive failures while closed.
    consecutive: AtomicU64,
    window: Window,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = Ctl::unpack(self.ctl.load(Ordering::Relaxed));
        f.debug_struct("Breaker")
            .field("state", &c.state)
            .field("busy", &c.busy)
            .field("probes", &c.probes)
            .field("successes", &c.successes)
            .field("ejections", &c.ejections)
            .field("generation", &c.generation)
            .field("consecutive", &self.consecutive.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker with `cfg`, drawing ejection slots from the service's `budget`.
    pub fn new(cfg: Arc<BreakerConfig>, budget: Arc<EjectionBudget>) -> Self {
        let tuning = Tuning::from_config(&cfg);
        Self {
            cfg,
            tuning,
            budget,
            epoch: Instant::now(),
            ctl: AtomicU64::new(0),
            open_until: AtomicU64::new(TIME_OFFSET),
            since: AtomicU64::new(TIME_OFFSET),
            consecutive: AtomicU64::new(0),
            window: Window::new(),
        }
    }

    /// A breaker with its own unlimited ejection budget.
    pub fn standalone(cfg: Arc<BreakerConfig>) -> Self {
        Self::new(cfg, Arc::new(EjectionBudget::unlimited()))
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// The ejection budget it draws from.
    pub fn budget(&self) -> &Arc<EjectionBudget> {
        &self.budget
    }

    /// Ask to send a request at `now`. Closed: `Allowed`. Open: `Rejected` until the
    /// ejection time has elapsed; then the breaker turns half-open and admits up to
    /// `half_open_probes` concurrent `Probe`s, rejecting the rest.
    pub fn admit(&self, now: Instant) -> Admission {
        self.admit_observed(now).0
    }

    /// [`Breaker::admit`], also reporting [`Transition::HalfOpened`] when this call
    /// turned the breaker half-open.
    pub fn admit_observed(&self, now: Instant) -> (Admission, Option<Transition>) {
        let t = self.nanos(now);
        let mut raw = self.ctl.load(Ordering::Acquire);
        loop {
            let c = Ctl::unpack(raw);
            if c.busy {
                return (Admission::Rejected, None);
            }
            let next = match c.state {
                ST_CLOSED => {
                    if c.ejections > 0 {
                        self.decay(raw, c, t);
                    }
                    return (Admission::Allowed, None);
                }
                ST_OPEN => {
                    if t < self.open_until.load(Ordering::Relaxed) {
                        return (Admission::Rejected, None);
                    }
                    Ctl { probes: 1, ..c.enter(ST_HALF_OPEN, c.ejections) }
                }
                _ => {
                    if c.probes < self.tuning.probes {
                        Ctl { probes: c.probes + 1, ..c }
                    } else if t.saturating_sub(self.since.load(Ordering::Relaxed)) >= self.tuning.probe_timeout_ns {
                        // Every slot has been taken for a whole probe timeout: presume the
                        // probes lost and start a new round (keeping the successes so far).
                        Ctl { probes: 1, successes: c.successes, ..c.enter(ST_HALF_OPEN, c.ejections) }
                    } else {
                        return (Admission::Rejected, None);
                    }
                }
            };
            match self.ctl.compare_exchange_weak(raw, next.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let ticket = ProbeTicket { generation: next.generation };
                    if !next.busy {
                        return (Admission::Probe(ticket), None);
                    }
                    self.publish(next, |b| b.since.store(t, Ordering::Relaxed));
                    let transition = (c.state == ST_OPEN).then_some(Transition::HalfOpened);
                    return (Admission::Probe(ticket), transition);
                }
                Err(actual) => raw = actual,
            }
        }
    }

    /// Complete an admitted request with its `outcome` at `now`. Returns the transition
    /// this call made, if any.
    ///
    /// - `Allowed`, closed: a success resets the consecutive-failure count; a failure may
    ///   open the breaker (or report [`Transition::EjectionRefused`]). Outcomes of
    ///   `Allowed` requests that complete after the breaker left the closed state (for
    ///   example panic-mode traffic to an ejected upstream) are ignored.
    /// - `Probe`: a success counts towards `half_open_successes` (closing the breaker at
    ///   the last one); a failure reopens it with the next, longer ejection. Outcomes of
    ///   probes from an earlier probe round are ignored.
    /// - `Rejected`: nothing.
    pub fn record(&self, admission: Admission, outcome: Outcome, now: Instant) -> Option<Transition> {
        match admission {
            Admission::Allowed => self.record_closed(outcome, self.nanos(now)),
            Admission::Probe(ticket) => self.record_probe(ticket, outcome, self.nanos(now)),
            Admission::Rejected => None,
        }
    }

    /// Give back the probe slot of a request abandoned without an outcome (client went
    /// away, request cancelled before reaching the upstream). No-op for `Allowed`,
    /// `Rejected` and probes of an earlier round.
    pub fn release(&self, admission: Admission) {
        let Admission::Probe(ticket) = admission else { return };
        let mut raw = self.ctl.load(Ordering::Acquire);
        loop {
            let c = Ctl::unpack(raw);
            if c.busy || c.state != ST_HALF_OPEN || c.generation != ticket.generation || c.probes == 0 {
                return;
            }
            let next = Ctl { probes: c.probes - 1, ..c };
            match self.ctl.compare_exchange_weak(raw, next.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => raw = actual,
            }
        }
    }

    /// State at `now`. An open breaker whose ejection time has elapsed reports
    /// `HalfOpen`: its next admission is a probe.
    pub fn state(&self, now: Instant) -> BreakerState {
        let c = Ctl::unpack(self.ctl.load(Ordering::Acquire));
        match c.state {
            ST_CLOSED => BreakerState::Closed,
            ST_OPEN if c.busy || self.nanos(now) < self.open_until.load(Ordering::Relaxed) => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether the load balancer should consider this upstream at `now`: closed, or
    /// half-open with a free probe slot (including open with the ejection elapsed).
    /// Takes no slot: `admit` may still reject under a race.
    pub fn is_available(&self, now: Instant) -> bool {
        let c = Ctl::unpack(self.ctl.load(Ordering::Acquire));
        if c.busy {
            return false;
        }
        let t = self.nanos(now);
        match c.state {
            ST_CLOSED => true,
            ST_OPEN => t >= self.open_until.load(Ordering::Relaxed),
            _ => {
                c.probes < self.tuning.probes
                    || t.saturating_sub(self.since.load(Ordering::Relaxed)) >= self.tuning.probe_timeout_ns
            }
        }
    }

    /// Consecutive ejections so far: 1 after the first, growing by one per reopen;
    /// back to 0 once the breaker has stayed closed for `max_ejection` (applied by the
    /// first `admit` after that, or at the next trip).
    pub fn ejections(&self) -> u32 {
        Ctl::unpack(self.ctl.load(Ordering::Relaxed)).ejections
    }

    /// End of the current ejection while the breaker is open (also once elapsed, until
    /// the next admission turns it half-open); `None` otherwise.
    pub fn open_until(&self) -> Option<Instant> {
        let c = Ctl::unpack(self.ctl.load(Ordering::Acquire));
        if c.state != ST_OPEN || c.busy {
            return None;
        }
        self.instant(self.open_until.load(Ordering::Relaxed))
    }

    /// Probes admitted and not yet recorded or released in the current half-open round
    /// (0 unless half-open).
    pub fn probes_in_flight(&self) -> u32 {
        let c = Ctl::unpack(self.ctl.load(Ordering::Relaxed));
        if c.state == ST_HALF_OPEN {
            c.probes
        } else {
            0
        }
    }

    /// A snapshot of the counters at `now`, for status pages.
    pub fn stats(&self, now: Instant) -> BreakerStats {
        let t = self.nanos(now);
        let (window_requests, window_failures) = self.window.sum(t / self.tuning.bucket_ns);
        let open_for = self.open_until().map(|until| until.saturating_duration_since(now));
        BreakerStats {
            state: self.state(now),
            ejections: self.ejections(),
            open_for: open_for.filter(|d| !d.is_zero()),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            window_requests,
            window_failures,
            probes_in_flight: self.probes_in_flight(),
        }
    }

    // --- internals ---

    fn nanos(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.epoch) {
            Some(d) => TIME_OFFSET.saturating_add(duration_ns(d)),
            None => TIME_OFFSET.saturating_sub(duration_ns(self.epoch.saturating_duration_since(t))),
        }
    }

    fn instant(&self, n: u64) -> Option<Instant> {
        if n >= TIME_OFFSET {
            self.epoch.checked_add(Duration::from_nanos(n - TIME_OFFSET))
        } else {
            self.epoch.checked_sub(Duration::from_nanos(TIME_OFFSET - n))
        }
    }

    /// Finish a transition whose CAS installed the busy word `next`: write the
    /// timestamps, then make the word visible without the busy flag.
    fn publish(&self, next: Ctl, write: impl FnOnce(&Self)) {
        write(self);
        // Only the winner may change a busy word, so a plain store is safe.
        self.ctl.store(Ctl { busy: false, ..next }.pack(), Ordering::Release);
    }

    /// Reset the ejection count if the breaker has stayed closed for the decay period.
    fn decay(&self, raw: u64, c: Ctl, t: u64) {
        if t.saturating_sub(self.since.load(Ordering::Relaxed)) >= self.tuning.max_ns {
            // Losing the race is fine: someone else changed the word, and the next trip
            // applies the decay anyway.
            let _ =
                self.ctl.compare_exchange(raw, Ctl { ejections: 0, ..c }.pack(), Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn record_closed(&self, outcome: Outcome, t: u64) -> Option<Transition> {
        let c = Ctl::unpack(self.ctl.load(Ordering::Acquire));
        if c.busy || c.state != ST_CLOSED {
            return None;
        }
        let slot = t / self.tuning.bucket_ns;
        match outcome {
            Outcome::Success => {
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                self.window.add(slot, false);
                None
            }
            Outcome::Failure => {
                let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                self.window.add(slot, true);
                let tn = &self.tuning;
                let tripped = (tn.consecutive > 0 && n >= tn.consecutive)
                    || (tn.rate > 0.0 && {
                        let (total, failures) = self.window.sum(slot);
                        total >= tn.min_requests && failures as f64 >= tn.rate * total as f64
                    });
                if tripped {
                    self.trip(t)
                } else {
                    None
                }
            }
        }
    }

    /// Closed → Open, if this thread wins the right to ask the budget and gets a slot.
    fn trip(&self, t: u64) -> Option<Transition> {
        // 1. Claim the trip so that concurrent failures do not all take budget slots
        //    (which would make other upstreams' breakers see a full budget).
        let mut raw = self.ctl.load(Ordering::Acquire);
        loop {
            let c = Ctl::unpack(raw);
            if c.busy || c.state != ST_CLOSED || c.tripping {
                return None;
            }
            let claimed = Ctl { tripping: true, ..c }.pack();
            match self.ctl.compare_exchange_weak(raw, claimed, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    raw = claimed;
                    break;
                }
                Err(actual) => raw = actual,
            }
        }
        // 2. Ask the budget. While we hold the claim the state stays closed (only a
        //    concurrent decay may change the ejection count).
        if !self.budget.try_eject() {
            self.ctl.fetch_and(!TRIP_BIT, Ordering::AcqRel);
            return Some(Transition::EjectionRefused);
        }
        // 3. Open.
        loop {
            let c = Ctl::unpack(raw);
            let decayed = t.saturating_sub(self.since.load(Ordering::Relaxed)) >= self.tuning.max_ns;
            let ejections = if decayed { 1 } else { c.ejections.saturating_add(1) };
            let next = c.enter(ST_OPEN, ejections);
            match self.ctl.compare_exchange_weak(raw, next.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let until = t.saturating_add(self.ejection_ns(next.ejections));
                    self.publish(next, |b| {
                        b.open_until.store(until, Ordering::Relaxed);
                        b.consecutive.store(0, Ordering::Relaxed);
                    });
                    return Some(Transition::Opened);
                }
                Err(actual) => raw = actual,
            }
        }
    }

    fn record_probe(&self, ticket: ProbeTicket, outcome: Outcome, t: u64) -> Option<Transition> {
        let mut raw = self.ctl.load(Ordering::Acquire);
        loop {
            let c = Ctl::unpack(raw);
            if c.busy || c.state != ST_HALF_OPEN || c.generation != ticket.generation || c.probes == 0 {
                return None; // a probe of an earlier round
            }
            let next = match outcome {
                Outcome::Success if c.successes + 1 >= self.tuning.successes => c.enter(ST_CLOSED, c.ejections),
                Outcome::Success => Ctl { probes: c.probes - 1, successes: c.successes + 1, ..c },
                Outcome::Failure => c.enter(ST_OPEN, c.ejections.saturating_add(1)),
            };
            match self.ctl.compare_exchange_weak(raw, next.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if next.state == ST_CLOSED => {
                    self.publish(next, |b| {
                        b.since.store(t, Ordering::Relaxed);
                        b.consecutive.store(0, Ordering::Relaxed);
                        b.window.clear();
                        b.budget.release();
                    });
                    return Some(Transition::Closed);
                }
                Ok(_) if next.state == ST_OPEN => {
                    let until = t.saturating_add(self.ejection_ns(next.ejections));
                    self.publish(next, |b| b.open_until.store(until, Ordering::Relaxed));
                    return Some(Transition::Reopened);
                }
                Ok(_) => return None,
                Err(actual) => raw = actual,
            }
        }
    }

    /// Open time of the `n`-th consecutive ejection, with jitter.
    fn ejection_ns(&self, n: u32) -> u64 {
        let tn = &self.tuning;
        let doublings = n.saturating_sub(1).min(63);
        let d = tn.base_ns.saturating_mul(1u64 << doublings).min(tn.max_ns);
        if tn.jitter <= 0.0 {
            return d;
        }
        let factor = 1.0 + rand::rng().random_range(-tn.jitter..=tn.jitter);
        ((d as f64 * factor) as u64).max(1)
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        // An ejected breaker holds a budget slot; give it back when the upstream goes.
        let state = Ctl::unpack(*self.ctl.get_mut()).state;
        if state == ST_OPEN || state == ST_HALF_OPEN {
            self.budget.release();
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

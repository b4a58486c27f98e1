//! The token bucket shared by every Cloudflare call, plus the pause a 429 imposes on all.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `burst` requests back to back, then `rate` per second. A 429's
/// `Retry-After` pauses every caller.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
    paused_until: Option<Instant>,
}

impl TokenBucket {
    /// `per_5min` requests per five minutes, `burst` at most back to back.
    pub fn new(per_5min: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(per_5min.max(1)) / 300.0,
            burst,
            state: Mutex::new(State { tokens: burst, last: now, paused_until: None }),
        }
    }

    /// Takes a token at `now`, or says how long to wait before trying again.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = s.paused_until {
            if now < until {
                return Err(until - now);
            }
            s.paused_until = None;
        }
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.tokens) / self.rate))
        }
    }

    /// Blocks every caller until `until` (a 429's `Retry-After`).
    pub fn pause_until(&self, until: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.paused_until.is_none_or(|p| p < until) {
            s.paused_until = Some(until);
        }
    }

    /// Waits for a token; returns true if it had to wait.
    pub async fn acquire(&self) -> bool {
        let mut waited = false;
        loop {
            match self.try_take(Instant::now()) {
                Ok(()) => return waited,
                Err(d) => {
                    waited = true;
                    tokio::time::sleep(d).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        // 600 per 5 min = 2/s, burst 3.
        let b = TokenBucket::new(600, 3, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_ok());
        assert!(b.try_take(t0 + Duration::from_millis(600)).is_err());
        // Idle refills up to the burst only.
        let t1 = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.try_take(t1).is_ok());
        }
        assert!(b.try_take(t1).is_err());
    }

    #[test]
    fn pause_blocks_everyone_until_it_ends() {
        let t0 = Instant::now();
        let b = TokenBucket::new(1200, 10, t0);
        b.pause_until(t0 + Duration::from_secs(1));
        assert_eq!(b.try_take(t0).unwrap_err(), Duration::from_secs(1));
        // A shorter pause does not shorten a longer one.
        b.pause_until(t0 + Duration::from_millis(10));
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_err());
        assert!(b.try_take(t0 + Duration::from_secs(1)).is_ok());
    }
}

//! Traefik durations: `"10s"`, `"500ms"`, `"1m30s"`, `"1.5h"` or a bare integer (seconds).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest duration Go (and so Traefik) can represent: `i64::MAX` nanoseconds.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Parse a Traefik duration.
///
/// Accepts what Traefik's `paerser` accepts: a bare integer is a number of seconds
/// (`"10"` = 10 s), anything else follows Go's `time.ParseDuration`: one or more
/// `<number><unit>` pairs with units `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m`, `h` and
/// optional fractions (`"1.5h"`, `"1m30s"`, `"500ms"`); `"0"` is zero. Negative
/// durations are rejected (nothing in Constellation can use one).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = |why: &str| format!("invalid duration {s:?}: {why}");
    if s.is_empty() {
        return Err(invalid("empty"));
    }
    // paerser: a plain integer is seconds.
    if let Ok(secs) = s.parse::<i64>() {
        return match u64::try_from(secs) {
            Ok(secs) => Ok(Duration::from_secs(secs)),
            Err(_) => Err(invalid("negative durations are not allowed")),
        };
    }
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest.is_empty() {
        return Err(invalid("expected a number"));
    }
    let mut total: u128 = 0;
    let mut chars = rest.char_indices().peekable();
    while chars.peek().is_some() {
        // Number: digits, optional '.', digits; at least one digit overall.
        let mut int: u128 = 0;
        let mut int_digits = 0usize;
        while let Some(&(_, c)) = chars.peek() {
            let Some(d) = c.to_digit(10) else { break };
            int = int
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(d)))
                .filter(|v| *v <= MAX_NANOS)
                .ok_or_else(|| invalid("out of range"))?;
            int_digits += 1;
            chars.next();
        }
        let mut frac: u128 = 0;
        let mut frac_scale: u128 = 1;
        let mut frac_digits = 0usize;
        if let Some(&(_, '.')) = chars.peek() {
            chars.next();
            while let Some(&(_, c)) = chars.peek() {
                let Some(d) = c.to_digit(10) else { break };
                // Digits beyond nanosecond precision of the largest unit cannot matter.
                if frac_digits < 18 {
                    frac = frac * 10 + u128::from(d);
                    frac_scale *= 10;
                }
                frac_digits += 1;
                chars.next();
            }
        }
        if int_digits == 0 && frac_digits == 0 {
            return Err(invalid("expected a number"));
        }
        // Unit: everything up to the next digit or '.'.
        let mut unit = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c.is_ascii_digit() || c == '.' {
                break;
            }
            unit.push(c);
            chars.next();
        }
        let unit_nanos: u128 = match unit.as_str() {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(invalid("missing unit (use ns, us, ms, s, m or h, or a whole number of seconds)")),
            other => return Err(invalid(&format!("unknown unit {other:?} (valid: ns, us, \u{b5}s, ms, s, m, h)"))),
        };
        let part = int
            .checked_mul(unit_nanos)
            .and_then(|v| v.checked_add(frac * unit_nanos / frac_scale))
            .ok_or_else(|| invalid("out of range"))?;
        total = total.checked_add(part).filter(|v| *v <= MAX_NANOS).ok_or_else(|| invalid("out of range"))?;
    }
    if negative && total != 0 {
        return Err(invalid("negative durations are not allowed"));
    }
    let nanos = u64::try_from(total).map_err(|_| invalid("out of range"))?;
    Ok(Duration::from_nanos(nanos))
}

/// A duration exactly as written in the configuration, kept verbatim so that it can be
/// served back unchanged; [`TraefikDuration::to_std`] parses it.
///
/// Accepted on input as a string (`"10s"`) or an integer number of seconds (`10`); an
/// integer is kept as its decimal text and serialised as a string (`"10"`), which
/// Traefik reads as the same number of seconds and which the v3 schema (string-typed
/// durations) accepts. The text is not checked while parsing; [`parse_duration`] does
/// that during [`DynamicConfig::validate`](super::DynamicConfig::validate).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraefikDuration(String);

impl TraefikDuration {
    /// Wrap a duration text such as `"10s"` (not checked; see [`Self::to_std`]).
    pub fn new(text: impl Into<String>) -> Self {
        TraefikDuration(text.into())
    }

    /// The text as written (integers as their decimal text).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parse with [`parse_duration`].
    pub fn to_std(&self) -> Result<Duration, String> {
        parse_duration(&self.0)
    }
}

impl fmt::Display for TraefikDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TraefikDuration {
    fn from(s: &str) -> Self {
        TraefikDuration(s.to_string())
    }
}

impl Serialize for TraefikDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TraefikDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TraefikDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or a whole number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TraefikDuration(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(TraefikDuration(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(TraefikDuration(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

//! Per-upstream circuit breaker (STUB, being written).

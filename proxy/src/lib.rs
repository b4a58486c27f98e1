//! SmartFailoverProxy: Traefik route model, rule matcher, circuit breakers, retry
//! policy and the Pingora `ProxyHttp` implementation.
//!
//! This crate never reads files on the request path, never blocks, and never learns
//! where a snapshot came from: the control plane builds a [`RouteTable`] and swaps it
//! into a [`TableHandle`]; each request reads one snapshot.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod dynamic;
pub mod rule;

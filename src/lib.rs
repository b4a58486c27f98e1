//! The `constellation` binary's library half: agent wiring, the demo, and the small
//! HTTP backend and client the demo, tests and benchmarks share.

#![forbid(unsafe_code)]

pub mod agent;
pub mod backend;
pub mod client;
pub mod demo;
pub mod welcome;

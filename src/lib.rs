//! The `constellation` binary's library half: agent wiring, the demo and the CLI views.
//! Test fixtures live in the dev-only `constellation-testkit` crate, not here.

#![forbid(unsafe_code)]

pub mod agent;
pub mod demo;
pub mod welcome;

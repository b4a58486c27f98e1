//! End-to-end tests against the real Docker engine: labelled containers routed through
//! the proxy, health and restarts, two agents sharing one engine, the catalogue, and
//! `deploy`. Every container and network a test creates carries a test label and is
//! removed at the end (`constellation_testkit::docker::DockerGuard`).

#![allow(clippy::unwrap_used)]

mod t05_deploy;
mod t06_compose;

//! End-to-end tests of the SmartFailoverProxy: a real agent process, real backends on
//! loopback, real sockets.

#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod t01_failover;
mod t02_breaker;
mod t03_reload;
mod t04_config;
mod t05_admin;
mod t06_resolver;
mod t07_https_health;

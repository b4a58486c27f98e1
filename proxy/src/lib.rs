//! SmartFailoverProxy: Traefik route model, rule matcher, circuit breakers, retry
//! policy and the Pingora `ProxyHttp` implementation.
//!
//! This crate never reads files on the request path, never blocks, and never learns
//! where a snapshot came from: the control plane builds a [`RouteTable`] with
//! [`compile`] and swaps it into a [`TableHandle`]; each request reads one snapshot.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod compile;
pub mod dynamic;
pub mod health;
pub mod metrics;
pub mod rule;
pub mod settings;
pub mod smart;
pub mod table;
pub mod upstream;

pub use breaker::{Breaker, BreakerConfig, BreakerState, EjectionBudget};
pub use compile::{compile, CompileError};
pub use dynamic::DynamicConfig;
pub use health::HealthSupervisor;
pub use metrics::ProxyMetrics;
pub use rule::{RequestInfo, Rule, RuleError};
pub use settings::ProxySettings;
pub use smart::{BreakerEvent, SmartFailoverProxy};
pub use table::{Pool, Route, RouteTable, TableHandle, Target};
pub use upstream::{Upstream, UpstreamKey, UpstreamRegistry};

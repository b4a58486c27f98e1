//! Control plane of Constellation: agent configuration, route sources and reloads,
//! the admin HTTP API and the Traefik provider endpoint. Later: gossip, leases, DNS,
//! Docker.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod routes;

pub use admin::{AdminApp, AdminState, ReloadReport};
pub use config::{AgentConfig, ConfigError, LoadedConfig};
pub use routes::{load_sources, Reloader, RouteSource};

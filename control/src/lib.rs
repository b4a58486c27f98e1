//! Control plane of Constellation: agent configuration, route sources and reloads,
//! the admin HTTP API and the Traefik provider endpoint. Later: gossip, leases, DNS,
//! Docker.

#![forbid(unsafe_code)]

pub mod admin;
pub mod builder;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod dns;
pub mod plane;
pub mod public_ip;
pub mod raft;
pub mod resolver;
pub mod routes;

pub use admin::{AdminApp, AdminState, ReloadReport};
pub use config::{AgentConfig, ConfigError, LoadedConfig};
pub use resolver::{Resolver, ResolverConfig};
pub use routes::{load_sources, Reloader, RouteSource};

//! The control plane's hub: the agent configuration (TOML, env overrides, validation, the
//! embedded default), route sources and reloads, the pure route builder, the event loop
//! that wires the cluster, the lease group and the DNS controller together, and the admin
//! HTTP API with its typed status.
//!
//! This is the only control crate that knows every subsystem; the subsystems know
//! nothing of each other (DNS sees leases through a fence, not through Raft).

#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod builder;
pub mod config;
pub mod docker;
pub mod plane;
pub mod public_ip;
pub mod resolver;
pub mod routes;
pub mod stateful;
pub mod status;
pub mod tls_files;
pub mod transport_files;
pub mod warp;

pub use admin::{AdminApp, AdminState};
pub use config::{AgentConfig, ConfigError, LoadedConfig};
pub use resolver::{Resolver, ResolverConfig};
pub use routes::{assemble, load_sources, Reloader, RouteSource};
pub use status::{ReloadReport, Status};

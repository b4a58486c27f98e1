//! Docker provider: watches the node's engine (list, event stream, periodic relist),
//! turns running containers and their `traefik.*` / `constellation.*` labels into service
//! instances and a Traefik dynamic configuration, and restarts containers marked
//! `deunhealth.restart.on.unhealthy=true` when they turn unhealthy.
//!
//! It knows the proxy's configuration model and the engine connection of
//! `constellation-services`; it never knows gossip, Raft or the route table.

pub mod config;
pub mod constraints;
pub mod container;
pub mod labels;
pub mod provider;
pub mod schema;

pub use config::DockerConfig;
pub use container::{Container, Health};
pub use labels::{contribution, Contribution, Endpoint, LabelSettings};
pub use provider::{DockerMetrics, DockerProvider, DockerSnapshot, Watched};

#[cfg(test)]
mod tests;

//! Service catalogue: typed stacks (the built-in catalogue and imported docker-compose
//! files), their networks and health checks, and `deploy` reconciliation through the
//! Docker API. It depends on no other workspace crate; the Docker provider in
//! `control/docker` reuses its engine connection.

pub mod catalogue;
pub mod compose;
pub mod deploy;
pub mod engine;
pub mod model;
pub mod stacks;
pub mod validate;

pub use model::{
    Dependency, DependencyCondition, EnvValue, HealthCheck, Mount, MountSource, NamedVolume, Network, PortMapping,
    Protocol, Restart, Service, Stack,
};

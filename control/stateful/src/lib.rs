//! Stateful HA for the front door's TCP routes: the agent follows each Redis Sentinel
//! group and MongoDB replica set it is configured with, sets them up when they are not
//! yet (`REPLICAOF` / `SENTINEL MONITOR`, `replSetInitiate` / `replSetReconfig`), and
//! publishes where each group's writable primary is. The plane turns that into a TCP
//! route named after the group; when no trustworthy answer exists the route is withdrawn.
//!
//! It knows neither the proxy nor Raft: initiation that must happen once cluster-wide
//! goes through a fence trait the plane implements with a lease.

pub mod mongo;
pub mod redis;
pub mod secret;

pub use secret::{load_secret, Secret, SecretError};

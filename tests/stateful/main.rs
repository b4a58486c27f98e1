//! End-to-end tests of stateful HA through a real agent: Redis Sentinel with the
//! Debian `redis-server`/`redis-sentinel` processes, the route `<name>` on a TCP entry
//! point following the master; MongoDB replica sets against the wire-protocol stand-in.

#![allow(clippy::unwrap_used)]

mod t01_redis;
mod t02_mongo;

mod support {
    pub use constellation_testkit::*;
}

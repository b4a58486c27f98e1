//! Constellation's dev-only test kit: everything the end-to-end suites and benchmarks
//! share, in one place.
//!
//! - [`Agent`]: one `constellation agent` with a routes file (the proxy suite).
//! - [`Fleet`]: several agents joined by gossip, optionally Raft voters, each with its own
//!   ports, config, log, data directory and (for partitions) its own uid.
//! - [`Partition`]: iptables rules that cut nodes apart in both directions, tagged with
//!   the test process id so leftovers of a killed test are removed on the next run.
//! - [`eventually`]: polling with deadlines instead of sleeps.
//! - [`Backend`] and [`Client`]: a controllable HTTP/1.1, h2c or TLS (h2/HTTP/1.1) backend
//!   ([`TestCa`] issues its certificates) and a client that never
//!   resends, both on hyper, with chunked and slowly streamed bodies.
//! - [`RawBackend`] and [`raw_exchange`]: raw-socket HTTP/1.1 peers for framing tests; the
//!   backend records every byte it receives.
//! - [`FakeCloudflare`]: a Cloudflare v4 API on a real socket.
//! - [`Pebble`]: Let's Encrypt's ACME test server and its DNS server, real processes.
//! - [`docker`]: the real Docker engine: a locally imported test image and a guard that
//!   removes every labelled container and network a test made.
//! - [`warp`]: a Cloudflare trace-page server and Debian's `microsocks` as a SOCKS5
//!   egress gateway.
//! - [`report`]: the helpers benchmarks use to write their results.
//!
//! The kit knows nothing of Constellation's crates: it starts the binary and reads its
//! admin API as JSON, so any crate of the workspace can use it as a dev-dependency.

#![forbid(unsafe_code)]

mod agent;
mod backend;
mod binary;
mod client;
pub mod cloudflare;
pub mod docker;
mod fleet;
pub mod mongo;
mod node;
mod partition;
pub mod pebble;
mod raw;
pub mod redis;
pub mod report;
mod scratch;
mod status;
pub mod tcp;
mod tls;
mod wait;
pub mod warp;

pub use agent::{routes, start_agent_at, start_agent_with, Agent};
pub use backend::{Backend, Behaviour, Hit, Serve};
pub use binary::{binary, run, run_with_limit};
pub use client::{fetch, fetch_from, Client, Reply};
pub use cloudflare::FakeCloudflare;
pub use fleet::{Fleet, FleetSpec, NodeSpec, Settled, Timings};
pub use mongo::MongoStandin;
pub use node::{Event, Node};
pub use partition::{Partition, Plane};
pub use pebble::{Pebble, PebbleSpec};
pub use raw::{raw_exchange, RawBackend, RawReply, RawRequest};
pub use redis::{RedisFleet, RedisFleetSpec};
pub use scratch::{dead_addr, free_port, non_loopback_ip, take_cluster_port, take_port, Scratch};
pub use status::{
    identities, lease_seen, member, member_states, members, metric_value, raft_leader, raft_term, service_status,
    upstream_status, upstream_urls, LeaseSeen,
};
pub use tcp::{TcpEcho, UdpEcho};
pub use tls::{Issued, TestCa};
pub use wait::{eventually, eventually_or, run_test, unix_ns, wait_for};

//! WARP egress monitoring. Each node may run egress gateways (a Cloudflare WARP client
//! in proxy mode, or a NAT gateway for the `warp-nat-net` Docker network); services that
//! must leave through WARP are routed only to instances on nodes whose egress is up.
//!
//! This crate probes each configured gateway against Cloudflare's trace page, keeps a
//! rise/fall verdict per gateway with the details (`warp=` state, egress IP, latency,
//! last error), shows the gateway container's own state beside it, and restarts that
//! container through Docker when the egress stays down (with an hourly cap). The plane
//! gossips the verdicts in node state and turns them into routes; this crate knows
//! neither gossip nor the proxy.

pub mod config;
pub mod metrics;
pub mod monitor;
pub mod probe;
pub mod trace;

pub use config::{GatewayConfig, Via, WarpConfig};
pub use metrics::WarpMetrics;
pub use monitor::{ContainerSignal, GatewayStatus, WarpMonitor};
pub use trace::{Trace, TraceError, WarpState};

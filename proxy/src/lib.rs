//! SmartFailoverProxy: Traefik route model, rule matcher, circuit breakers, retry
//! policy and the Pingora `ProxyHttp` implementation.
//!
//! This crate never reads files, never resolves host names, never blocks, and never
//! learns where a snapshot came from: the control plane parses route text
//! ([`dynamic::parse_str`]), resolves the host names ([`host_names`] lists them) into an
//! [`AddressMap`], builds a [`RouteTable`] with [`compile`] and swaps it into a
//! [`TableHandle`]; each request reads one snapshot. [`Prober`] is the one outbound
//! HTTP client, shared with the control plane.

#![forbid(unsafe_code)]

pub mod address;
pub mod breaker;
pub mod compile;
pub mod downstream;
pub mod dynamic;
pub mod forwarded;
pub mod framing;
pub mod health;
pub mod metrics;
pub mod middleware;
pub mod probe;
pub mod redact;
pub mod rule;
pub mod settings;
pub mod smart;
pub mod table;
pub mod tcp;
pub mod tls;
pub mod transport;
pub mod udp;
pub mod upstream;

pub use address::{host_names, AddressMap, HostPort};
pub use breaker::{Breaker, BreakerConfig, BreakerState, EjectionBudget};
pub use compile::{compile, compile_with_files, CompileError};
pub use downstream::{DownstreamMetrics, Entrypoint, LimitedApp, TransportConfig};
pub use dynamic::DynamicConfig;
pub use forwarded::{EntryPoint, EntryRedirect, ForwardedPolicy, IpNet, Scheme};
pub use health::HealthSupervisor;
pub use metrics::ProxyMetrics;
pub use probe::{CertPolicy, ProbeError, ProbeRequest, ProbeResponse, Prober};
pub use rule::{ConnInfo, RequestInfo, Rule, RuleError, TcpRule};
pub use settings::ProxySettings;
pub use smart::{BreakerEvent, ConnectFailures, SmartFailoverProxy, UpstreamEventKind};
pub use table::{Pool, Route, RouteTable, TableHandle, Target};
pub use tls::{AcmeMaterial, TlsHandle, TlsMetrics, TlsSnapshot};
pub use transport::{TransportError, TransportFiles, UpstreamTransport};
pub use upstream::{Upstream, UpstreamKey, UpstreamRegistry};

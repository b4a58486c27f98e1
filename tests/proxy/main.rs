//! End-to-end tests of the SmartFailoverProxy: a real agent process, real backends on
//! loopback, real sockets.

#![allow(clippy::unwrap_used)]

mod t01_failover;
mod t02_breaker;
mod t03_reload;
mod t04_config;
mod t05_admin;
mod t06_resolver;
mod t07_https_health;
mod t08_bodies;
mod t09_limits;
mod t10_headers;
mod t11_admin_safety;
mod t12_fail_closed;
mod t13_upstream_tls;
mod t14_websocket;
mod t15_upstream_h2;
mod t16_tcp;
mod t17_udp;
mod t18_middlewares;
mod t19_mw_auth;
mod t20_mw_limits;
mod t21_mw_rewrite;
mod t22_mw_body;
mod t23_load_balancing;

/// The shared kit, plus what only this suite needs.
mod support {
    pub use constellation_testkit::*;

    /// The connection-flood test loads the whole machine (15,000 sockets) for ~20 s; the
    /// tests whose client-side timing is tight (1 s read timeouts, a TLS fail-over) take
    /// this shared and the flood takes it alone, so they never overlap.
    pub static FLOOD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
    use serde_json::Value;

    /// A JSON document's violations of the Traefik v3 file-provider schema (SchemaStore
    /// copy in `proxy/tests/fixtures/dynamic/`), one line each; empty when it validates.
    pub fn traefik_schema_errors(doc: &Value) -> Vec<String> {
        let schema: Value =
            serde_json::from_str(include_str!("../../proxy/tests/fixtures/dynamic/traefik-v3-file-provider.json"))
                .unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        validator.iter_errors(doc).map(|e| format!("{}: {}", e.instance_path(), e)).collect()
    }
}

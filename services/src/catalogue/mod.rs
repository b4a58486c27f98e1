//! The built-in catalogue: the product brief's 11 stacks (57 services) as typed values,
//! and the three networks they are assigned to.
//!
//! Conventions every stack follows (checked by `validate::check` and this module's tests):
//! - Secrets are never inline: `${VAR}` references to the deploying process's environment
//!   or files under [`SECRETS_DIR`]. Host configuration files are bind-mounted read-only
//!   from [`CONFIG_DIR`]`/<stack>/`.
//! - Web services are routed by Traefik labels as `Host(\`<name>.${DOMAIN}\`)`: `DOMAIN`
//!   is an environment variable of the deploying process, like every other `${…}`
//!   reference (see [`DOMAIN_VAR`]). Router, service and Uptime Kuma monitor names are
//!   unique across the catalogue, since Traefik merges labels of all containers.
//! - Every service with a health check carries `deunhealth.restart.on.unhealthy=true`;
//!   every routed service has one; user-facing ones carry Homepage and AutoKuma labels.
//! - Databases join `backend` only; routed services join `publicnet`; services whose
//!   egress goes through WARP join `warp-nat-net` and carry `constellation.egress=warp`.
//! - Ports are published only where the node must be reached from outside the proxy,
//!   always on an explicit address.
//! - Capabilities, sysctls and devices are the services' `cap_add`, `sysctls` and
//!   `devices` (the WARP client, rclone's FUSE mount, cAdvisor's `/dev/kmsg`).
//! - Named volume names are prefixed with their stack name (they are engine-wide).

mod authentik;
pub mod build;
mod coolify_proxy;
mod elfhosted;
mod firecrawl;
mod headscale;
mod llm;
mod metrics;
mod stremio;
mod unsend;
mod warp;
mod wordpress;

#[cfg(test)]
mod tests;

use crate::model::{Network, Stack};

/// Engine name of the node-local internal network (no route outside; databases live here).
pub const BACKEND: &str = "backend";
/// Engine name of the network the proxy reaches routed services on.
pub const PUBLICNET: &str = "publicnet";
/// Engine name of the network whose egress leaves through the WARP gateway.
pub const WARP_NET: &str = "warp-nat-net";
/// Environment variable holding the public domain routers are built on (`Host(<svc>.${DOMAIN})`).
pub const DOMAIN_VAR: &str = "DOMAIN";
/// Directory of secret files referenced by `EnvValue::File`.
pub const SECRETS_DIR: &str = "/etc/constellation/secrets";
/// Directory of host configuration files bind-mounted into services, one folder per stack.
pub const CONFIG_DIR: &str = "/etc/constellation/stacks";

/// Every built-in stack, in a stable order.
pub fn stacks() -> Vec<Stack> {
    vec![
        coolify_proxy::stack(),
        warp::stack(),
        headscale::stack(),
        authentik::stack(),
        metrics::stack(),
        unsend::stack(),
        firecrawl::stack(),
        wordpress::stack(),
        llm::stack(),
        stremio::stack(),
        elfhosted::stack(),
    ]
}

/// The networks the catalogue's services are assigned to.
pub fn networks() -> Vec<Network> {
    let net = |name: &str, internal: bool| Network {
        name: name.to_owned(),
        driver: "bridge".to_owned(),
        internal,
        external: false,
    };
    vec![net(BACKEND, true), net(PUBLICNET, false), net(WARP_NET, false)]
}

/// A host configuration path for `stack`: `/etc/constellation/stacks/<stack>/<file>`.
pub(crate) fn config_path(stack: &str, file: &str) -> String {
    format!("{CONFIG_DIR}/{stack}/{file}")
}

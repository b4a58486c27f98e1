//! The Headscale stack (2): the Tailscale-compatible control server the mesh runs on, and
//! Headplane, its web UI.
//!
//! Sources: headscale's container docs (juanfont/headscale `docs/setup/install/container.md`:
//! `headscale/headscale` image, `serve` command, `/etc/headscale` config, `/var/lib/headscale`
//! data, port 8080, metrics 9090; `headscale health`, which public compose files use with
//! 0.27 — the image is distroless, so the CLI is the only probe) and Headplane's Docker guide (tale/headplane
//! `docs/install/docker.md`: `ghcr.io/tale/headplane`, port 3000, `/admin`, config at
//! `/etc/headplane/config.yaml`, the Docker integration through the socket). Headplane's
//! image is `gcr.io/distroless/nodejs22-debian12` (its Dockerfile), so the probe runs
//! `/nodejs/bin/node` against its `healthz` route (`app/routes/util/healthz.ts`), which
//! also asks Headscale. The embedded DERP's STUN port is published on all
//! addresses because clients outside the node must reach it.

use super::build::{stack as make, svc, ANY_V4};
use super::config_path;
use crate::model::Stack;

const S: &str = "headscale";

pub(super) fn stack() -> Stack {
    make(
        S,
        "Mesh control server (Headscale) and its web UI (Headplane)",
        vec![
            svc("headscale", "headscale/headscale:v0.27.1")
                .cmd(&["serve"])
                .bind_ro(&config_path(S, "config.yaml"), "/etc/headscale/config.yaml")
                .vol("headscale-data", "/var/lib/headscale")
                .port_udp(ANY_V4, 3478, 3478)
                // Headplane's Docker integration finds the container it signals by this.
                .label("me.tale.headplane.target", "headscale")
                .route(8080)
                .health_cmd(&["headscale", "health"])
                .timing(30, 10, 3, 15)
                .ui("Infrastructure", "headscale.png", "Mesh control server"),
            svc("headplane", "ghcr.io/tale/headplane:0.6.1")
                .env("HEADPLANE_LOAD_ENV_OVERRIDES", "true")
                .secret_env("HEADPLANE_SERVER__COOKIE_SECRET", "HEADPLANE_COOKIE_SECRET")
                .env("HEADPLANE_HEADSCALE__URL", "http://headscale-headscale:8080")
                .bind_ro(&config_path(S, "headplane.yaml"), "/etc/headplane/config.yaml")
                .bind_ro(&config_path(S, "config.yaml"), "/etc/headscale/config.yaml")
                .vol("headscale-headplane-data", "/var/lib/headplane")
                .docker_socket()
                .route(3000)
                .health_node_at("/nodejs/bin/node", 3000, "/admin/healthz")
                .ui("Infrastructure", "headscale.png", "Headscale admin UI")
                .after_healthy("headscale"),
        ],
    )
}

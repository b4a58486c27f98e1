//! The Authentik stack (3): identity provider server, its background worker, PostgreSQL.
//!
//! Source: authentik's published `docker-compose.yml` (goauthentik.io/docker-compose.yml):
//! `ghcr.io/goauthentik/server` run as `server` and `worker`, `AUTHENTIK_SECRET_KEY`,
//! `AUTHENTIK_POSTGRESQL__*`, `/media` and `/templates`, port 9000, `ak healthcheck` (the
//! image's own HEALTHCHECK), and `pg_isready` for `postgres:16-alpine`. From 2025.10
//! authentik no longer uses Redis, which is why the stack has three services; 2025.10.4
//! is a multi-arch patch release public deployments pin.

use super::build::{stack as make, svc, Svc};
use super::{config_path, BACKEND, PUBLICNET};
use crate::model::Stack;

const S: &str = "authentik";
const IMAGE: &str = "ghcr.io/goauthentik/server:2025.10.4";

fn authentik(name: &str, role: &str) -> Svc {
    svc(name, IMAGE)
        .cmd(&[role])
        .secret_env("AUTHENTIK_SECRET_KEY", "AUTHENTIK_SECRET_KEY")
        .env("AUTHENTIK_POSTGRESQL__HOST", "authentik-postgresql")
        .env("AUTHENTIK_POSTGRESQL__USER", "authentik")
        .env("AUTHENTIK_POSTGRESQL__NAME", "authentik")
        .secret_file("AUTHENTIK_POSTGRESQL__PASSWORD", "authentik/postgres_password")
        .env("AUTHENTIK_ERROR_REPORTING__ENABLED", "false")
        .vol("authentik-media", "/media")
        .bind_ro(&config_path(S, "custom-templates"), "/templates")
        .health_cmd(&["ak", "healthcheck"])
        .timing(30, 10, 3, 60)
        .after_healthy("postgresql")
}

pub(super) fn stack() -> Stack {
    make(
        S,
        "Identity provider (SSO, forward auth): authentik server, worker and PostgreSQL",
        vec![
            svc("postgresql", "postgres:16-alpine")
                .env("POSTGRES_USER", "authentik")
                .env("POSTGRES_DB", "authentik")
                .secret_file("POSTGRES_PASSWORD", "authentik/postgres_password")
                .vol("authentik-postgresql", "/var/lib/postgresql/data")
                .backend()
                .health_shell("pg_isready -d \"$POSTGRES_DB\" -U \"$POSTGRES_USER\"")
                .timing(30, 5, 5, 20),
            authentik("server", "server").backend().route_as("auth", 9000).ui(
                "Infrastructure",
                "authentik.png",
                "Single sign-on",
            ),
            // The worker needs egress (e-mail, GeoIP and outpost updates) but no route.
            authentik("worker", "worker").net(&[BACKEND, PUBLICNET]),
        ],
    )
}

//! The Unsend stack (2): the open-source transactional e-mail platform (on Amazon SES)
//! and its PostgreSQL.
//!
//! Source: unsend-dev/unsend `docker/prod/compose.yml` and `apps/docs/self-hosting`:
//! `unsend/unsend` on port 3000 with `DATABASE_URL`, `NEXTAUTH_URL`, `NEXTAUTH_SECRET`,
//! `AWS_ACCESS_KEY`, `AWS_SECRET_KEY`, `AWS_DEFAULT_REGION`, `GITHUB_ID`/`GITHUB_SECRET`,
//! `REDIS_URL`; `postgres:16` with `pg_isready`. The published compose has a third
//! service, Redis; the brief counts two, so Redis is the fleet's shared one
//! (`UNSEND_REDIS_URL`, e.g. the Redis Sentinel set of the stateful-HA phase). The image
//! is Node on Alpine; `/api/health` is its route (`apps/web/src/app/api/health`); the
//! image is tagged with the git tag by `docker/build.sh` — the tag pinned here is the last
//! release I know of (unsure).

use super::build::{stack as make, svc};
use crate::model::Stack;

pub(super) fn stack() -> Stack {
    make(
        "unsend",
        "Transactional e-mail (Unsend on Amazon SES) and its PostgreSQL",
        vec![
            svc("postgres", "postgres:16-alpine")
                .env("POSTGRES_USER", "unsend")
                .env("POSTGRES_DB", "unsend")
                .secret_env("POSTGRES_PASSWORD", "UNSEND_POSTGRES_PASSWORD")
                .vol("unsend-postgres", "/var/lib/postgresql/data")
                .backend()
                .health_shell("pg_isready -d \"$POSTGRES_DB\" -U \"$POSTGRES_USER\"")
                .timing(10, 5, 5, 20),
            svc("unsend", "unsend/unsend:v1.3.2")
                .env("DATABASE_URL", "postgresql://unsend:${UNSEND_POSTGRES_PASSWORD}@unsend-postgres:5432/unsend")
                .env("NEXTAUTH_URL", "https://unsend.${DOMAIN}")
                .secret_env("NEXTAUTH_SECRET", "UNSEND_NEXTAUTH_SECRET")
                .secret_env("AWS_ACCESS_KEY", "UNSEND_AWS_ACCESS_KEY")
                .secret_env("AWS_SECRET_KEY", "UNSEND_AWS_SECRET_KEY")
                .env("AWS_DEFAULT_REGION", "${UNSEND_AWS_REGION:-us-east-1}")
                .env("GITHUB_ID", "${UNSEND_GITHUB_ID}")
                .secret_env("GITHUB_SECRET", "UNSEND_GITHUB_SECRET")
                .secret_env("REDIS_URL", "UNSEND_REDIS_URL")
                .backend()
                .route(3000)
                .health_wget(3000, "/api/health")
                .timing(30, 10, 3, 60)
                .ui("Apps", "unsend.png", "Transactional e-mail")
                .after_healthy("postgres"),
        ],
    )
}

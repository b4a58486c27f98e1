//! The Firecrawl stack (4): the web-to-markdown scraping API, its queue worker, the
//! Playwright browser service, and Redis. Scraping egress leaves through WARP.
//!
//! Source: mendableai/firecrawl `docker-compose.yaml` and `SELF_HOST.md`: one image
//! (`ghcr.io/mendableai/firecrawl`) run as API (`pnpm run start:production`, port 3002)
//! and worker (`pnpm run workers`), `ghcr.io/mendableai/playwright-service` on port 3000,
//! `redis:alpine` with `redis-server --bind 0.0.0.0`, and the environment below
//! (`REDIS_URL`, `PLAYWRIGHT_MICROSERVICE_URL`, `USE_DB_AUTHENTICATION`, `BULL_AUTH_KEY`,
//! `TEST_API_KEY`, `OPENAI_API_KEY`). The images are Node (Debian); the probes use Node's
//! `http` module — the API's `/` answers 200, the playwright `/health` route is my reading of
//! its source (unsure). Firecrawl's tags: pinned to a release tag I know of (unsure it is
//! published on ghcr; the project mostly pushes `latest`). The worker has no probe.

use super::build::{stack as make, svc, Svc};
use crate::model::Stack;

const IMAGE: &str = "ghcr.io/mendableai/firecrawl:v1.20.0";

fn firecrawl(name: &str) -> Svc {
    svc(name, IMAGE)
        .env("REDIS_URL", "redis://firecrawl-redis:6379")
        .env("REDIS_RATE_LIMIT_URL", "redis://firecrawl-redis:6379")
        .env("PLAYWRIGHT_MICROSERVICE_URL", "http://firecrawl-playwright-service:3000/scrape")
        .env("USE_DB_AUTHENTICATION", "false")
        .env("NUM_WORKERS_PER_QUEUE", "8")
        .env("HOST", "0.0.0.0")
        .env("PORT", "3002")
        .secret_env("BULL_AUTH_KEY", "FIRECRAWL_BULL_AUTH_KEY")
        .secret_env("TEST_API_KEY", "FIRECRAWL_API_KEY")
        .secret_env("OPENAI_API_KEY", "OPENAI_API_KEY")
        .env("LOGGING_LEVEL", "info")
        .backend()
        .after_healthy("redis")
}

pub(super) fn stack() -> Stack {
    make(
        "firecrawl",
        "Web scraping API (Firecrawl) with its worker, Playwright and Redis",
        vec![
            svc("redis", "redis:7.4-alpine")
                .cmd(&["redis-server", "--bind", "0.0.0.0", "--appendonly", "yes"])
                .vol("firecrawl-redis", "/data")
                .backend()
                .health_cmd(&["redis-cli", "ping"])
                .timing(10, 5, 5, 5),
            svc("playwright-service", "ghcr.io/mendableai/playwright-service:v1.20.0")
                .env("PORT", "3000")
                .env("BLOCK_MEDIA", "true")
                .backend()
                .warp()
                .health_node(3000, "/health")
                .timing(30, 10, 3, 30),
            firecrawl("api")
                .cmd(&["pnpm", "run", "start:production"])
                .warp()
                .route_as("firecrawl", 3002)
                .health_node(3002, "/")
                .timing(30, 10, 3, 30)
                .ui("Apps", "firecrawl.png", "Websites to LLM-ready markdown")
                .after_healthy("playwright-service"),
            firecrawl("worker").cmd(&["pnpm", "run", "workers"]).warp().after_healthy("api"),
        ],
    )
}

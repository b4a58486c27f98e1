//! The Stremio stack (8): a self-hosted Stremio streaming server and the addons and
//! indexers a self-hoster runs beside it. Scraping egress leaves through WARP.
//!
//! Sources: `stremio/server` (Stremio/server-docker: Debian `node:14` base, so curl is
//! there; port 11470, `/root/.stremio-server`, `NO_CORS`; `/settings` is the route the
//! web app reads — my choice of probe);
//! the addons' own READMEs and compose files — AIOStreams (Viren070/AIOStreams:
//! `ghcr.io/viren070/aiostreams`, port 3000, `SECRET_KEY`, `BASE_URL`, `/app/data`),
//! Comet (g0ldyy/comet: `g0ldyy/comet`, port 8000), MediaFusion and MediaFlow
//! Proxy (mhdzumair: `mhdzumair/mediafusion` on 8000 with MongoDB and Redis URLs,
//! `mhdzumair/mediaflow-proxy` on 8888, both with `/health`; MediaFusion is pinned to
//! its Python 4.x line, whose probe this is — the 6.x line is a Rust rewrite; the exact
//! 4.x and MediaFlow tags are from memory), Jackett and Prowlarr
//! (LinuxServer images, which ship curl; Prowlarr's `/ping`), FlareSolverr
//! (`ghcr.io/flaresolverr/flaresolverr`, port 8191, `/health`). The layout follows
//! Viren070's Stremio docker-compose template. MediaFusion's MongoDB and Redis are the
//! fleet's replicated ones (`MEDIAFUSION_MONGO_URI`, `MEDIAFUSION_REDIS_URL`), to keep
//! the brief's count of eight. Every Stremio addon serves `/manifest.json`, which is the
//! probe where no health route is documented; AIOStreams' `/api/v1/health` is the route
//! its own `scripts/healthcheck.js` probes (its image carries busybox wget).

use super::build::{stack as make, svc, Svc};
use super::BACKEND;
use crate::model::Stack;

fn linuxserver(name: &str, image: &str, volume: &str) -> Svc {
    svc(name, image).env("PUID", "1000").env("PGID", "1000").env("TZ", "${TZ:-Etc/UTC}").vol(volume, "/config")
}

pub(super) fn stack() -> Stack {
    make(
        "stremio",
        "Stremio streaming server with addons (AIOStreams, Comet, MediaFusion) and indexers",
        vec![
            svc("stremio-server", "stremio/server:v4.20.8")
                .env("NO_CORS", "1")
                .vol("stremio-server", "/root/.stremio-server")
                .route_as("stremio", 11470)
                .warp()
                .health_curl(11470, "/settings")
                .ui("Media", "stremio.png", "Stremio streaming server"),
            svc("aiostreams", "ghcr.io/viren070/aiostreams:v2.8.2")
                .env("BASE_URL", "https://aiostreams.${DOMAIN}")
                .secret_env("SECRET_KEY", "AIOSTREAMS_SECRET_KEY")
                .secret_env("ADDON_PASSWORD", "AIOSTREAMS_ADDON_PASSWORD")
                .env("DATABASE_URI", "sqlite://./data/db.sqlite")
                .env("COMET_URL", "http://stremio-comet:8000")
                .env("MEDIAFUSION_URL", "http://stremio-mediafusion:8000")
                .vol("stremio-aiostreams", "/app/data")
                .route(3000)
                .warp()
                .health_wget(3000, "/api/v1/health")
                .ui("Media", "aiostreams.png", "One addon over all the others"),
            svc("comet", "g0ldyy/comet:v2.58.0")
                .env("ADDON_NAME", "Comet")
                .env("DATABASE_TYPE", "sqlite")
                .env("DATABASE_PATH", "data/comet.db")
                .env("INDEXER_MANAGER_TYPE", "prowlarr")
                .env("INDEXER_MANAGER_URL", "http://stremio-prowlarr:9696")
                .secret_env("INDEXER_MANAGER_API_KEY", "PROWLARR_API_KEY")
                .secret_env("ADMIN_DASHBOARD_PASSWORD", "COMET_ADMIN_PASSWORD")
                .vol("stremio-comet", "/app/data")
                .route(8000)
                .warp()
                .health_python(8000, "/manifest.json")
                .ui("Media", "comet.png", "Debrid stream addon")
                .after_healthy("prowlarr"),
            svc("mediafusion", "mhdzumair/mediafusion:4.3.21")
                .env("HOST_URL", "https://mediafusion.${DOMAIN}")
                .secret_env("SECRET_KEY", "MEDIAFUSION_SECRET_KEY")
                .secret_env("API_PASSWORD", "MEDIAFUSION_API_PASSWORD")
                .secret_env("MONGO_URI", "MEDIAFUSION_MONGO_URI")
                .secret_env("REDIS_URL", "MEDIAFUSION_REDIS_URL")
                .env("PROWLARR_URL", "http://stremio-prowlarr:9696")
                .secret_env("PROWLARR_API_KEY", "PROWLARR_API_KEY")
                .env("FLARESOLVERR_URL", "http://stremio-flaresolverr:8191")
                .env("MEDIAFLOW_PROXY_URL", "https://mediaflow.${DOMAIN}")
                .route(8000)
                .warp()
                .health_python(8000, "/health")
                .timing(30, 10, 3, 60)
                .ui("Media", "mediafusion.png", "Catalog and stream addon")
                .after_healthy("prowlarr")
                .after_healthy("flaresolverr"),
            // Proxies debrid streams: egress stays on the node's own address (debrid
            // services refuse shared VPN addresses).
            svc("mediaflow-proxy", "mhdzumair/mediaflow-proxy:2.0.1")
                .secret_env("API_PASSWORD", "MEDIAFLOW_API_PASSWORD")
                .route_as("mediaflow", 8888)
                .health_python(8888, "/health")
                .ui("Media", "mediaflow.png", "Stream proxy for debrid links"),
            linuxserver("jackett", "lscr.io/linuxserver/jackett:0.22.998", "stremio-jackett")
                .route(9117)
                .warp()
                .backend()
                .health_curl(9117, "/UI/Login")
                .ui("Media", "jackett.png", "Torrent indexer proxy")
                .after_healthy("flaresolverr"),
            linuxserver("prowlarr", "lscr.io/linuxserver/prowlarr:1.25.4", "stremio-prowlarr")
                .route(9696)
                .warp()
                .backend()
                .health_curl(9696, "/ping")
                .ui("Media", "prowlarr.png", "Indexer manager")
                .after_healthy("flaresolverr"),
            svc("flaresolverr", "ghcr.io/flaresolverr/flaresolverr:v3.3.21")
                .env("LOG_LEVEL", "info")
                .env("TZ", "${TZ:-Etc/UTC}")
                .warp()
                .net(&[BACKEND])
                .health_python(8191, "/health")
                .timing(30, 10, 3, 30),
        ],
    )
}

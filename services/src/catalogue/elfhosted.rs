//! The Elfhosted stack (10): the debrid media stack ElfHosted offers as hosted apps —
//! Zurg (Real-Debrid WebDAV), rclone (mounts it), Riven with its frontend (library
//! automation), Zilean (DMM hash index), PostgreSQL for both, Plex and Jellyfin (media
//! servers), Jellyseerr (requests) and Tautulli (Plex statistics).
//!
//! Sources: the app list is ElfHosted's published catalogue (elfhosted.com/apps); images
//! are the upstream projects' own, with their published compose files as reference —
//! debridmediamanager/zurg-testing (`ghcr.io/debridmediamanager/zurg-testing`, port 9999,
//! `/app/config.yml`, the `curl -f …/dav/version.txt` check), rclone (`rclone/rclone`,
//! `mount` with FUSE: `SYS_ADMIN` and `/dev/fuse`, carried as labels), rivenmedia/riven
//! (`spoked/riven` on 8080 with `RIVEN_DATABASE_HOST`, `spoked/riven-frontend` on 3000),
//! iPromKnight/zilean (`ipromknight/zilean`, port 8181, `/healthchecks/ping` with curl),
//! LinuxServer's Plex and Tautulli images (curl inside), `jellyfin/jellyfin` (its image's
//! curl `/health` check) and `fallenbagel/jellyseerr` (Node on Alpine, `/api/v1/status`).
//! Riven's `/api/v1/health` route is my reading of its API (unsure), as are the
//! `riven-frontend` and Plex tags; Riven's and Zilean's tags are ones public deployments pin. The mount is shared
//! through the host path `/mnt/elfhosted`, which needs `rshared` propagation — deploy
//! must bind it so, or mount it on the host. ElfHosted's own rebuilt images
//! (`ghcr.io/elfhosted/*`) are not used: their tags could not be checked offline.

use super::build::{stack as make, svc, Svc};
use super::{config_path, BACKEND, PUBLICNET};
use crate::model::Stack;

const S: &str = "elfhosted";
const MEDIA: &str = "/mnt/elfhosted";

fn linuxserver(name: &str, image: &str, volume: &str) -> Svc {
    svc(name, image).env("PUID", "1000").env("PGID", "1000").env("TZ", "${TZ:-Etc/UTC}").vol(volume, "/config")
}

pub(super) fn stack() -> Stack {
    make(
        S,
        "Debrid media stack as ElfHosted runs it: Zurg, rclone, Riven, Zilean, Plex, Jellyfin",
        vec![
            svc("postgres", "postgres:16-alpine")
                .env("POSTGRES_USER", "riven")
                .env("POSTGRES_DB", "riven")
                .secret_env("POSTGRES_PASSWORD", "ELFHOSTED_POSTGRES_PASSWORD")
                .vol("elfhosted-postgres", "/var/lib/postgresql/data")
                // Creates Zilean's database on first start.
                .bind_ro(&config_path(S, "postgres-init"), "/docker-entrypoint-initdb.d")
                .backend()
                .health_shell("pg_isready -d \"$POSTGRES_DB\" -U \"$POSTGRES_USER\"")
                .timing(10, 5, 5, 20),
            // Talks to the Real-Debrid API, which refuses VPN addresses: direct egress.
            svc("zurg", "ghcr.io/debridmediamanager/zurg-testing:v0.9.3-final")
                .bind_ro(&config_path(S, "zurg/config.yml"), "/app/config.yml")
                .vol("elfhosted-zurg", "/app/data")
                .net(&[BACKEND, PUBLICNET])
                .health_shell("curl -f http://127.0.0.1:9999/dav/version.txt || exit 1"),
            svc("rclone", "rclone/rclone:1.68.1")
                .cmd(&[
                    "mount",
                    "zurg:",
                    "/data",
                    "--allow-other",
                    "--allow-non-empty",
                    "--dir-cache-time",
                    "10s",
                    "--vfs-cache-mode",
                    "full",
                ])
                .bind_ro(&config_path(S, "rclone/rclone.conf"), "/config/rclone/rclone.conf")
                .bind(MEDIA, "/data")
                .cap_add(&["SYS_ADMIN"])
                .device("/dev/fuse")
                .backend()
                .health_shell("ls /data/__all__ > /dev/null")
                .after_healthy("zurg"),
            svc("zilean", "ipromknight/zilean:v3.5.0")
                .env(
                    "Zilean__Database__ConnectionString",
                    "Host=elfhosted-postgres;Port=5432;Database=zilean;Username=riven;Password=${ELFHOSTED_POSTGRES_PASSWORD}",
                )
                .vol("elfhosted-zilean", "/app/data")
                .backend()
                .warp()
                .health_shell("curl -f http://127.0.0.1:8181/healthchecks/ping || exit 1")
                .timing(30, 10, 5, 60)
                .after_healthy("postgres"),
            svc("riven", "spoked/riven:v0.23.4")
                .env("RIVEN_FORCE_ENV", "true")
                .env(
                    "RIVEN_DATABASE_HOST",
                    "postgresql+psycopg2://riven:${ELFHOSTED_POSTGRES_PASSWORD}@elfhosted-postgres/riven",
                )
                .env("RIVEN_SCRAPING_ZILEAN_ENABLED", "true")
                .env("RIVEN_SCRAPING_ZILEAN_URL", "http://elfhosted-zilean:8181")
                .env("RIVEN_SYMLINK_RCLONE_PATH", "/mnt/zurg/__all__")
                .env("RIVEN_SYMLINK_LIBRARY_PATH", "/mnt/library")
                .secret_env("RIVEN_DOWNLOADERS_REAL_DEBRID_API_KEY", "REAL_DEBRID_API_KEY")
                .secret_env("API_KEY", "RIVEN_API_KEY")
                .vol("elfhosted-riven", "/riven/data")
                .bind(MEDIA, "/mnt/zurg")
                .bind(&format!("{MEDIA}-library"), "/mnt/library")
                .backend()
                .route_as("riven-api", 8080)
                .warp()
                .health_python(8080, "/api/v1/health")
                .timing(30, 10, 3, 60)
                .after_healthy("postgres")
                .after_healthy("zilean")
                .after_healthy("rclone"),
            svc("riven-frontend", "spoked/riven-frontend:v0.17.0")
                .env("BACKEND_URL", "http://elfhosted-riven:8080")
                .env("ORIGIN", "https://riven.${DOMAIN}")
                .env("DIALECT", "postgres")
                .env(
                    "DATABASE_URL",
                    "postgres://riven:${ELFHOSTED_POSTGRES_PASSWORD}@elfhosted-postgres/riven",
                )
                .backend()
                .route_as("riven", 3000)
                .health_node(3000, "/")
                .ui("Media", "riven.png", "Library automation")
                .after_healthy("riven"),
            linuxserver("plex", "lscr.io/linuxserver/plex:1.41.1", "elfhosted-plex")
                .env("VERSION", "docker")
                .secret_env("PLEX_CLAIM", "PLEX_CLAIM")
                .bind_ro(MEDIA, "/mnt/zurg")
                .bind_ro(&format!("{MEDIA}-library"), "/mnt/library")
                .route(32400)
                .health_curl(32400, "/identity")
                .timing(30, 10, 3, 60)
                .ui("Media", "plex.png", "Media server")
                .after_healthy("rclone"),
            svc("jellyfin", "jellyfin/jellyfin:10.9.11")
                .env("JELLYFIN_PublishedServerUrl", "https://jellyfin.${DOMAIN}")
                .vol("elfhosted-jellyfin-config", "/config")
                .vol("elfhosted-jellyfin-cache", "/cache")
                .bind_ro(MEDIA, "/mnt/zurg")
                .bind_ro(&format!("{MEDIA}-library"), "/mnt/library")
                .route(8096)
                .health_curl(8096, "/health")
                .timing(30, 10, 3, 60)
                .ui("Media", "jellyfin.png", "Media server")
                .after_healthy("rclone"),
            svc("jellyseerr", "fallenbagel/jellyseerr:2.0.1")
                .env("TZ", "${TZ:-Etc/UTC}")
                .vol("elfhosted-jellyseerr", "/app/config")
                .route(5055)
                .health_wget(5055, "/api/v1/status")
                .ui("Media", "jellyseerr.png", "Media requests")
                .after_healthy("jellyfin"),
            linuxserver("tautulli", "lscr.io/linuxserver/tautulli:2.14.6", "elfhosted-tautulli")
                .route(8181)
                .health_curl(8181, "/status")
                .ui("Media", "tautulli.png", "Plex statistics")
                .after_healthy("plex"),
        ],
    )
}

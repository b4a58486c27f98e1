//! The Coolify-proxy stack (9): the node's Traefik-compatible front and the label readers
//! around it (deunhealth, AutoKuma, Homepage, Dozzle), a read-only engine socket proxy,
//! CrowdSec with its Traefik bouncer, and a Cloudflare tunnel.
//!
//! Sources: Coolify's proxy is `traefik:v3.1` with the Docker provider
//! (coollabsio/coolify, `docker-compose.prod.yml` / proxy templates); Traefik's `ping` and
//! `healthcheck --ping` are documented at doc.traefik.io. deunhealth (qdm12/deunhealth)
//! ships `/app healthcheck` (its Dockerfile's HEALTHCHECK); Dozzle documents `/dozzle healthcheck`; Homepage's
//! image checks `/api/healthcheck` with wget; Tecnativa's socket proxy is HAProxy on
//! Alpine (busybox wget) serving `/_ping`; CrowdSec's compose uses `cscli`; the bouncer is
//! fbonalair/traefik-crowdsec-bouncer (distroless with a busybox `/wget` added by its
//! Dockerfile; `/api/v1/healthz` is from its README, from memory). cloudflared's image is distroless (no shell, no probe): no check.
//!
//! Traefik is published on loopback only: Constellation's own entry points hold the
//! node's public 80/443, and forward to Traefik where a route needs Traefik middlewares.

use super::build::{stack as make, svc, LOOPBACK};
use super::{config_path, BACKEND, PUBLICNET};
use crate::model::Stack;

const S: &str = "coolify-proxy";

pub(super) fn stack() -> Stack {
    make(
        S,
        "Front proxy and node services: Traefik, deunhealth, AutoKuma, Homepage, Dozzle, CrowdSec, tunnel",
        vec![
            svc("socket-proxy", "tecnativa/docker-socket-proxy:0.2.0")
                .env("CONTAINERS", "1")
                .env("NETWORKS", "1")
                .env("EVENTS", "1")
                .env("INFO", "1")
                .env("POST", "0")
                .docker_socket()
                .backend()
                .health_wget(2375, "/_ping")
                .timing(10, 5, 3, 5),
            svc("traefik", "traefik:v3.1.6")
                .cmd(&[
                    "--ping=true",
                    "--providers.docker=true",
                    "--providers.docker.exposedbydefault=false",
                    "--providers.docker.endpoint=tcp://coolify-proxy-socket-proxy:2375",
                    "--providers.docker.network=publicnet",
                    "--providers.file.directory=/etc/traefik/dynamic",
                    "--entrypoints.http.address=:80",
                    "--entrypoints.https.address=:443",
                    "--accesslog=true",
                    "--accesslog.filepath=/var/log/traefik/access.log",
                    "--certificatesresolvers.letsencrypt.acme.storage=/acme/acme.json",
                    "--certificatesresolvers.letsencrypt.acme.httpchallenge.entrypoint=http",
                ])
                .net(&[PUBLICNET, BACKEND])
                .port(LOOPBACK, 8081, 80)
                .port(LOOPBACK, 8444, 443)
                .vol("coolify-proxy-acme", "/acme")
                .vol("coolify-proxy-traefik-logs", "/var/log/traefik")
                .bind_ro(&config_path(S, "traefik"), "/etc/traefik/dynamic")
                .health_cmd(&["traefik", "healthcheck", "--ping"])
                .timing(10, 5, 3, 10)
                .after_healthy("socket-proxy"),
            svc("deunhealth", "qmcgaw/deunhealth:v0.3.0")
                .env("LOG_LEVEL", "info")
                .env("HEALTH_SERVER_ADDRESS", "127.0.0.1:9999")
                .bind("/var/run/docker.sock", "/var/run/docker.sock")
                .backend()
                .health_cmd(&["/app", "healthcheck"])
                .timing(30, 5, 3, 5),
            svc("autokuma", "ghcr.io/bigboot/autokuma:0.8.0")
                .env("AUTOKUMA__KUMA__URL", "http://metrics-uptime-kuma:3001")
                .env("AUTOKUMA__KUMA__USERNAME", "${UPTIME_KUMA_USER}")
                .secret_env("AUTOKUMA__KUMA__PASSWORD", "UPTIME_KUMA_PASSWORD")
                .env("AUTOKUMA__TAG_NAME", "constellation")
                .vol("coolify-proxy-autokuma", "/data")
                .docker_socket()
                .net(&[PUBLICNET, BACKEND]),
            svc("homepage", "ghcr.io/gethomepage/homepage:v0.9.10")
                .env("HOMEPAGE_VAR_DOMAIN", "${DOMAIN}")
                .bind_ro(&config_path(S, "homepage"), "/app/config")
                .backend()
                .route_as("home", 3000)
                .health_wget(3000, "/api/healthcheck")
                .ui("Infrastructure", "homepage.png", "Dashboard of every service")
                .after_healthy("socket-proxy"),
            svc("dozzle", "amir20/dozzle:v8.5.0")
                .env("DOZZLE_NO_ANALYTICS", "true")
                .env("DOZZLE_AUTH_PROVIDER", "forward-proxy")
                .docker_socket()
                .route_as("logs", 8080)
                .health_cmd(&["/dozzle", "healthcheck"])
                .timing(10, 5, 3, 10)
                .ui("Infrastructure", "dozzle.png", "Container logs"),
            svc("crowdsec", "crowdsecurity/crowdsec:v1.6.3")
                .env("COLLECTIONS", "crowdsecurity/traefik crowdsecurity/http-cve")
                .secret_env("BOUNCER_KEY_TRAEFIK", "CROWDSEC_BOUNCER_API_KEY")
                .vol("coolify-proxy-crowdsec-data", "/var/lib/crowdsec/data")
                .vol("coolify-proxy-crowdsec-config", "/etc/crowdsec")
                .bind_ro(&config_path(S, "crowdsec/acquis.yaml"), "/etc/crowdsec/acquis.yaml")
                .vol("coolify-proxy-traefik-logs", "/var/log/traefik")
                .net(&[BACKEND, PUBLICNET])
                .health_cmd(&["cscli", "lapi", "status"])
                .timing(30, 10, 5, 60),
            svc("crowdsec-bouncer", "fbonalair/traefik-crowdsec-bouncer:0.5.0")
                .secret_env("CROWDSEC_BOUNCER_API_KEY", "CROWDSEC_BOUNCER_API_KEY")
                .env("CROWDSEC_AGENT_HOST", "coolify-proxy-crowdsec:8080")
                .env("GIN_MODE", "release")
                .backend()
                .health_cmd(&["/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/api/v1/healthz"])
                .after_healthy("crowdsec"),
            svc("cloudflared", "cloudflare/cloudflared:2024.10.0")
                .cmd(&["tunnel", "--no-autoupdate", "--metrics", "0.0.0.0:2000", "run"])
                .secret_env("TUNNEL_TOKEN", "CLOUDFLARE_TUNNEL_TOKEN")
                .net(&[PUBLICNET])
                .after_healthy("traefik"),
        ],
    )
}

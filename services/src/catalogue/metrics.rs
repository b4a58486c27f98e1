//! The Metrics stack (9): Prometheus, Alertmanager, Grafana, Loki and Promtail, the node
//! and container exporters, a blackbox prober, and Uptime Kuma (which AutoKuma, in the
//! Coolify-proxy stack, fills from `kuma.*` labels).
//!
//! Sources: the projects' own images and docs — `prom/*` images are built on
//! `quay.io/prometheus/busybox` (busybox wget; `/-/healthy` on Prometheus, Alertmanager
//! and blackbox_exporter); Grafana's Alpine image and `/api/health`; Loki 2.9's Alpine
//! image and `/ready` (grafana/loki `production/docker-compose.yaml`); Promtail's image is
//! Debian without curl or wget, hence the bash `/dev/tcp` probe of `/ready`; cAdvisor's
//! image has its own wget `/healthz` check and the documented read-only host mounts
//! (google/cadvisor README); node_exporter's documented `/host` root mount; Uptime Kuma's
//! image ships `extra/healthcheck` (louislam/uptime-kuma `docker/dockerfile`).

use super::build::{stack as make, svc};
use super::{config_path, BACKEND, PUBLICNET};
use crate::model::Stack;

const S: &str = "metrics";

pub(super) fn stack() -> Stack {
    make(
        S,
        "Metrics, logs and uptime: Prometheus, Grafana, Loki, exporters, Uptime Kuma",
        vec![
            svc("prometheus", "prom/prometheus:v2.54.1")
                .cmd(&[
                    "--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    "--storage.tsdb.retention.time=30d",
                    "--web.enable-lifecycle",
                ])
                .bind_ro(&config_path(S, "prometheus"), "/etc/prometheus")
                .vol("metrics-prometheus", "/prometheus")
                .backend()
                .route(9090)
                .health_wget(9090, "/-/healthy")
                .ui("Monitoring", "prometheus.png", "Metrics database"),
            svc("alertmanager", "prom/alertmanager:v0.27.0")
                .cmd(&["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"])
                .bind_ro(&config_path(S, "alertmanager"), "/etc/alertmanager")
                .vol("metrics-alertmanager", "/alertmanager")
                .backend()
                .route(9093)
                .health_wget(9093, "/-/healthy")
                .ui("Monitoring", "alertmanager.png", "Alert routing"),
            svc("grafana", "grafana/grafana:11.2.2")
                .env("GF_SERVER_ROOT_URL", "https://grafana.${DOMAIN}")
                .env("GF_SECURITY_ADMIN_USER", "admin")
                .secret_file("GF_SECURITY_ADMIN_PASSWORD", "metrics/grafana_admin_password")
                .env("GF_ANALYTICS_REPORTING_ENABLED", "false")
                .vol("metrics-grafana", "/var/lib/grafana")
                .bind_ro(&config_path(S, "grafana/provisioning"), "/etc/grafana/provisioning")
                .backend()
                .route(3000)
                .health_wget(3000, "/api/health")
                .ui("Monitoring", "grafana.png", "Dashboards")
                .after_healthy("prometheus")
                .after_healthy("loki"),
            svc("loki", "grafana/loki:2.9.10")
                .cmd(&["-config.file=/etc/loki/local-config.yaml"])
                .vol("metrics-loki", "/loki")
                .backend()
                .health_wget(3100, "/ready")
                .timing(30, 10, 5, 30),
            svc("promtail", "grafana/promtail:2.9.10")
                .cmd(&["-config.file=/etc/promtail/config.yml"])
                .bind_ro(&config_path(S, "promtail/config.yml"), "/etc/promtail/config.yml")
                .bind_ro("/var/log", "/var/log")
                .bind_ro("/var/lib/docker/containers", "/var/lib/docker/containers")
                .docker_socket()
                .backend()
                .health_bash_http(9080, "/ready")
                .after_healthy("loki"),
            svc("node-exporter", "prom/node-exporter:v1.8.2")
                .cmd(&["--path.rootfs=/host"])
                .bind_ro("/", "/host")
                .backend()
                .health_wget(9100, "/metrics"),
            svc("cadvisor", "gcr.io/cadvisor/cadvisor:v0.49.1")
                .bind_ro("/", "/rootfs")
                .bind_ro("/var/run", "/var/run")
                .bind_ro("/sys", "/sys")
                .bind_ro("/var/lib/docker", "/var/lib/docker")
                .bind_ro("/dev/disk", "/dev/disk")
                .device("/dev/kmsg")
                .backend()
                .health_wget(8080, "/healthz"),
            // Probes public endpoints, so it needs egress as well as the backend.
            svc("blackbox-exporter", "prom/blackbox-exporter:v0.25.0")
                .cmd(&["--config.file=/etc/blackbox/blackbox.yml"])
                .bind_ro(&config_path(S, "blackbox"), "/etc/blackbox")
                .net(&[BACKEND, PUBLICNET])
                .health_wget(9115, "/-/healthy"),
            svc("uptime-kuma", "louislam/uptime-kuma:1.23.15")
                .vol("metrics-uptime-kuma", "/app/data")
                .backend()
                .route_as("status", 3001)
                .health_cmd(&["/app/extra/healthcheck"])
                .timing(60, 30, 5, 180)
                .ui("Monitoring", "uptime-kuma.png", "Uptime monitors"),
        ],
    )
}

//! Small builders that keep each catalogue service to a few lines: `svc(name, image)`
//! with chained setters for networks, volumes, health checks, routing and dashboard labels,
//! and `stack(...)`, which derives a stack's networks and named volumes from its services.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::model::{
    Dependency, DependencyCondition, EnvValue, HealthCheck, Mount, MountSource, NamedVolume, PortMapping, Protocol,
    Restart, Service, Stack,
};

use super::{networks, BACKEND, DOMAIN_VAR, PUBLICNET, SECRETS_DIR, WARP_NET};

/// Label marking a service whose outbound traffic leaves through the WARP gateway.
pub const LABEL_EGRESS: &str = "constellation.egress";

/// Loopback, for ports only the node itself may reach.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Every IPv4 address of the node, for ports that must be reached from outside.
pub const ANY_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// A service under construction.
pub struct Svc {
    service: Service,
    /// Host prefix and port of the Traefik router, when routed.
    route: Option<(String, u16)>,
    /// Homepage group, icon and description, when the service is user-facing.
    ui: Option<(&'static str, &'static str, &'static str)>,
}

/// Starts a service: restart `unless-stopped`, no networks yet.
pub fn svc(name: &str, image: &str) -> Svc {
    Svc { service: Service::new(name, image, Restart::UnlessStopped), route: None, ui: None }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

// === impl Svc ===

impl Svc {
    /// Adds Linux capabilities.
    pub fn cap_add(mut self, caps: &[&str]) -> Self {
        self.service.cap_add.extend(strings(caps));
        self
    }

    /// Passes a host device in.
    pub fn device(mut self, path: &str) -> Self {
        self.service.devices.push(path.to_owned());
        self
    }

    /// Sets a namespaced sysctl.
    pub fn sysctl(mut self, key: &str, value: &str) -> Self {
        self.service.sysctls.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the command (arguments).
    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.service.command = Some(strings(args));
        self
    }

    /// Sets the entrypoint.
    pub fn entrypoint(mut self, args: &[&str]) -> Self {
        self.service.entrypoint = Some(strings(args));
        self
    }

    /// A plain (non-secret) environment variable; may hold `${VAR}` references.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.service.environment.insert(key.to_owned(), EnvValue::Value(value.to_owned()));
        self
    }

    /// A secret taken from the deploying process's environment variable `var`.
    pub fn secret_env(mut self, key: &str, var: &str) -> Self {
        self.service.environment.insert(key.to_owned(), EnvValue::Value(format!("${{{var}}}")));
        self
    }

    /// A secret read from `/etc/constellation/secrets/<rel>` at deploy time.
    pub fn secret_file(mut self, key: &str, rel: &str) -> Self {
        self.service.environment.insert(key.to_owned(), EnvValue::File(PathBuf::from(SECRETS_DIR).join(rel)));
        self
    }

    fn mount(mut self, source: MountSource, target: &str, read_only: bool) -> Self {
        self.service.volumes.push(Mount { source, target: target.to_owned(), read_only });
        self
    }

    /// Mounts the stack's named volume `name` at `target`.
    pub fn vol(self, name: &str, target: &str) -> Self {
        self.mount(MountSource::Volume(name.to_owned()), target, false)
    }

    /// Mounts host path `host` at `target`, read-write.
    pub fn bind(self, host: &str, target: &str) -> Self {
        self.mount(MountSource::Bind(PathBuf::from(host)), target, false)
    }

    /// Mounts host path `host` at `target`, read-only.
    pub fn bind_ro(self, host: &str, target: &str) -> Self {
        self.mount(MountSource::Bind(PathBuf::from(host)), target, true)
    }

    /// Mounts the engine socket read-only (label readers: Homepage, AutoKuma, Dozzle).
    pub fn docker_socket(self) -> Self {
        self.bind_ro("/var/run/docker.sock", "/var/run/docker.sock")
    }

    /// Joins networks (engine names), the first being where the address is taken.
    pub fn net(mut self, names: &[&str]) -> Self {
        for n in names {
            if !self.service.networks.iter().any(|have| have == n) {
                self.service.networks.push((*n).to_owned());
            }
        }
        self
    }

    /// Publishes `container` on `ip:host` (TCP).
    pub fn port(mut self, ip: IpAddr, host: u16, container: u16) -> Self {
        self.service.ports.push(PortMapping {
            host_ip: Some(ip),
            host_port: Some(host),
            container_port: container,
            protocol: Protocol::Tcp,
        });
        self
    }

    /// Publishes `container` on `ip:host` (UDP).
    pub fn port_udp(mut self, ip: IpAddr, host: u16, container: u16) -> Self {
        self.service.ports.push(PortMapping {
            host_ip: Some(ip),
            host_port: Some(host),
            container_port: container,
            protocol: Protocol::Udp,
        });
        self
    }

    /// A health check in Docker's `["CMD", …]` form, default timing (30s/10s/3, 30s grace).
    pub fn health_cmd(self, args: &[&str]) -> Self {
        let mut test = vec!["CMD".to_owned()];
        test.extend(strings(args));
        self.health(test)
    }

    /// A health check in Docker's `["CMD-SHELL", line]` form.
    pub fn health_shell(self, line: &str) -> Self {
        self.health(vec!["CMD-SHELL".to_owned(), line.to_owned()])
    }

    /// HTTP check with busybox/alpine `wget` (present in alpine and busybox-based images).
    /// A GET, not `--spider`: some services answer HEAD with 405, and the socket proxy
    /// allows GET only.
    pub fn health_wget(self, port: u16, path: &str) -> Self {
        self.health_shell(&format!("wget -q -O /dev/null http://127.0.0.1:{port}{path} || exit 1"))
    }

    /// HTTP check with `curl -f` (for images that ship curl).
    pub fn health_curl(self, port: u16, path: &str) -> Self {
        self.health_cmd(&["curl", "-fsS", "-o", "/dev/null", &format!("http://127.0.0.1:{port}{path}")])
    }

    /// HTTP check with Node's `http` module (Node images without curl or wget); a 2xx or
    /// 3xx status passes.
    pub fn health_node(self, port: u16, path: &str) -> Self {
        self.health_node_at("node", port, path)
    }

    /// As [`Svc::health_node`], with the Node binary at `node` (distroless images have it
    /// at `/nodejs/bin/node`, outside `PATH`).
    pub fn health_node_at(self, node: &str, port: u16, path: &str) -> Self {
        let script = format!(
            "require('http').get('http://127.0.0.1:{port}{path}',r=>process.exit(r.statusCode<400?0:1)).on('error',()=>process.exit(1))"
        );
        self.health_cmd(&[node, "-e", &script])
    }

    /// HTTP check with Python's standard library (Python images without curl).
    pub fn health_python(self, port: u16, path: &str) -> Self {
        let script =
            format!("import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5)");
        self.health_cmd(&["python", "-c", &script])
    }

    /// HTTP check with bash's `/dev/tcp` (Debian images with neither curl nor wget):
    /// sends a GET and requires a `200` status line.
    pub fn health_bash_http(self, port: u16, path: &str) -> Self {
        let line = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"
        );
        self.health(vec!["CMD".to_owned(), "bash".to_owned(), "-c".to_owned(), line])
    }

    /// A health check with Docker's raw test vector (default timing).
    pub fn health(mut self, test: Vec<String>) -> Self {
        self.service.healthcheck = Some(HealthCheck {
            test,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            retries: 3,
            start_period: Duration::from_secs(30),
        });
        self
    }

    /// Overrides the health check's timing (seconds): interval, timeout, retries, grace.
    pub fn timing(mut self, interval: u64, timeout: u64, retries: u32, start_period: u64) -> Self {
        if let Some(h) = self.service.healthcheck.as_mut() {
            h.interval = Duration::from_secs(interval);
            h.timeout = Duration::from_secs(timeout);
            h.retries = retries;
            h.start_period = Duration::from_secs(start_period);
        }
        self
    }

    /// Starts after `service` is running.
    pub fn after(mut self, service: &str) -> Self {
        self.service
            .depends_on
            .push(Dependency { service: service.to_owned(), condition: DependencyCondition::Started });
        self
    }

    /// Starts after `service` is healthy.
    pub fn after_healthy(mut self, service: &str) -> Self {
        self.service
            .depends_on
            .push(Dependency { service: service.to_owned(), condition: DependencyCondition::Healthy });
        self
    }

    /// Routed by the proxy as `<service name>.${DOMAIN}` to container port `port`; joins
    /// `publicnet`.
    pub fn route(self, port: u16) -> Self {
        let host = self.service.name.clone();
        self.route_as(&host, port)
    }

    /// Routed as `<host>.${DOMAIN}` (router and service label names are `host`, which must
    /// be unique across the catalogue because Traefik merges labels across containers).
    pub fn route_as(mut self, host: &str, port: u16) -> Self {
        self.route = Some((host.to_owned(), port));
        self.net(&[PUBLICNET])
    }

    /// User-facing: Homepage tile (`group`, `icon`, `description`) and an Uptime Kuma
    /// HTTP monitor on the routed address.
    pub fn ui(mut self, group: &'static str, icon: &'static str, description: &'static str) -> Self {
        self.ui = Some((group, icon, description));
        self
    }

    /// Outbound traffic through WARP: joins `warp-nat-net` and carries the egress label.
    pub fn warp(self) -> Self {
        self.label(LABEL_EGRESS, "warp").net(&[WARP_NET])
    }

    /// Joins the node-local internal network.
    pub fn backend(self) -> Self {
        self.net(&[BACKEND])
    }

    /// Sets any label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.service.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Finishes the service: Traefik, Homepage, Uptime Kuma and deunhealth labels.
    pub fn build(self) -> Service {
        let Svc { mut service, route, ui } = self;
        let labels = &mut service.labels;
        if let Some((host, port)) = &route {
            let url = format!("https://{host}.${{{DOMAIN_VAR}}}");
            labels.insert("traefik.enable".into(), "true".into());
            labels.insert(format!("traefik.http.routers.{host}.rule"), format!("Host(`{host}.${{{DOMAIN_VAR}}}`)"));
            labels.insert(format!("traefik.http.routers.{host}.service"), host.clone());
            labels.insert(format!("traefik.http.services.{host}.loadbalancer.server.port"), port.to_string());
            if let Some((group, icon, description)) = ui {
                labels.insert("homepage.group".into(), group.into());
                labels.insert("homepage.name".into(), service.name.clone());
                labels.insert("homepage.icon".into(), icon.into());
                labels.insert("homepage.href".into(), url.clone());
                labels.insert("homepage.description".into(), description.into());
                labels.insert(format!("kuma.{host}.http.name"), format!("{} ({})", service.name, group));
                labels.insert(format!("kuma.{host}.http.url"), url);
            }
        }
        if service.healthcheck.is_some() {
            labels.insert("deunhealth.restart.on.unhealthy".into(), "true".into());
        }
        service
    }
}

/// Assembles a stack: its networks are the catalogue networks its services join (in the
/// catalogue's order), its volumes every named volume its services mount (first use order).
pub fn stack(name: &str, description: &str, services: Vec<Svc>) -> Stack {
    let services: Vec<Service> = services.into_iter().map(Svc::build).collect();
    let networks =
        networks().into_iter().filter(|n| services.iter().any(|s| s.networks.iter().any(|x| x == &n.name))).collect();
    let mut volumes: Vec<NamedVolume> = Vec::new();
    for m in services.iter().flat_map(|s| &s.volumes) {
        if let MountSource::Volume(v) = &m.source {
            if !volumes.iter().any(|have| &have.name == v) {
                volumes.push(NamedVolume { name: v.clone(), external: false });
            }
        }
    }
    Stack {
        name: name.to_owned(),
        description: description.to_owned(),
        origin: "catalogue".to_owned(),
        networks,
        volumes,
        services,
    }
}

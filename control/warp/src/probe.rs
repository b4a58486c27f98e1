//! One probe of a gateway: fetch the trace page through it and read the answer.
//!
//! SOCKS5 and HTTP-proxy gateways are probed with reqwest through the proxy (`socks5h`:
//! the gateway resolves the trace host, as the services using it do). A `network`
//! gateway is probed from a short-lived container on that network (the only way to
//! send a packet along the network's own default route without entering its namespace):
//! create, start, wait, read its output, remove.

use std::time::{Duration, Instant};

use bollard::Docker;
use futures_util::StreamExt;

use crate::config::{GatewayConfig, Via, DEFAULT_PROBE_IMAGE};
use crate::trace::{self, Trace, TraceError, MAX_TRACE_BYTES};

/// Label on probe containers (value: the gateway name), so leftovers can be found.
pub const PROBE_LABEL: &str = "constellation.warp.probe";

/// Why a probe failed. The text is what status shows.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer within the probe timeout.
    #[error("no trace answer within {0} ms")]
    Timeout(u64),
    /// The gateway, or the trace site through it, could not be reached.
    #[error("through {via}: {message}")]
    Unreachable {
        /// The gateway, e.g. `socks5 127.0.0.1:1080`.
        via: String,
        /// The client's error, with its causes.
        message: String,
    },
    /// The trace page answered with a status other than 200.
    #[error("trace page answered HTTP {0}")]
    Status(u16),
    /// The answer is not a trace.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The answer is longer than a trace answer can be.
    #[error("trace answer longer than {MAX_TRACE_BYTES} bytes")]
    TooLong,
    /// The probe container could not run.
    #[error("probe container: {0}")]
    Docker(String),
}

/// A successful probe.
#[derive(Debug, Clone)]
pub struct Probed {
    /// What the trace said.
    pub trace: Trace,
    /// How long the probe took.
    pub latency: Duration,
}

/// Everything needed to probe one gateway, built once.
pub struct GatewayProber {
    via: Via,
    client: Option<reqwest::Client>,
    docker: Option<Docker>,
}

/// An error and its causes, `a: b: c`, without repeats.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

impl GatewayProber {
    /// A prober for `g` (validated). `docker` is needed for `network` gateways.
    ///
    /// # Errors
    /// When the HTTP client cannot be built, or a network gateway has no engine.
    pub fn new(g: &GatewayConfig, docker: Option<Docker>) -> Result<Self, String> {
        let via = g.via().ok_or("give exactly one of socks5, http_proxy and network")?;
        let proxy = match &via {
            Via::Socks5(a) => Some(format!("socks5h://{a}")),
            Via::HttpProxy(a) => Some(format!("http://{a}")),
            Via::Network(_) => None,
        };
        let client = match proxy {
            Some(p) => {
                let proxy = reqwest::Proxy::all(&p).map_err(|e| chain(&e))?;
                let c = reqwest::Client::builder()
                    .proxy(proxy)
                    .timeout(g.timeout())
                    .connect_timeout(g.timeout())
                    .redirect(reqwest::redirect::Policy::none())
                    .pool_max_idle_per_host(0)
                    .user_agent(concat!("constellation-warp/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| chain(&e))?;
                Some(c)
            }
            None => None,
        };
        if matches!(via, Via::Network(_)) && docker.is_none() {
            return Err("a network gateway needs the Docker engine, which is not reachable".into());
        }
        Ok(GatewayProber { via, client, docker })
    }

    /// Probe once, bounded by the gateway's timeout.
    pub async fn probe(&self, g: &GatewayConfig) -> Result<Probed, ProbeError> {
        let started = Instant::now();
        let timeout = g.timeout();
        let body = match (&self.via, &self.client, &self.docker) {
            (Via::Network(net), _, Some(docker)) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let name = format!("constellation-warp-probe-{}-{nanos}", g.name);
                // The container's own start-up is allowed on top of the probe's time.
                match tokio::time::timeout(timeout + CONTAINER_GRACE, probe_in_container(docker, g, net, &name)).await {
                    Ok(r) => r?,
                    Err(_) => {
                        remove(docker, &name).await;
                        return Err(ProbeError::Timeout(timeout.as_millis() as u64));
                    }
                }
            }
            (_, Some(client), _) => {
                match tokio::time::timeout(timeout, fetch(client, &g.trace_url, &self.via, timeout.as_millis() as u64))
                    .await
                {
                    Ok(r) => r?,
                    Err(_) => return Err(ProbeError::Timeout(timeout.as_millis() as u64)),
                }
            }
            _ => return Err(ProbeError::Docker("no engine".into())),
        };
        let trace = trace::parse(&body)?;
        Ok(Probed { trace, latency: started.elapsed() })
    }
}

/// Time a probe container may take beyond the probe timeout (create, start, remove).
pub const CONTAINER_GRACE: Duration = Duration::from_secs(10);

async fn fetch(client: &reqwest::Client, url: &str, via: &Via, timeout_ms: u64) -> Result<String, ProbeError> {
    let unreachable = |e: reqwest::Error| {
        if e.is_timeout() {
            return ProbeError::Timeout(timeout_ms);
        }
        // reqwest's own text repeats the URL; its causes say what went wrong.
        let message = match std::error::Error::source(&e) {
            Some(cause) => chain(cause),
            None => chain(&e),
        };
        ProbeError::Unreachable { via: via.describe(), message }
    };
    let mut resp = client.get(url).send().await.map_err(unreachable)?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(ProbeError::Status(resp.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_TRACE_BYTES {
            return Err(ProbeError::TooLong);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn remove(docker: &Docker, name: &str) {
    use bollard::query_parameters::RemoveContainerOptionsBuilder;
    let _ = docker.remove_container(name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
}

async fn probe_in_container(
    docker: &Docker,
    g: &GatewayConfig,
    network: &str,
    name: &str,
) -> Result<String, ProbeError> {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
    let body = ContainerCreateBody {
        image: Some(g.probe_image.clone().unwrap_or_else(|| DEFAULT_PROBE_IMAGE.to_string())),
        cmd: Some(g.probe_argv()),
        labels: Some([(PROBE_LABEL.to_string(), g.name.clone())].into_iter().collect()),
        host_config: Some(HostConfig { network_mode: Some(network.to_string()), ..HostConfig::default() }),
        ..ContainerCreateBody::default()
    };
    let err = |what: &str| {
        let what = what.to_string();
        move |e: bollard::errors::Error| ProbeError::Docker(format!("{what}: {e}"))
    };
    // Probe containers of an agent killed mid-probe are left behind, exited: clear them.
    let filters: std::collections::HashMap<&str, Vec<String>> = [
        ("label", vec![format!("{PROBE_LABEL}={}", g.name)]),
        ("status", vec!["exited".to_string(), "dead".to_string()]),
    ]
    .into_iter()
    .collect();
    let list = bollard::query_parameters::ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    if let Ok(stale) = docker.list_containers(Some(list)).await {
        for c in stale.iter().filter_map(|c| c.id.as_deref()) {
            remove(docker, c).await;
        }
    }
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    docker.create_container(Some(opts), body).await.map_err(err("create"))?;
    let outcome = async {
        docker.start_container(name, None).await.map_err(err("start"))?;
        let mut wait = docker.wait_container(name, None::<bollard::query_parameters::WaitContainerOptions>);
        let code = match wait.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(err("wait")(e)),
            None => 0,
        };
        let mut logs = docker.logs(name, Some(LogsOptionsBuilder::default().stdout(true).stderr(true).build()));
        let (mut out, mut errs) = (Vec::new(), Vec::new());
        while let Some(item) = logs.next().await {
            match item.map_err(err("logs"))? {
                bollard::container::LogOutput::StdOut { message } => out.extend_from_slice(&message),
                bollard::container::LogOutput::StdErr { message } => errs.extend_from_slice(&message),
                _ => {}
            }
            if out.len() > MAX_TRACE_BYTES {
                return Err(ProbeError::TooLong);
            }
        }
        if code != 0 {
            let text = String::from_utf8_lossy(&errs).trim().chars().take(200).collect::<String>();
            return Err(ProbeError::Unreachable {
                via: format!("network {network}"),
                message: format!("probe exited {code}: {text}"),
            });
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
    .await;
    remove(docker, name).await;
    outcome
}

/// The gateway container's engine state and health (`running`/`healthy`, …), or why
/// it could not be inspected.
pub async fn container_state(docker: &Docker, container: &str) -> Result<(String, String), String> {
    let c = docker.inspect_container(container, None).await.map_err(|e| e.to_string())?;
    let state = c.state.as_ref();
    let status = state.and_then(|s| s.status).map(|s| s.to_string()).unwrap_or_else(|| "unknown".into());
    let health = state
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .map(|h| h.to_string())
        .unwrap_or_else(|| "none".into());
    Ok((status, health))
}

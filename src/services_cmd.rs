//! `constellation services list|show` and `constellation deploy`: the built-in catalogue
//! plus the agent config's compose files, rendered, and reconciled into the local engine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use constellation_plane::config;
use constellation_services::compose::ImportOptions;
use constellation_services::deploy::{self, Action, DeployOptions};
use constellation_services::stacks::{self, StackError};
use constellation_services::{engine, validate, EnvValue, MountSource, Service, Stack};
use serde::Serialize;

use crate::{EX_CONFIG, EX_USAGE};

/// Request timeout for engine calls, seconds (an image pull is one request).
const ENGINE_TIMEOUT_SECS: u64 = 600;

/// The stacks a config defines and the engine it names.
struct Loaded {
    stacks: Vec<Stack>,
    endpoint: Option<String>,
    /// `[docker] network`: created when missing, even where a compose file calls it external.
    network: Option<String>,
}

fn load(config_path: Option<&Path>) -> Result<Loaded, ExitCode> {
    let (files, base, options, endpoint) = match config_path {
        None => (Vec::new(), PathBuf::from("."), ImportOptions::default(), None),
        Some(path) => {
            let cfg = config::load_all(Some(path)).map_err(|errors| {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                ExitCode::from(EX_CONFIG)
            })?;
            let options = ImportOptions { default_network: cfg.config.docker.network.clone() };
            (cfg.config.services.files.clone(), cfg.base_dir.clone(), options, Some(cfg.config.docker.endpoint.clone()))
        }
    };
    let stacks = stacks::load(&files, &base, &options).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        ExitCode::from(EX_CONFIG)
    })?;
    Ok(Loaded { stacks, endpoint, network: options.default_network.clone() })
}

fn usage(e: &StackError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EX_USAGE)
}

/// The rules of the service's `traefik.http.routers.*.rule` labels.
fn routes(service: &Service) -> Vec<String> {
    service
        .labels
        .iter()
        .filter(|(k, _)| k.starts_with("traefik.http.routers.") && k.ends_with(".rule"))
        .map(|(_, v)| v.clone())
        .collect()
}

fn healthcheck_summary(service: &Service) -> String {
    match &service.healthcheck {
        None => "-".into(),
        Some(h) if h.test.first().map(String::as_str) == Some("NONE") => "disabled".into(),
        Some(h) => {
            let cmd = h.test.iter().skip(1).cloned().collect::<Vec<_>>().join(" ");
            let short: String = cmd.chars().take(40).collect();
            let short = if short.len() < cmd.len() { format!("{short}…") } else { short };
            format!("{short} (every {})", human(h.interval))
        }
    }
}

fn human(d: std::time::Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

#[derive(Serialize)]
struct Row<'a> {
    stack: &'a str,
    service: &'a str,
    container: String,
    image: &'a str,
    networks: &'a [String],
    routes: Vec<String>,
    healthcheck: Option<&'a [String]>,
}

/// `constellation services list`.
pub fn list(config_path: Option<&Path>, stack: Option<&str>, json: bool) -> ExitCode {
    let loaded = match load(config_path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let selected = match stacks::select(&loaded.stacks, stack) {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    let rows: Vec<Row> = selected
        .iter()
        .flat_map(|st| {
            st.services.iter().map(|s| Row {
                stack: &st.name,
                service: &s.name,
                container: s.container_name(&st.name),
                image: &s.image,
                networks: &s.networks,
                routes: routes(s),
                healthcheck: s.healthcheck.as_ref().map(|h| h.test.as_slice()),
            })
        })
        .collect();
    if json {
        match serde_json::to_string_pretty(&rows) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    let mut table = vec![["STACK", "SERVICE", "IMAGE", "NETWORKS", "ROUTES", "HEALTHCHECK"].map(String::from).to_vec()];
    for (row, st_svc) in rows.iter().zip(selected.iter().flat_map(|st| st.services.iter())) {
        let routes = if row.routes.is_empty() { "-".to_string() } else { row.routes.join(", ") };
        let networks = if row.networks.is_empty() { "-".to_string() } else { row.networks.join(",") };
        table.push(vec![
            row.stack.to_string(),
            row.service.to_string(),
            row.image.to_string(),
            networks,
            routes,
            healthcheck_summary(st_svc),
        ]);
    }
    print_table(&table);
    ExitCode::SUCCESS
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// `constellation services show NAME`.
pub fn show(config_path: Option<&Path>, name: &str) -> ExitCode {
    let loaded = match load(config_path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let (st, s) = match stacks::find_service(&loaded.stacks, name) {
        Ok(found) => found,
        Err(e) => return usage(&e),
    };
    println!("service:     {}/{}", st.name, s.name);
    println!("stack:       {} ({})", st.name, st.origin);
    if !st.description.is_empty() {
        println!("about:       {}", st.description);
    }
    println!("container:   {}", s.container_name(&st.name));
    println!("image:       {}", s.image);
    if let Some(c) = &s.entrypoint {
        println!("entrypoint:  {}", serde_json::to_string(c).unwrap_or_default());
    }
    if let Some(c) = &s.command {
        println!("command:     {}", serde_json::to_string(c).unwrap_or_default());
    }
    println!(
        "restart:     {}",
        serde_json::to_value(s.restart).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    );
    println!("networks:    {}", if s.networks.is_empty() { "-".into() } else { s.networks.join(", ") });
    for n in &s.networks {
        if let Some(def) =
            st.networks.iter().chain(constellation_services::catalogue::networks().iter()).find(|d| &d.name == n)
        {
            let mut flags = vec![def.driver.clone()];
            if def.internal {
                flags.push("internal".into());
            }
            if def.external {
                flags.push("external".into());
            }
            println!("  {n}: {}", flags.join(", "));
        }
    }
    if !s.ports.is_empty() {
        println!("ports:");
        for p in &s.ports {
            let host = match (p.host_ip, p.host_port) {
                (Some(ip), Some(port)) => format!("{ip}:{port}"),
                (Some(ip), None) => format!("{ip}:(any)"),
                (None, Some(port)) => port.to_string(),
                (None, None) => "(any)".into(),
            };
            let proto =
                serde_json::to_value(p.protocol).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            println!("  {host} -> {}/{proto}", p.container_port);
        }
    }
    if !s.volumes.is_empty() {
        println!("volumes:");
        for m in &s.volumes {
            let src = match &m.source {
                MountSource::Volume(v) => format!("volume {v}"),
                MountSource::Bind(p) => format!("bind {}", p.display()),
            };
            println!("  {src} -> {}{}", m.target, if m.read_only { " (read-only)" } else { "" });
        }
    }
    if !s.env_files.is_empty() {
        println!("env files:");
        for f in &s.env_files {
            println!("  {}", f.display());
        }
    }
    if !s.environment.is_empty() {
        println!("environment:");
        for (k, v) in &s.environment {
            match v {
                // As written: secrets are references (`${VAR}`) until deploy time.
                EnvValue::Value(text) => println!("  {k}={text}"),
                EnvValue::File(path) => println!("  {k}=<contents of {}>", path.display()),
            }
        }
    }
    if !s.cap_add.is_empty() {
        println!("capabilities: {}", s.cap_add.join(", "));
    }
    if !s.devices.is_empty() {
        println!("devices:     {}", s.devices.join(", "));
    }
    for (k, v) in &s.sysctls {
        println!("sysctl:      {k}={v}");
    }
    match &s.healthcheck {
        None => println!("healthcheck: - (the image's own, if any)"),
        Some(h) => {
            println!("healthcheck: {}", serde_json::to_string(&h.test).unwrap_or_default());
            println!(
                "  interval {}, timeout {}, retries {}, start period {}",
                human(h.interval),
                human(h.timeout),
                h.retries,
                human(h.start_period)
            );
        }
    }
    if !s.depends_on.is_empty() {
        println!("depends on:");
        for d in &s.depends_on {
            let cond =
                serde_json::to_value(d.condition).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            println!("  {} ({cond})", d.service);
        }
    }
    let r = routes(s);
    if !r.is_empty() {
        println!("routes:      {}", r.join(", "));
    }
    if !s.labels.is_empty() {
        println!("labels:");
        for (k, v) in &s.labels {
            println!("  {k}={v}");
        }
    }
    ExitCode::SUCCESS
}

/// `constellation deploy`.
pub fn deploy(config_path: Option<&Path>, stack: Option<&str>, dry_run: bool) -> ExitCode {
    let loaded = match load(config_path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let selected = match stacks::select(&loaded.stacks, stack) {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    // Errors refuse the deploy; advisories (an unpinned image, a routed service without a
    // health check) are warnings: a compose file may be deployable as it stands.
    let mut refused = false;
    for s in &selected {
        let f = validate::findings(s);
        for p in &f.advisories {
            eprintln!("warning: {p}");
        }
        for p in &f.errors {
            eprintln!("error: {p}");
            refused = true;
        }
    }
    if refused {
        return ExitCode::from(EX_CONFIG);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run_deploy(loaded.endpoint.as_deref(), loaded.network.as_deref(), &selected, dry_run))
}

async fn run_deploy(endpoint: Option<&str>, network: Option<&str>, selected: &[&Stack], dry_run: bool) -> ExitCode {
    let docker = match engine::connect(endpoint, ENGINE_TIMEOUT_SECS).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut options = DeployOptions::from_process_env();
    options.shared_networks = constellation_services::catalogue::networks();
    if let Some(name) = network {
        if !options.shared_networks.iter().any(|n| n.name == name) {
            options.shared_networks.push(constellation_services::Network {
                name: name.to_string(),
                driver: "bridge".into(),
                internal: false,
                external: false,
            });
        }
    }
    let fail = |e: deploy::DeployError| {
        eprintln!("error: {e}");
        ExitCode::from(if e.is_configuration() { EX_CONFIG } else { 1 })
    };
    let plan = match deploy::plan(&docker, selected, &options).await {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    // stdout carries exactly the plan, one `<action> <container>` line each; everything
    // else (notes, progress, the outcome) goes to stderr.
    for step in &plan.steps {
        println!("{step}");
    }
    for n in plan.networks.iter().filter(|n| !n.exists) {
        eprintln!(
            "note: network {} will be created{}",
            n.network.name,
            if n.network.internal { " (internal)" } else { "" }
        );
    }
    for v in plan.volumes.iter().filter(|v| !v.exists) {
        eprintln!("note: volume {} will be created", v.volume.name);
    }
    for i in &plan.missing_images {
        eprintln!("note: image {i} is not present and will be pulled");
    }
    for s in plan.steps.iter().filter(|s| s.reason.is_some()) {
        eprintln!("note: {} is replaced: {}", s.container, s.reason.as_deref().unwrap_or_default());
    }
    if dry_run {
        eprintln!("dry run: nothing changed");
        return ExitCode::SUCCESS;
    }
    let mut progress = |line: &str| eprintln!("{line}");
    match deploy::apply(&docker, &plan, &options, &mut progress).await {
        Ok(_) => {
            let count = |a: Action| plan.steps.iter().filter(|s| s.action == a).count();
            eprintln!(
                "deployed: {} created, {} replaced, {} removed, {} unchanged",
                count(Action::Create),
                count(Action::Replace),
                count(Action::Remove),
                count(Action::Unchanged)
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

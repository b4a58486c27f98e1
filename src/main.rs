//! `constellation`: the command-line entry point, and the one binary every node runs.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use constellation_plane::config;

mod agent;
mod check;
mod cli;
mod demo;
mod pingora_log;
mod services_cmd;
mod shutdown;
mod welcome;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code: bad usage.
const EX_USAGE: u8 = 64;
/// Exit code: bad configuration.
const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(name = "constellation", version, about = "A self-hosted front door: failover proxy, gossip, leases, DNS.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (proxy, admin API, control plane).
    Agent {
        /// Configuration file; without it the embedded single-node default runs on loopback.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Serve routers that need features Constellation does not apply, without them
        /// (unsafe: e.g. a basicAuth-protected page is served unprotected), instead of
        /// refusing their requests with 503. Same as `[proxy] allow_unsupported = true`.
        #[arg(long)]
        allow_unsupported: bool,
    },
    /// A self-contained failover demonstration on loopback.
    Demo {
        /// How long to drive traffic, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Show routes, upstreams and breaker states of a running agent.
    Status {
        #[command(flatten)]
        api: AdminArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Make a new cluster key (64 hex characters; keep it secret).
    Keygen {
        /// Write it to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Traefik provider tools.
    Traefik {
        #[command(subcommand)]
        command: TraefikCommand,
    },
    /// DNS controller tools.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// The Raft lease group: status and membership changes (through any voter's admin API).
    Raft {
        #[command(subcommand)]
        command: RaftCommand,
    },
    /// The service catalogue and the config's compose stacks (see docs/services.md).
    Services {
        #[command(subcommand)]
        command: ServicesCommand,
    },
    /// Reconcile the local Docker engine to the stack definitions: print the plan
    /// (`create|replace|remove|unchanged <container>`, one line each), then apply it.
    Deploy {
        /// Agent configuration (for `[docker]` and `[services]`); without it, only the
        /// built-in catalogue and the default engine socket.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Only this stack (default: all).
        #[arg(long)]
        stack: Option<String>,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum ServicesCommand {
    /// A table of services: stack, service, image, networks, routes, health check.
    List {
        /// Agent configuration (for `[services] files`); without it, the built-in catalogue.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Only this stack.
        #[arg(long)]
        stack: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one service (`service` or `stack/service`); secrets are shown as
    /// the references they are written as.
    Show {
        /// The service.
        name: String,
        /// Agent configuration; without it, the built-in catalogue.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
}

/// Where a running agent's admin API is, and its token.
#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API base URL.
    #[arg(long, default_value = "http://127.0.0.1:9180")]
    admin: String,
    /// Admin bearer token (default: $CONSTELLATION_ADMIN__TOKEN).
    #[arg(long)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum DnsCommand {
    /// Show the DNS controller's role, last outcome and (in dry-run) its plan.
    Plan {
        #[command(flatten)]
        api: AdminArgs,
    },
}

#[derive(Subcommand)]
enum RaftCommand {
    /// Leader, term, voters and learners, and the leases.
    Status {
        #[command(flatten)]
        api: AdminArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a voter: it joins as a learner, catches up, then votes. Refused if the new
    /// configuration would not have a reachable majority.
    AddVoter {
        /// The new node's name (its `node.name`).
        name: String,
        /// Its cluster address, host:port; Raft listens on that port + 1.
        address: String,
        #[command(flatten)]
        api: AdminArgs,
    },
    /// Remove a voter (or a learner). Refused if the remaining voters would not have a
    /// reachable majority, and for the last voter.
    RemoveVoter {
        /// The node's name.
        name: String,
        #[command(flatten)]
        api: AdminArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and the route files it names.
    Check {
        /// The file.
        file: PathBuf,
        /// Accept routers that need features Constellation does not apply (reported as
        /// warnings; exit 0). Without it they are errors (exit 78).
        #[arg(long)]
        allow_unsupported: bool,
    },
    /// Print the default configuration with every key documented.
    Default,
}

#[derive(Subcommand)]
enum TraefikCommand {
    /// Print the Traefik dynamic configuration the agent would serve. Credentials
    /// (credential header values, basicAuth/digestAuth users, URL user info, private keys)
    /// are shown as REDACTED unless --show-secrets is given.
    Dump {
        /// Configuration file (default: the embedded default).
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Print credentials as they are (e.g. to feed Traefik's file provider).
        #[arg(long)]
        show_secrets: bool,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONSTELLATION_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish()
        // Pingora's ERROR line for a client leaving mid-headers becomes a debug line and a count.
        .with(pingora_log::ClientNoise)
        .try_init();
}

fn load(path: Option<&std::path::Path>) -> Result<config::LoadedConfig, ExitCode> {
    config::load_all(path).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        ExitCode::from(EX_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Agent { config, allow_unsupported } => {
            init_tracing();
            let mut cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            cfg.config.proxy.allow_unsupported |= allow_unsupported;
            match agent::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ agent::StartError::Routes(_)) => {
                    // Route errors quote URLs: their user info stays out of the log.
                    eprintln!("error: {}", constellation_proxy::redact::redact_text(&e.to_string()));
                    ExitCode::from(EX_CONFIG)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", config::default_toml());
            ExitCode::SUCCESS
        }
        Command::Config { command: ConfigCommand::Check { file, allow_unsupported } } => {
            check::run(&file, allow_unsupported)
        }
        Command::Traefik { command: TraefikCommand::Dump { config, show_secrets } } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let assembled = constellation_plane::load_sources(&agent::route_sources(&cfg)).and_then(|files| {
                // Containers of the local engine and [[instances]] too, as the agent would.
                let mut instances: Vec<constellation_plane::builder::ClusterInstance> = cfg
                    .config
                    .instances
                    .iter()
                    .map(|i| constellation_plane::builder::ClusterInstance {
                        egress: i.egress_need(),
                        ..constellation_plane::builder::ClusterInstance::new(&cfg.config.node.name, &i.service, &i.url)
                    })
                    .collect();
                let mut parts = Vec::new();
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match rt.map(|rt| rt.block_on(constellation_plane::plane::docker_routes_once(&cfg))) {
                    Ok(Some(Ok((p, i)))) => {
                        parts = p;
                        instances.extend(i);
                    }
                    Ok(Some(Err(e))) => eprintln!("warning: containers left out: {e}"),
                    Ok(None) => {}
                    Err(e) => eprintln!("warning: containers left out: {e}"),
                }
                constellation_plane::assemble(files, parts, &instances, &cfg.config.cluster.domain).map(|(c, _)| c)
            });
            match assembled {
                Ok(d) => match serde_json::to_value(&d).and_then(|mut doc| {
                    let real = doc.clone();
                    if !show_secrets {
                        constellation_proxy::redact::redact_value(&mut doc);
                    }
                    Ok((serde_json::to_string_pretty(&doc)?, doc != real))
                }) {
                    Ok((s, redacted)) => {
                        println!("{s}");
                        if redacted {
                            eprintln!("note: credentials are shown as REDACTED; --show-secrets prints them");
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::from(1)
                    }
                },
                Err(errs) => {
                    for e in errs {
                        eprintln!("error: {e}");
                    }
                    ExitCode::from(EX_CONFIG)
                }
            }
        }
        Command::Keygen { out, force } => {
            let key = constellation_wire::generate_key_hex();
            match out {
                None => {
                    println!("{key}");
                    ExitCode::SUCCESS
                }
                Some(path) => {
                    if path.exists() && !force {
                        eprintln!(
                            "error: {} exists; pass --force to replace it (nodes using the old key will be refused)",
                            path.display()
                        );
                        return ExitCode::from(1);
                    }
                    match write_secret(&path, &format!("{key}\n")) {
                        Ok(()) => {
                            eprintln!("wrote a new cluster key to {}", path.display());
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("error: cannot write {}: {e}", path.display());
                            ExitCode::from(1)
                        }
                    }
                }
            }
        }
        Command::Status { api, json } => run_async(cli::status(&api.admin, json, api.token.as_deref())),
        Command::Dns { command: DnsCommand::Plan { api } } => {
            run_async(cli::dns_plan(&api.admin, api.token.as_deref()))
        }
        Command::Raft { command: RaftCommand::Status { api, json } } => {
            run_async(cli::raft_status(&api.admin, json, api.token.as_deref()))
        }
        Command::Raft { command: RaftCommand::AddVoter { name, address, api } } => {
            run_async(cli::raft_add_voter(&api.admin, &name, &address, api.token.as_deref()))
        }
        Command::Raft { command: RaftCommand::RemoveVoter { name, api } } => {
            run_async(cli::raft_remove_voter(&api.admin, &name, api.token.as_deref()))
        }
        Command::Demo { seconds } => run_async(demo::run(seconds)),
        Command::Services { command: ServicesCommand::List { config, stack, json } } => {
            services_cmd::list(config.as_deref(), stack.as_deref(), json)
        }
        Command::Services { command: ServicesCommand::Show { name, config } } => {
            services_cmd::show(config.as_deref(), &name)
        }
        Command::Deploy { config, stack, dry_run } => {
            services_cmd::deploy(config.as_deref(), stack.as_deref(), dry_run)
        }
    }
}

/// Write a file readable only by its owner.
fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

fn run_async<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

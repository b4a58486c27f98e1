//! Tailscale peer discovery: asks the local `tailscale` CLI for the mesh's peers and
//! turns the online ones (optionally only those with a given ACL tag) into gossip seeds.
//!
//! The pure core is [`parse_status`], which reads `tailscale status --json`;
//! [`TailscaleDiscovery::discover`] runs the CLI and [`run_discovery_loop`] polls it.
//! When the CLI is absent, discovery is simply off: the node keeps its static seeds.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

/// Executable run by default, looked up on `PATH`.
pub const DEFAULT_COMMAND: &str = "tailscale";
/// How long `tailscale status --json` may take before it is abandoned (and killed).
pub const DEFAULT_STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Default poll interval of [`run_discovery_loop`].
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Shortest poll interval [`run_discovery_loop`] accepts; shorter values are raised to it.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Longest stderr line quoted in [`DiscoveryError::Failed`], in characters.
const MAX_STDERR_CHARS: usize = 300;

/// How to ask Tailscale for peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailscaleDiscovery {
    /// The `tailscale` executable: a bare name is looked up on `PATH`, anything with a
    /// `/` is used as is. Default [`DEFAULT_COMMAND`].
    pub command: PathBuf,
    /// Only peers carrying this ACL tag are returned, written `constellation` or
    /// `tag:constellation` (compared without regard to ASCII case). Default: none, every
    /// online peer.
    pub tag: Option<String>,
    /// Gossip port announced for every peer (the fleet shares one gossip port).
    pub port: u16,
    /// Time allowed for one `tailscale status --json` run. Default
    /// [`DEFAULT_STATUS_TIMEOUT`] (5 s).
    pub timeout: Duration,
}

/// One online Tailscale peer, as a gossip seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's host name (`HostName`), or the first label of its MagicDNS name when
    /// the host name is empty.
    pub name: String,
    /// The peer's Tailscale addresses, in the order Tailscale lists them.
    pub ips: Vec<IpAddr>,
    /// Where to gossip with it: its first IPv4 Tailscale address (else its first address)
    /// and the configured gossip port.
    pub gossip_addr: SocketAddr,
}

/// Why Tailscale discovery produced no peer list.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The executable does not exist. Not a fault: discovery is off and static seeds are
    /// used.
    #[error(
        "{} not found{}; Tailscale discovery is off, using static seeds only",
        command.display(),
        if is_bare_name(command) { " on PATH" } else { "" }
    )]
    NotInstalled {
        /// The command that was looked for.
        command: PathBuf,
    },
    /// The executable exists but could not be started (permissions, bad interpreter...).
    #[error("could not run `{} status --json`: {source}; check that it is an executable Tailscale CLI", command.display())]
    Spawn {
        /// The command that was run.
        command: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The command did not finish in time; it was killed.
    #[error("`{} status --json` did not answer within {after:?} and was killed; is tailscaled stuck?", command.display())]
    Timeout {
        /// The command that was run.
        command: PathBuf,
        /// The time allowed.
        after: Duration,
    },
    /// The command exited unsuccessfully.
    #[error("`{} status --json` failed ({status}): {stderr}", command.display())]
    Failed {
        /// The command that was run.
        command: PathBuf,
        /// How it ended, e.g. `exit status: 1`.
        status: String,
        /// The first non-empty line it wrote to stderr.
        stderr: String,
    },
    /// The output is not the JSON `tailscale status --json` prints.
    #[error("`tailscale status --json` output is not usable: {message}")]
    InvalidJson {
        /// What is wrong and where (JSON path, line and column).
        message: String,
    },
    /// Tailscale runs but this node is not connected to the tailnet.
    #[error("Tailscale is not connected (BackendState \"{state}\"); run `tailscale up` on this node; using static seeds only")]
    NotRunning {
        /// The reported `BackendState`, e.g. `NeedsLogin` or `Stopped`.
        state: String,
    },
}

/// `true` when `command` is a bare name that the OS looks up on `PATH`.
fn is_bare_name(command: &Path) -> bool {
    command.components().count() == 1 && !command.to_string_lossy().contains('/')
}

// === impl TailscaleDiscovery ===

impl TailscaleDiscovery {
    /// Discovery with the default command and timeout, no tag filter, announcing `port`.
    pub fn new(port: u16) -> Self {
        Self { command: PathBuf::from(DEFAULT_COMMAND), tag: None, port, timeout: DEFAULT_STATUS_TIMEOUT }
    }

    /// Runs `<command> status --json` and returns the online peers (never this node)
    /// that carry the configured tag, sorted by name.
    pub async fn discover(&self) -> Result<Vec<Peer>, DiscoveryError> {
        let mut cmd = Command::new(&self.command);
        cmd.args(["status", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // On timeout the future is dropped; this kills the child instead of leaking it.
            .kill_on_drop(true);
        let output = match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => return Err(DiscoveryError::Timeout { command: self.command.clone(), after: self.timeout }),
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DiscoveryError::NotInstalled { command: self.command.clone() })
            }
            Ok(Err(source)) => return Err(DiscoveryError::Spawn { command: self.command.clone(), source }),
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            return Err(DiscoveryError::Failed {
                command: self.command.clone(),
                status: output.status.to_string(),
                stderr: first_line(&output.stderr),
            });
        }
        let text = std::str::from_utf8(&output.stdout).map_err(|e| DiscoveryError::InvalidJson {
            message: format!(
                "not UTF-8 (byte {}); is `{}` really the Tailscale CLI?",
                e.valid_up_to(),
                self.command.display()
            ),
        })?;
        parse_status(text, self.tag.as_deref(), self.port)
    }
}

impl Default for TailscaleDiscovery {
    /// [`TailscaleDiscovery::new`] with port 0; set `port` before use.
    fn default() -> Self {
        Self::new(0)
    }
}

/// First non-empty line of a command's stderr, trimmed and shortened.
fn first_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) if line.chars().count() > MAX_STDERR_CHARS => {
            format!("{}...", line.chars().take(MAX_STDERR_CHARS).collect::<String>())
        }
        Some(line) => line.to_string(),
        None => "(nothing on stderr)".to_string(),
    }
}

// === parsing ===

/// The parts of `tailscale status --json` that discovery reads; everything else is
/// ignored. Go writes nil slices as `null`, hence the `Option`s.
#[derive(Debug, Deserialize)]
struct Status {
    #[serde(rename = "BackendState", default)]
    backend_state: Option<String>,
    #[serde(rename = "Self", default)]
    self_node: Option<PeerStatus>,
    #[serde(rename = "Peer", default)]
    peer: Option<BTreeMap<String, PeerStatus>>,
}

#[derive(Debug, Deserialize)]
struct PeerStatus {
    #[serde(rename = "HostName", default)]
    host_name: Option<String>,
    #[serde(rename = "DNSName", default)]
    dns_name: Option<String>,
    #[serde(rename = "TailscaleIPs", default)]
    tailscale_ips: Option<Vec<String>>,
    #[serde(rename = "Online", default)]
    online: Option<bool>,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
}

/// Parses `tailscale status --json` output into gossip seeds: online peers other than
/// this node (`Self` is never in the result), carrying `tag` when one is given (`x` and
/// `tag:x` both work), each announced at `port`. Peers without a usable Tailscale
/// address are skipped with a warning. The result is sorted by name.
pub fn parse_status(json: &str, tag: Option<&str>, port: u16) -> Result<Vec<Peer>, DiscoveryError> {
    let mut de = serde_json::Deserializer::from_str(json);
    let status: Status = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| DiscoveryError::InvalidJson { message: format!("at `{}`: {}", e.path(), e.inner()) })?;
    de.end().map_err(|e| DiscoveryError::InvalidJson { message: format!("after the JSON document: {e}") })?;

    if status.backend_state.is_none() && status.self_node.is_none() {
        return Err(DiscoveryError::InvalidJson {
            message: "neither `BackendState` nor `Self` is present; is this `tailscale status --json` output?".into(),
        });
    }
    if let Some(state) = status.backend_state.as_deref() {
        if state != "Running" {
            return Err(DiscoveryError::NotRunning { state: state.to_string() });
        }
    }

    let wanted_tag = tag.map(str::trim).filter(|t| !t.is_empty()).map(|t| {
        if t.starts_with("tag:") {
            t.to_string()
        } else {
            format!("tag:{t}")
        }
    });

    let mut peers = Vec::new();
    for (key, p) in status.peer.unwrap_or_default() {
        if p.online != Some(true) {
            continue;
        }
        if let Some(wanted) = &wanted_tag {
            let tagged = p.tags.as_deref().unwrap_or_default().iter().any(|t| t.eq_ignore_ascii_case(wanted));
            if !tagged {
                continue;
            }
        }
        let name = peer_name(&p, &key);
        let mut ips = Vec::new();
        for raw in p.tailscale_ips.as_deref().unwrap_or_default() {
            match raw.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => tracing::warn!(peer = %name, address = %raw, "tailscale peer address is not an IP; ignored"),
            }
        }
        let Some(first) = ips.iter().find(|ip| ip.is_ipv4()).or_else(|| ips.first()).copied() else {
            tracing::warn!(peer = %name, "online tailscale peer has no Tailscale IP; skipped");
            continue;
        };
        peers.push(Peer { name, ips, gossip_addr: SocketAddr::new(first, port) });
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name).then(a.gossip_addr.cmp(&b.gossip_addr)));
    Ok(peers)
}

/// `HostName`, else the first label of `DNSName`, else the node key.
fn peer_name(p: &PeerStatus, key: &str) -> String {
    if let Some(h) = p.host_name.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
        return h.to_string();
    }
    if let Some(label) = p.dns_name.as_deref().and_then(|d| d.split('.').next()).filter(|l| !l.is_empty()) {
        return label.to_string();
    }
    key.to_string()
}

// === polling loop ===

/// Decides which discovery outcomes deserve a log line at `warn`/`info`, so a
/// persistent condition (no Tailscale installed) is reported once, not every poll.
#[derive(Debug, Default)]
struct Reporter {
    /// Display text of the last error, while the last poll failed.
    last_error: Option<String>,
    /// The last peer list handed out.
    last_peers: Option<Vec<SocketAddr>>,
}

impl Reporter {
    /// Records a failure; `true` when it differs from the previous poll's failure.
    fn error_is_new(&mut self, e: &DiscoveryError) -> bool {
        let text = e.to_string();
        let new = self.last_error.as_deref() != Some(text.as_str());
        self.last_error = Some(text);
        new
    }

    /// Records a success; `true` when the previous poll had failed.
    fn recovered(&mut self) -> bool {
        self.last_error.take().is_some()
    }

    /// Records a peer list; `true` when it differs from the previous one.
    fn peers_changed(&mut self, addrs: &[SocketAddr]) -> bool {
        let changed = self.last_peers.as_deref() != Some(addrs);
        if changed {
            self.last_peers = Some(addrs.to_vec());
        }
        changed
    }
}

/// Polls `disc` now and then every `interval` (at least [`MIN_INTERVAL`]; callers
/// usually pass [`DEFAULT_INTERVAL`]), handing each successful result's gossip
/// addresses to `on_peers`, even when unchanged or empty. A failed poll leaves the
/// previous peers in force and does not call `on_peers`. Each distinct failure is logged
/// once at `warn` (so a missing `tailscale` is reported once), repeats at `debug`.
/// Never returns; stop it by dropping or aborting its task.
pub async fn run_discovery_loop(
    disc: TailscaleDiscovery,
    interval: Duration,
    mut on_peers: impl FnMut(Vec<SocketAddr>),
) {
    let mut ticker = tokio::time::interval(interval.max(MIN_INTERVAL));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reporter = Reporter::default();
    loop {
        ticker.tick().await;
        match disc.discover().await {
            Ok(peers) => {
                if reporter.recovered() {
                    tracing::info!(command = %disc.command.display(), "tailscale discovery is working again");
                }
                let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.gossip_addr).collect();
                if reporter.peers_changed(&addrs) {
                    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
                    tracing::info!(count = addrs.len(), peers = ?names, "tailscale peers changed");
                }
                on_peers(addrs);
            }
            Err(e) => {
                if reporter.error_is_new(&e) {
                    tracing::warn!(error = %e, "tailscale discovery");
                } else {
                    tracing::debug!(error = %e, "tailscale discovery still failing");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/tailscale-status.json");

    /// A fresh directory for one test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("constellation-discovery-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// Copies the recorded status into the directory and returns its path.
        fn fixture(&self) -> PathBuf {
            let path = self.0.join("status.json");
            std::fs::write(&path, FIXTURE).unwrap();
            path
        }

        /// Writes an executable shell script named `tailscale` and returns its path.
        fn script(&self, body: &str) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let path = self.0.join("tailscale");
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `discover`, retrying "text file busy": another test thread forking while this one
    /// still had the fresh script open for writing makes `exec` fail with ETXTBSY for a
    /// moment.
    async fn discover(d: &TailscaleDiscovery) -> Result<Vec<Peer>, DiscoveryError> {
        for _ in 0..50 {
            match d.discover().await {
                Err(DiscoveryError::Spawn { source, .. }) if source.kind() == io::ErrorKind::ExecutableFileBusy => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
        d.discover().await
    }

    fn names(peers: &[Peer]) -> Vec<&str> {
        peers.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn fixture_without_tag_gives_every_online_peer_but_self() {
        let peers = parse_status(FIXTURE, None, 7946).unwrap();
        // node-d is offline; node-a is Self.
        assert_eq!(names(&peers), ["node-b", "node-c", "ops-laptop"]);
    }

    #[test]
    fn fixture_with_tag_keeps_tagged_peers_only() {
        let peers = parse_status(FIXTURE, Some("tag:constellation"), 7946).unwrap();
        assert_eq!(names(&peers), ["node-b", "node-c"]);
        // The `tag:` prefix is optional and case does not matter.
        assert_eq!(parse_status(FIXTURE, Some("Constellation"), 7946).unwrap(), peers);
        assert_eq!(names(&parse_status(FIXTURE, Some("ci"), 7946).unwrap()), ["node-c"]);
        assert!(parse_status(FIXTURE, Some("tag:nobody"), 7946).unwrap().is_empty());
    }

    #[test]
    fn fixture_gossip_address_prefers_ipv4() {
        let peers = parse_status(FIXTURE, None, 7946).unwrap();
        let b = &peers[0];
        assert_eq!(b.gossip_addr, "100.88.21.5:7946".parse().unwrap());
        assert_eq!(b.ips, ["100.88.21.5".parse::<IpAddr>().unwrap(), "fd7a:115c:a1e0::e901:1505".parse().unwrap()]);
        // node-c lists its IPv6 address first; the IPv4 one is still chosen.
        let c = &peers[1];
        assert_eq!(c.ips[0], "fd7a:115c:a1e0::b101:2a0e".parse::<IpAddr>().unwrap());
        assert_eq!(c.gossip_addr, "100.77.42.14:7946".parse().unwrap());
    }

    #[test]
    fn ipv6_only_peer_uses_its_first_address() {
        let json = r#"{"BackendState":"Running","Self":{"HostName":"a"},"Peer":{
            "nodekey:1":{"HostName":"","DNSName":"v6only.tail.ts.net.","TailscaleIPs":["fd7a:115c:a1e0::1"],"Online":true},
            "nodekey:2":{"HostName":"noips","TailscaleIPs":null,"Online":true},
            "nodekey:3":{"HostName":"junk","TailscaleIPs":["not-an-ip"],"Online":true}}}"#;
        let peers = parse_status(json, None, 1).unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].name, "v6only");
        assert_eq!(peers[0].gossip_addr, "[fd7a:115c:a1e0::1]:1".parse().unwrap());
    }

    #[test]
    fn no_peers_is_an_empty_list() {
        let json = r#"{"BackendState":"Running","Self":{"HostName":"a","Online":true},"Peer":null}"#;
        assert!(parse_status(json, None, 1).unwrap().is_empty());
        let json = r#"{"BackendState":"Running","Self":{"HostName":"a"}}"#;
        assert!(parse_status(json, None, 1).unwrap().is_empty());
    }

    #[test]
    fn logged_out_node_is_not_running() {
        let json = r#"{"BackendState":"NeedsLogin","Self":{"HostName":"a"},"Peer":{}}"#;
        let e = parse_status(json, None, 1).unwrap_err();
        assert!(matches!(&e, DiscoveryError::NotRunning { state } if state == "NeedsLogin"), "{e:?}");
        assert!(e.to_string().contains("tailscale up"), "{e}");
    }

    #[test]
    fn bad_json_names_the_problem() {
        let e = parse_status("{\"BackendState\": \"Running\", \"Peer\": {", None, 1).unwrap_err();
        assert!(matches!(e, DiscoveryError::InvalidJson { .. }), "{e:?}");
        assert!(e.to_string().contains("line 1"), "{e}");

        let e = parse_status(r#"{"BackendState":"Running","Peer":{"k":{"Online":"yes"}}}"#, None, 1).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("Peer.k.Online") && text.contains("invalid type"), "{text}");

        let e = parse_status(r#"{"hello":"world"}"#, None, 1).unwrap_err();
        assert!(e.to_string().contains("BackendState"), "{e}");

        let e = parse_status("", None, 1).unwrap_err();
        assert!(matches!(e, DiscoveryError::InvalidJson { .. }), "{e:?}");
    }

    #[test]
    fn not_installed_message_is_one_clear_line() {
        let e = DiscoveryError::NotInstalled { command: PathBuf::from("tailscale") };
        assert_eq!(e.to_string(), "tailscale not found on PATH; Tailscale discovery is off, using static seeds only");
        let e = DiscoveryError::NotInstalled { command: PathBuf::from("/opt/ts/tailscale") };
        assert_eq!(e.to_string(), "/opt/ts/tailscale not found; Tailscale discovery is off, using static seeds only");
    }

    #[tokio::test]
    async fn stand_in_cli_is_run_with_status_json() {
        let dir = TempDir::new("stand-in");
        // The script insists on the exact arguments, so a wrong invocation fails the test.
        let script = dir.script(&format!(
            "[ \"$1 $2\" = 'status --json' ] || {{ echo \"bad args: $*\" >&2; exit 2; }}\ncat '{}'",
            dir.fixture().display()
        ));
        let disc =
            TailscaleDiscovery { command: script, tag: Some("constellation".into()), ..TailscaleDiscovery::new(7946) };
        let peers = discover(&disc).await.unwrap();
        assert_eq!(names(&peers), ["node-b", "node-c"]);
        assert_eq!(peers[0].gossip_addr, "100.88.21.5:7946".parse().unwrap());
    }

    #[tokio::test]
    async fn missing_executable_is_not_installed() {
        let dir = TempDir::new("missing");
        let disc = TailscaleDiscovery { command: dir.0.join("tailscale"), ..TailscaleDiscovery::new(1) };
        let e = discover(&disc).await.unwrap_err();
        assert!(matches!(e, DiscoveryError::NotInstalled { .. }), "{e:?}");

        // A bare name that is on nobody's PATH.
        let disc =
            TailscaleDiscovery { command: "constellation-no-such-tailscale".into(), ..TailscaleDiscovery::new(1) };
        let e = discover(&disc).await.unwrap_err();
        assert!(e.to_string().starts_with("constellation-no-such-tailscale not found on PATH"), "{e}");
    }

    #[tokio::test]
    async fn failing_cli_reports_first_stderr_line() {
        let dir = TempDir::new("failing");
        let script = dir.script(
            "echo '' >&2\necho 'failed to connect to local tailscaled; it doesn'\\''t appear to be running' >&2\n\
             echo 'second line' >&2\nexit 1",
        );
        let disc = TailscaleDiscovery { command: script, ..TailscaleDiscovery::new(1) };
        let e = discover(&disc).await.unwrap_err();
        match &e {
            DiscoveryError::Failed { status, stderr, .. } => {
                assert_eq!(stderr, "failed to connect to local tailscaled; it doesn't appear to be running");
                assert!(status.contains('1'), "{status}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(!e.to_string().contains("second line"), "{e}");
    }

    #[tokio::test]
    async fn garbage_output_is_invalid_json() {
        let dir = TempDir::new("garbage");
        let script = dir.script("echo 'Logged out.'");
        let disc = TailscaleDiscovery { command: script, ..TailscaleDiscovery::new(1) };
        let e = discover(&disc).await.unwrap_err();
        assert!(matches!(e, DiscoveryError::InvalidJson { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn hung_cli_times_out() {
        let dir = TempDir::new("hung");
        let script = dir.script("exec sleep 30");
        let disc =
            TailscaleDiscovery { command: script, timeout: Duration::from_millis(200), ..TailscaleDiscovery::new(1) };
        let started = std::time::Instant::now();
        let e = discover(&disc).await.unwrap_err();
        assert!(matches!(e, DiscoveryError::Timeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn loop_hands_peers_to_the_callback() {
        let dir = TempDir::new("loop");
        let script = dir.script(&format!("cat '{}'", dir.fixture().display()));
        let disc =
            TailscaleDiscovery { command: script, tag: Some("constellation".into()), ..TailscaleDiscovery::new(7946) };
        // Run the script once first: after one successful exec no forked sibling can still
        // hold it open for writing, so the loop's first poll cannot hit ETXTBSY.
        discover(&disc).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(run_discovery_loop(disc, DEFAULT_INTERVAL, move |addrs| {
            let _ = tx.send(addrs);
        }));
        // The first poll happens at once; the deadline only guards against a hang.
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap();
        task.abort();
        let expected: Vec<SocketAddr> = vec!["100.88.21.5:7946".parse().unwrap(), "100.77.42.14:7946".parse().unwrap()];
        assert_eq!(got.unwrap(), expected);
    }

    #[test]
    fn reporter_warns_once_per_distinct_failure() {
        let mut r = Reporter::default();
        let missing = || DiscoveryError::NotInstalled { command: PathBuf::from("tailscale") };
        assert!(r.error_is_new(&missing()));
        assert!(!r.error_is_new(&missing()));
        assert!(!r.error_is_new(&missing()));
        assert!(r.error_is_new(&DiscoveryError::NotRunning { state: "Stopped".into() }));
        assert!(r.recovered());
        assert!(!r.recovered());
        assert!(r.error_is_new(&missing()), "a failure after a recovery is news again");

        let a: SocketAddr = "100.1.1.1:1".parse().unwrap();
        assert!(r.peers_changed(&[a]));
        assert!(!r.peers_changed(&[a]));
        assert!(r.peers_changed(&[]));
    }
}

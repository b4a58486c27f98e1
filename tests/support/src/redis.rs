//! Real `redis-server` and `redis-sentinel` processes for a test: N servers and M
//! sentinels on free loopback ports, each with its own directory and (writable) config
//! file, started bare or pre-wired as one Sentinel group; all killed on drop. Commands go
//! through `redis-cli`, so the kit needs no Redis client crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::scratch::{take_port, Scratch};
use crate::tls::TestCa;

/// How a [`RedisFleet`] is started; [`Default`] is 3 servers, 3 sentinels, no passwords,
/// bare, master name `mymaster`, down-after 1000 ms, failover-timeout 2000 ms, quorum 2.
#[derive(Debug, Clone)]
pub struct RedisFleetSpec {
    /// Number of `redis-server` processes.
    pub servers: usize,
    /// Number of `redis-sentinel` processes.
    pub sentinels: usize,
    /// `requirepass` (and `masterauth`, and the sentinels' `auth-pass`) of the servers.
    pub password: Option<String>,
    /// `requirepass` of the sentinels (and their `sentinel-pass` towards each other).
    pub sentinel_password: Option<String>,
    /// Sentinel's name of the group.
    pub master_name: String,
    /// Server 0 master, the others its replicas, every sentinel monitoring it.
    pub prewired: bool,
    /// `down-after-milliseconds` when pre-wired.
    pub down_after_ms: u64,
    /// `failover-timeout` when pre-wired.
    pub failover_timeout_ms: u64,
    /// `SENTINEL MONITOR` quorum when pre-wired.
    pub quorum: u32,
    /// Every process speaks TLS only (`tls-port`, `tls-replication yes`), with a
    /// certificate for 127.0.0.1 from a fresh [`TestCa`] ([`RedisFleet::ca_file`]).
    pub tls: bool,
}

impl Default for RedisFleetSpec {
    fn default() -> Self {
        RedisFleetSpec {
            servers: 3,
            sentinels: 3,
            password: None,
            sentinel_password: None,
            master_name: "mymaster".into(),
            prewired: false,
            down_after_ms: 1000,
            failover_timeout_ms: 2000,
            quorum: 2,
            tls: false,
        }
    }
}

struct Instance {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Running Redis servers and sentinels; every process is killed on drop.
pub struct RedisFleet {
    spec: RedisFleetSpec,
    dir: Scratch,
    servers: Vec<Instance>,
    sentinels: Vec<Instance>,
}

impl RedisFleet {
    /// `servers` servers and `sentinels` sentinels with nothing configured.
    pub async fn bare(servers: usize, sentinels: usize) -> RedisFleet {
        RedisFleet::start(RedisFleetSpec { servers, sentinels, ..RedisFleetSpec::default() }).await
    }

    /// Server 0 master, the others replicating it, every sentinel monitoring it (quorum
    /// 2, down-after 1000 ms, failover-timeout 2000 ms); returns once every replica is in
    /// sync and every sentinel sees all replicas and the other sentinels.
    pub async fn prewired(servers: usize, sentinels: usize) -> RedisFleet {
        RedisFleet::start(RedisFleetSpec { servers, sentinels, prewired: true, ..RedisFleetSpec::default() }).await
    }

    /// Starts what `spec` says and waits until every process answers (and, pre-wired,
    /// until the group is settled).
    ///
    /// # Panics
    /// When `redis-server`/`redis-sentinel` are not installed (`scripts/setup.sh`
    /// installs them) or do not come up within 20 s.
    pub async fn start(spec: RedisFleetSpec) -> RedisFleet {
        let dir = Scratch::new("redis");
        let instance = |name: String| Instance { port: take_port(), dir: dir.path(&name), child: None };
        let servers = (0..spec.servers).map(|i| instance(format!("server-{i}"))).collect();
        let sentinels = (0..spec.sentinels).map(|i| instance(format!("sentinel-{i}"))).collect();
        if spec.tls {
            let ca = TestCa::new("redis test CA");
            let cert = ca.issue(&["127.0.0.1", "localhost"]);
            dir.write("ca.pem", &ca.cert_pem);
            dir.write("cert.pem", &cert.cert_pem);
            dir.write("key.pem", &cert.key_pem);
        }
        let mut fleet = RedisFleet { spec, dir, servers, sentinels };
        for i in 0..fleet.servers.len() {
            fleet.write_server_config(i);
            fleet.start_server(i);
        }
        for i in 0..fleet.sentinels.len() {
            fleet.write_sentinel_config(i);
            fleet.start_sentinel(i);
        }
        for i in 0..fleet.servers.len() {
            fleet.wait_answers(fleet.servers[i].port, fleet.spec.password.clone()).await;
        }
        for i in 0..fleet.sentinels.len() {
            fleet.wait_answers(fleet.sentinels[i].port, fleet.spec.sentinel_password.clone()).await;
        }
        if fleet.spec.prewired {
            fleet.wait_settled(0).await;
        }
        fleet
    }

    fn common_config(&self, s: &Instance) -> String {
        let log = if s.dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("sentinel")) {
            "sentinel.log"
        } else {
            "redis.log"
        };
        let mut conf = format!(
            "bind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\nlogfile {}\n",
            s.dir.display(),
            s.dir.join(log).display()
        );
        if self.spec.tls {
            conf.push_str(&format!(
                "port 0\ntls-port {}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                s.port,
                self.dir.path("cert.pem").display(),
                self.dir.path("key.pem").display(),
                self.ca_file().display()
            ));
        } else {
            conf.push_str(&format!("port {}\n", s.port));
        }
        conf
    }

    /// The CA that signed every process's certificate, PEM (with `tls`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path("ca.pem")
    }

    fn tls_ca(&self) -> Option<PathBuf> {
        self.spec.tls.then(|| self.ca_file())
    }

    fn write_server_config(&self, i: usize) {
        let s = &self.servers[i];
        let mut conf = self.common_config(s);
        conf.push_str("save \"\"\nappendonly no\nenable-debug-command yes\nrepl-diskless-sync-delay 0\n");
        if let Some(p) = &self.spec.password {
            conf.push_str(&format!("requirepass {p}\nmasterauth {p}\n"));
        }
        if self.spec.prewired && i > 0 {
            conf.push_str(&format!("replicaof 127.0.0.1 {}\n", self.servers[0].port));
        }
        write(&s.dir, "redis.conf", &conf);
    }

    fn write_sentinel_config(&self, i: usize) {
        let s = &self.sentinels[i];
        let mut conf = self.common_config(s);
        if let Some(p) = &self.spec.sentinel_password {
            conf.push_str(&format!("requirepass {p}\nsentinel sentinel-pass {p}\n"));
        }
        if self.spec.prewired {
            let name = &self.spec.master_name;
            conf.push_str(&format!(
                "sentinel monitor {name} 127.0.0.1 {} {}\nsentinel down-after-milliseconds {name} {}\nsentinel failover-timeout {name} {}\n",
                self.servers[0].port, self.spec.quorum, self.spec.down_after_ms, self.spec.failover_timeout_ms
            ));
            if let Some(p) = &self.spec.password {
                conf.push_str(&format!("sentinel auth-pass {name} {p}\n"));
            }
        }
        write(&s.dir, "sentinel.conf", &conf);
    }

    fn start_server(&mut self, i: usize) {
        let s = &mut self.servers[i];
        s.child = Some(spawn("redis-server", &s.dir.join("redis.conf"), &s.dir));
    }

    fn start_sentinel(&mut self, i: usize) {
        let s = &mut self.sentinels[i];
        s.child = Some(spawn("redis-sentinel", &s.dir.join("sentinel.conf"), &s.dir));
    }

    async fn wait_answers(&self, port: u16, password: Option<String>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if cli_tls(port, password.as_deref(), self.tls_ca().as_deref(), &["PING"]).await.trim() == "PONG" {
                return;
            }
            if Instant::now() > deadline {
                panic!("redis on port {port} did not answer PING in 20 s; logs:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (30 s at most) until every replica is in sync with server `master` and
    /// every sentinel sees `servers - 1` replicas and `sentinels - 1` other sentinels.
    ///
    /// # Panics
    /// When that does not happen in time.
    pub async fn wait_settled(&self, master: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (want_replicas, want_sentinels) = (self.servers.len() - 1, self.sentinels.len() - 1);
        loop {
            let mut missing = Vec::new();
            for i in (0..self.servers.len()).filter(|i| *i != master) {
                if !self.info_replication(i).await.contains("master_link_status:up") {
                    missing.push(format!("server {i} not in sync"));
                }
            }
            for i in 0..self.sentinels.len() {
                let m = self.sentinel_master(i).await;
                let n = |k: &str| m.get(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
                if n("num-slaves") != want_replicas || n("num-other-sentinels") != want_sentinels {
                    missing.push(format!("sentinel {i} sees {m:?}"));
                }
            }
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("redis group not settled in 30 s: {missing:?}; logs:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How it was started.
    pub fn spec(&self) -> &RedisFleetSpec {
        &self.spec
    }

    /// `127.0.0.1:<port>` of server `i`.
    pub fn server_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.servers[i].port)
    }

    /// Every server's address, in order.
    pub fn server_addrs(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.server_addr(i)).collect()
    }

    /// `127.0.0.1:<port>` of sentinel `i`.
    pub fn sentinel_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.sentinels[i].port)
    }

    /// Every sentinel's address, in order.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        (0..self.sentinels.len()).map(|i| self.sentinel_addr(i)).collect()
    }

    /// The index of the server listening at `addr`.
    pub fn server_index(&self, addr: &str) -> Option<usize> {
        (0..self.servers.len()).find(|i| self.server_addr(*i) == addr)
    }

    /// `redis-cli` on server `i` (with the fleet's password); its stdout.
    pub async fn server_cli(&self, i: usize, args: &[&str]) -> String {
        cli_tls(self.servers[i].port, self.spec.password.as_deref(), self.tls_ca().as_deref(), args).await
    }

    /// `redis-cli` on sentinel `i` (with the sentinels' password); its stdout.
    pub async fn sentinel_cli(&self, i: usize, args: &[&str]) -> String {
        cli_tls(self.sentinels[i].port, self.spec.sentinel_password.as_deref(), self.tls_ca().as_deref(), args).await
    }

    /// The first word of server `i`'s `ROLE` (`master`, `slave`), or the error text.
    pub async fn role(&self, i: usize) -> String {
        self.server_cli(i, &["ROLE"]).await.lines().next().unwrap_or("").trim().to_string()
    }

    /// Server `i`'s `INFO replication`.
    pub async fn info_replication(&self, i: usize) -> String {
        self.server_cli(i, &["INFO", "replication"]).await
    }

    /// Sentinel `i`'s `SENTINEL master <name>` as a map (empty when it does not know it).
    pub async fn sentinel_master(&self, i: usize) -> HashMap<String, String> {
        let out = self.sentinel_cli(i, &["SENTINEL", "master", &self.spec.master_name]).await;
        let lines: Vec<&str> = out.lines().collect();
        lines.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].to_string(), c[1].to_string())).collect()
    }

    /// Sentinel `i`'s answer to `get-master-addr-by-name`, `ip:port`, or `None`.
    pub async fn sentinel_says(&self, i: usize) -> Option<String> {
        let out = self.sentinel_cli(i, &["SENTINEL", "get-master-addr-by-name", &self.spec.master_name]).await;
        let lines: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        match lines.as_slice() {
            [ip, port] => Some(format!("{ip}:{port}")),
            _ => None,
        }
    }

    /// Makes server `i` sleep `secs` seconds inside `DEBUG SLEEP` (it answers nothing
    /// meanwhile); returns at once.
    pub fn debug_sleep(&self, i: usize, secs: f64) {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.servers[i].port.to_string()]);
        if let Some(p) = &self.spec.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        if let Some(ca) = self.tls_ca() {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        let spawned =
            cmd.args(["DEBUG", "SLEEP", &secs.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        match spawned {
            // Reap it in the background so it does not linger as a zombie.
            Ok(mut child) => drop(std::thread::spawn(move || child.wait())),
            Err(e) => panic!("cannot run redis-cli (run scripts/setup.sh): {e}"),
        }
    }

    /// SIGKILLs server `i`.
    pub fn kill_server(&mut self, i: usize) {
        kill(&mut self.servers[i]);
    }

    /// SIGKILLs sentinel `i`.
    pub fn kill_sentinel(&mut self, i: usize) {
        kill(&mut self.sentinels[i]);
    }

    /// Starts sentinel `i` again with the config it last wrote.
    pub async fn restart_sentinel(&mut self, i: usize) {
        kill(&mut self.sentinels[i]);
        self.start_sentinel(i);
        self.wait_answers(self.sentinels[i].port, self.spec.sentinel_password.clone()).await;
    }

    /// SIGSTOPs server `i` (SIGCONT with [`RedisFleet::resume_server`]).
    pub fn stop_server(&self, i: usize) {
        signal(&self.servers[i], "-STOP");
    }

    /// SIGCONTs server `i`.
    pub fn resume_server(&self, i: usize) {
        signal(&self.servers[i], "-CONT");
    }

    /// The tail of every process's log, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (kind, list, file) in
            [("server", &self.servers, "redis.log"), ("sentinel", &self.sentinels, "sentinel.log")]
        {
            for (i, s) in list.iter().enumerate() {
                let text = std::fs::read_to_string(s.dir.join(file)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {kind} {i} (port {}):\n", s.port));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for RedisFleet {
    fn drop(&mut self) {
        // SIGKILL ends stopped processes too; the scratch directory goes after this.
        for s in self.servers.iter_mut().chain(self.sentinels.iter_mut()) {
            kill(s);
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(dir.join(name), text)) {
        panic!("cannot write {}: {e}", dir.join(name).display());
    }
}

fn spawn(program: &str, conf: &Path, dir: &Path) -> Child {
    Command::new(program)
        .arg(conf)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} (run scripts/setup.sh): {e}"))
}

fn kill(s: &mut Instance) {
    if let Some(mut child) = s.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn signal(s: &Instance, sig: &str) {
    if let Some(child) = &s.child {
        let status = Command::new("kill").args([sig, &child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {sig} {} failed", child.id());
    }
}

/// Runs `redis-cli -p <port> [-a <password>] <args>` (5 s at most) and returns its
/// stdout (errors such as `NOAUTH ...` included), or the failure as text.
///
/// # Panics
/// When `redis-cli` is not installed.
pub async fn cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    cli_tls(port, password, None, args).await
}

/// [`cli`] over TLS when `tls_ca` (the CA file to verify the server with) is given.
///
/// # Panics
/// When `redis-cli` is not installed.
pub async fn cli_tls(port: u16, password: Option<&str>, tls_ca: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("redis-cli");
    cmd.args(["-p", &port.to_string()]);
    if let Some(p) = password {
        cmd.args(["-a", p, "--no-auth-warning"]);
    }
    if let Some(ca) = tls_ca {
        cmd.arg("--tls").arg("--cacert").arg(ca);
    }
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(5), cmd.output()).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).to_string();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            text
        }
        Ok(Err(e)) => panic!("cannot run redis-cli (run scripts/setup.sh): {e}"),
        Err(_) => format!("redis-cli -p {port} {args:?}: no answer in 5 s"),
    }
}

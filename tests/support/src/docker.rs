//! The real Docker engine for tests: a local test image (no registry can be reached) and a
//! guard that labels everything a test creates and removes it at the end, even on panic.
//!
//! It drives the `docker` command-line client, so it stays free of the workspace's own
//! Docker code (the code under test).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Name of the test image: Debian's static busybox (also as `/bin/sh`) plus `/www/index.html`.
///
/// Run its web server with [`httpd_command`]; check health with [`HTTPD_HEALTH`].
pub const TEST_IMAGE: &str = "constellation-test/busybox:2";

/// Health check command (Docker `CMD` form) for a container running [`httpd_command`] on
/// port 8000: passes while `/www/health` exists.
pub const HTTPD_HEALTH: [&str; 6] = ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/health"];

/// The label key every test container and network carries; its value is the guard's tag.
pub const TEST_LABEL: &str = "constellation.test";

/// A command line serving `/www` on port 8000 after writing `body` to `/www/index.html`
/// and creating `/www/health` (remove that file to turn the health check red).
pub fn httpd_command(body: &str) -> Vec<String> {
    let script = format!(
        "echo '{}' > /www/index.html && echo ok > /www/health && exec /bin/busybox httpd -f -p 8000 -h /www",
        body.replace('\'', "")
    );
    vec!["/bin/busybox".into(), "sh".into(), "-c".into(), script]
}

/// Runs `docker args…` and returns its stdout, or its stderr as the error.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Makes sure [`TEST_IMAGE`] exists, importing it from a tarball of `/bin/busybox` on first
/// use (Debian's `busybox-static`, installed by `scripts/setup.sh`).
///
/// # Panics
/// When the engine is unreachable or busybox is missing: the Docker suites need both.
pub fn test_image() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if docker(&["image", "inspect", TEST_IMAGE]).is_ok() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("constellation-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin"))
            .and_then(|_| std::fs::create_dir_all(dir.join("www")))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
            .unwrap_or_else(|e| panic!("cannot copy /bin/busybox (install busybox-static): {e}"));
        std::fs::write(dir.join("www/index.html"), "busybox\n").unwrap_or_else(|e| panic!("write: {e}"));
        // Docker runs string health checks with /bin/sh -c.
        std::os::unix::fs::symlink("busybox", dir.join("bin/sh")).unwrap_or_else(|e| panic!("symlink: {e}"));
        let tar = dir.join("image.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-cf")
            .arg(&tar)
            .args(["bin", "www"])
            .status()
            .unwrap_or_else(|e| panic!("tar: {e}"));
        assert!(status.success(), "tar failed");
        let tar_s = tar.display().to_string();
        docker(&["import", "--change", "CMD [\"/bin/busybox\",\"sh\"]", &tar_s, TEST_IMAGE])
            .unwrap_or_else(|e| panic!("cannot import the test image: {e}"));
        let _ = std::fs::remove_dir_all(&dir);
    });
    TEST_IMAGE
}

/// Everything one test creates in the engine, removed on drop (containers first, then
/// networks), including on panic.
pub struct DockerGuard {
    /// Value of [`TEST_LABEL`] on everything this guard owns.
    pub tag: String,
}

impl DockerGuard {
    /// A guard with a tag unique to this process and call.
    ///
    /// # Panics
    /// When the engine does not answer.
    pub fn new(name: &str) -> DockerGuard {
        static N: AtomicU32 = AtomicU32::new(0);
        docker(&["version", "--format", "{{.Server.APIVersion}}"])
            .unwrap_or_else(|e| panic!("the Docker engine must run for this test: {e}"));
        let tag = format!("{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        DockerGuard { tag }
    }

    /// `--label constellation.test=<tag>`, for `docker run` and `docker network create`.
    pub fn label_arg(&self) -> String {
        format!("{TEST_LABEL}={}", self.tag)
    }

    /// A prefixed, unique name for a container or network of this test.
    pub fn name(&self, what: &str) -> String {
        format!("ct-{}-{what}", self.tag)
    }

    /// Creates a bridge network carrying the test label; returns its name.
    ///
    /// # Panics
    /// When the engine refuses.
    pub fn network(&self, what: &str) -> String {
        let name = self.name(what);
        docker(&["network", "create", "--label", &self.label_arg(), &name])
            .unwrap_or_else(|e| panic!("network create: {e}"));
        name
    }

    /// `docker run -d --label <test label> <args…>`; returns the container id.
    ///
    /// # Panics
    /// When the engine refuses.
    pub fn run(&self, args: &[&str]) -> String {
        let label = self.label_arg();
        let mut full = vec!["run", "-d", "--label", &label];
        full.extend_from_slice(args);
        docker(&full).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A container's health status (`healthy`, `unhealthy`, `starting`) or state when it
    /// has no health check.
    pub fn health(&self, container: &str) -> String {
        docker(&[
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
            container,
        ])
        .unwrap_or_else(|e| e)
    }

    /// Waits until `container` reports `want` (see [`DockerGuard::health`]).
    ///
    /// # Panics
    /// When it does not within `limit`.
    pub fn wait_health(&self, container: &str, want: &str, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let h = self.health(container);
            if h == want {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{container}: health {h}, wanted {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Names of containers (running or not) carrying this guard's label.
    pub fn containers(&self) -> Vec<String> {
        list(&["ps", "-a", "--filter", &format!("label={}", self.label_arg()), "--format", "{{.Names}}"])
    }

    /// Removes every container and network carrying this guard's label.
    pub fn cleanup(&self) {
        remove_labelled(&format!("label={}", self.label_arg()));
    }
}

impl Drop for DockerGuard {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn list(args: &[&str]) -> Vec<String> {
    docker(args).map(|s| s.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()).unwrap_or_default()
}

/// Removes containers, then networks, matching a `docker ps --filter` expression.
pub fn remove_labelled(filter: &str) {
    let ids = list(&["ps", "-aq", "--filter", filter]);
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
    let nets = list(&["network", "ls", "-q", "--filter", filter]);
    if !nets.is_empty() {
        let mut args = vec!["network", "rm"];
        args.extend(nets.iter().map(String::as_str));
        let _ = docker(&args);
    }
}

//! Finding and running the `constellation` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `constellation` binary under test: `$CONSTELLATION_BIN` when set, else the one
/// cargo built next to the running test or bench executable (`target/<profile>/`).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CONSTELLATION_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("constellation")
}

fn output(out: std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs the binary with `args` in `dir` to completion; returns (exit code, stdout, stderr).
///
/// # Panics
/// When the binary cannot be started.
pub fn run(args: &[&str], dir: &Path) -> (i32, String, String) {
    match Command::new(binary()).args(args).current_dir(dir).output() {
        Ok(out) => output(out),
        Err(e) => panic!("cannot run {} {args:?}: {e}", binary().display()),
    }
}

/// Like [`run`], with a time limit: panics (after killing it) when the binary is still
/// running after `limit`.
///
/// # Panics
/// When the binary cannot be started or overruns `limit`.
pub fn run_with_limit(args: &[&str], dir: &Path, limit: Duration) -> (i32, String, String) {
    let spawned =
        Command::new(binary()).args(args).current_dir(dir).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => panic!("cannot run {} {args:?}: {e}", binary().display()),
    };
    let deadline = Instant::now() + limit;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let (_, _, err) = child.wait_with_output().map(output).unwrap_or_default();
            panic!("`constellation {}` still running after {limit:?}; stderr:\n{err}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().map(output).unwrap_or((-1, String::new(), String::new()))
}

//! What the benchmarks under `benches/` share when they report: medians, a description
//! of the machine, and replacing their own marked block in `docs/benchmarks.md`.

use std::io;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The median (the mean of the middle two for an even count), `None` when empty.
pub fn median(v: &[Duration]) -> Option<Duration> {
    let mut s = v.to_vec();
    s.sort();
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2),
    }
}

/// The trimmed stdout of `cmd args` run in `dir`, when it succeeds.
pub fn command_output(cmd: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(cmd).args(args).current_dir(dir).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The CPU model from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_string(), |(_, v)| v.trim().to_string())
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(l) => l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        Err(_) => "unknown".to_string(),
    }
}

/// Replaces the block from `start` to `end` (markers included) in the file at `path` with
/// `block`, or appends `block` when the file has neither marker; the rest of the file is
/// left as it is.
///
/// # Errors
/// When the file cannot be read or written, or has only one marker or them out of order.
pub fn write_block(path: &Path, start: &str, end: &str, block: &str) -> io::Result<()> {
    let current = match std::fs::read_to_string(path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let updated = match (current.find(start), current.find(end)) {
        (Some(a), Some(b)) if b > a => {
            let mut after = b + end.len();
            if current[after..].starts_with('\n') {
                after += 1;
            }
            let mut block = block.to_string();
            if !block.ends_with('\n') {
                block.push('\n');
            }
            format!("{}{}{}", &current[..a], block, &current[after..])
        }
        (None, None) => {
            let mut c = current;
            if !c.is_empty() && !c.ends_with('\n') {
                c.push('\n');
            }
            if !c.is_empty() {
                c.push('\n');
            }
            c.push_str(block);
            if !c.ends_with('\n') {
                c.push('\n');
            }
            c
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has a broken {start} … {end} block (a marker missing or out of order)", path.display()),
            ))
        }
    };
    std::fs::write(path, updated)
}

/// The options every benchmark program shares: where its report block goes, whether to
/// write it, and the command line it was run with. Flatten it into the bench's own
/// `clap` options (`#[command(flatten)] report: ReportArgs`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The file whose block is rewritten.
    #[arg(long, value_name = "PATH", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/benchmarks.md"))]
    pub out: std::path::PathBuf,
    /// Print the results only; do not write `--out`.
    #[arg(long = "no-write", action = clap::ArgAction::SetFalse)]
    pub write: bool,
    /// `cargo bench` passes `--bench` to harness-less benchmarks; it is not ours.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// The arguments as given after `--` (cargo's own `--bench` removed).
    #[arg(skip)]
    pub args: Vec<String>,
}

impl ReportArgs {
    /// Records the process's own arguments (for [`ReportArgs::command`]).
    pub fn capture(&mut self) {
        self.args = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    }

    /// The command that produced a report: `cargo bench --bench NAME -- ARGS`.
    pub fn command(&self, bench: &str) -> String {
        let args = if self.args.is_empty() { String::new() } else { format!(" -- {}", self.args.join(" ")) };
        format!("cargo bench --bench {bench}{args}")
    }

    /// Rewrites the block between `start` and `end` of `--out` unless `--no-write`.
    pub fn write(&self, start: &str, end: &str, block: &str) -> io::Result<()> {
        if self.write {
            write_block(&self.out, start, end, block)?;
            eprintln!("wrote the report block of {}", self.out.display());
        }
        Ok(())
    }
}

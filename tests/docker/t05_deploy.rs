//! `constellation deploy` against the real engine: the dry-run plan, apply (running,
//! healthy, labelled, networks created), an idempotent second run, a changed definition
//! replaced, a removed service's container removed, foreign containers untouched,
//! dependency order, and a missing image.

use std::process::Command;
use std::time::Duration;

use constellation_testkit::docker::{self, test_image, DockerGuard, HTTPD_HEALTH, TEST_LABEL};
use constellation_testkit::{binary, Scratch};

/// One test's stack: a scratch dir with `agent.toml` + `stack.yml`, a guard network as
/// `[docker] network`, and cleanup of everything labelled with the stack (containers,
/// networks, volumes deploy made) before the guard's own.
pub(crate) struct Project {
    _cleanup: StackCleanup,
    pub guard: DockerGuard,
    pub dir: Scratch,
    pub stack: String,
    pub net: String,
}

pub(crate) struct StackCleanup(String);

impl Drop for StackCleanup {
    fn drop(&mut self) {
        let filter = format!("label=constellation.stack={}", self.0);
        docker::remove_labelled(&filter);
        if let Ok(vols) = docker::docker(&["volume", "ls", "-q", "--filter", &filter]) {
            for v in vols.lines().filter(|l| !l.is_empty()) {
                let _ = docker::docker(&["volume", "rm", "-f", v]);
            }
        }
    }
}

impl Project {
    pub fn new(what: &str) -> Project {
        test_image();
        let guard = DockerGuard::new(what);
        let stack = format!("ct-{}", guard.tag);
        let net = guard.network("net");
        let dir = Scratch::new(what);
        dir.write("agent.toml", &format!("[docker]\nnetwork = \"{net}\"\n\n[services]\nfiles = [\"stack.yml\"]\n"));
        Project { _cleanup: StackCleanup(stack.clone()), guard, dir, stack, net }
    }

    /// Writes `stack.yml`: `name: <stack>` followed by `body`.
    pub fn compose(&self, body: &str) {
        self.dir.write("stack.yml", &format!("name: {}\n{body}", self.stack));
    }

    /// The container name of `service`.
    pub fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.stack)
    }

    /// Runs `constellation <args…> -c agent.toml` with extra environment variables.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let mut cmd = Command::new(binary());
        cmd.args(args).arg("-c").arg(self.dir.path("agent.toml")).current_dir(&self.dir.0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", binary().display()));
        let res = (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        tracing::info!(?args, code = res.0, stdout = %res.1, stderr = %res.2, "constellation ran");
        res
    }

    /// `deploy --stack <stack> [extra…]`, asserting exit 0; returns the plan lines.
    pub fn deploy(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["deploy", "--stack", &self.stack];
        args.extend_from_slice(extra);
        let (code, out, err) = self.run(&args, &[]);
        assert_eq!(code, 0, "deploy {extra:?} failed:\nstdout:\n{out}\nstderr:\n{err}");
        out.lines().map(str::to_string).collect()
    }

    /// The test label line for a compose service's `labels` mapping.
    pub fn test_label(&self) -> String {
        format!("{TEST_LABEL}: \"{}\"", self.guard.tag)
    }

    /// Containers carrying this stack's label (running or not).
    pub fn stack_containers(&self) -> Vec<String> {
        let out = docker::docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=constellation.stack={}", self.stack),
            "--format",
            "{{.Names}}",
        ])
        .unwrap_or_default();
        let mut v: Vec<String> = out.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
        v.sort();
        v
    }
}

/// `docker inspect --format FORMAT name`.
pub(crate) fn inspect(name: &str, format: &str) -> String {
    docker::docker(&["inspect", "--format", format, name]).unwrap_or_else(|e| panic!("{e}"))
}

/// A YAML flow list of `items` (JSON strings are valid YAML).
pub(crate) fn flow(items: &[&str]) -> String {
    serde_json::to_string(items).unwrap()
}

/// An httpd command that waits `delay_s` before creating `/www/health` and serving.
fn slow_httpd(delay_s: u32) -> String {
    let script =
        format!("/bin/busybox sleep {delay_s}; echo ok > /www/health; exec /bin/busybox httpd -f -p 8000 -h /www");
    flow(&["/bin/busybox", "sh", "-c", &script])
}

pub(crate) fn httpd() -> String {
    let cmd = constellation_testkit::docker::httpd_command("hi");
    flow(&cmd.iter().map(String::as_str).collect::<Vec<_>>())
}

pub(crate) fn health_block(indent: &str) -> String {
    format!(
        "{indent}healthcheck:\n{indent}  test: {}\n{indent}  interval: 1s\n{indent}  timeout: 1s\n{indent}  retries: 3\n{indent}  start_period: 10s\n",
        flow(&std::iter::once("CMD").chain(HTTPD_HEALTH).collect::<Vec<_>>())
    )
}

/// Seconds since the epoch of an RFC 3339 UTC time as the engine writes it
/// (`2026-12-02T04:55:05.123456789Z`).
fn epoch_seconds(t: &str) -> f64 {
    let (date, time) = t.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let hms: Vec<f64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    days as f64 * 86_400.0 + hms[0] * 3600.0 + hms[1] * 60.0 + hms[2]
}

fn stack_v1(p: &Project, web_env: &str) -> String {
    let label = p.test_label();
    format!(
        r#"services:
  db:
    image: {image}
    command: {db_cmd}
{db_health}    labels:
      {label}
    restart: unless-stopped
  web:
    image: {image}
    command: {web_cmd}
{web_health}    networks: [default, back]
    environment:
      MODE: {web_env}
    labels:
      {label}
      traefik.enable: "true"
      traefik.http.routers.web.rule: Host(`web.test`)
    depends_on:
      db:
        condition: service_healthy
  extra:
    image: {image}
    command: {web_cmd}
    labels:
      {label}
networks:
  back:
    internal: true
"#,
        image = test_image(),
        db_cmd = slow_httpd(2),
        web_cmd = httpd(),
        db_health = health_block("    "),
        web_health = health_block("    "),
    )
}

#[test]
fn deploy_plans_applies_and_reconciles() {
    let p = Project::new("deploy");
    let (db, web, extra) = (p.container("db"), p.container("web"), p.container("extra"));
    // A container in the stack's name space but without the managed label: never touched.
    let foreign = p.guard.name("foreign");
    let foreign_id = p.guard.run(&[
        "--name",
        &foreign,
        "--label",
        &format!("constellation.stack={}", p.stack),
        test_image(),
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "8000",
    ]);
    p.compose(&stack_v1(&p, "one"));

    tracing::info!("phase: dry run on an empty engine");
    let plan = p.deploy(&["--dry-run"]);
    assert_eq!(plan, [format!("create {db}"), format!("create {web}"), format!("create {extra}")]);
    assert_eq!(p.stack_containers(), std::slice::from_ref(&foreign), "dry run created something");
    assert!(docker::docker(&["network", "inspect", &format!("{}_back", p.stack)]).is_err(), "dry run made a network");

    tracing::info!("phase: apply");
    let plan = p.deploy(&[]);
    assert_eq!(plan, [format!("create {db}"), format!("create {web}"), format!("create {extra}")]);
    for c in [&db, &web] {
        assert_eq!(p.guard.health(c), "healthy", "{c}");
    }
    assert_eq!(p.guard.health(&extra), "running");
    let labels = inspect(&web, "{{json .Config.Labels}}");
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["constellation.managed"], "true");
    assert_eq!(labels["constellation.stack"], p.stack.as_str());
    assert_eq!(labels["constellation.service"], "web");
    assert_eq!(labels["constellation.spec-hash"].as_str().unwrap().len(), 64);
    assert_eq!(labels["traefik.http.routers.web.rule"], "Host(`web.test`)");
    let back = format!("{}_back", p.stack);
    assert_eq!(inspect(&back, "{{.Internal}}"), "true");
    assert_eq!(inspect(&back, "{{index .Labels \"constellation.managed\"}}"), "true");
    let web_nets = inspect(&web, "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}");
    assert!(web_nets.contains(&back) && web_nets.contains(&p.net), "{web_nets}");
    assert_eq!(
        inspect(&web, "{{range .Config.Env}}{{println .}}{{end}}").lines().find(|l| l.starts_with("MODE=")),
        Some("MODE=one")
    );
    // Dependency order: db becomes healthy 2 s after it starts at the earliest; web
    // (depends_on db: service_healthy) must not start before that.
    let db_start = epoch_seconds(&inspect(&db, "{{.State.StartedAt}}"));
    let web_start = epoch_seconds(&inspect(&web, "{{.State.StartedAt}}"));
    assert!(
        web_start - db_start >= 2.0,
        "web started {:.2} s after db, before db could be healthy",
        web_start - db_start
    );

    tracing::info!("phase: second run changes nothing");
    let ids: Vec<String> = [&db, &web, &extra].iter().map(|c| inspect(c, "{{.Id}}")).collect();
    let plan = p.deploy(&[]);
    assert_eq!(plan, [format!("unchanged {db}"), format!("unchanged {web}"), format!("unchanged {extra}")]);
    let again: Vec<String> = [&db, &web, &extra].iter().map(|c| inspect(c, "{{.Id}}")).collect();
    assert_eq!(ids, again);

    tracing::info!("phase: a changed env value replaces exactly that container");
    p.compose(&stack_v1(&p, "two"));
    let plan = p.deploy(&["--dry-run"]);
    assert_eq!(plan, [format!("unchanged {db}"), format!("replace {web}"), format!("unchanged {extra}")]);
    assert_eq!(inspect(&web, "{{.Id}}"), ids[1], "dry run replaced");
    p.deploy(&[]);
    assert_eq!(inspect(&db, "{{.Id}}"), ids[0]);
    assert_eq!(inspect(&extra, "{{.Id}}"), ids[2]);
    assert_ne!(inspect(&web, "{{.Id}}"), ids[1]);
    assert_eq!(p.guard.health(&web), "healthy");
    assert!(inspect(&web, "{{range .Config.Env}}{{println .}}{{end}}").contains("MODE=two"));

    tracing::info!("phase: a service removed from the file is removed, only it");
    let without_extra = stack_v1(&p, "two");
    let cut = without_extra.find("  extra:").unwrap();
    let end = without_extra.find("networks:\n  back").unwrap();
    p.compose(&format!("{}{}", &without_extra[..cut], &without_extra[end..]));
    let plan = p.deploy(&[]);
    assert_eq!(plan, [format!("remove {extra}"), format!("unchanged {db}"), format!("unchanged {web}")]);
    let mut left = vec![db.clone(), web.clone(), foreign.clone()];
    left.sort();
    assert_eq!(p.stack_containers(), left);
    assert_eq!(p.deploy(&[]), [format!("unchanged {db}"), format!("unchanged {web}")]);

    tracing::info!("phase: the foreign container was never touched");
    assert_eq!(inspect(&foreign, "{{.Id}}"), foreign_id);
    assert_eq!(inspect(&foreign, "{{.State.Status}}"), "running");
}

#[test]
fn a_foreign_container_with_a_wanted_name_is_an_error() {
    let p = Project::new("foreign");
    let web = p.container("web");
    let id = p.guard.run(&["--name", &web, test_image(), "/bin/busybox", "httpd", "-f", "-p", "8000"]);
    p.compose(&format!(
        "services:\n  web:\n    image: {}\n    command: {}\n    labels:\n      {}\n",
        test_image(),
        httpd(),
        p.test_label()
    ));
    let (code, out, err) = p.run(&["deploy", "--stack", &p.stack], &[]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(&format!("container {web} exists and is not managed by Constellation")), "{err}");
    assert_eq!(inspect(&web, "{{.Id}}"), id);
    assert_eq!(inspect(&web, "{{.State.Status}}"), "running");
}

#[test]
fn a_missing_image_is_a_clear_error() {
    let p = Project::new("noimage");
    let image = format!("constellation-test/absent-{}:1", std::process::id());
    p.compose(&format!(
        "services:\n  ok:\n    image: {}\n    command: {}\n    labels:\n      {label}\n  gone:\n    image: {image}\n    labels:\n      {label}\n",
        test_image(),
        httpd(),
        label = p.test_label()
    ));
    let plan = p.deploy(&["--dry-run"]);
    assert_eq!(plan, [format!("create {}", p.container("ok")), format!("create {}", p.container("gone"))]);
    let (code, out, err) = p.run(&["deploy", "--stack", &p.stack], &[]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(&format!("error: image {image} is not present and cannot be pulled: ")), "{err}");
    // Images are checked before anything changes: nothing was created.
    assert!(p.stack_containers().is_empty(), "{:?}", p.stack_containers());
}

#[test]
fn unknown_stack_is_a_usage_error() {
    let p = Project::new("usage");
    p.compose("services:\n  web:\n    image: x\n");
    let (code, _, err) = p.run(&["deploy", "--stack", "no-such-stack", "--dry-run"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no stack named no-such-stack"), "{err}");
    assert!(err.contains(&p.stack), "the known stacks are listed: {err}");
}

#[test]
fn unreachable_engine_is_a_runtime_failure() {
    let dir = Scratch::new("noengine");
    dir.write("agent.toml", "[docker]\nendpoint = \"tcp://127.0.0.1:9\"\n\n[services]\nfiles = [\"stack.yml\"]\n");
    dir.write("stack.yml", "name: ct-noengine\nservices:\n  web:\n    image: x\n");
    let (code, _, err) = constellation_testkit::run_with_limit(
        &["deploy", "-c", "agent.toml", "--stack", "ct-noengine"],
        &dir.0,
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the Docker engine at tcp://127.0.0.1:9"), "{err}");
}

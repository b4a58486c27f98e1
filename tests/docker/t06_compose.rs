//! Compose files through the binary: a key outside the subset (exit 78 with
//! file:line:col and key), `services list` and `show`, and a deploy exercising ports,
//! named and bind volumes, env files and `${VAR}` expansion, and a missing variable.

use crate::t05_deploy::{flow, health_block, httpd, inspect, Project};
use constellation_testkit::docker::test_image;

#[test]
fn a_key_outside_the_subset_is_a_configuration_error() {
    let p = Project::new("subset");
    p.compose(&format!("services:\n  web:\n    image: {}\n    deploy:\n      replicas: 2\n", test_image()));
    for args in [vec!["deploy", "--stack", &p.stack, "--dry-run"], vec!["services", "list"]] {
        let (code, out, err) = p.run(&args, &[]);
        assert_eq!(code, 78, "{args:?}: stdout:\n{out}\nstderr:\n{err}");
        let file = p.dir.path("stack.yml");
        let want = format!("error: {}:5:5: services.web.deploy: not supported (supported keys: ", file.display());
        assert!(err.contains(&want), "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
    }
    // `config check` of the agent file reads its stack files too.
    let (code, _, err) = constellation_testkit::run(&["config", "check", "agent.toml"], &p.dir.0);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(":5:5: services.web.deploy: not supported"), "{err}");
    assert!(p.stack_containers().is_empty());
}

#[test]
fn a_dependency_cycle_is_a_configuration_error() {
    let p = Project::new("cycle");
    p.compose(&format!(
        "services:\n  a:\n    image: {img}\n    depends_on: [b]\n  b:\n    image: {img}\n    depends_on: [a]\n",
        img = test_image()
    ));
    let (code, out, err) = p.run(&["deploy", "--stack", &p.stack, "--dry-run"], &[]);
    assert_eq!(code, 78, "stdout:\n{out}\nstderr:\n{err}");
    // Stack validation names the cycle before planning starts.
    assert!(err.contains(&format!("stack {}: dependency cycle: a -> b -> a", p.stack)), "{err}");
}

#[test]
fn services_list_and_show_render_the_stack() {
    let p = Project::new("list");
    p.compose(&format!(
        r#"services:
  web:
    image: {image}
    command: {cmd}
{health}    environment:
      TOKEN: ${{API_TOKEN}}
    labels:
      traefik.enable: "true"
      traefik.http.routers.site.rule: Host(`site.test`)
      traefik.http.services.site.loadbalancer.server.port: "8000"
  worker:
    image: {image}
    networks: [back]
networks:
  back:
    internal: true
"#,
        image = test_image(),
        cmd = httpd(),
        health = health_block("    "),
    ));
    let (code, out, err) = p.run(&["services", "list", "--stack", &p.stack], &[]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["STACK", "SERVICE", "IMAGE", "NETWORKS", "ROUTES", "HEALTHCHECK"]);
    assert_eq!(lines.len(), 3, "{out}");
    let web: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&web[..5], [p.stack.as_str(), "web", test_image(), p.net.as_str(), "Host(`site.test`)"]);
    assert!(lines[1].contains("/bin/busybox wget"), "{out}");
    let worker: Vec<&str> = lines[2].split_whitespace().collect();
    let back = format!("{}_back", p.stack);
    assert_eq!(worker, [p.stack.as_str(), "worker", test_image(), back.as_str(), "-", "-"]);

    let (code, out, err) = p.run(&["services", "list", "--stack", &p.stack, "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["container"], format!("{}-web", p.stack));
    assert_eq!(rows[0]["routes"][0], "Host(`site.test`)");
    assert_eq!(rows[1]["healthcheck"], serde_json::Value::Null);

    let (code, out, err) = p.run(&["services", "show", &format!("{}/web", p.stack)], &[("API_TOKEN", "s3cret-value")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("TOKEN=${API_TOKEN}"), "{out}");
    assert!(!out.contains("s3cret-value"), "a secret value was printed: {out}");
    assert!(out.contains(&format!("container:   {}-web", p.stack)), "{out}");
    assert!(out.contains("traefik.http.routers.site.rule=Host(`site.test`)"), "{out}");
    let (code, _, err) = p.run(&["services", "show", "nope"], &[]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn compose_constructs_reach_the_engine() {
    let p = Project::new("constructs");
    p.dir.write("app.env", "# settings\nFROM_FILE=file-${DEPLOY_TEST_VAR}\nQUOTED='kept $AS_IS'\n");
    std::fs::create_dir_all(p.dir.path("conf")).unwrap();
    std::fs::write(p.dir.path("conf/site.txt"), "bound\n").unwrap();
    let script = "echo $$SECRET_VALUE > /www/secret; cp /conf/site.txt /www/site.txt; \
                  echo ok > /www/health; exec /bin/busybox httpd -f -p 8000 -h /www";
    p.compose(&format!(
        r#"services:
  app:
    image: {image}
    entrypoint: ["/bin/busybox", "sh", "-c"]
    command: {cmd}
{health}    env_file: app.env
    environment:
      - SECRET_VALUE=${{DEPLOY_TEST_VAR}}
      - WITH_DEFAULT=${{DEPLOY_TEST_UNSET:-fallback}}
    ports:
      - "127.0.0.1::8000"
    volumes:
      - data:/data
      - ./conf:/conf:ro
    labels:
      {label}
    restart: always
    cap_add: [NET_ADMIN]
    sysctls:
      net.ipv4.ip_forward: "1"
    devices: ["/dev/net/tun"]
volumes:
  data:
"#,
        image = test_image(),
        cmd = flow(&[script]),
        health = health_block("    "),
        label = p.test_label(),
    ));
    let app = p.container("app");

    // Without the variable: a configuration error naming service and variable, nothing made.
    let (code, out, err) = p.run(&["deploy", "--stack", &p.stack], &[]);
    assert_eq!(code, 78, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(&format!("stack {}: service app: environment variable DEPLOY_TEST_VAR is not set", p.stack)),
        "{err}"
    );
    assert!(p.stack_containers().is_empty());

    let env = [("DEPLOY_TEST_VAR", "v42")];
    let (code, out, err) = p.run(&["deploy", "--stack", &p.stack], &env);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.trim(), format!("create {app}"));
    assert!(!err.contains("v42") && !out.contains("v42"), "a value was printed: {err}");
    assert_eq!(p.guard.health(&app), "healthy");
    let envs = inspect(&app, "{{range .Config.Env}}{{println .}}{{end}}");
    for want in ["FROM_FILE=file-v42", "QUOTED=kept $AS_IS", "SECRET_VALUE=v42", "WITH_DEFAULT=fallback"] {
        assert!(envs.lines().any(|l| l == want), "{want} not in {envs}");
    }
    assert_eq!(inspect(&app, "{{.HostConfig.RestartPolicy.Name}}"), "always");
    // What the WARP client needs: a capability, a sysctl, a device.
    assert_eq!(inspect(&app, "{{.HostConfig.CapAdd}}"), "[NET_ADMIN]");
    assert_eq!(inspect(&app, "{{index .HostConfig.Sysctls \"net.ipv4.ip_forward\"}}"), "1");
    assert_eq!(
        inspect(&app, "{{range .HostConfig.Devices}}{{.PathOnHost}}>{{.PathInContainer}}{{end}}"),
        "/dev/net/tun>/dev/net/tun"
    );
    let volume = format!("{}_data", p.stack);
    assert_eq!(
        docker_out(&["volume", "inspect", "--format", "{{index .Labels \"constellation.managed\"}}", &volume]),
        "true"
    );
    let mounts = inspect(&app, "{{range .Mounts}}{{.Type}} {{.Name}}{{.Source}} {{.Destination}} {{.RW}};{{end}}");
    assert!(mounts.contains(&format!("volume {volume}")), "{mounts}");
    assert!(mounts.contains(&format!("bind {} /conf false", p.dir.path("conf").display())), "{mounts}");
    // The published port is bound to loopback only, at a port the engine chose.
    let port = docker_out(&["port", &app, "8000/tcp"]);
    assert!(port.starts_with("127.0.0.1:"), "{port}");
    let addr: std::net::SocketAddr = port.lines().next().unwrap().parse().unwrap();
    let body = fetch(addr, "/site.txt");
    assert!(body.ends_with("bound\n"), "{body}");
    let body = fetch(addr, "/secret");
    assert!(body.ends_with("v42\n"), "{body}");

    // Same variable, same hash: unchanged. Another value: replaced.
    let (_, out, _) = p.run(&["deploy", "--stack", &p.stack], &env);
    assert_eq!(out.trim(), format!("unchanged {app}"));
    let (code, out, err) = p.run(&["deploy", "--stack", &p.stack, "--dry-run"], &[("DEPLOY_TEST_VAR", "v43")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("replace {app}"));
}

fn docker_out(args: &[&str]) -> String {
    constellation_testkit::docker::docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A plain HTTP/1.0 GET; the whole response as text.
fn fetch(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

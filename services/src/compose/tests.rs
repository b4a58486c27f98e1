//! Unit tests of the compose importer: each construct of the subset, and each error with
//! its position.

#![allow(clippy::unwrap_used)]

use super::*;

fn import(text: &str) -> Result<Stack, ComposeError> {
    parse(text, Path::new("/srv/app/stack.yml"), &ImportOptions::default())
}

fn ok(text: &str) -> Stack {
    import(text).unwrap_or_else(|e| panic!("{e}"))
}

/// The error's `line:column: key: message` part.
fn err(text: &str) -> (usize, usize, String, String) {
    match import(text) {
        Ok(s) => panic!("imported: {s:?}"),
        Err(ComposeError::Invalid { line, column, key, message, file }) => {
            assert_eq!(file, "/srv/app/stack.yml");
            (line, column, key, message)
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

const MINIMAL: &str = "name: demo\nservices:\n  web:\n    image: nginx:1\n";

#[test]
fn minimal_stack() {
    let s = ok(MINIMAL);
    assert_eq!(s.name, "demo");
    assert_eq!(s.origin, "/srv/app/stack.yml");
    assert_eq!(s.services.len(), 1);
    let web = &s.services[0];
    assert_eq!(web.image, "nginx:1");
    assert_eq!(web.container_name("demo"), "demo-web");
    assert_eq!(web.networks, vec!["demo_default".to_string()]);
    assert_eq!(web.restart, Restart::No);
    assert_eq!(
        s.networks,
        vec![Network { name: "demo_default".into(), driver: "bridge".into(), internal: false, external: false }]
    );
}

#[test]
fn default_network_from_options() {
    let opts = ImportOptions { default_network: Some("shared".into()) };
    let s = parse(MINIMAL, Path::new("stack.yml"), &opts).unwrap();
    assert_eq!(s.services[0].networks, vec!["shared".to_string()]);
    assert_eq!(s.networks[0].name, "shared");
    assert!(!s.networks[0].external);
}

#[test]
fn declared_default_network_wins() {
    let s = parse(
        "name: demo\nservices:\n  web:\n    image: x\nnetworks:\n  default:\n    external: true\n    name: edge\n",
        Path::new("stack.yml"),
        &ImportOptions { default_network: Some("shared".into()) },
    )
    .unwrap();
    assert_eq!(s.services[0].networks, vec!["edge".to_string()]);
    assert!(s.networks[0].external);
}

#[test]
fn missing_name_is_an_error() {
    let (line, col, key, msg) = err("services:\n  web:\n    image: x\n");
    assert_eq!((line, col, key.as_str()), (1, 1, "name"));
    assert!(msg.contains("top-level `name:`"), "{msg}");
}

#[test]
fn bad_stack_name() {
    let (line, col, key, _) = err("name: Demo App\nservices:\n  web:\n    image: x\n");
    assert_eq!((line, col, key.as_str()), (1, 1, "name"));
}

#[test]
fn unsupported_service_key_names_position_and_path() {
    let text = "name: demo\nservices:\n  web:\n    image: x\n    deploy:\n      replicas: 2\n";
    let e = import(text).unwrap_err().to_string();
    assert!(e.starts_with("/srv/app/stack.yml:5:5: services.web.deploy: not supported (supported keys: image,"), "{e}");
}

#[test]
fn unsupported_top_level_key() {
    let (line, col, key, _) = err("name: demo\nsecrets:\n  a:\n    file: x\nservices:\n  web:\n    image: x\n");
    assert_eq!((line, col, key.as_str()), (2, 1, "secrets"));
}

#[test]
fn version_and_extension_fields_are_accepted() {
    let s = ok("version: '3.8'\nx-common: &c\n  image: x\nname: demo\nservices:\n  web:\n    image: y\n");
    assert_eq!(s.services[0].image, "y");
}

#[test]
fn unsupported_nested_keys() {
    let (l, c, k, _) = err("name: d\nservices:\n  web:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      start_interval: 1s\n");
    assert_eq!((l, c, k.as_str()), (7, 7, "services.web.healthcheck.start_interval"));
    let (l, c, k, _) = err("name: d\nservices:\n  web:\n    image: x\nnetworks:\n  front:\n    ipam: {}\n");
    assert_eq!((l, c, k.as_str()), (7, 5, "networks.front.ipam"));
    let (l, c, k, _) = err("name: d\nservices:\n  web:\n    image: x\nvolumes:\n  data:\n    driver: local\n");
    assert_eq!((l, c, k.as_str()), (7, 5, "volumes.data.driver"));
    let (l, c, k, _) = err(
        "name: d\nservices:\n  web:\n    image: x\n    networks:\n      front:\n        aliases: [a]\nnetworks:\n  front: {}\n",
    );
    assert_eq!((l, c, k.as_str()), (7, 9, "services.web.networks.front.aliases"));
    let (l, c, k, _) =
        err("name: d\nservices:\n  web:\n    image: x\n    ports:\n      - target: 80\n        app_protocol: http\n");
    assert_eq!((l, c, k.as_str()), (7, 9, "services.web.ports[0].app_protocol"));
}

#[test]
fn image_is_required() {
    let (l, c, k, m) = err("name: d\nservices:\n  web:\n    build: .\n");
    assert_eq!((l, c, k.as_str()), (4, 5, "services.web.build"));
    assert!(m.contains("not supported"));
    let (l, c, k, m) = err("name: d\nservices:\n  web:\n    restart: always\n");
    assert_eq!((l, c, k.as_str()), (3, 3, "services.web"));
    assert!(m.contains("`image` is required"));
}

#[test]
fn command_and_entrypoint() {
    let s = ok(r#"name: d
services:
  a:
    image: x
    command: sh -c 'echo "hi there" && sleep 1' "two words" back\ slash
    entrypoint: ["/bin/tini", "--"]
  b:
    image: x
    command:
      - run
      - --flag=1
"#);
    assert_eq!(
        s.services[0].command.as_deref().unwrap(),
        ["sh", "-c", "echo \"hi there\" && sleep 1", "two words", "back slash"]
    );
    assert_eq!(s.services[0].entrypoint.as_deref().unwrap(), ["/bin/tini", "--"]);
    assert_eq!(s.services[1].command.as_deref().unwrap(), ["run", "--flag=1"]);
    let (l, c, k, m) = err("name: d\nservices:\n  a:\n    image: x\n    command: echo 'open\n");
    assert_eq!((l, c, k.as_str()), (5, 5, "services.a.command"));
    assert!(m.contains("unterminated"));
}

#[test]
fn dollar_outside_environment() {
    let (l, c, k, m) = err("name: d\nservices:\n  a:\n    image: \"x:${TAG}\"\n");
    assert_eq!((l, c, k.as_str()), (4, 5, "services.a.image"));
    assert!(m.contains("only in environment values"));
    let s = ok("name: d\nservices:\n  a:\n    image: x\n    command: [\"sh\", \"-c\", \"echo $$HOME\"]\n");
    assert_eq!(s.services[0].command.as_deref().unwrap()[2], "echo $HOME");
}

#[test]
fn environment_forms() {
    let s = ok(r#"name: d
services:
  a:
    image: x
    environment:
      PLAIN: hello
      NUM: 3
      FROM_ENV: ${SECRET}
      PASS:
  b:
    image: x
    environment:
      - A=1
      - B=${B:-two}
      - C
"#);
    let a = &s.services[0].environment;
    assert_eq!(a["PLAIN"], EnvValue::Value("hello".into()));
    assert_eq!(a["NUM"], EnvValue::Value("3".into()));
    assert_eq!(a["FROM_ENV"], EnvValue::Value("${SECRET}".into()));
    assert_eq!(a["PASS"], EnvValue::Value("${PASS}".into()));
    let b = &s.services[1].environment;
    assert_eq!(b["A"], EnvValue::Value("1".into()));
    assert_eq!(b["B"], EnvValue::Value("${B:-two}".into()));
    assert_eq!(b["C"], EnvValue::Value("${C}".into()));
    let (l, c, k, _) = err("name: d\nservices:\n  a:\n    image: x\n    environment: 3\n");
    assert_eq!((l, c, k.as_str()), (5, 5, "services.a.environment"));
}

#[test]
fn env_file_relative_to_the_file() {
    let s = ok("name: d\nservices:\n  a:\n    image: x\n    env_file: app.env\n  b:\n    image: x\n    env_file:\n      - /etc/x.env\n      - sub/y.env\n");
    assert_eq!(s.services[0].env_files, vec![PathBuf::from("/srv/app/app.env")]);
    assert_eq!(s.services[1].env_files, vec![PathBuf::from("/etc/x.env"), PathBuf::from("/srv/app/sub/y.env")]);
}

#[test]
fn labels_map_and_list() {
    let s = ok(r#"name: d
services:
  a:
    image: x
    labels:
      traefik.enable: "true"
      traefik.http.routers.a.rule: Host(`a.test`)
  b:
    image: x
    labels:
      - traefik.enable=true
      - "traefik.http.routers.b.rule=Host(`b.test`)"
      - flag
"#);
    assert_eq!(s.services[0].labels["traefik.http.routers.a.rule"], "Host(`a.test`)");
    assert_eq!(s.services[0].labels["traefik.enable"], "true");
    assert_eq!(s.services[1].labels["traefik.http.routers.b.rule"], "Host(`b.test`)");
    assert_eq!(s.services[1].labels["flag"], "");
}

#[test]
fn default_network_named_explicitly() {
    let s = ok("name: d\nservices:\n  a:\n    image: x\n    networks: [back, default]\nnetworks:\n  back:\n    internal: true\n");
    assert_eq!(s.services[0].networks, vec!["d_back".to_string(), "d_default".to_string()]);
    assert_eq!(s.networks.len(), 2);
}

#[test]
fn networks_list_map_and_naming() {
    let s = ok(r#"name: d
services:
  a:
    image: x
    networks: [front, back]
  b:
    image: x
    networks:
      back:
      edge: {}
networks:
  front:
  back:
    internal: true
    driver: bridge
  edge:
    external: true
  named:
    name: literally-this
"#);
    assert_eq!(s.services[0].networks, vec!["d_front".to_string(), "d_back".to_string()]);
    assert_eq!(s.services[1].networks, vec!["d_back".to_string(), "edge".to_string()]);
    let back = s.networks.iter().find(|n| n.name == "d_back").unwrap();
    assert!(back.internal);
    let edge = s.networks.iter().find(|n| n.name == "edge").unwrap();
    assert!(edge.external);
    // Declared but unused networks are not part of the stack.
    assert!(!s.networks.iter().any(|n| n.name == "literally-this"));
    let (l, c, k, m) = err("name: d\nservices:\n  a:\n    image: x\n    networks:\n      - nowhere\n");
    assert_eq!((l, c, k.as_str()), (6, 7, "services.a.networks[0]"));
    assert!(m.contains("not declared"));
}

#[test]
fn ports_short_and_long() {
    let s = ok(r#"name: d
services:
  a:
    image: x
    ports:
      - "8080:80"
      - "127.0.0.1:5353:53/udp"
      - "80"
      - 443
      - "127.0.0.1::9000"
      - "[::1]:8443:443"
      - target: 22
        published: "2222"
        host_ip: 10.0.0.1
        protocol: tcp
        mode: host
"#);
    let p = &s.services[0].ports;
    assert_eq!(p[0], PortMapping { host_ip: None, host_port: Some(8080), container_port: 80, protocol: Protocol::Tcp });
    assert_eq!(
        p[1],
        PortMapping {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: Some(5353),
            container_port: 53,
            protocol: Protocol::Udp
        }
    );
    assert_eq!(p[2], PortMapping { host_ip: None, host_port: None, container_port: 80, protocol: Protocol::Tcp });
    assert_eq!(p[3].container_port, 443);
    assert_eq!((p[4].host_port, p[4].container_port), (None, 9000));
    assert_eq!(p[5].host_ip, Some("::1".parse().unwrap()));
    assert_eq!(
        p[6],
        PortMapping {
            host_ip: Some("10.0.0.1".parse().unwrap()),
            host_port: Some(2222),
            container_port: 22,
            protocol: Protocol::Tcp
        }
    );
    let (l, c, k, m) =
        err("name: d\nservices:\n  a:\n    image: x\n    ports:\n      - \"80\"\n      - \"3000-3005:3000-3005\"\n");
    assert_eq!((l, c, k.as_str()), (7, 7, "services.a.ports[1]"));
    assert!(m.contains("ranges"), "{m}");
    let (l, c, k, _) = err("name: d\nservices:\n  a:\n    image: x\n    ports:\n    - \"80/sctp\"\n");
    assert_eq!((l, c, k.as_str()), (6, 5, "services.a.ports[0]"));
}

#[test]
fn volumes_named_bind_and_errors() {
    let s = ok(r#"name: d
services:
  a:
    image: x
    volumes:
      - data:/var/lib/data
      - ./conf:/etc/app:ro
      - /abs/path:/mnt:rw
      - type: volume
        source: ext
        target: /ext
        read_only: true
volumes:
  data:
  ext:
    external: true
    name: shared-ext
  unused:
"#);
    let v = &s.services[0].volumes;
    assert_eq!(
        v[0],
        Mount { source: MountSource::Volume("d_data".into()), target: "/var/lib/data".into(), read_only: false }
    );
    assert_eq!(
        v[1],
        Mount { source: MountSource::Bind("/srv/app/conf".into()), target: "/etc/app".into(), read_only: true }
    );
    assert_eq!(v[2], Mount { source: MountSource::Bind("/abs/path".into()), target: "/mnt".into(), read_only: false });
    assert_eq!(
        v[3],
        Mount { source: MountSource::Volume("shared-ext".into()), target: "/ext".into(), read_only: true }
    );
    assert_eq!(
        s.volumes,
        vec![
            NamedVolume { name: "d_data".into(), external: false },
            NamedVolume { name: "shared-ext".into(), external: true }
        ]
    );
    let (l, c, k, m) = err("name: d\nservices:\n  a:\n    image: x\n    volumes:\n      - undeclared:/x\n");
    assert_eq!((l, c, k.as_str()), (6, 7, "services.a.volumes[0]"));
    assert!(m.contains("not declared"));
    let (_, _, _, m) = err("name: d\nservices:\n  a:\n    image: x\n    volumes:\n      - /only-target\n");
    assert!(m.contains("anonymous"));
    let (_, _, _, m) = err("name: d\nservices:\n  a:\n    image: x\n    volumes:\n      - ./x:/y:z\n");
    assert!(m.contains("`z`"));
}

#[test]
fn healthcheck_forms_and_durations() {
    let s = ok(r#"name: d
services:
  a:
    image: x
    healthcheck:
      test: ["CMD", "wget", "-q", "http://127.0.0.1/"]
      interval: 1m30s
      timeout: 500ms
      retries: 5
      start_period: 2s
  b:
    image: x
    healthcheck:
      test: curl -f http://localhost/ || exit 1
  c:
    image: x
    healthcheck:
      disable: true
"#);
    let a = s.services[0].healthcheck.as_ref().unwrap();
    assert_eq!(a.test, ["CMD", "wget", "-q", "http://127.0.0.1/"]);
    assert_eq!(a.interval, Duration::from_secs(90));
    assert_eq!(a.timeout, Duration::from_millis(500));
    assert_eq!(a.retries, 5);
    assert_eq!(a.start_period, Duration::from_secs(2));
    let b = s.services[1].healthcheck.as_ref().unwrap();
    assert_eq!(b.test, ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]);
    assert_eq!((b.interval, b.retries), (Duration::from_secs(30), 3));
    assert_eq!(s.services[2].healthcheck.as_ref().unwrap().test, ["NONE"]);
    let (l, c, k, m) = err("name: d\nservices:\n  a:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: soon\n");
    assert_eq!((l, c, k.as_str()), (7, 7, "services.a.healthcheck.interval"));
    assert!(m.contains("not a duration"));
    let (_, _, k, _) = err("name: d\nservices:\n  a:\n    image: x\n    healthcheck:\n      test: [\"wget\"]\n");
    assert_eq!(k, "services.a.healthcheck.test");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
    for bad in ["", "10", "s", "1x", "1s2", "-1s"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn depends_on_forms() {
    let s = ok(r#"name: d
services:
  db:
    image: x
  cache:
    image: x
  app:
    image: x
    depends_on:
      db:
        condition: service_healthy
      cache:
        condition: service_started
  worker:
    image: x
    depends_on: [db]
"#);
    assert_eq!(
        s.services[2].depends_on,
        vec![
            Dependency { service: "db".into(), condition: DependencyCondition::Healthy },
            Dependency { service: "cache".into(), condition: DependencyCondition::Started },
        ]
    );
    assert_eq!(
        s.services[3].depends_on,
        vec![Dependency { service: "db".into(), condition: DependencyCondition::Started }]
    );
    let (l, c, k, m) = err("name: d\nservices:\n  a:\n    image: x\n    depends_on:\n      - ghost\n");
    assert_eq!((l, c, k.as_str()), (6, 7, "services.a.depends_on[0]"));
    assert!(m.contains("no service `ghost`"));
    let (l, c, k, _) = err(
        "name: d\nservices:\n  a:\n    image: x\n    depends_on:\n      ghost:\n        condition: service_started\n",
    );
    assert_eq!((l, c, k.as_str()), (6, 7, "services.a.depends_on.ghost"));
    let (l, c, k, m) = err(
        "name: d\nservices:\n  b:\n    image: x\n  a:\n    image: x\n    depends_on:\n      b:\n        condition: service_completed_successfully\n",
    );
    assert_eq!((l, c, k.as_str()), (9, 9, "services.a.depends_on.b.condition"));
    assert!(m.contains("not supported"));
    let (_, _, k, _) = err("name: d\nservices:\n  b:\n    image: x\n  a:\n    image: x\n    depends_on:\n      b:\n        required: true\n");
    assert_eq!(k, "services.a.depends_on.b.required");
}

#[test]
fn restart_policies() {
    for (text, want) in [
        ("no", Restart::No),
        ("\"no\"", Restart::No),
        ("always", Restart::Always),
        ("on-failure", Restart::OnFailure),
        ("unless-stopped", Restart::UnlessStopped),
    ] {
        let s = ok(&format!("name: d\nservices:\n  a:\n    image: x\n    restart: {text}\n"));
        assert_eq!(s.services[0].restart, want, "{text}");
    }
    let (l, c, k, _) = err("name: d\nservices:\n  a:\n    image: x\n    restart: on-failure:3\n");
    assert_eq!((l, c, k.as_str()), (5, 5, "services.a.restart"));
}

#[test]
fn container_name() {
    let s = ok("name: d\nservices:\n  a:\n    image: x\n    container_name: my-a\n");
    assert_eq!(s.services[0].container_name("d"), "my-a");
}

#[test]
fn syntax_errors_have_positions() {
    match import("name: d\nservices:\n  a:\n    image: [x\n") {
        Err(ComposeError::Syntax { line, .. }) => assert!(line >= 4, "{line}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_types() {
    let (l, c, k, m) = err("name: d\nservices:\n  - a\n");
    assert_eq!((l, c, k.as_str()), (2, 1, "services"));
    assert!(m.contains("expected a mapping"));
    let (_, _, k, _) = err("name: d\nservices:\n  a:\n    image: x\nnetworks:\n  n:\n    internal: maybe\n");
    assert_eq!(k, "networks.n.internal");
}

#[test]
fn locator_block_style() {
    let text = "a:\n  b: 1\n  list:\n  - x\n  - k: v\n    j: w\n  c: |\n    not: a key\n  d: 2\n'q k': 3\n";
    let p = locate(text);
    assert_eq!(p["a"], (1, 1));
    assert_eq!(p["a.b"], (2, 3));
    assert_eq!(p["a.list[0]"], (4, 3));
    assert_eq!(p["a.list[1]"], (5, 3));
    assert_eq!(p["a.list[1].k"], (5, 5));
    assert_eq!(p["a.list[1].j"], (6, 5));
    assert_eq!(p["a.c"], (7, 3));
    assert!(!p.contains_key("a.c.not") && !p.contains_key("a.not"));
    assert_eq!(p["a.d"], (9, 3));
    assert_eq!(p["q k"], (10, 1));
}

#[test]
fn shell_words_quoting() {
    assert_eq!(shell_words("a  b\tc").unwrap(), ["a", "b", "c"]);
    assert_eq!(shell_words(r#"x "a \"b\" c" 'd e'"#).unwrap(), ["x", "a \"b\" c", "d e"]);
    assert_eq!(shell_words("''").unwrap(), [""]);
    assert!(shell_words("\"x").is_err());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Quotes a word so a POSIX shell reads it back as itself.
    fn quote(word: &str) -> String {
        format!("'{}'", word.replace('\'', "'\\''"))
    }

    proptest! {
        #[test]
        fn shell_words_reads_back_quoted_words(words in proptest::collection::vec("[ -~]{0,12}", 0..6)) {
            let line = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
            prop_assert_eq!(shell_words(&line).unwrap(), words);
        }

        #[test]
        fn durations_read_back(h in 0u64..5, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
            let text = format!("{h}h{m}m{s}s{ms}ms");
            let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
            prop_assert_eq!(parse_duration(&text).unwrap(), want);
        }

        #[test]
        fn ports_read_back(host in proptest::option::of(1u16..), container in 1u16.., udp in any::<bool>(), ip in any::<bool>()) {
            let mut text = String::new();
            if ip {
                text.push_str("127.0.0.1:");
                if host.is_none() {
                    text.push(':');
                }
            }
            if let Some(h) = host {
                text.push_str(&format!("{h}:"));
            }
            text.push_str(&container.to_string());
            if udp {
                text.push_str("/udp");
            }
            let p = parse_port(&text).unwrap();
            prop_assert_eq!(p.host_port, host);
            prop_assert_eq!(p.container_port, container);
            prop_assert_eq!(p.protocol, if udp { Protocol::Udp } else { Protocol::Tcp });
            prop_assert_eq!(p.host_ip.is_some(), ip);
        }

        #[test]
        fn import_never_panics(text in "[a-z:\\- \\n\"'\\[\\]{}|>#$]{0,200}") {
            let _ = locate(&text);
            let _ = import(&text);
        }

        #[test]
        fn unknown_service_keys_are_located(key in "[a-z][a-z_]{2,10}", pad in 0usize..3) {
            prop_assume!(!SERVICE_KEYS.contains(&key.as_str()));
            let indent = " ".repeat(4 + pad);
            let text = format!("name: d\nservices:\n  web:\n{indent}image: x\n{indent}{key}: 1\n");
            match import(&text) {
                Err(ComposeError::Invalid { line, column, key: k, .. }) => {
                    prop_assert_eq!((line, column), (5, 5 + pad));
                    prop_assert_eq!(k, format!("services.web.{key}"));
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}

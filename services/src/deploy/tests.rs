//! Unit tests of deploy's pure parts: expansion, env files, start order, the spec hash
//! and the container body sent to the engine (the engine-facing parts are tested against
//! the real engine in `tests/docker`).

#![allow(clippy::unwrap_used)]

use super::*;
use crate::model::Dependency;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn service(name: &str, deps: &[(&str, DependencyCondition)]) -> Service {
    Service {
        name: name.into(),
        container_name: None,
        image: "img:1".into(),
        command: None,
        entrypoint: None,
        environment: BTreeMap::new(),
        env_files: Vec::new(),
        volumes: Vec::new(),
        networks: vec!["net".into()],
        ports: Vec::new(),
        healthcheck: None,
        restart: Restart::UnlessStopped,
        depends_on: deps.iter().map(|(s, c)| Dependency { service: s.to_string(), condition: *c }).collect(),
        labels: BTreeMap::new(),
        cap_add: Vec::new(),
        sysctls: BTreeMap::new(),
        devices: Vec::new(),
    }
}

fn stack(services: Vec<Service>) -> Stack {
    Stack {
        name: "st".into(),
        description: String::new(),
        origin: "test".into(),
        networks: Vec::new(),
        volumes: Vec::new(),
        services,
    }
}

#[test]
fn expansion() {
    let e = env(&[("A", "1"), ("EMPTY", ""), ("LONG_NAME", "x")]);
    assert_eq!(expand("plain", &e).unwrap(), "plain");
    assert_eq!(expand("${A}-$A-$LONG_NAME.", &e).unwrap(), "1-1-x.");
    assert_eq!(expand("${B:-def}", &e).unwrap(), "def");
    assert_eq!(expand("${EMPTY:-def}", &e).unwrap(), "def");
    assert_eq!(expand("${EMPTY-def}", &e).unwrap(), "");
    assert_eq!(expand("${B-def}", &e).unwrap(), "def");
    assert_eq!(expand("$$A costs $5", &e).unwrap(), "$A costs $5");
    assert_eq!(expand("${MISSING}", &e), Err(ExpandError::Missing("MISSING".into())));
    assert_eq!(expand("$MISSING", &e), Err(ExpandError::Missing("MISSING".into())));
    assert!(matches!(expand("${A", &e), Err(ExpandError::Malformed(_))));
    assert!(matches!(expand("${1x}", &e), Err(ExpandError::Malformed(_))));
}

#[test]
fn env_files() {
    let parsed = parse_env_file("# comment\n\nA=1\nexport B = two \nC='lit $X'\nD=\"q $X\"\nE=\n").unwrap();
    assert_eq!(
        parsed,
        vec![
            ("A".into(), "1".into(), true),
            ("B".into(), "two".into(), true),
            ("C".into(), "lit $X".into(), false),
            ("D".into(), "q $X".into(), true),
            ("E".into(), "".into(), true),
        ]
    );
    assert_eq!(parse_env_file("A=1\njunk\n").unwrap_err().0, 2);
}

#[test]
fn resolve_env_names_service_and_variable() {
    let mut svc = service("web", &[]);
    svc.environment.insert("TOKEN".into(), EnvValue::Value("${API_TOKEN}".into()));
    let st = stack(vec![svc.clone()]);
    let e = resolve_env(&st, &svc, &env(&[])).unwrap_err();
    assert_eq!(e.to_string(), "stack st: service web: environment variable API_TOKEN is not set (and has no default)");
    assert!(e.is_configuration());
    let ok = resolve_env(&st, &svc, &env(&[("API_TOKEN", "s3cret")])).unwrap();
    assert_eq!(ok["TOKEN"], "s3cret");

    let dir = std::env::temp_dir().join(format!("constellation-deploy-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.env"), "FROM_FILE=${A:-x}\nTOKEN=overridden-by-environment\n").unwrap();
    std::fs::write(dir.join("secret"), "hunter2\n").unwrap();
    let mut svc = service("web", &[]);
    svc.env_files = vec![dir.join("app.env")];
    svc.environment.insert("TOKEN".into(), EnvValue::Value("env".into()));
    svc.environment.insert("PASSWORD".into(), EnvValue::File(dir.join("secret")));
    let got = resolve_env(&st, &svc, &env(&[])).unwrap();
    assert_eq!(got["FROM_FILE"], "x");
    assert_eq!(got["TOKEN"], "env");
    assert_eq!(got["PASSWORD"], "hunter2");
    svc.environment.insert("OTHER".into(), EnvValue::File(dir.join("absent")));
    let e = resolve_env(&st, &svc, &env(&[])).unwrap_err().to_string();
    assert!(e.contains("environment OTHER: cannot read") && e.contains("absent"), "{e}");
    svc.env_files.push(dir.join("missing.env"));
    let e = resolve_env(&st, &svc, &env(&[])).unwrap_err().to_string();
    assert!(e.contains("env_file") && e.contains("missing.env"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn start_order_and_cycles() {
    use DependencyCondition::*;
    let st = stack(vec![
        service("app", &[("db", Healthy), ("cache", Started)]),
        service("cache", &[]),
        service("db", &[]),
        service("worker", &[("app", Started)]),
    ]);
    let order: Vec<&str> = start_order(&st).unwrap().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["cache", "db", "app", "worker"]);
    let cyclic = stack(vec![service("a", &[("b", Started)]), service("b", &[("a", Started)]), service("c", &[])]);
    match start_order(&cyclic) {
        Err(DeployError::Cycle { services, .. }) => assert_eq!(services, ["a", "b"]),
        other => panic!("{other:?}"),
    }
    let dangling = stack(vec![service("a", &[("ghost", Started)])]);
    assert!(matches!(start_order(&dangling), Err(DeployError::UnknownDependency { .. })));
}

#[test]
fn spec_hash_is_stable_and_sensitive() {
    let st = stack(vec![]);
    let svc = service("web", &[]);
    let a = spec_of(&st, &svc, env(&[("A", "1")])).hash();
    assert_eq!(a, spec_of(&st, &svc, env(&[("A", "1")])).hash());
    assert_eq!(a.len(), 64);
    assert_ne!(a, spec_of(&st, &svc, env(&[("A", "2")])).hash());
    let mut labelled = svc.clone();
    labelled.labels.insert("x".into(), "y".into());
    assert_ne!(a, spec_of(&st, &labelled, env(&[("A", "1")])).hash());
    let mut other_image = svc;
    other_image.image = "img:2".into();
    assert_ne!(a, spec_of(&st, &other_image, env(&[("A", "1")])).hash());
}

#[test]
fn references() {
    assert_eq!(split_reference("nginx"), ("nginx", "latest"));
    assert_eq!(split_reference("nginx:1.27"), ("nginx", "1.27"));
    assert_eq!(split_reference("reg.example:5000/team/app"), ("reg.example:5000/team/app", "latest"));
    assert_eq!(split_reference("reg.example:5000/team/app:v2"), ("reg.example:5000/team/app", "v2"));
    assert_eq!(split_reference("app@sha256:abc"), ("app@sha256:abc", ""));
}

#[test]
fn container_body() {
    let st = stack(vec![]);
    let mut svc = service("web", &[]);
    svc.networks = vec!["front".into(), "back".into()];
    svc.ports = vec![
        PortMapping { host_ip: None, host_port: Some(8080), container_port: 80, protocol: Protocol::Tcp },
        PortMapping {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: None,
            container_port: 53,
            protocol: Protocol::Udp,
        },
    ];
    svc.volumes = vec![
        Mount { source: MountSource::Volume("st_data".into()), target: "/data".into(), read_only: false },
        Mount { source: MountSource::Bind("/etc/app".into()), target: "/conf".into(), read_only: true },
    ];
    svc.healthcheck = Some(HealthCheck {
        test: vec!["CMD".into(), "true".into()],
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        retries: 3,
        start_period: Duration::ZERO,
    });
    let spec = spec_of(&st, &svc, env(&[("A", "1")]));
    let body = create_body(&spec);
    let host = body.host_config.as_ref().unwrap();
    assert_eq!(host.binds.as_deref().unwrap(), ["st_data:/data", "/etc/app:/conf:ro"]);
    assert_eq!(host.network_mode.as_deref(), Some("front"));
    let ports = host.port_bindings.as_ref().unwrap();
    assert_eq!(ports["80/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some("8080"));
    assert_eq!(ports["53/udp"].as_ref().unwrap()[0].host_ip.as_deref(), Some("127.0.0.1"));
    let nets = body.networking_config.as_ref().unwrap().endpoints_config.as_ref().unwrap();
    assert_eq!(nets.keys().collect::<Vec<_>>(), ["front"]);
    let labels = body.labels.as_ref().unwrap();
    assert_eq!(labels[LABEL_MANAGED], "true");
    assert_eq!(labels[LABEL_STACK], "st");
    assert_eq!(labels[LABEL_SERVICE], "web");
    assert_eq!(labels[LABEL_SPEC_HASH], spec.hash());
    assert_eq!(body.healthcheck.as_ref().unwrap().interval, Some(1_000_000_000));
    assert_eq!(body.env.as_deref().unwrap(), ["A=1"]);
    // Debug output never shows env values.
    assert!(!format!("{spec:?}").contains("A=1") && !format!("{spec:?}").contains("\"1\""));
}

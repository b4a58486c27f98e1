//! Tests of the dynamic configuration model: loading, formats, schema conformance of
//! the output, parse and validation messages, merging.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dynamic").join(name)
}

/// Read a fixture (tests may touch the disk; the crate itself never does).
fn load_file(path: &Path) -> Result<DynamicConfig, DynamicError> {
    let text = std::fs::read_to_string(path).unwrap();
    parse_named(&path.display().to_string(), &text)
}

fn read_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// Errors of `doc` against the Traefik v3 file-provider schema (SchemaStore).
fn schema_errors(doc: &Value) -> Vec<String> {
    let schema = read_json("traefik-v3-file-provider.json");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    validator.iter_errors(doc).map(|e| format!("{}: {}", e.instance_path(), e)).collect()
}

fn yaml(text: &str) -> DynamicConfig {
    parse_str(text, Format::Yaml, "routes.yaml").unwrap()
}

fn parse_err(text: &str, format: Format, origin: &str) -> String {
    match parse_str(text, format, origin) {
        Ok(c) => panic!("expected a parse error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn validation_errors(config: &DynamicConfig) -> Vec<String> {
    match config.validate("routes.yaml") {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

// ----- SchemaStore example -------------------------------------------------------------

#[test]
fn schemastore_example_loads() {
    let config = load_file(&fixture("traefik-v3-example.json")).unwrap();
    assert_eq!(config.http.routers.len(), 2);
    assert_eq!(config.http.services.len(), 4);
    assert_eq!(config.http.middlewares.len(), 25);
    assert_eq!(config.http.servers_transports.len(), 2);
    assert_eq!(config.tcp.routers.len(), 2);
    assert_eq!(config.tcp.services.len(), 2);
    assert_eq!(config.tcp.middlewares.len(), 3);
    assert_eq!(config.udp.routers.len(), 2);
    assert_eq!(config.udp.services.len(), 2);
    let tls = config.tls.as_ref().unwrap();
    assert_eq!((tls.certificates.len(), tls.options.len(), tls.stores.len()), (2, 2, 2));

    // Typed where Constellation applies it.
    match &config.http.middlewares["Middleware05"] {
        Middleware::CircuitBreaker(cb) => {
            assert_eq!(cb.expression.as_deref(), Some("foobar"));
            assert_eq!(cb.check_period.as_ref().unwrap().to_std(), Ok(Duration::from_secs(42)));
            assert_eq!(cb.response_code, Some(42));
        }
        other => panic!("{other:?}"),
    }
    match &config.http.services["Service02"] {
        HttpService::LoadBalancer(lb) => {
            assert_eq!(lb.servers.len(), 2);
            assert_eq!(lb.servers[0].weight, Some(42));
            let hc = lb.health_check.as_ref().unwrap();
            assert_eq!((hc.status, hc.port), (Some(42), Some(42)));
            assert_eq!(hc.headers.len(), 2);
            assert_eq!(lb.sticky.as_ref().unwrap().cookie.as_ref().unwrap().max_age, Some(42));
        }
        other => panic!("{other:?}"),
    }
    // Kept verbatim where it does not.
    match &config.http.middlewares["Middleware18"] {
        Middleware::Other { kind, config } => {
            assert_eq!(kind, "rateLimit");
            assert_eq!(config["sourceCriterion"]["ipStrategy"]["depth"], json!(42));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(config.http.services["Service03"].kind(), "mirroring");
}

#[test]
fn schemastore_example_round_trips_exactly() {
    let original = read_json("traefik-v3-example.json");
    let config = load_file(&fixture("traefik-v3-example.json")).unwrap();
    let out = serde_json::to_value(&config).unwrap();
    assert_eq!(out, original);
    assert_eq!(schema_errors(&out), Vec::<String>::new());
}

#[test]
fn schemastore_example_unsupported_parts_are_listed() {
    let config = load_file(&fixture("traefik-v3-example.json")).unwrap();
    let unsupported = config.unsupported();
    let expected_kinds =
        [("Middleware11", "grpcWeb"), ("Middleware16", "passTLSClientCert"), ("Middleware17", "plugin")];
    for (name, kind) in expected_kinds {
        let line = format!("http.middlewares.{name}: {kind} is not supported (parsed, not applied)");
        assert!(unsupported.contains(&line), "missing {line:?} in {unsupported:#?}");
    }
    assert!(
        unsupported.contains(&"http.services.Service03: mirroring is not supported (parsed, not applied)".to_string())
    );
    // The headers middleware sets five options Traefik v3 removed (the rest are applied).
    let headers: Vec<&String> =
        unsupported.iter().filter(|l| l.starts_with("http.middlewares.Middleware12: headers.")).collect();
    assert_eq!(headers.len(), 5, "{headers:#?}");
    assert!(unsupported.contains(
        &"http.middlewares.Middleware12: headers.sslRedirect is not supported (parsed, not applied)".to_string()
    ));
    assert_eq!(unsupported.len(), expected_kinds.len() + 1 + 5, "{unsupported:#?}");
}

#[test]
fn schemastore_example_validation_reports_its_placeholders() {
    // Every reference in the example is "foobar" and every URL is "foobar": it loads,
    // but it is not a working configuration.
    let config = load_file(&fixture("traefik-v3-example.json")).unwrap();
    let errors = config.validate("example.json").unwrap_err();
    let origin = fixture("traefik-v3-example.json").display().to_string();
    assert!(errors.iter().all(|e| e.origin == origin));
    let text: Vec<String> = errors.iter().map(|e| format!("{}/{}", e.object, e.field)).collect();
    assert!(text.contains(&"http.routers.Router0/service".to_string()), "{text:#?}");
    assert!(text.contains(&"http.services.Service02/servers[0].url".to_string()));
    assert!(text.contains(&"udp.services.UDPService01/servers[0].address".to_string()));
}

// ----- Formats -------------------------------------------------------------------------

#[test]
fn same_config_in_yaml_toml_json_parses_equal() {
    let from_yaml = load_file(&fixture("full.yaml")).unwrap();
    let from_toml = load_file(&fixture("full.toml")).unwrap();
    let from_json = load_file(&fixture("full.json")).unwrap();
    assert_eq!(from_yaml, from_toml);
    assert_eq!(from_yaml, from_json);
    // And the serialised forms are identical too.
    let out = serde_json::to_string(&from_yaml).unwrap();
    assert_eq!(out, serde_json::to_string(&from_toml).unwrap());
    assert_eq!(out, serde_json::to_string(&from_json).unwrap());
}

#[test]
fn full_feature_config_is_valid_and_fully_supported() {
    let config = load_file(&fixture("full.yaml")).unwrap();
    assert_eq!(config.validate("full.yaml"), Ok(()));
    assert_eq!(config.unsupported(), Vec::<String>::new());
}

#[test]
fn full_feature_config_serialises_to_schema_valid_json_without_extensions() {
    let config = load_file(&fixture("full.yaml")).unwrap();
    // The extensions were read...
    let HttpService::LoadBalancer(primary) = &config.http.services["api-primary"] else {
        panic!("not a load balancer")
    };
    let hc = primary.health_check.as_ref().unwrap();
    assert_eq!((hc.rise, hc.fall), (Some(2), Some(3)));
    assert!(!primary.retry_on_403);
    let HttpService::LoadBalancer(warp) = &config.http.services["api-warp"] else { panic!("not a load balancer") };
    assert!(warp.retry_on_403);

    // ...and are not emitted, so the output validates against the v3 schema.
    let out = serde_json::to_value(&config).unwrap();
    assert_eq!(schema_errors(&out), Vec::<String>::new());
    let text = out.to_string();
    for ext in ["\"rise\"", "\"fall\"", "\"retryOn403\""] {
        assert!(!text.contains(ext), "{ext} emitted: {text}");
    }

    // Everything else is emitted exactly as given.
    let mut expected = read_json("full.json");
    let services = &mut expected["http"]["services"];
    let hc = services["api-primary"]["loadBalancer"]["healthCheck"].as_object_mut().unwrap();
    hc.remove("rise");
    hc.remove("fall");
    services["api-warp"]["loadBalancer"].as_object_mut().unwrap().remove("retryOn403");
    assert_eq!(out, expected);

    // The output loads back to the same configuration, minus the extensions.
    let again = parse_str(&out.to_string(), Format::Json, "out.json").unwrap();
    let HttpService::LoadBalancer(warp) = &again.http.services["api-warp"] else { panic!("not a load balancer") };
    assert!(!warp.retry_on_403);
}

#[test]
fn schema_check_can_fail() {
    // Negative controls: the schema test above would catch each of these.
    let config = load_file(&fixture("full.yaml")).unwrap();
    let good = serde_json::to_value(&config).unwrap();
    assert!(schema_errors(&good).is_empty());

    // An extension leaking into the output.
    let mut leaked = good.clone();
    leaked["http"]["services"]["api-warp"]["loadBalancer"]["retryOn403"] = json!(true);
    let errors = schema_errors(&leaked);
    assert!(!errors.is_empty());
    assert!(errors.iter().any(|e| e.starts_with("/http/services/api-warp")), "{errors:#?}");

    // A router field Traefik does not have.
    let mut extra = good.clone();
    extra["http"]["routers"]["api"]["servce"] = json!("x");
    let errors = schema_errors(&extra);
    assert!(errors.iter().any(|e| e.starts_with("/http/routers/api")), "{errors:#?}");

    // A load balancer without servers.
    let mut empty = good.clone();
    empty["http"]["services"]["api-warp"]["loadBalancer"]["servers"] = json!([]);
    assert!(!schema_errors(&empty).is_empty());

    // Two kinds in one service.
    let mut two = good;
    two["http"]["services"]["api-warp"]["weighted"] = json!({"services": []});
    assert!(!schema_errors(&two).is_empty());
}

#[test]
fn router_observability_is_read_but_not_served() {
    // Traefik >= 3.1 has router observability; the SchemaStore v3 schema does not, and
    // the served document must validate against it, so the field is read, reported as
    // not applied, and left out of the output.
    let config = yaml(
        "http:\n  routers:\n    api:\n      rule: Host(`a`)\n      service: s\n      observability:\n        accessLogs: false\n        tracing: true\n",
    );
    let obs = config.http.routers["api"].observability.as_ref().unwrap();
    assert_eq!((obs.access_logs, obs.tracing, obs.metrics), (Some(false), Some(true), None));
    let out = serde_json::to_value(&config).unwrap();
    assert!(out["http"]["routers"]["api"].get("observability").is_none(), "{out}");
    assert!(schema_errors(&out).is_empty());
    assert!(config.unsupported().iter().any(|u| u.contains("observability")));
}

#[test]
fn empty_documents_are_empty_configs() {
    for (text, format) in [
        ("", Format::Yaml),
        ("# nothing yet\n", Format::Yaml),
        ("", Format::Toml),
        ("  \n", Format::Json),
        ("{}", Format::Json),
        ("http:\n  routers:\n", Format::Yaml),
        ("\u{feff}{}", Format::Json),
    ] {
        let config = parse_str(text, format, "empty").unwrap();
        assert_eq!(config, DynamicConfig::default(), "{text:?}");
        assert_eq!(serde_json::to_string(&config).unwrap(), "{}");
    }
}

#[test]
fn present_but_empty_objects_switch_features_on() {
    // `tls:` with no value means "TLS with defaults" in Traefik, like `tls: {}`.
    let config = yaml(
        "http:\n  routers:\n    a:\n      rule: Host(`a`)\n      service: s\n      tls:\n    b:\n      rule: Host(`b`)\n      service: s\n",
    );
    assert_eq!(config.http.routers["a"].tls, Some(RouterTls::default()));
    assert_eq!(config.http.routers["b"].tls, None);
    let out = serde_json::to_value(&config).unwrap();
    assert_eq!(out["http"]["routers"]["a"]["tls"], json!({}));
    assert!(out["http"]["routers"]["b"].get("tls").is_none());
}

#[test]
fn yaml_numbers_are_accepted_for_string_fields() {
    let config = yaml(
        "http:\n  middlewares:\n    r:\n      redirectScheme:\n        scheme: https\n        port: 443\n    h:\n      headers:\n        customRequestHeaders:\n          X-Port: 8080\n          X-Flag: true\n",
    );
    let Middleware::RedirectScheme(r) = &config.http.middlewares["r"] else { panic!() };
    assert_eq!(r.port.as_deref(), Some("443"));
    let Middleware::Headers(h) = &config.http.middlewares["h"] else { panic!() };
    assert_eq!(h.custom_request_headers["X-Port"], "8080");
    assert_eq!(h.custom_request_headers["X-Flag"], "true");
    let out = serde_json::to_value(&config).unwrap();
    assert_eq!(out["http"]["middlewares"]["r"]["redirectScheme"]["port"], json!("443"));
}

#[test]
fn integer_durations_are_seconds_and_serialise_as_strings() {
    let config = parse_str(
        r#"{"http":{"middlewares":{"r":{"retry":{"attempts":2,"initialInterval":5}}}}}"#,
        Format::Json,
        "r.json",
    )
    .unwrap();
    let Middleware::Retry(r) = &config.http.middlewares["r"] else { panic!() };
    let interval = r.initial_interval.as_ref().unwrap();
    assert_eq!(interval.as_str(), "5");
    assert_eq!(interval.to_std(), Ok(Duration::from_secs(5)));
    let out = serde_json::to_value(&config).unwrap();
    assert_eq!(out["http"]["middlewares"]["r"]["retry"]["initialInterval"], json!("5"));
    assert!(schema_errors(&out).is_empty());
}

// ----- Durations -----------------------------------------------------------------------

#[test]
fn durations_parse_like_traefik() {
    let ok = [
        ("10s", Duration::from_secs(10)),
        ("500ms", Duration::from_millis(500)),
        ("1m30s", Duration::from_secs(90)),
        ("1h", Duration::from_secs(3600)),
        ("1.5h", Duration::from_secs(5400)),
        (".5s", Duration::from_millis(500)),
        ("250us", Duration::from_micros(250)),
        ("250\u{b5}s", Duration::from_micros(250)),
        ("7ns", Duration::from_nanos(7)),
        ("1h2m3s4ms", Duration::from_millis(3_723_004)),
        ("+2s", Duration::from_secs(2)),
        ("10", Duration::from_secs(10)),
        ("0", Duration::ZERO),
        ("0s", Duration::ZERO),
    ];
    for (text, expected) in ok {
        assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
    }
    let bad = [
        ("", "invalid duration \"\": empty"),
        ("-1", "invalid duration \"-1\": negative durations are not allowed"),
        ("-1s", "invalid duration \"-1s\": negative durations are not allowed"),
        ("10x", "invalid duration \"10x\": unknown unit \"x\" (valid: ns, us, \u{b5}s, ms, s, m, h)"),
        ("1s5", "invalid duration \"1s5\": missing unit (use ns, us, ms, s, m or h, or a whole number of seconds)"),
        ("1.5", "invalid duration \"1.5\": missing unit (use ns, us, ms, s, m or h, or a whole number of seconds)"),
        ("s", "invalid duration \"s\": expected a number"),
        (".s", "invalid duration \".s\": expected a number"),
        ("soon", "invalid duration \"soon\": expected a number"),
        ("9999999999999h", "invalid duration \"9999999999999h\": out of range"),
    ];
    for (text, message) in bad {
        assert_eq!(parse_duration(text), Err(message.to_string()), "{text:?}");
    }
}

// ----- Parse errors --------------------------------------------------------------------

#[test]
fn parse_errors_name_file_line_column_and_path() {
    let cases: &[(&str, Format, &str)] = &[
        (
            "http:\n  routers:\n    api:\n      rule: Host(`a`)\n      servce: x\n",
            Format::Yaml,
            "routes.yaml:5:7: http.routers.api.servce: unknown field `servce`, expected one of `entryPoints`, `middlewares`, `service`, `rule`, `ruleSyntax`, `priority`, `tls`, `observability`, `parentRefs`",
        ),
        (
            r#"{"http": {"routers": {"api": {"rule": "Host(`a`)", "servce": "x"}}}}"#,
            Format::Json,
            "routes.json:1:59: http.routers.api.servce: unknown field `servce`, expected one of `entryPoints`, `middlewares`, `service`, `rule`, `ruleSyntax`, `priority`, `tls`, `observability`, `parentRefs`",
        ),
        (
            "[http.routers.api]\nrule = \"Host(`a`)\"\nservce = \"x\"\n",
            Format::Toml,
            "routes.toml:3:1: http.routers.api.servce: unknown field `servce`, expected one of `entryPoints`, `middlewares`, `service`, `rule`, `ruleSyntax`, `priority`, `tls`, `observability`, `parentRefs`",
        ),
        (
            "http:\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: http://a\n            wieght: 2\n",
            Format::Yaml,
            "routes.yaml:7:13: http.services.s.loadBalancer.servers[0].wieght: unknown field `wieght`, expected one of `url`, `weight`, `preservePath`",
        ),
        (
            "http:\n  routers:\n    api:\n      priority: high\n",
            Format::Yaml,
            "routes.yaml:4:17: http.routers.api.priority: invalid type: string \"high\", expected i64",
        ),
        (
            "[http.routers.api]\npriority = \"high\"\n",
            Format::Toml,
            "routes.toml:2:12: http.routers.api.priority: invalid type: string \"high\", expected i64",
        ),
        (
            "http:\n  middlewares:\n    m:\n      retry:\n        initialInterval: 1s\n",
            Format::Yaml,
            "routes.yaml:5:9: http.middlewares.m.retry: missing field `attempts`",
        ),
        (
            "http:\n  middlewares:\n    m:\n      stripPrefix: {}\n      addPrefix: {}\n",
            Format::Yaml,
            "routes.yaml:4:7: http.middlewares.m: middleware must have exactly one kind, found `stripPrefix` and `addPrefix`",
        ),
        (
            "http:\n  services:\n    s:\n      loadbalancer:\n        servers: []\n",
            Format::Yaml,
            "routes.yaml:4:7: http.services.s: unknown service kind `loadbalancer`, expected one of `loadBalancer`, `weighted`, `failover`, `mirroring`, `highestRandomWeight`",
        ),
        (
            "http:\n  services:\n    s: {}\n",
            Format::Yaml,
            "routes.yaml:3:8: http.services.s: service has no kind, expected exactly one of `loadBalancer`, `weighted`, `failover`, `mirroring`, `highestRandomWeight`",
        ),
        (
            r#"{"http": {"routers": {"a": {}, "a": {}}}}"#,
            Format::Json,
            "routes.json:1:34: http.routers: name \"a\" is defined twice",
        ),
        (
            "http:\n  routers:\n    api: [\n",
            Format::Yaml,
            "routes.yaml:3:10: http.routers.api: invalid type: sequence, expected an HTTP router (a map of router settings)",
        ),
        (
            "http:\n  routers:\n    api:\n      rule: \"Host(`a`)\n",
            Format::Yaml,
            "routes.yaml:5:1: http.routers.api.rule: found unexpected end of stream, while scanning a quoted scalar at line 4 column 13",
        ),
        (
            "{\"http\": {\"routers\": }",
            Format::Json,
            "routes.json:1:22: http.routers: expected value",
        ),
        (
            "[http.routers.api\n",
            Format::Toml,
            "routes.toml:1:18: invalid table header, expected `.`, `]`",
        ),
        (
            "htttp:\n  routers: {}\n",
            Format::Yaml,
            "routes.yaml:1:1: htttp: unknown field `htttp`, expected one of `http`, `tcp`, `udp`, `tls`",
        ),
    ];
    for (text, format, expected) in cases {
        let origin = match format {
            Format::Yaml => "routes.yaml",
            Format::Json => "routes.json",
            Format::Toml => "routes.toml",
        };
        assert_eq!(&parse_err(text, *format, origin), expected, "{text:?}");
    }
}

#[test]
fn unknown_middleware_kind_is_an_error_naming_the_known_ones() {
    let message = parse_err(
        "http:\n  middlewares:\n    m:\n      stripPrefx:\n        prefixes: [/a]\n",
        Format::Yaml,
        "mw.yaml",
    );
    assert!(
        message.starts_with("mw.yaml:4:7: http.middlewares.m: unknown middleware kind `stripPrefx`, expected one of `addPrefix`, `basicAuth`,"),
        "{message}"
    );
    assert!(message.contains("`stripPrefix`"), "{message}");
}

#[test]
fn parse_error_fields_are_structured() {
    let Err(DynamicError::Parse(e)) =
        parse_str("http:\n  routers:\n    api:\n      servce: x\n", Format::Yaml, "r.yaml")
    else {
        panic!("expected a parse error")
    };
    assert_eq!(e.origin, "r.yaml");
    assert_eq!((e.line, e.column), (Some(4), Some(7)));
    assert_eq!(e.path.as_deref(), Some("http.routers.api.servce"));
    assert!(e.message.starts_with("unknown field `servce`"));
}

#[test]
fn parse_named_picks_the_format_from_the_name_and_reports_it() {
    let e = parse_named("conf/routes.ini", "").unwrap_err();
    assert_eq!(
        e.to_string(),
        "conf/routes.ini: unsupported file extension \"ini\" (supported: .yaml, .yml, .toml, .json)"
    );
    let e = parse_named("conf/routes", "").unwrap_err();
    assert_eq!(e.to_string(), "conf/routes: unsupported file extension \"\" (supported: .yaml, .yml, .toml, .json)");
    assert_eq!(Format::from_path(Path::new("a.YML")), Some(Format::Yaml));
    assert_eq!(Format::from_path(Path::new("a.Json")), Some(Format::Json));
    assert_eq!(Format::from_path(Path::new("a.toml")), Some(Format::Toml));
    // The name is the origin of errors (file:line:column: key) and of every object.
    let e = parse_named("conf/r.toml", "[http.routers.api]\nservce = \"x\"\n").unwrap_err().to_string();
    assert!(e.starts_with("conf/r.toml:2:1: http.routers.api.servce: unknown field `servce`"), "{e}");
    let e = parse_named("r.json", "{\"http\": {\"routers\": {\"api\": {\"rule\": 5}}}}").unwrap_err().to_string();
    assert!(e.starts_with("r.json:1:"), "{e}");
    assert!(e.contains("http.routers.api.rule"), "{e}");
    let c = parse_named("a/b.yml", "http:\n  routers:\n    api:\n      service: s\n").unwrap();
    assert_eq!(c.origin_of("http.routers.api"), Some("a/b.yml"));
}

// ----- Validation ----------------------------------------------------------------------

const BROKEN: &str = r#"
http:
  routers:
    api:
      rule: Host(`api.example.com`)
      service: missing
      middlewares: [auth, nope@file]
    dashboard:
      rule: PathPrefix(`/dashboard`)
      service: api@internal
    norule:
      service: a@file
      priority: -1
  services:
    a:
      loadBalancer:
        servers:
          - url: foobar
          - url: ftp://files.example.com
          - url: http://ok.example.com:8080
          - url: http://bad-port.example.com:http
        healthCheck:
          interval: 10x
          rise: 0
        serversTransport: nowhere
    b:
      loadBalancer: {}
    f:
      failover:
        service: w
        fallback: a
    lonely:
      failover:
        service: a
    w:
      weighted:
        services:
          - name: ghost
          - name: f@file
  middlewares:
    auth:
      basicAuth:
        users: ["u:p"]
    r:
      retry:
        attempts: 0
        initialInterval: soon
    cb:
      circuitBreaker:
        checkPeriod: 1x
        responseCode: 42
    to:
      redirectScheme:
        port: "https"
    add:
      addPrefix: {}
"#;

#[test]
fn validation_errors_have_exact_messages() {
    let config = yaml(BROKEN);
    assert_eq!(
        validation_errors(&config),
        [
            r#"routes.yaml:6:16: http.routers.api: field "service": service "missing" is not defined (defined: a, b, f, lonely, w)"#,
            r#"routes.yaml:7:20: http.routers.api: field "middlewares[1]": middleware "nope@file" is not defined (defined: add, auth, cb, r, to)"#,
            r#"routes.yaml:11:5: http.routers.norule: field "rule": router has no rule"#,
            r#"routes.yaml:13:17: http.routers.norule: field "priority": must not be negative"#,
            r#"routes.yaml:18:18: http.services.a: field "servers[0].url": "foobar" is not an absolute http://, https:// or h2c:// URL with a host"#,
            r#"routes.yaml:19:18: http.services.a: field "servers[1].url": "ftp://files.example.com" has scheme "ftp"; only http, https and h2c are supported"#,
            r#"routes.yaml:21:18: http.services.a: field "servers[3].url": "http://bad-port.example.com:http" has an invalid port "http""#,
            r#"routes.yaml:23:21: http.services.a: field "healthCheck.interval": invalid duration "10x": unknown unit "x" (valid: ns, us, µs, ms, s, m, h)"#,
            r#"routes.yaml:24:17: http.services.a: field "healthCheck.rise": must be at least 1"#,
            r#"routes.yaml:25:27: http.services.a: field "serversTransport": serversTransport "nowhere" is not defined (defined: none)"#,
            r#"routes.yaml:26:5: http.services.b: field "servers": loadBalancer has no servers"#,
            r#"routes.yaml:32:5: http.services.lonely: field "fallback": failover has no fallback"#,
            r#"routes.yaml:38:19: http.services.w: field "services[0].name": service "ghost" is not defined (defined: a, b, f, lonely, w)"#,
            r#"routes.yaml:30:18: http.services.f: field "service": service reference cycle: f -> w -> f"#,
            r#"routes.yaml:55:5: http.middlewares.add: field "addPrefix.prefix": must be set and not empty"#,
            r#"routes.yaml:48:5: http.middlewares.cb: field "circuitBreaker.expression": must be set and not empty"#,
            r#"routes.yaml:50:22: http.middlewares.cb: field "circuitBreaker.checkPeriod": invalid duration "1x": unknown unit "x" (valid: ns, us, µs, ms, s, m, h)"#,
            r#"routes.yaml:51:23: http.middlewares.cb: field "circuitBreaker.responseCode": must be an HTTP status code (100-599)"#,
            r#"routes.yaml:46:19: http.middlewares.r: field "retry.attempts": must be at least 1"#,
            r#"routes.yaml:47:26: http.middlewares.r: field "retry.initialInterval": invalid duration "soon": expected a number"#,
            r#"routes.yaml:52:5: http.middlewares.to: field "redirectScheme.scheme": must be set and not empty"#,
            r#"routes.yaml:54:16: http.middlewares.to: field "redirectScheme.port": "https" is not a port number"#,
        ]
    );
}

#[test]
fn validation_error_fields_are_structured() {
    let config = yaml(BROKEN);
    let errors = config.validate("ignored.yaml").unwrap_err();
    // The origin recorded at parse time wins over the fallback.
    assert_eq!(
        errors[0],
        ValidationError {
            origin: "routes.yaml".into(),
            object: "http.routers.api".into(),
            field: "service".into(),
            message: r#"service "missing" is not defined (defined: a, b, f, lonely, w)"#.into(),
            position: Some(Position { line: 6, column: 16 }),
        }
    );
    // A configuration built in code has no recorded origin: the fallback is used.
    let mut built = DynamicConfig::default();
    built.http.routers.insert("x".into(), HttpRouter::default());
    let errors = built.validate("built-in").unwrap_err();
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            r#"built-in: http.routers.x: field "rule": router has no rule"#,
            r#"built-in: http.routers.x: field "service": router has no service"#,
        ]
    );
}

#[test]
fn provider_suffixes_are_resolved() {
    let config = yaml(
        r#"
http:
  routers:
    a:
      rule: Host(`a`)
      service: s@file
      middlewares: [m@file, m@docker, auth@internal]
    redirect:
      rule: Host(`b`)
      service: noop@internal
      middlewares: [m]
  services:
    s:
      loadBalancer:
        servers: [{url: "http://127.0.0.1:1"}]
        serversTransport: default@internal
  middlewares:
    m:
      redirectScheme:
        scheme: https
"#,
    );
    assert_eq!(config.validate("x"), Ok(()));
}

#[test]
fn weighted_and_failover_cycles_are_found_once() {
    let config = yaml(
        r#"
http:
  services:
    self:
      weighted:
        services: [{name: self, weight: 1}]
    a:
      failover: {service: b, fallback: leaf}
    b:
      weighted:
        services: [{name: leaf, weight: 1}, {name: c, weight: 1}]
    c:
      mirroring:
        service: a
    leaf:
      loadBalancer:
        servers: [{url: "http://127.0.0.1:1"}]
"#,
    );
    assert_eq!(
        validation_errors(&config),
        [
            r#"routes.yaml:8:27: http.services.a: field "service": service reference cycle: a -> b -> c -> a"#,
            r#"routes.yaml:6:27: http.services.self: field "services[0].name": service reference cycle: self -> self"#,
        ]
    );
}

#[test]
fn tcp_and_udp_are_validated() {
    let config = yaml(
        r#"
tcp:
  routers:
    db:
      service: pg
      middlewares: [limit]
    nosvc:
      rule: HostSNI(`*`)
  services:
    pg:
      loadBalancer:
        servers: [{address: "10.0.0.1"}]
    w:
      weighted:
        services: [{name: w, weight: 1}]
udp:
  routers:
    dns:
      service: resolver
  services:
    empty:
      loadBalancer: {}
"#,
    );
    assert_eq!(
        validation_errors(&config),
        [
            r#"routes.yaml:4:5: tcp.routers.db: field "rule": router has no rule"#,
            r#"routes.yaml:6:20: tcp.routers.db: field "middlewares[0]": middleware "limit" is not defined (defined: none)"#,
            r#"routes.yaml:7:5: tcp.routers.nosvc: field "service": router has no service"#,
            r#"routes.yaml:12:30: tcp.services.pg: field "servers[0].address": "10.0.0.1" is not a host:port address"#,
            r#"routes.yaml:15:27: tcp.services.w: field "services[0].name": service reference cycle: w -> w"#,
            r#"routes.yaml:19:16: udp.routers.dns: field "service": service "resolver" is not defined (defined: empty)"#,
            r#"routes.yaml:21:5: udp.services.empty: field "servers": loadBalancer has no servers"#,
        ]
    );
}

#[test]
fn defined_list_is_capped() {
    let mut text = String::from("http:\n  routers:\n    r:\n      rule: Host(`a`)\n      service: nope\n  services:\n");
    for i in 0..12 {
        text.push_str(&format!("    s{i:02}:\n      loadBalancer:\n        servers: [{{url: \"http://h:1\"}}]\n"));
    }
    assert_eq!(
        validation_errors(&yaml(&text)),
        [
            r#"routes.yaml:5:16: http.routers.r: field "service": service "nope" is not defined (defined: s00, s01, s02, s03, s04, s05, s06, s07, s08, s09, … (12 in all))"#
        ]
    );
}

// ----- Unsupported ---------------------------------------------------------------------

#[test]
fn unsupported_lists_parsed_but_unapplied_parts() {
    let config = yaml(
        r#"
http:
  routers:
    child:
      rule: Host(`a`)
      service: s
      parentRefs: [parent]
  services:
    s:
      loadBalancer:
        servers: [{url: "http://h:1"}]
        strategy: p2c
    hrw:
      highestRandomWeight:
        services: [{name: s, weight: 1}]
    f:
      failover:
        service: s
        fallback: s
        errors: {status: ["500-599"]}
  middlewares:
    auth:
      basicAuth:
        users: ["u:p"]
    limit:
      rateLimit: {average: 100, burst: 50}
    r:
      retry:
        attempts: 2
        initialInterval: 100ms
        status: ["502"]
    h:
      headers:
        customResponseHeaders: {X-A: b}
        frameDeny: true
"#,
    );
    assert_eq!(
        config.unsupported(),
        [
            "http.routers.child: parentRefs is not supported (parsed, not applied)",
            "http.services.f: failover.errors is not supported (parsed, not applied)",
            "http.services.hrw: highestRandomWeight is not supported (parsed, not applied)",
            "http.middlewares.r: retry.status is not supported (parsed, not applied)",
        ]
    );
    // Unsupported parts are still served back verbatim.
    let out = serde_json::to_value(&config).unwrap();
    assert_eq!(out["http"]["middlewares"]["limit"], json!({"rateLimit": {"average": 100, "burst": 50}}));
    assert_eq!(
        out["http"]["services"]["hrw"],
        json!({"highestRandomWeight": {"services": [{"name": "s", "weight": 1}]}})
    );
}

// ----- Merging -------------------------------------------------------------------------

const A_YAML: &str = "http:\n  routers:\n    api:\n      rule: Host(`a`)\n      service: svc\n  services:\n    svc:\n      loadBalancer:\n        servers: [{url: \"http://h:1\"}]\n";
const B_TOML: &str = "[http.routers.web]\nrule = \"Host(`b`)\"\nservice = \"svc2\"\n\n[[tls.certificates]]\ncertFile = \"b.crt\"\nkeyFile = \"b.key\"\n\n[tls.options.default]\nminVersion = \"VersionTLS12\"\n";
const C_JSON: &str = r#"{"http": {"routers": {"api": {"rule": "Host(`c`)", "service": "svc"}}, "services": {"svc": {"loadBalancer": {"servers": [{"url": "http://h:2"}]}}, "other": {"loadBalancer": {"servers": [{"url": "http://h:3"}]}}}}, "tls": {"certificates": [{"certFile": "c.crt", "keyFile": "c.key"}]}}"#;

fn merged_a_b() -> DynamicConfig {
    let mut all = DynamicConfig::default();
    all.merge(parse_str(A_YAML, Format::Yaml, "a.yaml").unwrap(), "a.yaml").unwrap();
    all.merge(parse_str(B_TOML, Format::Toml, "b.toml").unwrap(), "b.toml").unwrap();
    all
}

#[test]
fn merge_combines_files_and_remembers_origins() {
    let all = merged_a_b();
    assert_eq!(
        all.object_names().into_iter().collect::<Vec<_>>(),
        ["http.routers.api", "http.routers.web", "http.services.svc", "tls.options.default"]
    );
    assert_eq!(all.origin_of("http.routers.api"), Some("a.yaml"));
    assert_eq!(all.origin_of("http.routers.web"), Some("b.toml"));
    assert_eq!(all.origin_of("tls.options.default"), Some("b.toml"));
    // Validation names the file that defined the faulty object.
    assert_eq!(
        validation_errors(&all),
        [r#"b.toml:3:12: http.routers.web: field "service": service "svc2" is not defined (defined: svc)"#]
    );
}

#[test]
fn merge_refuses_names_defined_twice_and_changes_nothing() {
    let mut all = merged_a_b();
    let before = all.clone();
    let c = parse_str(C_JSON, Format::Json, "c.json").unwrap();
    let err = all.merge(c, "c.json").unwrap_err();
    assert_eq!(
        err.conflicts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "http.routers.api is defined in both a.yaml and c.json",
            "http.services.svc is defined in both a.yaml and c.json",
        ]
    );
    assert_eq!(
        err.to_string(),
        "http.routers.api is defined in both a.yaml and c.json; http.services.svc is defined in both a.yaml and c.json (Traefik would drop both definitions; Constellation refuses)"
    );
    assert_eq!(all, before);
    assert_eq!(all.origin_of("http.services.other"), None);
    let as_dynamic: DynamicError = err.into();
    assert!(matches!(as_dynamic, DynamicError::Merge(_)));
}

#[test]
fn merge_concatenates_tls_certificates() {
    let mut all = merged_a_b();
    let c =
        parse_str(r#"{"tls": {"certificates": [{"certFile": "c.crt", "keyFile": "c.key"}]}}"#, Format::Json, "c.json")
            .unwrap();
    all.merge(c, "c.json").unwrap();
    let tls = all.tls.as_ref().unwrap();
    assert_eq!(
        tls.certificates.iter().map(|c| (c.cert_file.as_str(), c.key_file.as_str())).collect::<Vec<_>>(),
        [("b.crt", "b.key"), ("c.crt", "c.key")]
    );
}

#[test]
fn merge_uses_the_given_origin_for_unrecorded_objects() {
    let mut built = DynamicConfig::default();
    built.http.routers.insert("api".into(), HttpRouter::default());
    let mut all = DynamicConfig::default();
    all.merge(built.clone(), "generated").unwrap();
    assert_eq!(all.origin_of("http.routers.api"), Some("generated"));
    let err = all.merge(built, "again").unwrap_err();
    assert_eq!(err.conflicts[0].to_string(), "http.routers.api is defined in both generated and again");
}

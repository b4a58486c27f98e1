//! Checks a stack definition — the built-in catalogue's and imported compose files' alike —
//! and reports every problem, not just the first: names unique, references resolve
//! (dependencies, networks, volumes), dependencies acyclic, no inline secret, routed
//! services health-checked and with a port, router rules present, health checks well
//! formed, images pinned, host ports not published twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::model::{DependencyCondition, EnvValue, MountSource, Service, Stack};

#[cfg(test)]
mod tests;

/// One thing wrong with a stack definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Stack name.
    pub stack: String,
    /// Service, when the problem is in one.
    pub service: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.service {
            Some(s) => write!(f, "stack {}: service {s}: {}", self.stack, self.message),
            None => write!(f, "stack {}: {}", self.stack, self.message),
        }
    }
}

/// Every problem of `stack` (empty when it is valid): the [`Findings`]' errors, then its
/// advisories.
pub fn check(stack: &Stack) -> Vec<Problem> {
    let Findings { mut errors, advisories } = findings(stack);
    errors.extend(advisories);
    errors
}

/// The problems of a stack, split by weight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// The definition cannot be deployed as written (a reference does not resolve, an
    /// inline secret, a cycle, a malformed health check or rule, a host port clash).
    pub errors: Vec<Problem>,
    /// Deployable, and meaningful to Traefik, but against the catalogue's rules: an
    /// unpinned image, a routed service without a health check, a router without a rule
    /// (Traefik's default rule applies), a routed service whose port is left to the
    /// image. The catalogue has none; an imported compose file may, and a caller may
    /// choose to warn rather than refuse.
    pub advisories: Vec<Problem>,
}

/// [`check`]'s problems, split into errors and advisories.
pub fn findings(stack: &Stack) -> Findings {
    let mut out = Report { stack: &stack.name, problems: Vec::new(), advisories: Vec::new() };
    unique_names(stack, &mut out);
    dependencies(stack, &mut out);
    references(stack, &mut out);
    for s in &stack.services {
        secrets(s, &mut out);
        routing(s, &mut out);
        healthcheck(s, &mut out);
        image(s, &mut out);
    }
    host_ports(stack, &mut out);
    Findings { errors: out.problems, advisories: out.advisories }
}

/// Whether an environment variable's name says it holds a secret: a word part (split on
/// `_`, `-`, `.`) containing PASSWORD, PASSWD, SECRET, CREDENTIAL or PRIVATE, or being
/// KEY/KEYS/TOKEN/TOKENS/PASS, or ending in TOKEN or in API/ACCESS/AUTH/… + KEY (so
/// `API_KEY`, `APIKEY`, `AUTHTOKEN` are secrets, `KEYCLOAK_URL` and `TOKENIZER` are not).
/// Names whose last part says they hold something about a secret rather than the secret
/// (`*_FILE`, `*_PATH`, `*_LENGTH`, `*_URL`, …) are not secrets.
pub fn is_secret_name(name: &str) -> bool {
    const CONTAINS: [&str; 5] = ["PASSWORD", "PASSWD", "SECRET", "CREDENTIAL", "PRIVATE"];
    const WHOLE: [&str; 5] = ["KEY", "KEYS", "TOKEN", "TOKENS", "PASS"];
    const KEY_PREFIXES: [&str; 9] =
        ["API", "ACCESS", "AUTH", "PRIV", "MASTER", "SIGNING", "ENCRYPTION", "LICENSE", "SESSION"];
    const ABOUT: [&str; 19] = [
        "FILE",
        "PATH",
        "DIR",
        "LENGTH",
        "LEN",
        "MIN",
        "TTL",
        "EXPIRY",
        "EXPIRES",
        "EXPIRATION",
        "TIMEOUT",
        "ALGORITHM",
        "TYPE",
        "ENABLED",
        "ENABLE",
        "HEADER",
        "URL",
        "URI",
        "ENDPOINT",
    ];
    let upper = name.to_ascii_uppercase();
    let parts: Vec<&str> = upper.split(['_', '-', '.']).filter(|p| !p.is_empty()).collect();
    if parts.len() > 1 && parts.last().is_some_and(|last| ABOUT.contains(last)) {
        return false;
    }
    parts.iter().any(|p| {
        CONTAINS.iter().any(|w| p.contains(w))
            || WHOLE.contains(p)
            || (p.len() > 5 && p.ends_with("TOKEN"))
            || KEY_PREFIXES.iter().any(|k| p.strip_suffix("KEY").is_some_and(|rest| rest.ends_with(k)))
    })
}

/// Whether `value` consists only of environment references (`${VAR}`, `$VAR`, with
/// `:?`/`?` messages, and `:-`/`-`/`:+`/`+` defaults that are themselves only
/// references or empty) — i.e. holds no literal text.
pub fn is_reference_only(value: &str) -> bool {
    let mut rest = value;
    while !rest.is_empty() {
        let Some(after) = rest.strip_prefix('$') else { return false };
        if let Some(inner_start) = after.strip_prefix('{') {
            let Some(end) = closing_brace(inner_start) else { return false };
            if !reference_body_ok(&inner_start[..end]) {
                return false;
            }
            rest = &inner_start[end + 1..];
        } else {
            let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if len == 0 {
                return false;
            }
            rest = &after[len..];
        }
    }
    true
}

/// Index of the `}` closing a `${` whose body starts `s`, honouring nested `${…}`.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn reference_body_ok(body: &str) -> bool {
    let name_len = body.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(body.len());
    if name_len == 0 {
        return false;
    }
    let op = &body[name_len..];
    if op.is_empty() || op.starts_with(":?") || op.starts_with('?') {
        return true;
    }
    let default = [":-", ":+", "-", "+"].iter().find_map(|p| op.strip_prefix(p));
    match default {
        Some(d) => d.is_empty() || is_reference_only(d),
        None => false,
    }
}

struct Report<'a> {
    stack: &'a str,
    problems: Vec<Problem>,
    advisories: Vec<Problem>,
}

// === impl Report ===

impl Report<'_> {
    fn stack(&mut self, message: String) {
        self.problems.push(Problem { stack: self.stack.to_owned(), service: None, message });
    }

    fn service(&mut self, service: &str, message: String) {
        self.problems.push(Problem { stack: self.stack.to_owned(), service: Some(service.to_owned()), message });
    }

    fn advise(&mut self, service: &str, message: String) {
        self.advisories.push(Problem { stack: self.stack.to_owned(), service: Some(service.to_owned()), message });
    }
}

fn has_health(s: &Service) -> bool {
    s.healthcheck.as_ref().is_some_and(|h| !h.test.is_empty() && h.test.first().map(String::as_str) != Some("NONE"))
}

fn unique_names(stack: &Stack, out: &mut Report<'_>) {
    let mut services: BTreeMap<&str, usize> = BTreeMap::new();
    let mut containers: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for s in &stack.services {
        *services.entry(s.name.as_str()).or_default() += 1;
        containers.entry(s.container_name(&stack.name)).or_default().push(&s.name);
    }
    for (name, n) in services.iter().filter(|(_, n)| **n > 1) {
        out.stack(format!("service name `{name}` is defined {n} times"));
    }
    for (container, owners) in containers.iter().filter(|(_, o)| o.len() > 1) {
        out.stack(format!("container name `{container}` is used by services {}", owners.join(", ")));
    }
}

fn dependencies(stack: &Stack, out: &mut Report<'_>) {
    // With duplicate names (reported above) the first definition stands.
    let mut by_name: BTreeMap<&str, &Service> = BTreeMap::new();
    for s in &stack.services {
        by_name.entry(s.name.as_str()).or_insert(s);
    }
    for s in &stack.services {
        for d in &s.depends_on {
            match by_name.get(d.service.as_str()) {
                None => {
                    out.service(&s.name, format!("depends on `{}`, which is not a service of the stack", d.service))
                }
                Some(target) if d.condition == DependencyCondition::Healthy && !has_health(target) => out.service(
                    &s.name,
                    format!("waits for `{}` to be healthy, but `{}` has no health check", d.service, d.service),
                ),
                Some(_) => {}
            }
        }
    }
    // Cycles: depth-first search over the edges that resolve; each cycle reported once.
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for s in &stack.services {
        let mut path: Vec<&str> = Vec::new();
        find_cycles(&s.name, &by_name, &mut path, &mut done, &mut reported, out);
    }
}

fn find_cycles<'a>(
    name: &'a str,
    by_name: &BTreeMap<&'a str, &'a Service>,
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
    reported: &mut BTreeSet<Vec<String>>,
    out: &mut Report<'_>,
) {
    if let Some(pos) = path.iter().position(|p| *p == name) {
        let cycle = &path[pos..];
        let mut key: Vec<String> = cycle.iter().map(|s| (*s).to_owned()).collect();
        key.sort();
        if reported.insert(key) {
            let mut shown: Vec<&str> = cycle.to_vec();
            shown.push(name);
            out.stack(format!("dependency cycle: {}", shown.join(" -> ")));
        }
        return;
    }
    if done.contains(name) {
        return;
    }
    let Some(service) = by_name.get(name) else { return };
    path.push(name);
    for d in &service.depends_on {
        if let Some((target, _)) = by_name.get_key_value(d.service.as_str()) {
            find_cycles(target, by_name, path, done, reported, out);
        }
    }
    path.pop();
    done.insert(name);
}

fn references(stack: &Stack, out: &mut Report<'_>) {
    let networks: BTreeSet<&str> = stack.networks.iter().map(|n| n.name.as_str()).collect();
    let volumes: BTreeSet<&str> = stack.volumes.iter().map(|v| v.name.as_str()).collect();
    for s in &stack.services {
        for n in s.networks.iter().filter(|n| !networks.contains(n.as_str())) {
            out.service(&s.name, format!("joins network `{n}`, which the stack does not declare"));
        }
        for m in &s.volumes {
            if let MountSource::Volume(v) = &m.source {
                if !volumes.contains(v.as_str()) {
                    out.service(
                        &s.name,
                        format!("mounts volume `{v}` at {}, which the stack does not declare", m.target),
                    );
                }
            }
        }
    }
}

fn secrets(s: &Service, out: &mut Report<'_>) {
    for (key, value) in &s.environment {
        if let EnvValue::Value(v) = value {
            if is_secret_name(key) && !is_reference_only(v) {
                out.service(
                    &s.name,
                    format!(
                        "environment `{key}` looks like a secret but holds inline text; use a `${{VAR}}` reference or a secret file"
                    ),
                );
            }
        }
    }
}

fn routing(s: &Service, out: &mut Report<'_>) {
    let routed = s.labels.get("traefik.enable").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut port_label = false;
    let mut routers: BTreeMap<String, Option<&str>> = BTreeMap::new();
    for (key, value) in &s.labels {
        if let Some(rest) = key.strip_prefix("traefik.http.services.") {
            if rest.ends_with(".loadbalancer.server.port") {
                port_label = true;
                if !value.trim().parse::<u16>().is_ok_and(|p| p > 0) {
                    out.service(&s.name, format!("label `{key}` is `{value}`, not a port number"));
                }
            }
        }
        for kind in ["traefik.http.routers.", "traefik.tcp.routers."] {
            if let Some((router, option)) = key.strip_prefix(kind).and_then(|r| r.split_once('.')) {
                let entry = routers.entry(format!("{kind}{router}")).or_insert(None);
                if option == "rule" {
                    *entry = Some(value.as_str());
                }
            }
        }
    }
    for (router, rule) in &routers {
        match rule {
            None => out.advise(
                &s.name,
                format!(
                    "router `{router}` has no `rule` label (Traefik's default `Host(<container>.<domain>)` applies)"
                ),
            ),
            Some(rule) => {
                if let Err(why) = rule_shape(rule) {
                    out.service(&s.name, format!("label `{router}.rule` is `{rule}`: {why}"));
                }
            }
        }
    }
    if routed {
        if !has_health(s) {
            out.advise(&s.name, "is routed (`traefik.enable=true`) but has no health check".to_owned());
        }
        if !port_label && s.ports.len() != 1 {
            out.advise(
                &s.name,
                format!(
                    "is routed but names no `traefik.http.services.<s>.loadbalancer.server.port` and publishes {} ports (one is needed to choose; otherwise the image's single exposed port is used)",
                    s.ports.len()
                ),
            );
        }
    }
}

/// A router rule's outward shape: non-empty, backtick-quoted strings closed, parentheses
/// balanced outside them, and at least one matcher call.
fn rule_shape(rule: &str) -> Result<(), &'static str> {
    if rule.trim().is_empty() {
        return Err("the rule is empty");
    }
    let mut depth: i64 = 0;
    let mut quoted = false;
    let mut calls = 0;
    for c in rule.chars() {
        match c {
            '`' => quoted = !quoted,
            '(' if !quoted => {
                depth += 1;
                calls += 1;
            }
            ')' if !quoted => {
                depth -= 1;
                if depth < 0 {
                    return Err("a `)` closes nothing");
                }
            }
            _ => {}
        }
    }
    if quoted {
        Err("a backtick-quoted value is not closed")
    } else if depth != 0 {
        Err("parentheses are not balanced")
    } else if calls == 0 {
        Err("no matcher such as Host(`…`)")
    } else {
        Ok(())
    }
}

fn healthcheck(s: &Service, out: &mut Report<'_>) {
    let Some(h) = &s.healthcheck else { return };
    let form = h.test.first().map(String::as_str);
    let ok = match form {
        None => Err("the health check's test is empty".to_owned()),
        Some("NONE") if h.test.len() == 1 => Ok(()),
        Some("NONE") => Err("a NONE health check takes no arguments".to_owned()),
        Some("CMD") if h.test.get(1).is_some_and(|p| !p.trim().is_empty()) => Ok(()),
        Some("CMD") => Err("a CMD health check names no program".to_owned()),
        Some("CMD-SHELL") if h.test.len() == 2 && !h.test[1].trim().is_empty() => Ok(()),
        Some("CMD-SHELL") => Err("a CMD-SHELL health check takes exactly one non-empty command line".to_owned()),
        Some(other) => Err(format!("the health check's test starts with `{other}`, not CMD, CMD-SHELL or NONE")),
    };
    if let Err(message) = ok {
        out.service(&s.name, message);
    }
}

fn image(s: &Service, out: &mut Report<'_>) {
    let image = s.image.trim();
    if image.is_empty() {
        out.service(&s.name, "has no image".to_owned());
        return;
    }
    if let Some((_, digest)) = image.split_once('@') {
        if digest.is_empty() {
            out.service(&s.name, format!("image `{image}` has an empty digest"));
        }
        return;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => out.advise(&s.name, format!("image `{image}` has no tag (it means `latest`); pin a version")),
        Some((_, "")) => out.service(&s.name, format!("image `{image}` has an empty tag")),
        Some((_, "latest")) => out.advise(&s.name, format!("image `{image}` uses the `latest` tag; pin a version")),
        Some(_) => {}
    }
}

fn host_ports(stack: &Stack, out: &mut Report<'_>) {
    let mut seen: Vec<(&str, Option<IpAddr>, u16, crate::model::Protocol)> = Vec::new();
    for s in &stack.services {
        for p in &s.ports {
            let Some(port) = p.host_port.filter(|p| *p != 0) else { continue };
            let clash = seen.iter().find(|(_, ip, other, proto)| {
                *other == port && *proto == p.protocol && addresses_overlap(*ip, p.host_ip)
            });
            if let Some((first, ..)) = clash {
                out.service(
                    &s.name,
                    format!(
                        "publishes host port {port}/{} that `{first}` already publishes on an overlapping address",
                        protocol_name(p.protocol)
                    ),
                );
            }
            seen.push((&s.name, p.host_ip, port, p.protocol));
        }
    }
}

fn addresses_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
        _ => true,
    }
}

fn protocol_name(p: crate::model::Protocol) -> &'static str {
    match p {
        crate::model::Protocol::Tcp => "tcp",
        crate::model::Protocol::Udp => "udp",
    }
}

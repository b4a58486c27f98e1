//! The commands that read or change a running agent through its admin API:
//! `status`, `dns plan`, `raft status|add-voter|remove-voter`. They read the same typed
//! documents the admin server writes (`constellation_plane::status`).

use anyhow::{bail, Context};
use constellation_lease::GroupStatus;
use constellation_plane::status::{DnsLast, Status};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How long one admin call may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The admin bearer token: `--token`, else `CONSTELLATION_ADMIN__TOKEN` (as the agent reads it).
fn admin_token(token: Option<&str>) -> Option<String> {
    token.map(str::to_string).or_else(|| std::env::var("CONSTELLATION_ADMIN__TOKEN").ok()).filter(|t| !t.is_empty())
}

/// One request to the admin API at `base` (`http://host:port`) with the bearer token if
/// any. A 200 is decoded as `T`; anything else is an error carrying the server's
/// `error` field (or its text).
async fn call<T: DeserializeOwned>(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> anyhow::Result<T> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?;
    let mut req = client.request(method.clone(), &url);
    if let Some(t) = admin_token(token) {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach the admin API at {base}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.with_context(|| format!("{method} {url}: the answer was cut short"))?;
    if status != reqwest::StatusCode::OK {
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        bail!("{method} {url} answered {}: {message}", status.as_u16());
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{url} did not return the expected JSON"))
}

/// `3d 4h`, `5h 2m`, `40s`.
fn human_secs(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3_600),
        s if s >= 3_600 => format!("{}h {}m", s / 3_600, s % 3_600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string())
}

/// `constellation status`: members, hints, leases, routes, upstreams and breakers.
pub async fn status(admin: &str, json: bool, token: Option<&str>) -> anyhow::Result<()> {
    if json {
        let v: Value = call(admin, reqwest::Method::GET, "/api/v1/status", None, token).await?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s: Status = call(admin, reqwest::Method::GET, "/api/v1/status", None, token).await?;
    println!(
        "node {}  ready {}  config generation {}  last reload {}",
        s.node.name,
        s.ready,
        s.config.generation,
        if s.config.last_reload.result.is_empty() { "-" } else { &s.config.last_reload.result }
    );
    if !s.members.is_empty() {
        println!("\nMEMBERS");
        println!(
            "  {:<16} {:<22} {:<8} {:>14} {:<10} {:>7} {:<16}",
            "NAME", "ADDRESS", "STATE", "INCARNATION", "ROLES", "VERSION", "PUBLIC IP"
        );
        for m in &s.members {
            let state = serde_json::to_value(m.state).ok().and_then(|v| v.as_str().map(str::to_string));
            println!(
                "  {:<16} {:<22} {:<8} {:>14} {:<10} {:>7} {:<16}",
                format!("{}{}", m.name, if m.is_self { "*" } else { "" }),
                or_dash(m.address.as_ref()),
                or_dash(state),
                m.incarnation,
                if m.roles.is_empty() { "-".to_string() } else { m.roles.join(",") },
                or_dash(m.state_version),
                or_dash(m.public_ip.as_ref()),
            );
        }
    }
    if !s.hints.is_empty() {
        println!("\nOUTLIER HINTS");
        for h in &s.hints {
            println!("  {} reports {} {} (expires in {} ms)", h.from, h.service, h.upstream, h.expires_in_ms);
        }
    }
    if !s.leases.is_empty() {
        println!("\nLEASES");
        println!("  {:<16} {:<16} {:>8} HELD HERE", "LEASE", "HOLDER", "TOKEN");
        for (name, l) in &s.leases {
            println!(
                "  {:<16} {:<16} {:>8} {}",
                name,
                or_dash(l.holder.as_ref()),
                l.token,
                if l.held_here { "yes" } else { "" }
            );
        }
    }
    println!("\nENTRYPOINTS");
    println!(
        "  {:<12} {:<22} {:>11} {:>9} {:>7} {:>9} {:>9}",
        "NAME", "ADDRESS", "CONNECTIONS", "MAX", "PER IP", "HEAD MS", "IDLE MS"
    );
    for e in &s.entrypoints {
        println!(
            "  {:<12} {:<22} {:>11} {:>9} {:>7} {:>9} {:>9}",
            e.name,
            e.address,
            e.connections,
            e.max_connections,
            e.max_connections_per_ip,
            e.read_timeout_ms,
            e.idle_timeout_ms
        );
    }
    if let Some(d) = &s.docker {
        let engine = if d.connected {
            format!("connected (engine {})", d.engine_version.as_deref().unwrap_or("?"))
        } else {
            format!(
                "NOT REACHABLE: {} (last known containers shown)",
                d.last_error.as_deref().unwrap_or("not yet connected")
            )
        };
        println!("\nCONTAINERS  docker {}: {engine}", d.endpoint);
        println!(
            "  {:<12} {:<28} {:<10} {:<10} {:>8}  {:<20} NETWORKS",
            "NODE", "NAME", "STATE", "HEALTH", "RESTARTS", "SERVICES"
        );
        for c in &d.containers {
            println!(
                "  {:<12} {:<28} {:<10} {:<10} {:>8}  {:<20} {}",
                c.node,
                c.name,
                c.state,
                c.health,
                c.restarts,
                if c.services.is_empty() { "-".to_string() } else { c.services.join(",") },
                c.networks.join(",")
            );
            if let Some(e) = &c.error {
                println!("    LABELS REFUSED: {e}");
            }
        }
        for c in &d.conflicts {
            println!("  CONFLICT (left out): {c}");
        }
    }
    if !s.certificates.is_empty() {
        println!("\nCERTIFICATES");
        println!("  {:<36} {:<12} {:>9} {:<24} FILE", "NAMES", "SOURCE", "DAYS LEFT", "ISSUER");
        for c in &s.certificates {
            let names = if c.names.is_empty() { "(no names)".to_string() } else { c.names.join(",") };
            println!(
                "  {:<36} {:<12} {:>9} {:<24} {}",
                names,
                c.source,
                c.days_left,
                c.issuer,
                or_dash(c.file.as_ref())
            );
        }
    }
    if let Some(a) = &s.acme {
        let role = if a.orderer { "this node orders" } else { "another node orders" };
        println!(
            "\nACME  resolver {}: {} via {}, storage {}{}, {role}",
            a.resolver,
            a.directory,
            a.challenge,
            a.storage,
            if a.encrypted { " (encrypted)" } else { "" }
        );
        println!("  {:<36} {:<9} {:>11} {:>11}  LAST ERROR", "DOMAINS", "STATE", "EXPIRES IN", "RENEW IN");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let left = |t: Option<u64>| t.map(|t| human_secs(t.saturating_sub(now))).unwrap_or_else(|| "-".into());
        for c in &a.certificates {
            let state = serde_json::to_value(c.state).ok().and_then(|v| v.as_str().map(str::to_string));
            println!(
                "  {:<36} {:<9} {:>11} {:>11}  {}",
                c.domains.join(","),
                state.unwrap_or_default(),
                left(c.not_after),
                left(c.renew_at),
                or_dash(c.last_error.as_ref())
            );
        }
        for r in &a.unknown_resolvers {
            println!("  UNKNOWN RESOLVER {r:?}: its routers get the default certificate");
        }
    }
    println!("\nROUTES");
    println!("  {:<20} {:>8}  {:<20} RULE", "NAME", "PRIORITY", "SERVICE");
    for r in &s.routes {
        println!("  {:<20} {:>8}  {:<20} {}", r.name, r.priority, r.service.name, r.rule);
        if !r.unapplied.is_empty() {
            let verdict = if r.refused { "REFUSED (503): needs" } else { "served WITHOUT" };
            println!("    {verdict} {}", r.unapplied.join("; "));
        }
    }
    println!("\nUPSTREAMS");
    println!(
        "  {:<20} {:<28} {:<8} {:<10} {:>9} {:>9} {:<6}",
        "SERVICE", "URL", "HEALTHY", "BREAKER", "REQUESTS", "FAILURES", "HINTED"
    );
    for svc in &s.services {
        for u in &svc.upstreams {
            let breaker = serde_json::to_value(u.breaker.state).ok().and_then(|v| v.as_str().map(str::to_string));
            println!(
                "  {:<20} {:<28} {:<8} {:<10} {:>9} {:>9} {:<6}",
                svc.name,
                u.url,
                u.healthy,
                or_dash(breaker),
                u.requests,
                u.failures,
                if u.deprioritised { "yes" } else { "" }
            );
        }
    }
    print_tcp_udp(&s);
    print_stateful(&s);
    print_warp(&s);
    Ok(())
}

/// WARP egress: this node's gateways, every node's verdicts, routed services, hints.
fn print_warp(s: &Status) {
    let Some(w) = &s.warp else { return };
    if !w.gateways.is_empty() {
        println!(
            "
WARP GATEWAYS (this node)"
        );
        println!(
            "  {:<12} {:<5} {:<5} {:<16} {:>8} {:<26} {:<8} DETAIL",
            "NAME", "UP", "WARP", "EGRESS IP", "LATENCY", "VIA", "RESTARTS"
        );
        for g in &w.gateways {
            let mut detail = g.last_error.clone().unwrap_or_default();
            if g.differs_from_node_ip == Some(false) {
                detail.push_str(" (egress IP is the node's own)");
            }
            if let Some(c) = &g.container {
                detail.push_str(&format!(" container {} {}/{}", c.name, c.state, c.health));
            }
            if let Some(n) = &g.restart_note {
                detail.push_str(&format!("; {n}"));
            }
            println!(
                "  {:<12} {:<5} {:<5} {:<16} {:>8} {:<26} {:<8} {}",
                g.name,
                if g.up { "up" } else { "DOWN" },
                or_dash(g.warp.map(|w| w.as_str())),
                or_dash(g.ip),
                g.latency_ms.map(|l| format!("{l} ms")).unwrap_or_else(|| "-".into()),
                g.via,
                g.restarts_last_hour,
                detail.trim()
            );
        }
    }
    if !w.nodes.is_empty() {
        println!(
            "
WARP EGRESS BY NODE"
        );
        println!("  {:<16} {:<12} {:<5} {:<5} {:<16} ERROR", "NODE", "GATEWAY", "UP", "WARP", "EGRESS IP");
        for (node, records) in &w.nodes {
            for r in records {
                println!(
                    "  {:<16} {:<12} {:<5} {:<5} {:<16} {}",
                    node,
                    r.gateway,
                    if r.up { "up" } else { "DOWN" },
                    if r.warp.is_empty() { "-" } else { &r.warp },
                    or_dash(r.ip),
                    r.error.as_deref().unwrap_or("")
                );
            }
        }
    }
    if !w.services.is_empty() {
        println!(
            "
WARP-EGRESS SERVICES"
        );
        println!("  {:<20} {:<13} {:<24} LEFT OUT (egress down)", "SERVICE", "MODE", "NODES (egress up)");
        for r in &w.services {
            println!("  {:<20} {:<13} {:<24} {}", r.service, r.mode, r.up.join(","), r.down.join(","));
        }
    }
    for h in &w.hints {
        println!(
            "  egress hint: node {} (repeated 403s seen by {}), {} s left",
            h.upstream,
            h.from,
            h.expires_in_ms / 1000
        );
    }
}

/// TCP and UDP routes and TCP servers, when there are any.
fn print_tcp_udp(s: &Status) {
    if !s.tcp_routes.is_empty() {
        println!(
            "
TCP ROUTES"
        );
        println!("  {:<20} {:>8}  {:<12} {:<20} {:>5}  RULE", "NAME", "PRIORITY", "TLS", "SERVICE", "OPEN");
        for r in &s.tcp_routes {
            println!(
                "  {:<20} {:>8}  {:<12} {:<20} {:>5}  {}",
                r.name,
                r.priority,
                r.tls,
                or_dash(r.service.as_ref()),
                r.open,
                r.rule
            );
            if let Some(why) = &r.refused {
                println!("    REFUSED (connections closed): {why}");
            }
        }
        println!(
            "
TCP SERVERS"
        );
        println!(
            "  {:<20} {:<24} {:<8} {:<10} {:>5} {:>11}",
            "SERVICE", "ADDRESS", "HEALTHY", "BREAKER", "OPEN", "CONNECTIONS"
        );
        for svc in &s.tcp_services {
            if svc.servers.is_empty() {
                println!("  {:<20} (no server: connections are closed)", svc.name);
            }
            for u in &svc.servers {
                let breaker = serde_json::to_value(u.breaker).ok().and_then(|v| v.as_str().map(str::to_string));
                println!(
                    "  {:<20} {:<24} {:<8} {:<10} {:>5} {:>11}",
                    svc.name,
                    u.address,
                    u.healthy,
                    or_dash(breaker),
                    u.open,
                    u.connections
                );
            }
        }
    }
    if !s.udp_routes.is_empty() {
        println!(
            "
UDP ROUTES"
        );
        println!("  {:<20} {:<20} ENTRYPOINTS", "NAME", "SERVICE");
        for r in &s.udp_routes {
            let eps = if r.entry_points.is_empty() { "(all UDP)".to_string() } else { r.entry_points.join(",") };
            println!("  {:<20} {:<20} {eps}", r.name, r.service);
        }
    }
}

/// Stateful groups: where each route points and why it is withdrawn.
fn print_stateful(s: &Status) {
    if s.stateful.is_empty() {
        return;
    }
    println!(
        "
STATEFUL"
    );
    println!("  {:<16} {:<6} {:<12} {:<22} {:<11} DETAIL", "GROUP", "KIND", "ENTRYPOINT", "PRIMARY", "VERDICT");
    for g in &s.stateful {
        let d = &g.detail;
        let detail = match g.kind.as_str() {
            "redis" => {
                let sentinels = d["sentinels"].as_array().map(|a| a.len()).unwrap_or(0);
                let agreeing = d["sentinels"]
                    .as_array()
                    .map(|a| a.iter().filter(|x| x["says"].is_string() && x["says"] == d["master"]).count())
                    .unwrap_or(0);
                let replicas = d["replicas"].as_array().map(|a| a.len()).unwrap_or(0);
                let last = d["last_switch"]
                    .as_object()
                    .map(|l| {
                        format!(
                            ", last switch {} -> {}",
                            l["from"].as_str().unwrap_or("?"),
                            l["to"].as_str().unwrap_or("?")
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "sentinels {agreeing}/{sentinels} agree (quorum {}), {replicas} replicas, {} switches{last}",
                    d["quorum"], d["switches"]
                )
            }
            _ => {
                let members = d["members"].as_array().map(|a| a.len()).unwrap_or(0);
                format!("{members} members, config version {}", d["config_version"])
            }
        };
        println!(
            "  {:<16} {:<6} {:<12} {:<22} {:<11} {detail}",
            g.name,
            g.kind,
            or_dash(g.entrypoint.as_ref()),
            or_dash(g.primary.as_ref()),
            g.verdict
        );
        if let Some(r) = &g.reason {
            println!("    {r}");
        }
    }
}

/// `constellation dns plan`: the DNS controller's role, last outcome and dry-run plan.
pub async fn dns_plan(admin: &str, token: Option<&str>) -> anyhow::Result<()> {
    let s: Status = call(admin, reqwest::Method::GET, "/api/v1/status", None, token).await?;
    let Some(dns) = s.dns else {
        bail!("DNS is not configured on this node (no [dns] section)");
    };
    println!(
        "zone {}  role {}  front door {}{}",
        dns.zone,
        dns.role,
        or_dash(dns.front_door_ip.as_ref()),
        if dns.dry_run { "  (dry run: no API token)" } else { "" }
    );
    match &dns.last {
        DnsLast::None => println!("no reconcile yet"),
        DnsLast::Applied { created, updated, deleted, drift_corrections, skipped_unowned, token, .. } => println!(
            "applied with token {token}: {created} created, {updated} updated, {deleted} deleted, \
             {drift_corrections} drift corrections, {skipped_unowned} records of other owners left alone"
        ),
        DnsLast::Deposed { dropped_writes, .. } => {
            println!("deposed: the lease was lost mid-batch; {dropped_writes} writes were not made")
        }
        DnsLast::Error { error, .. } => println!("last reconcile failed (retried): {error}"),
        DnsLast::DryRun { plan, .. } => {
            println!("plan (not written):");
            for (verb, lines) in [
                ("create", &plan.create),
                ("update", &plan.update),
                ("delete", &plan.delete),
                ("skip", &plan.skipped_unowned),
            ] {
                for l in lines {
                    println!("  {verb:<7} {l}");
                }
            }
        }
    }
    Ok(())
}

/// `constellation raft status`: the group as the node behind `admin` sees it, and the leases.
pub async fn raft_status(admin: &str, json: bool, token: Option<&str>) -> anyhow::Result<()> {
    let group: GroupStatus = call(admin, reqwest::Method::GET, "/api/v1/raft", None, token).await?;
    let status: Status = call(admin, reqwest::Method::GET, "/api/v1/status", None, token).await?;
    if json {
        let all = serde_json::json!({"group": group, "leases": status.leases, "raft": status.raft});
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!(
        "node {}  leader {}  term {}  last log index {}  applied {}{}",
        group.node,
        or_dash(group.leader.as_ref()),
        group.term,
        or_dash(group.last_log_index),
        or_dash(group.last_applied),
        if group.joint { "  (membership change under way)" } else { "" }
    );
    for (title, list) in [("VOTERS", &group.voters), ("LEARNERS", &group.learners)] {
        if list.is_empty() {
            continue;
        }
        println!("\n{title}");
        println!("  {:<16} {:<22} {:<10} {:>8}", "NAME", "RAFT ADDRESS", "REACHABLE", "MATCHED");
        for m in list {
            let reachable = match m.reachable {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let leader = if group.leader.as_deref() == Some(m.name.as_str()) { "*" } else { "" };
            println!(
                "  {:<16} {:<22} {:<10} {:>8}",
                format!("{}{leader}", m.name),
                m.raft_address,
                reachable,
                or_dash(m.matched_index)
            );
        }
    }
    if !status.leases.is_empty() {
        println!("\nLEASES");
        println!("  {:<16} {:<16} {:>8} {:>8} HELD HERE", "LEASE", "HOLDER", "TOKEN", "TTL MS");
        for (name, l) in &status.leases {
            println!(
                "  {:<16} {:<16} {:>8} {:>8} {}",
                name,
                or_dash(l.holder.as_ref()),
                l.token,
                or_dash(l.ttl_ms),
                if l.held_here { "yes" } else { "" }
            );
        }
    }
    Ok(())
}

/// `constellation raft add-voter NAME ADDRESS` (the cluster address; Raft is its port + 1).
pub async fn raft_add_voter(admin: &str, name: &str, address: &str, token: Option<&str>) -> anyhow::Result<()> {
    let body = serde_json::json!({"name": name, "address": address});
    let v: Value = call(admin, reqwest::Method::POST, "/api/v1/raft/voters", Some(&body), token).await?;
    print_voters(&format!("added {name} as a voter"), &v);
    Ok(())
}

/// `constellation raft remove-voter NAME`.
pub async fn raft_remove_voter(admin: &str, name: &str, token: Option<&str>) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(['/', '?', '#', '%', ' ']) {
        bail!("{name:?} is not a node name");
    }
    let path = format!("/api/v1/raft/voters/{name}");
    let v: Value = call(admin, reqwest::Method::DELETE, &path, None, token).await?;
    print_voters(&format!("removed {name}"), &v);
    Ok(())
}

fn print_voters(what: &str, v: &Value) {
    let names = |key: &str| -> String {
        let list: Vec<String> = v[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| format!("{} ({})", m["name"].as_str().unwrap_or("?"), m["raft_address"].as_str().unwrap_or("?")))
            .collect();
        if list.is_empty() {
            "-".to_string()
        } else {
            list.join(", ")
        }
    };
    println!("{what}\nvoters: {}\nlearners: {}", names("voters"), names("learners"));
}

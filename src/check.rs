//! `constellation config check FILE`: everything the agent would refuse or fail on at
//! start, reported at once, each problem with its file, line, column and key.

use std::path::Path;
use std::process::ExitCode;

use constellation_plane::config;
use constellation_proxy::{AddressMap, UpstreamRegistry};

use crate::{agent, EX_CONFIG};

/// Check `file`, the route files and the stack files it names; exit 78 when anything is
/// wrong.
pub fn run(file: &Path, allow_unsupported: bool) -> ExitCode {
    let mut cfg = match config::load_all(Some(file)) {
        Ok(c) => c,
        Err(errors) => return fail(&errors.iter().map(ToString::to_string).collect::<Vec<_>>()),
    };
    cfg.config.proxy.allow_unsupported |= allow_unsupported;
    let dynamic = match constellation_plane::load_sources(&agent::route_sources(&cfg)) {
        Ok(d) => d,
        Err(errors) => return fail(&errors),
    };
    // The stack files `services` and `deploy` read: parsed and validated the same way.
    if !cfg.config.services.files.is_empty() {
        let options =
            constellation_services::compose::ImportOptions { default_network: cfg.config.docker.network.clone() };
        match constellation_services::stacks::load(&cfg.config.services.files, &cfg.base_dir, &options) {
            Err(errors) => return fail(&errors.iter().map(ToString::to_string).collect::<Vec<_>>()),
            Ok(stacks) => {
                let mut errors = Vec::new();
                for stack in stacks.iter().filter(|s| s.origin != "catalogue") {
                    let f = constellation_services::validate::findings(stack);
                    for a in &f.advisories {
                        println!("warning: {a}");
                    }
                    errors.extend(f.errors.iter().map(ToString::to_string));
                }
                if !errors.is_empty() {
                    return fail(&errors);
                }
            }
        }
    }
    let registry = UpstreamRegistry::default();
    // Files servers transports name (CAs, client certificates) are checked too.
    let files = match constellation_plane::transport_files::load(&dynamic) {
        Ok(f) => f,
        Err(errors) => return fail(&errors),
    };
    let compiled = constellation_proxy::compile_with_files(
        &dynamic,
        &cfg.config.proxy,
        &cfg.entrypoints,
        &registry,
        &AddressMap::new(),
        &files,
        1,
    );
    let (table, warnings) = match compiled {
        Ok(t) => t,
        Err(errors) => return fail(&errors.iter().map(ToString::to_string).collect::<Vec<_>>()),
    };
    // Certificate, key and CA files: read and checked as a reload would.
    let tls = constellation_plane::tls_files::read(&dynamic).and_then(|files| {
        constellation_plane::tls_files::build(&dynamic, &files, &constellation_proxy::AcmeMaterial::default())
    });
    let tls_warnings = match tls {
        Ok((_, w)) => w,
        Err(errors) => return fail(&errors),
    };
    for w in dynamic.unsupported().iter().chain(&warnings).chain(&tls_warnings) {
        println!("warning: {w}");
    }
    let mut errors = Vec::new();
    for r in &table.routes {
        if r.unapplied.is_empty() {
            continue;
        }
        let object = format!("http.routers.{}", r.name);
        let place = match dynamic.position(&object, "") {
            Some((origin, p)) => format!("{origin}:{}:{}: ", p.line, p.column),
            None => dynamic.origin_of(&object).map(|o| format!("{o}: ")).unwrap_or_default(),
        };
        let needs = r.unapplied.join("; ");
        if r.refused {
            errors.push(format!(
                "{place}{object}: refused: it needs what Constellation does not apply: {needs} \
                 (its requests get 503; --allow-unsupported serves it without them)"
            ));
        } else {
            println!("warning: {place}{object}: served WITHOUT {needs} (allow_unsupported is set)");
        }
    }
    for r in &table.tcp.routes {
        let Some(why) = &r.refused else { continue };
        let object = format!("tcp.routers.{}", r.name);
        let place = match dynamic.position(&object, "") {
            Some((origin, p)) => format!("{origin}:{}:{}: ", p.line, p.column),
            None => dynamic.origin_of(&object).map(|o| format!("{o}: ")).unwrap_or_default(),
        };
        errors.push(format!("{place}{object}: refused: {why} (its connections are closed)"));
    }
    // UDP routers compile against the UDP entry points.
    let udp_entrypoints: Vec<String> = cfg.udp_entrypoints.iter().map(|(n, _)| n.clone()).collect();
    match constellation_proxy::udp::compile(&dynamic, &udp_entrypoints, &AddressMap::new()) {
        Ok((_, udp_warnings)) => udp_warnings.iter().for_each(|w| println!("warning: {w}")),
        Err(errs) => errors.extend(errs.into_iter().map(|(o, f, m)| {
            let place = dynamic.position(&o, &f).map(|(origin, p)| format!("{origin}:{}:{}: ", p.line, p.column));
            format!("{}{o}: {f}: {m}", place.unwrap_or_default())
        })),
    }
    if !errors.is_empty() {
        return fail(&errors);
    }
    println!(
        "{}: ok ({} entrypoints, {} routes, {} services)",
        file.display(),
        cfg.entrypoints.len(),
        table.routes.len(),
        table.pools.len()
    );
    ExitCode::SUCCESS
}

fn fail(errors: &[String]) -> ExitCode {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("{} error{} found", errors.len(), if errors.len() == 1 { "" } else { "s" });
    ExitCode::from(EX_CONFIG)
}

//! The files a route configuration's `tls` section names: certificates, keys, client
//! CAs. Paths are relative to the route file that names them; the plane reads them
//! (the proxy never does), fingerprints them so the watcher notices a rewrite, and
//! hands the bytes to [`TlsSnapshot::build`].

use std::collections::hash_map::DefaultHasher;
use std::hash::Hash;
use std::path::Path;

use constellation_proxy::dynamic::DynamicConfig;
use constellation_proxy::tls::{self, AcmeMaterial, TlsError, TlsFiles, TlsSnapshot};

/// Make every relative `certFile`, `keyFile` and `caFiles` path of `cfg` (parsed from a
/// file in `dir`) absolute. Inline PEM is left alone.
pub fn absolutize(cfg: &mut DynamicConfig, dir: &Path) {
    let Some(t) = cfg.tls.as_mut() else { return };
    let fix = |p: &mut String| {
        if !p.is_empty() && !tls::is_inline_pem(p) && Path::new(p.as_str()).is_relative() {
            *p = dir.join(p.as_str()).display().to_string();
        }
    };
    for c in &mut t.certificates {
        fix(&mut c.cert_file);
        fix(&mut c.key_file);
    }
    for s in t.stores.values_mut() {
        if let Some(d) = s.default_certificate.as_mut() {
            fix(&mut d.cert_file);
            fix(&mut d.key_file);
        }
    }
    for o in t.options.values_mut() {
        if let Some(ca) = o.client_auth.as_mut() {
            ca.ca_files.iter_mut().for_each(fix);
        }
    }
}

/// Read every file `cfg` names. An unreadable file is an error naming the file and the
/// key that names it; every problem is reported.
pub fn read(cfg: &DynamicConfig) -> Result<TlsFiles, Vec<String>> {
    let mut files = TlsFiles::new();
    let mut errors = Vec::new();
    for (path, key) in tls::referenced_files(cfg) {
        if files.contains_key(&path) {
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) => {
                files.insert(path, bytes);
            }
            Err(e) => errors.push(format!("{}: {key}: {path}: cannot read: {e}", origin(cfg, &key))),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}

/// Where the route files define the key, for messages (the files' names when unknown).
fn origin(cfg: &DynamicConfig, key: &str) -> String {
    let (object, field) = split_key(key);
    match cfg.position_anywhere(&object, &field) {
        Some((file, p)) => format!("{file}:{}:{}", p.line, p.column),
        None => cfg.source_names().join(", "),
    }
}

/// `tls.options.x.clientAuth.caFiles[0]` → (`tls.options.x`, `clientAuth.caFiles[0]`);
/// `tls.certificates[1].certFile` → (`tls.certificates[1]`, `certFile`).
fn split_key(key: &str) -> (String, String) {
    let parts: Vec<&str> = key.splitn(4, '.').collect();
    match parts.as_slice() {
        ["tls", kind @ ("options" | "stores"), name, rest] => (format!("tls.{kind}.{name}"), rest.to_string()),
        ["tls", cert, rest @ ..] => (format!("tls.{cert}"), rest.join(".")),
        _ => (key.to_string(), String::new()),
    }
}

/// A TLS build error as a reload error line, located when the key can be found.
pub fn describe(cfg: &DynamicConfig, e: &TlsError) -> String {
    let key = if e.field.is_empty() { e.object.clone() } else { format!("{}.{}", e.object, e.field) };
    format!("{}: {key}: {}", origin(cfg, &key), e.message)
}

/// Hash the contents of `paths` (a missing file hashes its error kind), so a rewritten
/// certificate is noticed by the route watcher.
pub fn fingerprint(paths: &[String], h: &mut DefaultHasher) {
    for p in paths {
        p.hash(h);
        match std::fs::read(p) {
            Ok(bytes) => bytes.hash(h),
            Err(e) => e.kind().to_string().hash(h),
        }
    }
}

/// The paths to watch for `cfg`.
pub fn watched(cfg: &DynamicConfig) -> Vec<String> {
    let mut v: Vec<String> = tls::referenced_files(cfg).into_iter().map(|(p, _)| p).collect();
    v.sort();
    v.dedup();
    v
}

/// Build the snapshot for `cfg`, its files and ACME's material; errors as reload lines.
pub fn build(
    cfg: &DynamicConfig,
    files: &TlsFiles,
    acme: &AcmeMaterial,
) -> Result<(TlsSnapshot, Vec<String>), Vec<String>> {
    TlsSnapshot::build(cfg, files, acme).map_err(|errs| errs.iter().map(|e| describe(cfg, e)).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn relative_paths_follow_the_route_file_and_missing_files_name_their_key() {
        let yaml = "tls:\n  certificates:\n    - certFile: certs/a.crt\n      keyFile: /abs/a.key\n  options:\n    m:\n      clientAuth:\n        caFiles: [ca.pem]\n        clientAuthType: RequireAndVerifyClientCert\n";
        let mut cfg = constellation_proxy::dynamic::parse_named("/etc/c/routes.yaml", yaml).unwrap();
        absolutize(&mut cfg, Path::new("/etc/c"));
        let t = cfg.tls.as_ref().unwrap();
        assert_eq!(t.certificates[0].cert_file, "/etc/c/certs/a.crt");
        assert_eq!(t.certificates[0].key_file, "/abs/a.key");
        assert_eq!(t.options["m"].client_auth.as_ref().unwrap().ca_files, ["/etc/c/ca.pem"]);
        let errs = read(&cfg).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("tls.certificates[0].certFile: /etc/c/certs/a.crt: cannot read"), "{errs:?}");
        assert!(errs[2].starts_with("/etc/c/routes.yaml:"), "{errs:?}");
        assert_eq!(
            split_key("tls.options.m.clientAuth.caFiles[0]"),
            ("tls.options.m".into(), "clientAuth.caFiles[0]".into())
        );
        assert_eq!(split_key("tls.certificates[1].certFile"), ("tls.certificates[1]".into(), "certFile".into()));
    }
}

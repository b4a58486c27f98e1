//! The files servers transports name (`rootCAs`, client `certificates`) and middlewares
//! name (`basicAuth`/`digestAuth` `usersFile`), read here so the proxy never touches the
//! disk: each path is taken relative to the folder of the route file that defines the
//! object, read whole, and handed to the compiler as [`TransportFiles`]. An unreadable
//! file is an error naming the file, the object and the key; the table in force then
//! stays.

use std::path::{Path, PathBuf};

use constellation_proxy::transport::is_inline_pem;
use constellation_proxy::{DynamicConfig, TransportFiles};

/// Largest file read for a transport (a CA bundle of a few hundred certificates fits).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// One file a configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Under which name the compiler looks it up (the transport's name, or
    /// `middleware:<name>`).
    pub owner: String,
    /// The object that names it, e.g. `http.serversTransports.t`.
    pub object: String,
    /// The field, e.g. `rootCAs[0]`.
    pub key: String,
    /// The reference as written.
    pub reference: String,
    /// The path to read.
    pub path: PathBuf,
}

/// Every file reference of the config's servers transports and middlewares.
pub fn references(cfg: &DynamicConfig) -> Vec<FileRef> {
    let mut out = Vec::new();
    let resolve = |object: &str, reference: &str| {
        let base = cfg.origin_of(object).map(Path::new).and_then(Path::parent).map(Path::to_path_buf);
        let path = Path::new(reference);
        match &base {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    };
    for (name, key, reference) in constellation_proxy::middleware::file_references(cfg) {
        let object = format!("http.middlewares.{name}");
        let path = resolve(&object, &reference);
        out.push(FileRef { owner: constellation_proxy::middleware::files_key(&name), object, key, reference, path });
    }
    for (name, t) in &cfg.http.servers_transports {
        let object = format!("http.serversTransports.{name}");
        let mut add = |key: String, reference: &str| {
            if is_inline_pem(reference) || reference.is_empty() {
                return;
            }
            let path = resolve(&object, reference);
            out.push(FileRef {
                owner: name.clone(),
                object: object.clone(),
                key,
                reference: reference.to_string(),
                path,
            });
        };
        for (i, r) in t.root_cas.iter().enumerate() {
            add(format!("rootCAs[{i}]"), r);
        }
        for (i, c) in t.certificates.iter().enumerate() {
            add(format!("certificates[{i}].certFile"), &c.cert_file);
            add(format!("certificates[{i}].keyFile"), &c.key_file);
        }
    }
    out
}

/// Read every file the config's servers transports name (blocking).
pub fn load(cfg: &DynamicConfig) -> Result<TransportFiles, Vec<String>> {
    let mut files = TransportFiles::default();
    let mut errors = Vec::new();
    for FileRef { owner, object, key, reference, path } in references(cfg) {
        let origin = cfg.origin_of(&object).unwrap_or("route configuration");
        let fail = |why: String| format!("{origin}: {object}: field \"{key}\": {}: {why}", path.display());
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                errors.push(fail(format!("larger than {MAX_FILE_BYTES} bytes")));
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                errors.push(fail(format!("cannot read: {e}")));
                continue;
            }
        }
        match std::fs::read(&path) {
            Ok(bytes) => files.insert(&owner, &reference, bytes),
            Err(e) => errors.push(fail(format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_are_relative_to_the_defining_file_and_errors_name_file_and_key() {
        let dir = std::env::temp_dir().join(format!("transport-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        std::fs::write(dir.join("certs/ca.pem"), b"ca bytes").unwrap();
        let route = dir.join("routes.yaml");
        let text = "http:\n  serversTransports:\n    t:\n      rootCAs: [certs/ca.pem]\n      certificates:\n        - certFile: missing.pem\n          keyFile: \"-----BEGIN PRIVATE KEY-----\"\n";
        let cfg = constellation_proxy::dynamic::parse_named(&route.display().to_string(), text).unwrap();
        let refs = references(&cfg);
        assert_eq!(refs.len(), 2, "inline PEM is not a file: {refs:?}");
        assert_eq!(refs[0].path, dir.join("certs/ca.pem"));
        let errs = load(&cfg).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].contains("http.serversTransports.t") && errs[0].contains("certificates[0].certFile"),
            "{errs:?}"
        );
        assert!(errs[0].contains(&dir.join("missing.pem").display().to_string()), "{errs:?}");
        std::fs::write(dir.join("missing.pem"), b"cert").unwrap();
        let files = load(&cfg).unwrap();
        assert_eq!(files.get("t", "certs/ca.pem"), Some(&b"ca bytes"[..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Where ACME state lives: the [`AcmeStore`] trait (opaque keys to bytes, a change watch),
//! a data-directory store for a single node and one over the lease group's fenced
//! replicated data, and the [`Sealer`] that encrypts secrets with the cluster key.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use constellation_lease::{Data, LeaseError, LeaseNode};
use constellation_wire::Keyring;
use tokio::sync::{watch, Mutex};

/// Every key this crate writes starts with this (the lease group's data is shared).
pub const KEY_PREFIX: &str = "acme/";
/// The lease whose holder orders and writes (`acme`).
pub const ACME_LEASE: &str = "acme";

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The fencing token is no longer current: this node is not the orderer any more.
    #[error("not the acme lease holder any more: {0}")]
    Fenced(String),
    /// The replicated store is unreachable or refused for another reason (size caps).
    #[error("replicated store: {0}")]
    Replicated(String),
    /// A file of the data-directory store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A stored value could not be opened or decoded.
    #[error("stored {key}: {problem}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// A key/value store every node of the cluster sees the same way. Keys are plain strings
/// under [`KEY_PREFIX`]; values are opaque bytes (secrets already sealed by
/// [`Sealer`]). Writes carry the fencing token of the `acme` lease; a store that is not
/// replicated ignores it.
#[async_trait]
pub trait AcmeStore: Send + Sync + 'static {
    /// Every entry, as of the last change, on a watch that changes with the data.
    fn entries(&self) -> watch::Receiver<Data>;

    /// Sets (`Some`) or deletes (`None`) `key`. Fenced: [`StoreError::Fenced`] when
    /// `token` is not the current holder's.
    async fn put(&self, token: u64, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError>;

    /// The value of `key` as of now.
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.entries().borrow().get(key).cloned()
    }
}

// === FileStore ===

/// A single node's store: one file per key in a directory (files 0600, the directory
/// 0700). Without a cluster key the private keys in it are in the clear, protected only
/// by those modes.
pub struct FileStore {
    dir: PathBuf,
    tx: watch::Sender<Data>,
    write: Mutex<()>,
}

impl FileStore {
    /// Opens (creating it) `dir` and loads every entry.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        let io = |source| StoreError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        restrict(dir, 0o700).map_err(io)?;
        let mut data = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(key) = decode_name(&name) else {
                continue; // temporary files and anything not ours
            };
            let path = entry.path();
            let value = std::fs::read(&path).map_err(|source| StoreError::Io { path, source })?;
            data.insert(key, value);
        }
        let (tx, _) = watch::channel(Arc::new(data));
        Ok(FileStore { dir: dir.to_path_buf(), tx, write: Mutex::new(()) })
    }
}

#[async_trait]
impl AcmeStore for FileStore {
    fn entries(&self) -> watch::Receiver<Data> {
        self.tx.subscribe()
    }

    async fn put(&self, _token: u64, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let _serial = self.write.lock().await;
        let path = self.dir.join(encode_name(key));
        let (dir, key_owned, value_c) = (self.dir.clone(), key.to_string(), value.clone());
        let path_c = path.clone();
        tokio::task::spawn_blocking(move || write_file(&dir, &path_c, &key_owned, value_c.as_deref()))
            .await
            .map_err(|e| StoreError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?
            .map_err(|source| StoreError::Io { path, source })?;
        self.tx.send_modify(|data| {
            let map = Arc::make_mut(data);
            match value {
                Some(v) => map.insert(key.to_string(), v),
                None => map.remove(key),
            };
        });
        Ok(())
    }
}

fn write_file(dir: &Path, path: &Path, key: &str, value: Option<&[u8]>) -> std::io::Result<()> {
    let Some(value) = value else {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    };
    let tmp = dir.join(format!(".{}.tmp", encode_name(key)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(value)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// A key as a file name: letters, digits, `.` and `-` as they are, every other byte as
/// `_XX` (hex). `acme/cert/app.test` is `acme_2Fcert_2Fapp.test`.
fn encode_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

fn decode_name(name: &str) -> Option<String> {
    if name.starts_with('.') {
        return None;
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|k| k.starts_with(KEY_PREFIX))
}

// === LeaseStore ===

/// The store over the lease group's replicated data: every voter applies every write, so
/// every node reads the same entries; writes are fenced by the `acme` lease token.
pub struct LeaseStore {
    node: LeaseNode,
    lease: String,
}

impl LeaseStore {
    /// A store writing as `node`, fenced by `lease` (normally [`ACME_LEASE`]).
    pub fn new(node: LeaseNode, lease: &str) -> LeaseStore {
        LeaseStore { node, lease: lease.to_string() }
    }
}

#[async_trait]
impl AcmeStore for LeaseStore {
    fn entries(&self) -> watch::Receiver<Data> {
        self.node.data()
    }

    async fn put(&self, token: u64, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        match self.node.put(&self.lease, token, key, value).await {
            Ok(()) => Ok(()),
            Err(e @ LeaseError::Stale { .. }) => Err(StoreError::Fenced(e.to_string())),
            Err(e) => Err(StoreError::Replicated(e.to_string())),
        }
    }
}

// === Sealer ===

/// Seals secrets before they are stored and opens them after: ChaCha20-Poly1305 with the
/// cluster keyring (the wire crate's envelope, any key of the ring opens), binding each
/// value to its key so values cannot be swapped between keys. Without a keyring values
/// are stored in the clear (marked so; a store written in the clear can be read after a
/// key is configured, and is sealed on its next write).
#[derive(Clone, Default)]
pub struct Sealer {
    keyring: Option<Arc<Keyring>>,
}

const SEALED: u8 = b'S';
const CLEAR: u8 = b'P';

impl Sealer {
    /// A sealer with the cluster key, or none (values in the clear).
    pub fn new(keyring: Option<Arc<Keyring>>) -> Sealer {
        Sealer { keyring }
    }

    /// Whether values are encrypted.
    pub fn encrypts(&self) -> bool {
        self.keyring.is_some()
    }

    /// `value` ready to store under `key`.
    pub fn seal(&self, key: &str, value: &[u8]) -> Vec<u8> {
        match &self.keyring {
            Some(ring) => {
                let mut plain = Vec::with_capacity(key.len() + 1 + value.len());
                plain.extend_from_slice(key.as_bytes());
                plain.push(0);
                plain.extend_from_slice(value);
                let mut out = vec![SEALED];
                out.extend(ring.seal(&plain));
                out
            }
            None => {
                let mut out = Vec::with_capacity(value.len() + 1);
                out.push(CLEAR);
                out.extend_from_slice(value);
                out
            }
        }
    }

    /// Opens what [`Sealer::seal`] stored under `key`.
    pub fn open(&self, key: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let corrupt = |problem: &str| StoreError::Corrupt { key: key.to_string(), problem: problem.to_string() };
        match stored.split_first() {
            Some((&CLEAR, rest)) => Ok(rest.to_vec()),
            Some((&SEALED, rest)) => {
                let ring = self.keyring.as_ref().ok_or_else(|| {
                    corrupt("sealed with a cluster key, but none is configured here (set cluster.key_file)")
                })?;
                let plain = ring.open(rest).map_err(|e| corrupt(&format!("cannot be opened: {}", e.reason())))?;
                let prefix_len = key.len() + 1;
                if plain.len() < prefix_len || &plain[..key.len()] != key.as_bytes() || plain[key.len()] != 0 {
                    return Err(corrupt("was sealed for another key"));
                }
                Ok(plain[prefix_len..].to_vec())
            }
            _ => Err(corrupt("unknown format")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use constellation_wire::generate_key_hex;

    #[test]
    fn file_names_round_trip_and_skip_foreign_files() {
        for key in ["acme/cert/app.test", "acme/http01/aB-_x9", "acme/cert/*.wild.test"] {
            let name = encode_name(key);
            assert!(!name.contains('/'), "{name}");
            assert_eq!(decode_name(&name).as_deref(), Some(key));
        }
        assert_eq!(decode_name(".acme_2Fx.tmp"), None);
        assert_eq!(decode_name("other"), None);
    }

    #[test]
    fn sealed_values_open_only_with_the_key_and_only_under_their_key() {
        let ring = Arc::new(Keyring::parse(&generate_key_hex()).unwrap());
        let sealer = Sealer::new(Some(ring));
        let stored = sealer.seal("acme/account", b"secret key");
        assert!(!stored.windows(6).any(|w| w == b"secret"), "sealed bytes hold the plaintext");
        assert_eq!(sealer.open("acme/account", &stored).unwrap(), b"secret key");
        let swapped = sealer.open("acme/cert/x", &stored).unwrap_err().to_string();
        assert!(swapped.contains("another key"), "{swapped}");
        let other = Sealer::new(Some(Arc::new(Keyring::parse(&generate_key_hex()).unwrap())));
        assert!(other.open("acme/account", &stored).is_err());
        let none = Sealer::new(None).open("acme/account", &stored).unwrap_err().to_string();
        assert!(none.contains("none is configured"), "{none}");
        // Clear values (a single node without a key) still open once a key is set.
        let clear = Sealer::new(None).seal("acme/account", b"v");
        assert_eq!(sealer.open("acme/account", &clear).unwrap(), b"v");
    }

    #[tokio::test]
    async fn file_store_persists_with_private_modes() {
        let dir = std::env::temp_dir().join(format!("constellation-acme-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = FileStore::open(&dir).unwrap();
        let rx = store.entries();
        store.put(0, "acme/cert/app.test", Some(b"chain".to_vec())).await.unwrap();
        store.put(0, "acme/http01/tok", Some(b"ka".to_vec())).await.unwrap();
        store.put(0, "acme/http01/tok", None).await.unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(store.get("acme/cert/app.test").unwrap(), b"chain");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(encode_name("acme/cert/app.test"))).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        }
        drop(store);
        let again = FileStore::open(&dir).unwrap();
        assert_eq!(again.get("acme/cert/app.test").unwrap(), b"chain");
        assert_eq!(again.get("acme/http01/tok"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

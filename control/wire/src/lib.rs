//! The cluster's wire format, shared by gossip, state pulls and Raft: the keyring
//! (ChaCha20-Poly1305 keys with rolling rotation: seal with the first, open with any) and
//! the sealed messages every cluster byte travels in.
//!
//! This crate knows nothing of gossip, Raft or what the messages mean.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Version byte at the start of every sealed message.
pub const SEAL_VERSION: u8 = 1;

/// Length of the clear header: version byte and key id. It is the AEAD's associated data.
const HEADER_LEN: usize = 1 + KEY_ID_LEN;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Bytes that [`Keyring::seal`] adds to a plaintext: version (1), key id (4), nonce (12),
/// Poly1305 tag (16).
pub const SEAL_OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// Length of a key in bytes (64 hex characters).
pub const KEY_LEN: usize = 32;

/// A fresh random cluster key: 32 bytes from the operating system's CSPRNG, written as
/// 64 lowercase hex characters (no newline).
pub fn generate_key_hex() -> String {
    let mut key = [0u8; KEY_LEN];
    rand::fill(&mut key);
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// One or more cluster keys. The first (primary) seals; all of them open.
///
/// A rolling rotation: add the new key as the second line everywhere, then make it the
/// first line everywhere, then remove the old key. Neither `Debug` nor any error shows
/// key material; only the 4-byte key ids, which reveal nothing about the keys.
#[derive(Clone)]
pub struct Keyring {
    // Never empty: `parse` refuses an empty ring.
    keys: Vec<RingKey>,
}

#[derive(Clone)]
struct RingKey {
    id: [u8; KEY_ID_LEN],
    cipher: ChaCha20Poly1305,
}

/// Why a keyring file or text was refused. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The key file could not be read.
    #[error("cannot read cluster key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a key.
    #[error(
        "{origin}:{line}: {problem}; a cluster key is 64 hex characters on one line \
         (make one with `constellation keygen`)"
    )]
    BadKey {
        /// File name, or `cluster key` for text not read from a file.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: KeyProblem,
    },
    /// No key at all (only blank lines and comments).
    #[error(
        "{origin}: no cluster key found (expected 64 hex characters on a line; make one with `constellation keygen`)"
    )]
    Empty {
        /// File name, or `cluster key` for text not read from a file.
        origin: String,
    },
}

/// What is wrong with one key line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// Not 64 characters long.
    #[error("the key is {len} characters long, not 64")]
    WrongLength {
        /// Characters found.
        len: usize,
    },
    /// A character outside `0-9a-fA-F`.
    #[error("the key has a non-hex character at column {column}")]
    NotHex {
        /// 1-based column of the first bad character.
        column: usize,
    },
}

/// Why a sealed message was refused by [`Keyring::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than [`SEAL_OVERHEAD`].
    #[error("sealed message is truncated")]
    Truncated,
    /// The version byte is not [`SEAL_VERSION`].
    #[error("sealed message has an unknown version")]
    BadVersion,
    /// Sealed with a key this ring does not hold.
    #[error("sealed message uses a key not in the keyring")]
    UnknownKey,
    /// The authentication tag does not verify (tampered, or a key-id collision).
    #[error("sealed message failed authentication")]
    Forged,
}

impl OpenError {
    /// Short label for metrics and logs: `truncated`, `bad_version`, `unknown_key`, `forged`.
    pub fn reason(self) -> &'static str {
        match self {
            OpenError::Truncated => "truncated",
            OpenError::BadVersion => "bad_version",
            OpenError::UnknownKey => "unknown_key",
            OpenError::Forged => "forged",
        }
    }
}

// === impl Keyring ===

impl Keyring {
    /// Parses one key per line; blank lines and lines starting with `#` are skipped. The
    /// first key is the primary. Errors say `cluster key:LINE`.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        Self::parse_from(text, "cluster key")
    }

    /// Reads and parses a key file; errors name the file and line.
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyringError::Read { path: path.display().to_string(), source })?;
        Self::parse_from(&text, &path.display().to_string())
    }

    /// A ring of the given raw keys, the first one primary. `None` if `keys` is empty.
    pub fn from_keys(keys: &[[u8; KEY_LEN]]) -> Option<Keyring> {
        if keys.is_empty() {
            return None;
        }
        Some(Keyring { keys: keys.iter().map(RingKey::new).collect() })
    }

    fn parse_from(text: &str, origin: &str) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = decode_hex_key(line).map_err(|problem| KeyringError::BadKey {
                origin: origin.to_string(),
                line: index + 1,
                problem,
            })?;
            keys.push(key);
        }
        Keyring::from_keys(&keys).ok_or_else(|| KeyringError::Empty { origin: origin.to_string() })
    }

    /// Number of keys in the ring.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key id of the primary key as 8 hex characters (safe to log).
    pub fn primary_key_id(&self) -> String {
        self.keys.first().map(|k| hex4(&k.id)).unwrap_or_default()
    }

    /// Seals `plaintext` with the primary key:
    /// `[version=1][key id: 4][nonce: 12][ciphertext + tag: len + 16]`, the 5 header bytes
    /// being the associated data. The nonce is random.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        let Some(key) = self.keys.first() else {
            // Unreachable: rings are never empty. Sealing to nothing is the safe answer.
            return out;
        };
        out.push(SEAL_VERSION);
        out.extend_from_slice(&key.id);
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        out.extend_from_slice(&nonce);
        let header = [SEAL_VERSION, key.id[0], key.id[1], key.id[2], key.id[3]];
        match key.cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &header }) {
            Ok(ciphertext) => out.extend_from_slice(&ciphertext),
            // ChaCha20-Poly1305 only fails beyond 256 GiB per message.
            Err(_) => out.clear(),
        }
        out
    }

    /// Opens a message sealed by any key of this ring.
    pub fn open(&self, data: &[u8]) -> Result<Vec<u8>, OpenError> {
        if data.len() < SEAL_OVERHEAD {
            return Err(OpenError::Truncated);
        }
        let (header, rest) = data.split_at(HEADER_LEN);
        if header[0] != SEAL_VERSION {
            return Err(OpenError::BadVersion);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let mut known = false;
        // Several keys may share an id (a 1 in 2^32 chance): try each of them.
        for key in self.keys.iter().filter(|k| k.id[..] == header[1..]) {
            known = true;
            if let Ok(plain) = key.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: header }) {
                return Ok(plain);
            }
        }
        Err(if known { OpenError::Forged } else { OpenError::UnknownKey })
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.keys.iter().map(|k| hex4(&k.id)).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

// === impl RingKey ===

impl RingKey {
    fn new(key: &[u8; KEY_LEN]) -> RingKey {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
        // The key id is the Poly1305 tag of the empty message under the all-zero nonce:
        // deterministic, and it reveals nothing about the key.
        let tag = cipher.encrypt(Nonce::from_slice(&[0u8; NONCE_LEN]), &[][..]).unwrap_or_default();
        let mut id = [0u8; KEY_ID_LEN];
        for (dst, src) in id.iter_mut().zip(tag.iter()) {
            *dst = *src;
        }
        RingKey { id, cipher }
    }
}

fn decode_hex_key(line: &str) -> Result<[u8; KEY_LEN], KeyProblem> {
    let chars = line.chars().count();
    if let Some((pos, _)) = line.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        let column = line[..pos].chars().count() + 1;
        return Err(KeyProblem::NotHex { column });
    }
    if chars != KEY_LEN * 2 {
        return Err(KeyProblem::WrongLength { len: chars });
    }
    let bytes = line.as_bytes();
    let mut key = [0u8; KEY_LEN];
    for (i, out) in key.iter_mut().enumerate() {
        *out = (hex_val(bytes[2 * i]) << 4) | hex_val(bytes[2 * i + 1]);
    }
    Ok(key)
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

fn hex4(id: &[u8; KEY_ID_LEN]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn generated_key_is_64_lowercase_hex() {
        let k = generate_key_hex();
        assert_eq!(k.len(), 64);
        assert!(k.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_ne!(k, generate_key_hex());
    }

    #[test]
    fn seal_open_round_trip() {
        let ring = Keyring::parse(&generate_key_hex()).unwrap();
        let sealed = ring.seal(b"hello cluster");
        assert_eq!(sealed.len(), 13 + SEAL_OVERHEAD);
        assert_eq!(sealed[0], SEAL_VERSION);
        assert_eq!(ring.open(&sealed).unwrap(), b"hello cluster");
        // Random nonces: the same plaintext never seals the same way twice.
        assert_ne!(ring.seal(b"x"), ring.seal(b"x"));
        assert_eq!(ring.open(&ring.seal(b"")).unwrap(), b"");
    }

    #[test]
    fn rotation_opens_with_any_key_and_seals_with_the_first() {
        let (old, new) = (generate_key_hex(), generate_key_hex());
        let old_only = Keyring::parse(&old).unwrap();
        let both = Keyring::parse(&format!("# rotating\n{new}\n\n{old}\n")).unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both.open(&old_only.seal(b"from old")).unwrap(), b"from old");
        assert_eq!(old_only.open(&both.seal(b"from new")), Err(OpenError::UnknownKey));
    }

    #[test]
    fn tampering_is_forged_and_short_is_truncated() {
        let ring = Keyring::parse(&generate_key_hex()).unwrap();
        let sealed = ring.seal(b"payload");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let expected = match i {
                0 => OpenError::BadVersion,
                1..=4 => OpenError::UnknownKey,
                _ => OpenError::Forged,
            };
            assert_eq!(ring.open(&bad), Err(expected), "flipped byte {i}");
        }
        assert_eq!(ring.open(&sealed[..SEAL_OVERHEAD - 1]), Err(OpenError::Truncated));
        assert_eq!(ring.open(&[]), Err(OpenError::Truncated));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let good = generate_key_hex();
        let err = Keyring::parse(&format!("{good}\n# c\nabc\n")).unwrap_err();
        assert!(matches!(err, KeyringError::BadKey { line: 3, problem: KeyProblem::WrongLength { len: 3 }, .. }));
        assert!(err.to_string().starts_with("cluster key:3: the key is 3 characters long"), "{err}");
        let bad = format!("{}zz", &good[..62]);
        let err = Keyring::parse(&format!("\n{bad}")).unwrap_err();
        assert!(matches!(err, KeyringError::BadKey { line: 2, problem: KeyProblem::NotHex { column: 63 }, .. }));
        assert!(!err.to_string().contains(&good[..62]), "error leaks key material: {err}");
        assert!(matches!(Keyring::parse("# only a comment\n\n"), Err(KeyringError::Empty { .. })));
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("constellation-keyring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.key");
        std::fs::write(&path, format!("{}\nabcxyz\n", generate_key_hex())).unwrap();
        let err = Keyring::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:2: the key has a non-hex character at column 4", path.display())),
            "{err}"
        );
        let err = Keyring::load(&dir.join("missing.key")).unwrap_err().to_string();
        assert!(err.contains("missing.key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_shows_ids_not_keys() {
        let key = generate_key_hex();
        let ring = Keyring::parse(&key).unwrap();
        let debug = format!("{ring:?}");
        assert!(!debug.contains(&key) && !debug.contains(&key[..16]), "{debug}");
        assert!(debug.contains(&ring.primary_key_id()), "{debug}");
        // Ids are deterministic.
        assert_eq!(Keyring::parse(&key).unwrap().primary_key_id(), ring.primary_key_id());
    }
}

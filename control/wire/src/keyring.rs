//! The keyring (ChaCha20-Poly1305 keys with rolling rotation: seal with the first, open
//! with any) and the sealed envelope every cluster message travels in.

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

use crate::PROTOCOL_VERSION;

/// Length of the clear part of the envelope: protocol version and key id. It is
/// authenticated as the start of the associated data.
const CLEAR_LEN: usize = 1 + KEY_ID_LEN;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Room for the associated data: the clear part plus the longest context we use.
const AD_MAX: usize = 128;

/// Bytes that [`Keyring::seal`] adds to a plaintext: version (1), key id (4), nonce (12),
/// Poly1305 tag (16).
pub const SEAL_OVERHEAD: usize = CLEAR_LEN + NONCE_LEN + TAG_LEN;

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
    // The protocol version this ring seals as and expects: always `PROTOCOL_VERSION`,
    // except in tests that play a peer of another version.
    version: u8,
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
    /// The version byte is not ours and the message does not authenticate: not a
    /// Constellation message, or one of a format we cannot read.
    #[error("not a sealed message of a known format")]
    BadVersion,
    /// Sealed with a key this ring does not hold.
    #[error("sealed message uses a key not in the keyring")]
    UnknownKey,
    /// The authentication tag does not verify (tampered, or a key-id collision).
    #[error("sealed message failed authentication")]
    Forged,
    /// Authentic (sealed with a key of this ring) but from a peer speaking another
    /// protocol version.
    #[error("the peer speaks cluster protocol version {theirs}, this node speaks {ours}")]
    OtherVersion {
        /// The peer's protocol version.
        theirs: u8,
        /// Ours.
        ours: u8,
    },
}

impl OpenError {
    /// Short label for metrics and logs: `truncated`, `bad_version`, `unknown_key`,
    /// `forged`, `version`.
    pub fn reason(self) -> &'static str {
        match self {
            OpenError::Truncated => "truncated",
            OpenError::BadVersion => "bad_version",
            OpenError::UnknownKey => "unknown_key",
            OpenError::Forged => "forged",
            OpenError::OtherVersion { .. } => "version",
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
        Some(Keyring { keys: keys.iter().map(RingKey::new).collect(), version: PROTOCOL_VERSION })
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

    /// The protocol version this ring seals as and accepts ([`PROTOCOL_VERSION`]).
    pub fn protocol_version(&self) -> u8 {
        self.version
    }

    /// This ring, sealing and accepting protocol `version` instead of ours: for tests that
    /// play a peer of another release.
    #[cfg(any(test, feature = "testing"))]
    pub fn speaking(mut self, version: u8) -> Keyring {
        self.version = version;
        self
    }

    /// Seals `plaintext` with the primary key:
    /// `[protocol version: 1][key id: 4][nonce: 12][ciphertext + tag: len + 16]`, the first
    /// 5 bytes being the associated data. The nonce is random. Used for gossip datagrams.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        self.seal_with(&[], plaintext)
    }

    /// Opens a message sealed by [`Keyring::seal`] with any key of this ring.
    pub fn open(&self, data: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut buf = data.to_vec();
        let len = self.open_in_place(&mut buf)?.len();
        buf.copy_within(CLEAR_LEN + NONCE_LEN..CLEAR_LEN + NONCE_LEN + len, 0);
        buf.truncate(len);
        Ok(buf)
    }

    /// [`Keyring::open`] in the caller's buffer: returns the plaintext as a sub-slice of
    /// `data` and allocates nothing.
    pub fn open_in_place<'a>(&self, data: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
        self.open_in_place_with(&[], data)
    }

    /// [`Keyring::seal`] with `context` appended to the associated data (not sent): a
    /// message sealed for one context never opens in another.
    pub(crate) fn seal_with(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        let Some(key) = self.keys.first() else {
            // Unreachable: rings are never empty. Sealing to nothing is the safe answer.
            return out;
        };
        out.push(self.version);
        out.extend_from_slice(&key.id);
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let (ad, ad_len) = associated_data(&out[..CLEAR_LEN], context);
        let (_, body) = out.split_at_mut(CLEAR_LEN + NONCE_LEN);
        match key.cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), &ad[..ad_len], body) {
            Ok(tag) => out.extend_from_slice(&tag),
            // ChaCha20-Poly1305 only fails beyond 256 GiB per message.
            Err(_) => out.clear(),
        }
        out
    }

    /// Opens `data` (sealed by [`Keyring::seal_with`] under the same `context`) in place and
    /// returns the plaintext, a sub-slice of `data`. Allocates nothing.
    ///
    /// A message whose version byte is not ours is still authenticated, with the same
    /// envelope: if it opens, it comes from a key holder of another release
    /// ([`OpenError::OtherVersion`]); if not, it is [`OpenError::BadVersion`].
    pub(crate) fn open_in_place_with<'a>(&self, context: &[u8], data: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
        if data.len() < SEAL_OVERHEAD {
            return Err(OpenError::Truncated);
        }
        let (clear, rest) = data.split_at_mut(CLEAR_LEN);
        let (nonce, rest) = rest.split_at_mut(NONCE_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let version = clear[0];
        let (ad, ad_len) = associated_data(clear, context);
        let mut known = false;
        let mut opened = false;
        // Several keys may share an id (a 1 in 2^32 chance): try each of them. A failed
        // attempt leaves `body` untouched (the tag is checked before decrypting).
        for key in self.keys.iter().filter(|k| k.id[..] == clear[1..]) {
            known = true;
            let verified = key.cipher.decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &ad[..ad_len],
                body,
                Tag::from_slice(tag),
            );
            if verified.is_ok() {
                opened = true;
                break;
            }
        }
        match (opened, version == self.version) {
            (true, true) => Ok(body),
            (true, false) => Err(OpenError::OtherVersion { theirs: version, ours: self.version }),
            (false, false) => Err(OpenError::BadVersion),
            (false, true) if known => Err(OpenError::Forged),
            (false, true) => Err(OpenError::UnknownKey),
        }
    }
}

/// The associated data: the clear envelope bytes, then `context`.
fn associated_data(clear: &[u8], context: &[u8]) -> ([u8; AD_MAX], usize) {
    debug_assert!(clear.len() + context.len() <= AD_MAX, "associated data over {AD_MAX} bytes");
    let mut ad = [0u8; AD_MAX];
    let len = (clear.len() + context.len()).min(AD_MAX);
    let (head, tail) = ad.split_at_mut(clear.len().min(AD_MAX));
    head.copy_from_slice(&clear[..head.len()]);
    let rest = len - head.len();
    tail[..rest].copy_from_slice(&context[..rest]);
    (ad, len)
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
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&[0u8; NONCE_LEN]), &[], &mut [])
            .map(|t| t.to_vec())
            .unwrap_or_default();
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
        assert_eq!(sealed[0], PROTOCOL_VERSION);
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
    fn another_version_is_recognised_only_when_authentic() {
        let key = generate_key_hex();
        let ring = Keyring::parse(&key).unwrap();
        let newer = Keyring::parse(&key).unwrap().speaking(PROTOCOL_VERSION + 1);
        let sealed = newer.seal(b"from the future");
        assert_eq!(sealed[0], PROTOCOL_VERSION + 1);
        let theirs = PROTOCOL_VERSION + 1;
        assert_eq!(ring.open(&sealed), Err(OpenError::OtherVersion { theirs, ours: PROTOCOL_VERSION }));
        assert_eq!(
            newer.open(&ring.seal(b"x")),
            Err(OpenError::OtherVersion { theirs: PROTOCOL_VERSION, ours: theirs })
        );
        // The version is authenticated: rewriting it breaks the seal.
        let mut relabelled = sealed.clone();
        relabelled[0] = PROTOCOL_VERSION;
        assert_eq!(ring.open(&relabelled), Err(OpenError::Forged));
        // Another version under a key we do not hold is just an unknown format.
        let stranger = Keyring::parse(&generate_key_hex()).unwrap().speaking(theirs);
        assert_eq!(ring.open(&stranger.seal(b"x")), Err(OpenError::BadVersion));
        assert_eq!(OpenError::OtherVersion { theirs, ours: PROTOCOL_VERSION }.reason(), "version");
    }

    #[test]
    fn contexts_separate_messages() {
        let ring = Keyring::parse(&generate_key_hex()).unwrap();
        let mut sealed = ring.seal_with(b"one", b"payload");
        assert_eq!(ring.open(&sealed), Err(OpenError::Forged));
        assert_eq!(ring.open_in_place_with(b"two", &mut sealed.clone()), Err(OpenError::Forged));
        assert_eq!(ring.open_in_place_with(b"one", &mut sealed).unwrap(), b"payload");
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

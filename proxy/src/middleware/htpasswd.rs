//! Password hashes as Apache's `htpasswd` writes them, and `htdigest` lines: bcrypt
//! (`$2y$`, `$2a$`, `$2b$`), Apache MD5-crypt (`$apr1$`) and SHA-1 (`{SHA}`). Lines are
//! parsed once when the middleware is built; a hash of any other kind is refused then,
//! naming the user (never the hash).

use std::fmt;

use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha1::Sha1;

/// A parsed password hash. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum Hash {
    /// bcrypt, kept as written (`$2y$10$…`).
    Bcrypt(String),
    /// Apache MD5-crypt: the salt and the whole `$apr1$salt$digest` string.
    Apr1 {
        /// The salt (at most 8 characters).
        salt: String,
        /// The full hash as written.
        full: String,
    },
    /// `{SHA}` + base64(SHA-1(password)): the 20 digest bytes.
    Sha1([u8; 20]),
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Hash::Bcrypt(_) => "bcrypt",
            Hash::Apr1 { .. } => "apr1",
            Hash::Sha1(_) => "sha1",
        };
        write!(f, "Hash({kind}, <redacted>)")
    }
}

/// Why a hash cannot be used (the message never contains the hash).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Neither bcrypt, apr1 nor SHA-1.
    #[error("unsupported password hash (expected bcrypt $2y$/$2a$/$2b$, $apr1$ or {{SHA}})")]
    Unsupported,
    /// The right prefix, but malformed.
    #[error("malformed {0} password hash")]
    Malformed(&'static str),
}

impl Hash {
    /// Parse a hash as found after `user:` in an htpasswd line.
    pub fn parse(s: &str) -> Result<Hash, HashError> {
        if s.starts_with("$2y$") || s.starts_with("$2a$") || s.starts_with("$2b$") {
            // `$2y$NN$` + 53 characters of salt and digest.
            let ok = s.len() == 60 && s.as_bytes()[6] == b'$' && s[4..6].bytes().all(|b| b.is_ascii_digit());
            return if ok { Ok(Hash::Bcrypt(s.to_string())) } else { Err(HashError::Malformed("bcrypt")) };
        }
        if let Some(rest) = s.strip_prefix("$apr1$") {
            let (salt, digest) = rest.split_once('$').ok_or(HashError::Malformed("apr1"))?;
            if salt.is_empty() || salt.len() > 8 || digest.len() != 22 {
                return Err(HashError::Malformed("apr1"));
            }
            return Ok(Hash::Apr1 { salt: salt.to_string(), full: s.to_string() });
        }
        if let Some(b64) = s.strip_prefix("{SHA}") {
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| HashError::Malformed("SHA"))?;
            let arr: [u8; 20] = bytes.try_into().map_err(|_| HashError::Malformed("SHA"))?;
            return Ok(Hash::Sha1(arr));
        }
        Err(HashError::Unsupported)
    }

    /// Whether checking this hash is slow (bcrypt): callers move it off the runtime thread.
    pub fn is_slow(&self) -> bool {
        matches!(self, Hash::Bcrypt(_))
    }

    /// Whether `password` matches (constant-time comparison of the digests).
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Hash::Apr1 { salt, full } => ct_eq(apr1(password, salt.as_bytes()).as_bytes(), full.as_bytes()),
            Hash::Sha1(d) => {
                let got = Sha1::digest(password);
                ct_eq(got.as_slice(), d)
            }
        }
    }
}

/// Constant-time equality of two byte strings (length leaks, content does not).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn to64(out: &mut String, mut v: u32, n: usize) {
    for _ in 0..n {
        out.push(ITOA64[(v & 0x3f) as usize] as char);
        v >>= 6;
    }
}

/// Apache's MD5-crypt of `password` with `salt`: the full `$apr1$salt$digest` string.
pub fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();

    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..password.len().min(1)]);
        }
        i >>= 1;
    }
    let mut fin: [u8; 16] = ctx.finalize().into();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize().into();
    }
    let mut out = String::with_capacity(6 + salt.len() + 1 + 22);
    out.push_str("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let f = |i: usize| u32::from(fin[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        to64(&mut out, (f(a) << 16) | (f(b) << 8) | f(c), 4);
    }
    to64(&mut out, f(11), 2);
    out
}

/// Lower-case hex MD5 of `data` (RFC 2617's `H`).
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// A bcrypt hash of `password` (`$2y$`, as htpasswd writes) with `cost` and `salt`: for
/// tests and tools that write users files.
pub fn bcrypt_hash(password: &str, cost: u32, salt: [u8; 16]) -> Option<String> {
    bcrypt::hash_with_salt(password, cost, salt).ok().map(|p| p.format_for_version(bcrypt::Version::TwoY))
}

/// Users and password-like secrets from inline lines and a file, merged as Traefik does:
/// the file's lines first, then the inline ones; blank lines and `#` comments skipped.
pub fn merged_lines<'a>(file: Option<&'a str>, inline: &'a [String]) -> impl Iterator<Item = (Option<usize>, &'a str)> {
    file.into_iter()
        .flat_map(|f| f.lines().map(|l| (None, l)))
        .chain(inline.iter().enumerate().map(|(i, l)| (Some(i), l.as_str())))
        .map(|(i, l)| (i, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// After a successful login: send `user` upstream in `header_field` (replacing what the
/// client sent), and drop `Authorization` when `remove_header`.
pub fn pass_user(
    req: &mut pingora_http::RequestHeader,
    header_field: Option<&http::HeaderName>,
    remove_header: bool,
    user: &str,
) -> pingora_core::Result<()> {
    if let Some(h) = header_field {
        if let Ok(v) = http::HeaderValue::from_str(user) {
            req.insert_header(h.clone(), v)?;
        }
    }
    if remove_header {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    Ok(())
}

/// The options `basicAuth` and `digestAuth` share (Traefik's field names).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UsersOptions {
    /// `user:hash` lines.
    #[serde(default)]
    pub users: Vec<String>,
    /// A file of such lines (read by the control plane).
    #[serde(default)]
    pub users_file: Option<String>,
    /// The realm (default `traefik`).
    #[serde(default)]
    pub realm: Option<String>,
    /// Remove the `Authorization` header before forwarding.
    #[serde(default)]
    pub remove_header: bool,
    /// Send the authenticated user upstream in this header.
    #[serde(default)]
    pub header_field: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // Apache's "Password Formats" page: `htpasswd -nbm myName myPassword` and `-nbs`.
    const APR1: &str = "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/";
    const SHA: &str = "{SHA}VBPuJHI7uixaa6LQGWx4s+5GKNE=";

    #[test]
    fn apr1_matches_apaches_documented_vector() {
        assert_eq!(apr1(b"myPassword", b"r31....."), APR1);
        let h = Hash::parse(APR1).unwrap();
        assert!(h.verify(b"myPassword"));
        assert!(!h.verify(b"mypassword"));
    }

    #[test]
    fn sha1_matches_apaches_documented_vector() {
        let h = Hash::parse(SHA).unwrap();
        assert!(h.verify(b"myPassword"));
        assert!(!h.verify(b"myPassword "));
    }

    #[test]
    fn bcrypt_roundtrip_all_prefixes() {
        let h = bcrypt_hash("s3cret", 4, [7; 16]).unwrap();
        assert!(h.starts_with("$2y$04$"));
        for prefix in ["$2y$", "$2a$", "$2b$"] {
            let h = Hash::parse(&format!("{prefix}{}", &h[4..])).unwrap();
            assert!(h.is_slow());
            assert!(h.verify(b"s3cret"));
            assert!(!h.verify(b"s3cret!"));
        }
    }

    #[test]
    fn other_hashes_are_refused_and_never_shown() {
        assert_eq!(Hash::parse("rqXexS6ZhobKA"), Err(HashError::Unsupported));
        assert_eq!(Hash::parse("$1$abc$def"), Err(HashError::Unsupported));
        assert_eq!(Hash::parse("$apr1$nodigest"), Err(HashError::Malformed("apr1")));
        assert_eq!(Hash::parse("{SHA}notbase64!"), Err(HashError::Malformed("SHA")));
        let h = Hash::parse(SHA).unwrap();
        assert!(!format!("{h:?}").contains("VBPu"));
    }

    #[test]
    fn md5_hex_is_rfc_1321() {
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn file_lines_come_first_and_comments_are_skipped() {
        let inline = vec!["b:2".to_string()];
        let got: Vec<_> = merged_lines(Some("# c\n\na:1\n"), &inline).collect();
        assert_eq!(got, vec![(None, "a:1"), (Some(0), "b:2")]);
    }
}

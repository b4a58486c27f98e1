//! `digestAuth`: HTTP Digest authentication (RFC 2617, MD5, `qop=auth`) against htdigest
//! users (`user:realm:md5(user:realm:password)`), as Traefik does it with go-http-auth:
//!
//! - a request without valid credentials gets `401` and a challenge
//!   `Digest realm="…", nonce="…", opaque="…", algorithm="MD5", qop="auth"` carrying a
//!   fresh nonce; the upstream sees nothing;
//! - the answer is checked in go-http-auth's order: `opaque`, `algorithm` (absent = MD5),
//!   `qop` must be `auth`, the `uri` must be the request target (or a path prefix of it),
//!   then the response digest (constant time), then the nonce: one this middleware
//!   issued and whose count `nc` grows (a replay is refused); an unknown or expired nonce
//!   gets the challenge with `stale=true`, so clients retry without asking the user;
//! - only users of the configured realm (default `traefik`) can log in.
//!
//! Nonces live in one map per middleware behind a `std::sync::Mutex` (the per-key map
//! the house rules allow: each check reads and advances one nonce's count, which has to
//! be atomic with the lookup). It is bounded: past 1100 entries the 200 least recently
//! used go (go-http-auth's cache size and tolerance), and a nonce unused for
//! [`NONCE_TTL`] is expired. The lock is held for a map operation only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::HeaderName;
use pingora_proxy::Session;
use rand::RngExt;
use serde_json::Value;

use super::basic_auth::{header_field, unauthorized, users_file};
use super::htpasswd::{ct_eq, hex, md5_hex, merged_lines, pass_user, UsersOptions};
use super::{options, Apply, BuildCx, BuildError, MwState, Verdict};

/// How long a nonce stays valid after its last use.
pub const NONCE_TTL: Duration = Duration::from_secs(600);
const CACHE_SIZE: usize = 1000;
const CACHE_TOLERANCE: usize = 100;

struct Client {
    nc: u64,
    last_seen: Instant,
}

/// A compiled `digestAuth`. `Debug` shows neither the secrets nor the nonces.
pub struct DigestAuth {
    /// `user` → HA1 (hex) for users of the configured realm.
    users: HashMap<String, String>,
    realm: String,
    opaque: String,
    nonces: Mutex<HashMap<String, Client>>,
    remove_header: bool,
    header_field: Option<HeaderName>,
}

impl std::fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("realm", &self.realm)
            .field("remove_header", &self.remove_header)
            .field("header_field", &self.header_field)
            .finish_non_exhaustive()
    }
}

/// Build from Traefik's `digestAuth` options.
pub fn build(config: &Value, cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    let o: UsersOptions = options("digestAuth", config)?;
    let file = users_file("digestAuth", o.users_file.as_deref(), cx)?;
    let realm = o.realm.filter(|r| !r.is_empty()).unwrap_or_else(|| "traefik".to_string());
    if realm.contains('"') || realm.contains('\\') || realm.chars().any(char::is_control) {
        return Err(BuildError::new("digestAuth.realm", "must not contain quotes, backslashes or control characters"));
    }
    let mut users = HashMap::new();
    let mut any = false;
    for (inline, line) in merged_lines(file, &o.users) {
        let field = match inline {
            Some(i) => format!("digestAuth.users[{i}]"),
            None => "digestAuth.usersFile".to_string(),
        };
        let mut parts = line.splitn(3, ':');
        let (Some(user), Some(user_realm), Some(ha1)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(BuildError::new(field, "expected user:realm:hash"));
        };
        if ha1.len() != 32 || !ha1.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BuildError::new(field, format!("user {user:?}: the hash must be 32 hex digits (htdigest)")));
        }
        any = true;
        if user_realm == realm {
            users.insert(user.to_string(), ha1.to_ascii_lowercase());
        }
    }
    if !any {
        return Err(BuildError::new("digestAuth.users", "no users (set users or usersFile)"));
    }
    if users.is_empty() {
        tracing::warn!(
            middleware = cx.name,
            realm,
            "digestAuth: no user belongs to the realm; every request is refused"
        );
    }
    Ok(Box::new(DigestAuth {
        users,
        opaque: hex(&rand::rng().random::<[u8; 16]>()),
        realm,
        nonces: Mutex::new(HashMap::new()),
        remove_header: o.remove_header,
        header_field: header_field("digestAuth", o.header_field.as_deref())?,
    }))
}

/// The `key=value` pairs of a `Digest` authorization value (values may be quoted, with
/// backslash escapes); `None` for another scheme.
pub fn parse_digest(value: &str) -> Option<HashMap<String, String>> {
    let (scheme, rest) = value.split_once(' ')?;
    if scheme != "Digest" {
        return None;
    }
    let mut out = HashMap::new();
    let mut s = rest.trim_start();
    while !s.is_empty() {
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_ascii_lowercase();
        s = s[eq + 1..].trim_start();
        let val;
        if let Some(q) = s.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => v.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            s = &q[end?..];
            val = v;
        } else {
            let end = s.find(',').unwrap_or(s.len());
            val = s[..end].trim().to_string();
            s = &s[end..];
        }
        out.insert(key, val);
        s = s.trim_start();
        if let Some(r) = s.strip_prefix(',') {
            s = r.trim_start();
        } else if !s.is_empty() {
            return None;
        }
    }
    Some(out)
}

enum Outcome {
    Ok(String),
    Stale,
    Denied,
}

impl DigestAuth {
    fn challenge(&self, stale: bool) -> String {
        let nonce = hex(&rand::rng().random::<[u8; 16]>());
        let now = Instant::now();
        if let Ok(mut map) = self.nonces.lock() {
            if map.len() > CACHE_SIZE + CACHE_TOLERANCE {
                map.retain(|_, c| now.duration_since(c.last_seen) < NONCE_TTL);
                if map.len() > CACHE_SIZE + CACHE_TOLERANCE {
                    let mut ages: Vec<Instant> = map.values().map(|c| c.last_seen).collect();
                    ages.sort_unstable();
                    let cut = ages[CACHE_TOLERANCE * 2 - 1];
                    map.retain(|_, c| c.last_seen > cut);
                }
            }
            map.insert(nonce.clone(), Client { nc: 0, last_seen: now });
        }
        let stale = if stale { ", stale=true" } else { "" };
        format!(
            "Digest realm=\"{}\", nonce=\"{nonce}\", opaque=\"{}\", algorithm=\"MD5\", qop=\"auth\"{stale}",
            self.realm, self.opaque
        )
    }

    fn check(&self, method: &str, target: &str, path: &str, value: &str) -> Outcome {
        let Some(auth) = parse_digest(value) else { return Outcome::Denied };
        let get = |k: &str| auth.get(k).map(String::as_str).unwrap_or("");
        let algorithm = auth.get("algorithm").map(String::as_str).unwrap_or("MD5");
        if get("opaque") != self.opaque || algorithm != "MD5" || get("qop") != "auth" {
            return Outcome::Denied;
        }
        let uri = get("uri");
        if uri != target {
            // As go-http-auth: the digest's uri may be a path prefix of the request's.
            let Ok(u) = uri.parse::<http::Uri>() else { return Outcome::Denied };
            if u.path().len() > path.len() || !path.starts_with(u.path()) {
                return Outcome::Denied;
            }
        }
        let ha1 = self.users.get(get("username")).map(String::as_str).unwrap_or("");
        let ha2 = md5_hex(format!("{method}:{uri}").as_bytes());
        let kd =
            md5_hex(format!("{ha1}:{}:{}:{}:{}:{ha2}", get("nonce"), get("nc"), get("cnonce"), get("qop")).as_bytes());
        if ha1.is_empty() || !ct_eq(kd.as_bytes(), get("response").as_bytes()) {
            return Outcome::Denied;
        }
        let Ok(nc) = u64::from_str_radix(get("nc"), 16) else { return Outcome::Denied };
        let now = Instant::now();
        let Ok(mut map) = self.nonces.lock() else { return Outcome::Denied };
        let nonce = get("nonce");
        match map.get_mut(nonce) {
            Some(c) if now.duration_since(c.last_seen) >= NONCE_TTL => {
                map.remove(nonce);
                Outcome::Stale
            }
            Some(c) if c.nc != 0 && c.nc >= nc => Outcome::Denied,
            Some(c) => {
                c.nc = nc;
                c.last_seen = now;
                Outcome::Ok(get("username").to_string())
            }
            None => Outcome::Stale,
        }
    }
}

#[async_trait::async_trait]
impl Apply for DigestAuth {
    async fn request(
        &self,
        session: &mut Session,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        let req = session.req_header();
        let value = req.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let outcome = match value {
            None => Outcome::Denied,
            Some(v) => {
                let target = req.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
                self.check(req.method.as_str(), target, req.uri.path(), v)
            }
        };
        let user = match outcome {
            Outcome::Ok(user) => user,
            Outcome::Stale => return Ok(Verdict::Respond(unauthorized(&self.challenge(true)))),
            Outcome::Denied => {
                tracing::debug!("digestAuth: authentication failed");
                return Ok(Verdict::Respond(unauthorized(&self.challenge(false))));
            }
        };
        pass_user(session.req_header_mut(), self.header_field.as_ref(), self.remove_header, &user)?;
        Ok(Verdict::Next)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mw() -> DigestAuth {
        DigestAuth {
            // htdigest of Mufasa / "Circle Of Life" in realm testrealm@host.com (RFC 2617).
            users: HashMap::from([("Mufasa".to_string(), md5_hex(b"Mufasa:testrealm@host.com:Circle Of Life"))]),
            realm: "testrealm@host.com".into(),
            opaque: "5ccc069c403ebaf9f0171e9517f40e41".into(),
            nonces: Mutex::new(HashMap::new()),
            remove_header: false,
            header_field: None,
        }
    }

    #[test]
    fn rfc_2617_example_is_accepted_once_per_count() {
        let m = mw();
        m.nonces
            .lock()
            .unwrap()
            .insert("dcd98b7102dd2f0e8b11d0f600bfb0c093".into(), Client { nc: 0, last_seen: Instant::now() });
        // RFC 2617 section 3.5 (its printed response is for a different HA2; this one
        // is computed for GET /dir/index.html, as RFC 2617 errata 1649 gives it).
        let v = "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", qop=auth, nc=00000001, cnonce=\"0a4f113b\", response=\"6629fae49393a05397450978507c4ef1\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        assert!(matches!(m.check("GET", "/dir/index.html", "/dir/index.html", v), Outcome::Ok(u) if u == "Mufasa"));
        // Replay of the same count.
        assert!(matches!(m.check("GET", "/dir/index.html", "/dir/index.html", v), Outcome::Denied));
        // Another method changes HA2.
        assert!(matches!(m.check("POST", "/dir/index.html", "/dir/index.html", v), Outcome::Denied));
        // An unknown nonce with a right digest is stale.
        m.nonces.lock().unwrap().clear();
        assert!(matches!(m.check("GET", "/dir/index.html", "/dir/index.html", v), Outcome::Stale));
    }

    #[test]
    fn params_parse_quoted_and_bare() {
        let p = parse_digest("Digest a=\"x, \\\"y\\\"\", b=2,c=\"\"").unwrap();
        assert_eq!(p["a"], "x, \"y\"");
        assert_eq!(p["b"], "2");
        assert_eq!(p["c"], "");
        assert!(parse_digest("Basic abc").is_none());
        assert!(parse_digest("Digest a=\"unterminated").is_none());
    }

    #[test]
    fn nonce_map_stays_bounded() {
        let m = mw();
        for _ in 0..3000 {
            let _ = m.challenge(false);
        }
        assert!(m.nonces.lock().unwrap().len() <= CACHE_SIZE + CACHE_TOLERANCE + 1);
    }
}

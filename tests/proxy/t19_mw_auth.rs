//! Authentication middlewares end to end: `basicAuth`, `digestAuth` and `forwardAuth`
//! answer for the upstream when credentials are missing or wrong (and the backend then
//! receives nothing), pass the user upstream, and fail the configuration when a users
//! file is missing.
//!
//! Hashes: apr1 and SHA-1 are the vectors of Apache's "Password Formats" page
//! (`htpasswd -nbm myName myPassword`, `htpasswd -nbs myName myPassword`, both checked
//! with `openssl passwd -apr1` and `openssl sha1`); bcrypt is generated here with the
//! crate the proxy verifies with.

use constellation_proxy::middleware::htpasswd::{bcrypt_hash, md5_hex};

use crate::support::*;

const APR1: &str = "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/";
const SHA: &str = "{SHA}VBPuJHI7uixaa6LQGWx4s+5GKNE=";

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", b64(format!("{user}:{password}").as_bytes()))
}

async fn send(agent: &Agent, path: &str, headers: &[(&str, &str)]) -> Reply {
    agent.client().request("GET", "app", path, headers, b"").await.unwrap()
}

fn basic_routes(backend: &str, carol: &str) -> String {
    format!(
        "http:
  routers:
    strict:
      rule: \"PathPrefix(`/strict`)\"
      service: app
      middlewares: [strict]
    plain:
      rule: \"PathPrefix(`/plain`)\"
      service: app
      middlewares: [plain]
  middlewares:
    strict:
      basicAuth:
        realm: Constellation
        removeHeader: true
        headerField: X-Auth-User
        usersFile: users.htpasswd
        users:
          - 'alice:{APR1}'
          - 'bob:{SHA}'
          - 'carol:{carol}'
    plain:
      basicAuth:
        users: ['bob:{SHA}']
  services:
    app:
      loadBalancer:
        servers:
          - url: \"{backend}\"
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_checks_every_hash_type_and_passes_the_user() {
    let backend = Backend::start("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let carol = bcrypt_hash("carol-pw", 4, [3; 16]).unwrap();
    let dave = bcrypt_hash("dave-pw", 4, [9; 16]).unwrap().replacen("$2y$", "$2b$", 1);
    let eve = bcrypt_hash("eve-pw", 4, [5; 16]).unwrap().replacen("$2y$", "$2a$", 1);
    // The file's alice is overridden by the inline one (Traefik merges file, then inline).
    let file = format!("# users\ndave:{dave}\n\neve:{eve}\nalice:{SHA}\n");
    let agent =
        start_agent_with(&basic_routes(&backend.url(), &carol), "", "", &[("users.htpasswd", &file)], None).await;

    // No credentials, wrong password, unknown user, wrong scheme: 401 with the realm.
    let bearer = "Bearer abc".to_string();
    for auth in [None, Some(basic("alice", "nope")), Some(basic("mallory", "myPassword")), Some(bearer)] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = send(&agent, "/strict/x", &headers).await;
        assert_eq!(r.status, 401, "{auth:?}: {}", agent.log());
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"Constellation\""));
        assert_eq!(r.text(), "401 Unauthorized\n");
    }
    assert_eq!(backend.count(), 0, "the backend must see no unauthenticated request");

    // Every hash type: apr1 (alice), SHA-1 (bob), bcrypt $2y$ (carol), $2b$ and $2a$ from
    // the file (dave, eve).
    for (user, pw) in
        [("alice", "myPassword"), ("bob", "myPassword"), ("carol", "carol-pw"), ("dave", "dave-pw"), ("eve", "eve-pw")]
    {
        let auth = basic(user, pw);
        let r = send(&agent, "/strict/x", &[("authorization", &auth), ("x-auth-user", "forged")]).await;
        assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "{user}: {}", agent.log());
        let hits = backend.hits();
        let h = hits.last().unwrap();
        assert_eq!(h.header("x-auth-user"), Some(user), "the user name goes upstream, replacing the client's");
        assert_eq!(h.header("authorization"), None, "removeHeader drops the credentials");
    }
    // Wrong bcrypt password, and alice's password from the file (overridden).
    for (user, pw) in [("carol", "carol-PW"), ("alice", "myPassword ")] {
        let r = send(&agent, "/strict/x", &[("authorization", &basic(user, pw))]).await;
        assert_eq!(r.status, 401, "{user}");
    }

    // Default realm; without removeHeader the credentials go upstream; no user header.
    let before = backend.count();
    let r = send(&agent, "/plain", &[("authorization", &basic("bob", "wrong"))]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"traefik\""));
    assert_eq!(backend.count(), before);
    let auth = basic("bob", "myPassword");
    let r = send(&agent, "/plain", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    let hits = backend.hits();
    let h = hits.last().unwrap();
    assert_eq!(h.header("authorization"), Some(auth.as_str()));
    assert_eq!(h.header("x-auth-user"), None);
    // No secret in the log.
    assert!(!agent.log().contains("VBPuJHI7") && !agent.log().contains(&carol[7..]), "hash in the log");
}

fn check(routes: &str, files: &[(&str, &str)]) -> (i32, String, String) {
    let dir = Scratch::new("mw-auth-check");
    dir.write("routes.yaml", routes);
    for (name, text) in files {
        dir.write(name, text);
    }
    dir.write("agent.toml", "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n[routes]\nfiles = [\"routes.yaml\"]\n");
    run(&["config", "check", dir.path("agent.toml").to_str().unwrap()], &dir.0)
}

fn one_middleware(kind_yaml: &str) -> String {
    format!(
        "http:\n  routers:\n    r:\n      rule: \"PathPrefix(`/`)\"\n      service: app\n      middlewares: [m]\n  middlewares:\n    m:\n{kind_yaml}  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"http://127.0.0.1:9\"\n"
    )
}

#[test]
fn a_missing_users_file_or_a_bad_hash_fails_the_check() {
    for kind in ["basicAuth", "digestAuth"] {
        let (code, out, err) =
            check(&one_middleware(&format!("      {kind}:\n        usersFile: missing.htpasswd\n")), &[]);
        assert_eq!(code, 78, "{out}\n{err}");
        assert!(err.contains(&format!("{kind}.usersFile")) && err.contains("missing.htpasswd"), "{err}");
    }
    // A DES-crypt hash (`htpasswd -nbd`) is refused, naming the user, not the hash.
    let (code, out, err) = check(&one_middleware("      basicAuth:\n        users: ['myName:rqXexS6ZhobKA']\n"), &[]);
    assert_eq!(code, 78, "{out}\n{err}");
    assert!(err.contains("basicAuth.users[0]") && err.contains("myName"), "{err}");
    assert!(!err.contains("rqXexS6ZhobKA"), "the hash must not be shown: {err}");
    // A users file that exists is fine.
    let (code, out, err) =
        check(&one_middleware("      basicAuth:\n        usersFile: users\n"), &[("users", &format!("bob:{SHA}\n"))]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// A `key="value"` parameter of a challenge.
fn param(challenge: &str, key: &str) -> String {
    let start = challenge.find(&format!("{key}=\"")).unwrap() + key.len() + 2;
    let len = challenge[start..].find('"').unwrap();
    challenge[start..start + len].to_string()
}

/// The `Authorization` a digest client sends for `challenge`.
fn digest(challenge: &str, user: &str, password: &str, realm: &str, method: &str, uri: &str, nc: u32) -> String {
    let (nonce, opaque) = (param(challenge, "nonce"), param(challenge, "opaque"));
    let ha1 = md5_hex(format!("{user}:{realm}:{password}").as_bytes());
    let ha2 = md5_hex(format!("{method}:{uri}").as_bytes());
    let nc = format!("{nc:08x}");
    let response = md5_hex(format!("{ha1}:{nonce}:{nc}:f00d:auth:{ha2}").as_bytes());
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"f00d\", response=\"{response}\", opaque=\"{opaque}\""
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_issues_and_checks_nonces() {
    let backend = Backend::start("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let alice = md5_hex(b"alice:Constellation:wonder");
    let bob = md5_hex(b"bob:Constellation:builder");
    let other = md5_hex(b"carol:elsewhere:pw");
    let routes = format!(
        "http:
  routers:
    r:
      rule: \"PathPrefix(`/`)\"
      service: app
      middlewares: [d]
  middlewares:
    d:
      digestAuth:
        realm: Constellation
        headerField: X-Auth-User
        removeHeader: true
        usersFile: users.htdigest
        users: ['alice:Constellation:{alice}']
  services:
    app:
      loadBalancer:
        servers:
          - url: \"{}\"
",
        backend.url()
    );
    let file = format!("bob:Constellation:{bob}\ncarol:elsewhere:{other}\n");
    let agent = start_agent_with(&routes, "", "", &[("users.htdigest", &file)], None).await;

    let r = send(&agent, "/page?x=1", &[]).await;
    assert_eq!(r.status, 401, "{}", agent.log());
    let challenge = r.header("www-authenticate").unwrap().to_string();
    assert!(challenge.starts_with("Digest realm=\"Constellation\", nonce=\""), "{challenge}");
    assert!(challenge.ends_with("algorithm=\"MD5\", qop=\"auth\""), "{challenge}");

    // Right password: through, user upstream, credentials removed.
    let auth = digest(&challenge, "alice", "wonder", "Constellation", "GET", "/page?x=1", 1);
    let r = send(&agent, "/page?x=1", &[("authorization", &auth)]).await;
    assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "{}", agent.log());
    let h = backend.hits().last().unwrap().clone();
    assert_eq!(
        (h.path.as_str(), h.header("x-auth-user"), h.header("authorization")),
        ("/page?x=1", Some("alice"), None)
    );

    // The same nonce count again is a replay.
    let r = send(&agent, "/page?x=1", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 401);
    // A higher count on the same nonce is fine; so is a user from the file (the count
    // belongs to the nonce, whoever uses it).
    let auth = digest(&challenge, "alice", "wonder", "Constellation", "GET", "/page?x=1", 2);
    assert_eq!(send(&agent, "/page?x=1", &[("authorization", &auth)]).await.status, 200);
    let auth = digest(&challenge, "bob", "builder", "Constellation", "GET", "/other", 3);
    assert_eq!(send(&agent, "/other", &[("authorization", &auth)]).await.status, 200);
    let count = backend.count();

    // Wrong password, a user of another realm, a digest for another path: refused.
    for (user, pw, realm, uri) in [
        ("alice", "wrong", "Constellation", "/page"),
        ("carol", "pw", "elsewhere", "/page"),
        ("alice", "wonder", "Constellation", "/secret"),
    ] {
        let auth = digest(&challenge, user, pw, realm, "GET", uri, 9);
        let r = send(&agent, "/page", &[("authorization", &auth)]).await;
        assert_eq!(r.status, 401, "{user} {uri}");
        assert!(!r.header("www-authenticate").unwrap().contains("stale"));
    }
    // A nonce this agent never issued: stale, with a fresh nonce.
    let forged = challenge.replace(&param(&challenge, "nonce"), "00112233445566778899aabbccddeeff");
    let auth = digest(&forged, "alice", "wonder", "Constellation", "GET", "/page", 1);
    let r = send(&agent, "/page", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 401);
    let fresh = r.header("www-authenticate").unwrap().to_string();
    assert!(fresh.ends_with(", stale=true"), "{fresh}");
    let auth = digest(&fresh, "alice", "wonder", "Constellation", "GET", "/page", 1);
    assert_eq!(send(&agent, "/page", &[("authorization", &auth)]).await.status, 200);
    assert_eq!(backend.count(), count + 1, "no refused request reached the backend");
}

/// The header lists an [`AuthServer`] received, in order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<Vec<(String, String)>>>>;

/// A tiny auth server: records each request's headers; `authorization: let-me-in` gets
/// 200 with identity headers, `authorization: redirect` a 302 to a relative `/login`,
/// anything else 403 with its own headers and body.
struct AuthServer {
    url: String,
    seen: Seen,
}

impl AuthServer {
    async fn start() -> AuthServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/check?from=proxy", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let mut lines = text.split("\r\n");
                    let request_line = lines.next().unwrap_or("").to_string();
                    let mut headers = vec![(":request".to_string(), request_line)];
                    for l in lines.take_while(|l| !l.is_empty()) {
                        if let Some((k, v)) = l.split_once(':') {
                            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                        }
                    }
                    let auth = headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.clone());
                    log.lock().unwrap().push(headers);
                    let reply = match auth.as_deref() {
                        Some("let-me-in") => "HTTP/1.1 200 OK\r\nX-Auth-User: alice\r\nX-Auth-Role: admin\r\nX-Auth-Extra: not-asked\r\nX-Other: no\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                        Some("redirect") => "HTTP/1.1 302 Found\r\nLocation: /login?next=1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                        _ => "HTTP/1.1 403 Forbidden\r\nX-Reason: no ticket\r\nContent-Type: text/x-denied\r\nContent-Length: 8\r\nConnection: close\r\n\r\ngo away\n".to_string(),
                    };
                    let _ = sock.write_all(reply.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        AuthServer { url, seen }
    }

    fn last(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

fn get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_allows_denies_and_copies_headers() {
    let backend = Backend::start("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let auth = AuthServer::start().await;
    let routes = format!(
        "http:
  routers:
    r:
      rule: \"PathPrefix(`/`)\"
      service: app
      middlewares: [fa]
    trusting:
      rule: \"PathPrefix(`/trust`)\"
      service: app
      middlewares: [trusting]
    down:
      rule: \"PathPrefix(`/down`)\"
      service: app
      middlewares: [down]
  middlewares:
    fa:
      forwardAuth:
        address: \"{auth}\"
        authResponseHeaders: [X-Auth-User]
        authResponseHeadersRegex: \"^X-Auth-R\"
    trusting:
      forwardAuth:
        address: \"{auth}\"
        trustForwardHeader: true
        authRequestHeaders: [Authorization, X-Forwarded-Uri]
    down:
      forwardAuth:
        address: \"http://127.0.0.1:9/auth\"
  services:
    app:
      loadBalancer:
        servers:
          - url: \"{backend}\"
",
        auth = auth.url,
        backend = backend.url()
    );
    // The entry point trusts the client's X-Forwarded-* (else it drops them before any
    // middleware, as Traefik's does), so what the middleware does with them shows.
    let agent = Agent::start(&routes, "[entrypoints.web.forwarded_headers]\ntrusted_ips = [\"127.0.0.0/8\"]\n").await;

    // Denied: the auth server's 403, headers and body reach the client as they were.
    let r = send(&agent, "/page?q=1", &[("authorization", "nope"), ("x-forwarded-uri", "/forged")]).await;
    assert_eq!((r.status, r.text()), (403, "go away\n".to_string()), "{}", agent.log());
    assert_eq!(r.header("x-reason"), Some("no ticket"));
    assert_eq!(r.header("content-type"), Some("text/x-denied"));
    assert_eq!(backend.count(), 0, "a denied request must not reach the backend");
    // What the auth server got: a GET to its address, with the client's headers and
    // X-Forwarded-* computed by the proxy (the client's X-Forwarded-Uri not trusted).
    let seen = auth.last();
    assert_eq!(get(&seen, ":request"), Some("GET /check?from=proxy HTTP/1.1"));
    assert_eq!(get(&seen, "authorization"), Some("nope"));
    assert_eq!(get(&seen, "x-forwarded-method"), Some("GET"));
    assert_eq!(get(&seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(get(&seen, "x-forwarded-host"), Some("app"));
    assert_eq!(get(&seen, "x-forwarded-uri"), Some("/page?q=1"));
    assert_eq!(get(&seen, "x-forwarded-for"), Some("127.0.0.1"));

    // Allowed: the chosen headers replace the client's; others are not copied.
    let r =
        send(&agent, "/page", &[("authorization", "let-me-in"), ("x-auth-user", "mallory"), ("x-auth-role", "root")])
            .await;
    assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "{}", agent.log());
    let hits = backend.hits();
    let h = hits.last().unwrap();
    assert_eq!(h.header("x-auth-user"), Some("alice"));
    assert_eq!(h.header("x-auth-role"), Some("admin"));
    assert_eq!(h.headers.iter().filter(|(k, _)| k == "x-auth-role").count(), 1);
    assert_eq!(h.header("x-auth-extra"), None);
    assert_eq!(h.header("x-other"), None);

    // A relative Location is made absolute against the auth address.
    let r = send(&agent, "/page", &[("authorization", "redirect")]).await;
    assert_eq!(r.status, 302);
    let base = auth.url.trim_end_matches("/check?from=proxy");
    assert_eq!(r.header("location"), Some(format!("{base}/login?next=1").as_str()));

    // trustForwardHeader: the client's X-Forwarded-* are kept; authRequestHeaders filter.
    let r = send(
        &agent,
        "/trust/x",
        &[
            ("authorization", "let-me-in"),
            ("x-forwarded-uri", "/original"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-junk", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", agent.log());
    let seen = auth.last();
    assert_eq!(get(&seen, "x-forwarded-uri"), Some("/original"));
    assert_eq!(get(&seen, "x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(get(&seen, "x-junk"), None);
    assert_eq!(get(&seen, "authorization"), Some("let-me-in"));

    // Unreachable auth server: 500, nothing upstream.
    let before = backend.count();
    let r = send(&agent, "/down", &[]).await;
    assert_eq!(r.status, 500, "{}", agent.log());
    assert_eq!(backend.count(), before);
}

#[test]
fn forward_auth_refuses_what_it_does_not_apply() {
    for (yaml, field) in [
        ("        forwardBody: true\n", "forwardAuth.forwardBody"),
        ("        addAuthCookiesToResponse: [session]\n", "forwardAuth.addAuthCookiesToResponse"),
        ("        tls:\n          ca: missing-ca.pem\n", "forwardAuth.tls.ca"),
    ] {
        let (code, out, err) =
            check(&one_middleware(&format!("      forwardAuth:\n        address: http://127.0.0.1:9/\n{yaml}")), &[]);
        assert_eq!(code, 78, "{out}\n{err}");
        assert!(err.contains(field), "{field}: {err}");
    }
}

//! Tests for the rule language: unit tests per matcher, operators, quoting and
//! error columns, plus property tests against a reference evaluator.

use super::*;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Req {
    host: String,
    path: String,
    query: Option<String>,
    method: String,
    headers: Vec<(String, String)>,
    ip: Option<IpAddr>,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            host: "example.com".into(),
            path: "/".into(),
            query: None,
            method: "GET".into(),
            headers: Vec::new(),
            ip: None,
        }
    }
}

impl Req {
    fn host(mut self, h: &str) -> Self {
        self.host = h.into();
        self
    }
    fn path(mut self, p: &str) -> Self {
        self.path = p.into();
        self
    }
    fn query(mut self, q: &str) -> Self {
        self.query = Some(q.into());
        self
    }
    fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }
    fn header(mut self, n: &str, v: &str) -> Self {
        self.headers.push((n.into(), v.into()));
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.ip = Some(ip.parse().unwrap());
        self
    }

    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in &self.headers {
            map.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn check(&self, rule: &Rule) -> bool {
        let headers = self.header_map();
        rule.matches(&RequestInfo {
            host: &self.host,
            path: &self.path,
            query: self.query.as_deref(),
            method: &self.method,
            headers: &headers,
            client_ip: self.ip,
        })
    }
}

fn req() -> Req {
    Req::default()
}

fn rule(src: &str) -> Rule {
    match Rule::parse(src) {
        Ok(r) => r,
        Err(e) => panic!("rule {src:?} failed to parse: {e}"),
    }
}

fn m(src: &str, r: &Req) -> bool {
    r.check(&rule(src))
}

fn err(src: &str) -> RuleError {
    match Rule::parse(src) {
        Ok(r) => panic!("rule {src:?} parsed but should not: {r:?}"),
        Err(e) => e,
    }
}

/// Asserts the error column and that the message contains `needle`.
fn assert_err(src: &str, column: usize, needle: &str) {
    let e = err(src);
    assert_eq!(e.column, column, "column for {src:?}: {e}");
    assert!(e.message.contains(needle), "message for {src:?} lacks {needle:?}: {e}");
}

// ---------------------------------------------------------------------------
// Matchers
// ---------------------------------------------------------------------------

#[test]
fn host_is_case_insensitive_and_exact() {
    assert!(m("Host(`example.com`)", &req()));
    assert!(m("Host(`EXAMPLE.com`)", &req()));
    assert!(m("Host(`example.com`)", &req().host("Example.COM")));
    assert!(!m("Host(`example.com`)", &req().host("www.example.com")));
    assert!(!m("Host(`example.com`)", &req().host("example.co")));
    assert!(!m("Host(`example.com`)", &req().host("")));
    assert!(!m("Host(``)", &req().host("")));
}

#[test]
fn host_trailing_dot_and_port() {
    assert!(m("Host(`example.com.`)", &req()));
    assert!(m("Host(`example.com`)", &req().host("example.com.")));
    assert!(m("Host(`example.com`)", &req().host("example.com:8443")));
    assert!(m("Host(`::1`)", &req().host("[::1]:80")));
    assert!(m("Host(`::1`)", &req().host("::1")));
    assert!(!m("Host(`example.com:8443`)", &req().host("example.com:8443")));
}

#[test]
fn host_rejects_non_ascii() {
    assert_err("Host(`bücher.de`)", 6, "non-ASCII");
    assert_err("HostRegexp(`ü`)", 12, "non-ASCII");
}

#[test]
fn matcher_name_spellings_follow_traefik() {
    for src in [
        "host(`example.com`)",
        "HOST(`example.com`)",
        "pathprefix(`/`)",
        "PATHPREFIX(`/`)",
        "Pathprefix(`/`)",
        "clientip(`0.0.0.0/0`)",
        "Clientip(`0.0.0.0/0`)",
    ] {
        assert!(m(src, &req().ip("1.2.3.4")), "{src}");
    }
    assert_err("pathPrefix(`/`)", 1, "did you mean PathPrefix?");
    assert_err("HoSt(`a`)", 1, "did you mean Host?");
}

#[test]
fn host_regexp_is_unanchored_on_lowercased_host() {
    assert!(m(r"HostRegexp(`^.+\.example\.com$`)", &req().host("api.example.com")));
    assert!(m(r"HostRegexp(`^.+\.example\.com$`)", &req().host("API.Example.com:80")));
    assert!(!m(r"HostRegexp(`^.+\.example\.com$`)", &req()));
    assert!(m("HostRegexp(`ample`)", &req()));
    // The regex sees the lower-cased host, as in Traefik.
    assert!(!m("HostRegexp(`EXAMPLE`)", &req().host("EXAMPLE.com")));
    assert!(m("HostRegexp(`(?i)EXAMPLE`)", &req()));
}

#[test]
fn host_regexp_v2_placeholder_hint() {
    assert_err("HostRegexp(`{sub:[a-z]+}.example.com`)", 12, "no {name:pattern} placeholders");
}

#[test]
fn path_exact_and_prefix() {
    assert!(m("Path(`/a/b`)", &req().path("/a/b")));
    assert!(!m("Path(`/a/b`)", &req().path("/a/b/")));
    assert!(!m("Path(`/a/b`)", &req().path("/A/b")));
    assert!(m("PathPrefix(`/api`)", &req().path("/api")));
    assert!(m("PathPrefix(`/api`)", &req().path("/api/v1")));
    // Plain string prefix, like Traefik.
    assert!(m("PathPrefix(`/api`)", &req().path("/apiv2")));
    assert!(!m("PathPrefix(`/api`)", &req().path("/ap")));
    assert!(m("PathPrefix(`/`)", &req().path("/anything")));
    assert_err("Path(`a`)", 6, "must start with \"/\"");
    assert_err("PathPrefix(``)", 12, "must start with \"/\"");
}

#[test]
fn path_regexp_is_unanchored() {
    assert!(m("PathRegexp(`^/api/v[0-9]+`)", &req().path("/api/v12/x")));
    assert!(!m("PathRegexp(`^/api/v[0-9]+`)", &req().path("/x/api/v1")));
    assert!(m("PathRegexp(`v[0-9]`)", &req().path("/x/api/v1")));
    // Regex paths need not start with "/".
    assert!(m("PathRegexp(`\\.png$`)", &req().path("/a/b.png")));
}

#[test]
fn method_uppercases_argument() {
    assert!(m("Method(`GET`)", &req()));
    assert!(m("Method(`get`)", &req()));
    assert!(!m("Method(`POST`)", &req()));
    assert!(m("Method(`POST`)", &req().method("POST")));
}

#[test]
fn header_exact_any_value_case_insensitive_name() {
    let r = req().header("x-env", "staging").header("X-Env", "prod");
    assert!(m("Header(`X-Env`, `prod`)", &r));
    assert!(m("Header(`x-env`, `staging`)", &r));
    assert!(!m("Header(`X-Env`, `Prod`)", &r));
    assert!(!m("Header(`X-Env`, `pro`)", &r));
    assert!(!m("Header(`X-Other`, `prod`)", &r));
    assert!(m("Header(`X-Empty`, ``)", &req().header("x-empty", "")));
    assert_err("Header(`a b`, `x`)", 8, "invalid header name");
    assert_err("Header(`X-Env`)", 8, "Header takes 2 arguments, got 1");
}

#[test]
fn header_regexp() {
    let r = req().header("user-agent", "Mozilla/5.0 (X11)");
    assert!(m("HeaderRegexp(`User-Agent`, `Mozilla`)", &r));
    assert!(m("HeaderRegexp(`User-Agent`, `^Mozilla/[0-9.]+ `)", &r));
    assert!(!m("HeaderRegexp(`User-Agent`, `^X11`)", &r));
    assert!(!m("HeaderRegexp(`Accept`, `.*`)", &r));
    assert_err("HeaderRegexp(`A`, `(`)", 19, "invalid regular expression");
}

#[test]
fn query_key_and_value() {
    let r = req().query("a=1&b=2&a=3");
    assert!(m("Query(`a`, `1`)", &r));
    assert!(m("Query(`a`, `3`)", &r));
    assert!(m("Query(`b`, `2`)", &r));
    assert!(!m("Query(`a`, `2`)", &r));
    assert!(!m("Query(`c`, `1`)", &r));
    assert!(!m("Query(`a`, `1`)", &req()));
}

#[test]
fn query_single_argument_means_empty_value() {
    // Traefik v3: Query(`k`) is Query(`k`, ``): the key must be present with an empty value.
    assert!(m("Query(`debug`)", &req().query("debug")));
    assert!(m("Query(`debug`)", &req().query("x=1&debug=")));
    assert!(!m("Query(`debug`)", &req().query("debug=1")));
    assert!(!m("Query(`debug`)", &req().query("x=1")));
    assert!(m("QueryRegexp(`debug`)", &req().query("debug")));
}

#[test]
fn query_decoding_follows_go() {
    assert!(m("Query(`a b`, `c d`)", &req().query("a+b=c%20d")));
    assert!(m("Query(`k`, `1=2`)", &req().query("k=1=2")));
    assert!(m("Query(`k`, `/`)", &req().query("k=%2f")));
    // A malformed escape drops the pair; other pairs still count.
    assert!(!m("Query(`k`, `%zz`)", &req().query("k=%zz")));
    assert!(m("Query(`k`, `1`)", &req().query("k=%zz&k=1")));
    assert!(!m("Query(`k`, `%`)", &req().query("k=%")));
    // Segments containing ';' are dropped, as by Go's url.ParseQuery.
    assert!(!m("Query(`k`, `1`)", &req().query("k=1;x=2")));
    assert!(m("Query(``, `1`)", &req().query("=1")));
    assert!(!m("Query(``)", &req().query("&&")));
}

#[test]
fn query_regexp() {
    let r = req().query("mobile=yes&v=a+b");
    assert!(m("QueryRegexp(`mobile`, `^(true|yes)$`)", &r));
    assert!(!m("QueryRegexp(`mobile`, `^true$`)", &r));
    assert!(m("QueryRegexp(`v`, `^a b$`)", &r));
    assert!(!m("QueryRegexp(`v`, `\\+`)", &r));
    assert!(!m("QueryRegexp(`v`, ``)", &req().query("v=%z")));
    assert!(m("QueryRegexp(`v`, ``)", &req().query("v")));
    assert_err("Query(`a`, `b`, `c`)", 7, "Query takes 1 or 2 arguments, got 3");
}

#[test]
fn client_ip_v4() {
    let r = rule("ClientIP(`10.0.0.0/8`)");
    assert!(req().ip("10.1.2.3").check(&r));
    assert!(!req().ip("11.0.0.1").check(&r));
    assert!(req().ip("::ffff:10.9.9.9").check(&r));
    assert!(!req().check(&r), "unknown client IP never matches");
    assert!(m("ClientIP(`192.168.1.7`)", &req().ip("192.168.1.7")));
    assert!(!m("ClientIP(`192.168.1.7`)", &req().ip("192.168.1.8")));
    // Host bits are masked off, as netip.Prefix.Masked does.
    assert!(m("ClientIP(`10.1.2.3/16`)", &req().ip("10.1.200.1")));
    assert!(m("ClientIP(`0.0.0.0/0`)", &req().ip("8.8.8.8")));
    assert!(!m("ClientIP(`0.0.0.0/0`)", &req().ip("2001:db8::1")));
}

#[test]
fn client_ip_v6() {
    assert!(m("ClientIP(`2001:db8::/32`)", &req().ip("2001:db8:1::1")));
    assert!(!m("ClientIP(`2001:db8::/32`)", &req().ip("2001:db9::1")));
    assert!(!m("ClientIP(`2001:db8::/32`)", &req().ip("10.0.0.1")));
    assert!(m("ClientIP(`::1`)", &req().ip("::1")));
    assert!(m("ClientIP(`fe80::1%eth0`)", &req().ip("fe80::1")));
    assert!(m("ClientIP(`::/0`)", &req().ip("2001:db8::1")));
    // IPv4-mapped forms are IPv4.
    assert!(m("ClientIP(`::ffff:10.0.0.1`)", &req().ip("10.0.0.1")));
    assert!(m("ClientIP(`::ffff:10.0.0.0/104`)", &req().ip("10.200.0.1")));
    assert!(!m("ClientIP(`::/0`)", &req().ip("::ffff:10.0.0.1")));
}

#[test]
fn client_ip_errors() {
    assert_err("ClientIP(`10.0.0.0/33`)", 10, "prefix length");
    assert_err("ClientIP(`10.0.0.0/08`)", 10, "prefix length");
    assert_err("ClientIP(`10.0.0.0/`)", 10, "prefix length");
    assert_err("ClientIP(`::/129`)", 10, "prefix length");
    assert_err("ClientIP(`10.0.0/8`)", 10, "not an IP address");
    assert_err("ClientIP(`localhost`)", 10, "invalid IP address or CIDR");
    assert_err("ClientIP(`10.0.0.0/8`, `::1`)", 10, "ClientIP takes 1 argument, got 2");
}

#[test]
fn ip_net_masks() {
    assert_eq!(
        IpNet::parse("10.1.2.3/8"),
        Ok(IpNet::V4 { net: u32::from(Ipv4Addr::new(10, 0, 0, 0)), mask: 0xff00_0000 })
    );
    assert_eq!(IpNet::parse("0.0.0.0/0"), Ok(IpNet::V4 { net: 0, mask: 0 }));
    assert_eq!(IpNet::parse("::1"), Ok(IpNet::V6 { net: u128::from(Ipv6Addr::LOCALHOST), mask: u128::MAX }));
}

#[test]
fn tcp_only_matchers_are_rejected() {
    assert_err("HostSNI(`a.com`)", 1, "TCP-only matcher");
    assert_err("Path(`/`) || HostSNIRegexp(`.*`)", 14, "TCP-only matcher");
    assert_err("ALPN(`h2`)", 1, "TCP-only matcher");
}

// ---------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------

const T: &str = "Method(`GET`)";
const F: &str = "Method(`POST`)";

fn eval(template: &str) -> bool {
    m(&template.replace('T', T).replace('F', F), &req())
}

#[test]
fn operators_and_precedence() {
    assert!(eval("T && T"));
    assert!(!eval("T && F"));
    assert!(eval("F || T"));
    assert!(!eval("F || F"));
    assert!(eval("!F"));
    assert!(!eval("!T"));
    assert!(eval("!!T"));
    // && binds tighter than ||.
    assert!(eval("T || T && F"));
    assert!(eval("F && F || T"));
    assert!(!eval("(T || T) && F"));
    // ! binds tighter than &&.
    assert!(!eval("!T && F"));
    assert!(eval("!(T && F)"));
    assert!(eval("!F && !F || F"));
    assert!(eval("((T))"));
    assert!(eval("T && (F || (T && !F))"));
}

#[test]
fn whitespace_anywhere_and_trailing_comma() {
    let src = "\n\t Host (\n`example.com` ,\r\n) &&\t!\nPath( `/x` )  ";
    assert!(m(src, &req()));
    assert!(m("Header(`A`, `1`,)", &req().header("a", "1")));
    assert!(m("Host(`example.com`,)", &req()));
}

#[test]
fn double_quoted_strings_and_escapes() {
    assert!(m("Host(\"example.com\")", &req()));
    assert!(m(r#"Header("X", "a\"b\\c")"#, &req().header("x", "a\"b\\c")));
    assert!(m(r#"Header("X", "\x41\u0042\103\t")"#, &req().header("x", "ABC\t")));
    assert!(m(r#"Path("/\u00e9")"#, &req().path("/é")));
    // Backticks are raw: backslashes are literal.
    assert!(m(r"Header(`X`, `a\nb`)", &req().header("x", "a\\nb")));
    assert!(m(r"PathRegexp(`^/a\d$`)", &req().path("/a1")));
}

#[test]
fn string_errors() {
    assert_err("Host(`a.com)", 6, "unterminated string");
    assert_err("Host(\"a.com)", 6, "unterminated string");
    assert_err("Host(\"a\\", 6, "unterminated string");
    assert_err(r#"PathRegexp("^/a\d")"#, 16, "invalid escape \"\\d\"");
    assert_err(r#"Path("/\xff")"#, 8, "above 0x7f");
    assert_err(r#"Path("/\u12")"#, 8, "4 base-16 digits");
    assert_err(r#"Path("/\ud800")"#, 8, "not a valid Unicode code point");
    assert_err("Path(\"/\na\")", 8, "newline");
    assert_err("Host('a.com')", 6, "single quotes");
}

// ---------------------------------------------------------------------------
// Errors and columns
// ---------------------------------------------------------------------------

#[test]
fn empty_rule() {
    for src in ["", " ", "\n\t "] {
        let e = err(src);
        assert_eq!((e.column, e.message.as_str()), (1, "empty rule"), "{src:?}");
    }
}

#[test]
fn error_display_format() {
    assert_eq!(err("Host(`a.com`").to_string(), "column 13: expected \")\" after arguments of Host, found end of rule");
    assert_eq!(
        err("Host(`a`, `b`)").to_string(),
        "column 6: Host takes 1 argument, got 2 (Traefik v3: combine hosts with ||, e.g. Host(`a.com`) || Host(`b.com`))"
    );
    assert!(err("Hots(`a`)")
        .to_string()
        .starts_with("column 1: unknown matcher \"Hots\" (expected one of Host, HostRegexp, Path, PathPrefix,"));
}

#[test]
fn error_columns() {
    assert_err("Host(`a.com`x", 13, "expected \")\" after arguments of Host");
    assert_err("Host(`a.com` `b`)", 14, "expected \",\" between arguments");
    assert_err("Host()", 6, "Host takes 1 argument, got 0");
    assert_err("Path(`/`) && Hots(`a`)", 14, "unknown matcher \"Hots\"");
    assert_err("Host", 5, "expected \"(\" after matcher name Host, found end of rule");
    assert_err("Host && Path(`/`)", 6, "expected \"(\" after matcher name Host");
    assert_err("Host(a.com)", 6, "expected a string argument");
    assert_err("Host(`a`) Path(`/`)", 11, "unexpected \"Path\" after a complete expression");
    assert_err("Host(`a`))", 10, "unexpected \")\"");
    assert_err("Host(`a`) &", 11, "expected \"&&\"");
    assert_err("Host(`a`) | Path(`/`)", 11, "expected \"||\"");
    assert_err("Host(`a`) &&", 13, "expected a matcher such as Host(`example.com`)");
    assert_err("&& Host(`a`)", 1, "expected a matcher");
    assert_err("(Host(`a`)", 11, "expected \")\" to close \"(\" at column 1");
    assert_err("( Host(`a`) || (Path(`/`) )", 28, "to close \"(\" at column 1");
    assert_err("!", 2, "found end of rule");
    assert_err("`a`", 1, "found a string");
    assert_err("Host(`a`) && Path(`/`) @", 24, "unexpected character '@'");
    assert_err("Path(`/é`) ?", 12, "unexpected character '?'");
    assert_err("PathRegexp(`(`)", 12, "invalid regular expression \"(\" for PathRegexp");
    assert_err("Path(`/`) && PathRegexp(`[z-a]`)", 25, "invalid regular expression");
    assert_err("Headers(`a`, `b`)", 1, "Traefik v2 syntax; use Header");
    assert_err("Header(`a`, `b` `c`)", 17, "expected \",\"");
}

#[test]
fn nesting_limit() {
    let deep = format!("{}Path(`/`){}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert!(m(&deep, &req()));
    let too_deep = format!("{}Path(`/`){}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    assert_err(&too_deep, MAX_DEPTH + 1, "nested too deeply");
    let nots = format!("{}Path(`/`)", "!".repeat(MAX_DEPTH));
    assert!(m(&nots, &req()));
    assert_err(&format!("{}Path(`/`)", "!".repeat(100_000)), MAX_DEPTH + 1, "nested too deeply");
}

#[test]
fn source_priority_display_eq() {
    let src = "Host(`example.com`) && PathPrefix(`/api`)";
    let r = rule(src);
    assert_eq!(r.source(), src);
    assert_eq!(r.default_priority(), src.len());
    assert_eq!(r.to_string(), src);
    assert_eq!(src.parse::<Rule>(), Ok(r.clone()));
    assert_ne!(rule("Path(`/`)"), rule("Path(`/`) "));
    // Go's len(): bytes, not characters.
    assert_eq!(rule("Path(`/é`)").default_priority(), 11);
}

#[test]
fn compiled_tree_is_flattened() {
    let r = rule("Path(`/a`) || Path(`/b`) || (Path(`/c`) || Path(`/d`))");
    assert!(matches!(&r.expr, Expr::Or(v) if v.len() == 4));
    let r = rule("!!Path(`/a`) && Path(`/b`) && Path(`/c`)");
    assert!(matches!(&r.expr, Expr::And(v) if v.len() == 3 && matches!(v[0], Expr::Match(_))));
}

#[test]
fn decoding_helpers() {
    assert!(decoded_eq("a%20b+c", "a b c"));
    assert!(decoded_eq("", ""));
    assert!(!decoded_eq("a", ""));
    assert!(!decoded_eq("", "a"));
    assert!(!decoded_eq("%2", "%2"));
    assert!(!decoded_eq("%+1", "\u{1}"));
    assert_eq!(percent_decode("a%41+").as_deref(), Some(&b"aA "[..]));
    assert_eq!(percent_decode("%4"), None);
    assert!(matches!(percent_decode("plain"), Some(Cow::Borrowed(_))));
    assert_eq!(strip_port("a.com:80"), "a.com");
    assert_eq!(strip_port("a.com:"), "a.com");
    assert_eq!(strip_port("[::1]:443"), "::1");
    assert_eq!(strip_port("[::1"), "[::1");
    assert_eq!(strip_port("fe80::1"), "fe80::1");
}

// ---------------------------------------------------------------------------
// Property tests: random ASTs vs a reference evaluator
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum RefM {
    Host(String),
    HostRegexp(String),
    Path(String),
    PathPrefix(String),
    PathRegexp(String),
    Method(String),
    Header(String, String),
    HeaderRegexp(String, String),
    Query(String, Option<String>),
    QueryRegexp(String, String),
    ClientIp(String),
}

#[derive(Debug, Clone)]
enum RefE {
    M(RefM),
    Not(Box<RefE>),
    And(Box<RefE>, Box<RefE>),
    Or(Box<RefE>, Box<RefE>),
}

const HOSTS: &[&str] = &["a.com", "A.com", "b.org", "a.com.", "x.a.com", ""];
const REQ_HOSTS: &[&str] = &["a.com", "A.COM", "b.org", "a.com.", "x.a.com", "a.com:8080", "[::1]:80", "::1", ""];
const HOST_RES: &[&str] = &[r"^a\.com$", "com$", r"^x\.", "b", "^$", "(?i)A", "A"];
const PATHS: &[&str] = &["/", "/a", "/a/b", "/b", "/ab", "/é"];
const PATH_RES: &[&str] = &["^/a", "b$", "^/$", "/a/", r"\w+", "é"];
const METHODS: &[&str] = &["GET", "POST", "get", "Put"];
const REQ_METHODS: &[&str] = &["GET", "POST", "PUT"];
const HEADER_NAMES: &[&str] = &["x-a", "X-B", "X-C"];
const REQ_HEADER_NAMES: &[&str] = &["x-a", "x-b", "X-A"];
const HEADER_VALUES: &[&str] = &["1", "2", "", "12", "a\"b\\c"];
const VALUE_RES: &[&str] = &["^1$", "2", "^$", "1", r#"\\"#, " "];
const QUERY_KEYS: &[&str] = &["a", "b", "a b", "", "c;d"];
const QUERY_VALUES: &[&str] = &["1", "2", "", " ", "1=2"];
const QUERY_SEGMENTS: &[&str] = &[
    "a=1", "a=2", "b", "b=", "a%20b=1", "a+b=2", "a=%31", "a=%zz", "c;d=1", "=1", "", "a=1=2", "b=+", "a=%2", "%61=2",
];
const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.2.3",
    "10.1.0.0/16",
    "10.1.2.3/32",
    "::1",
    "2001:db8::/32",
    "0.0.0.0/0",
    "::/0",
    "::ffff:10.0.0.1",
    "::ffff:10.1.0.0/112",
];
const REQ_IPS: &[&str] =
    &["10.1.2.3", "10.2.0.1", "10.0.0.1", "192.168.0.1", "::1", "2001:db8::5", "2001:db9::5", "::ffff:10.1.2.3"];

fn pick(xs: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(xs).prop_map(str::to_string)
}

fn arb_matcher() -> impl Strategy<Value = RefM> {
    prop_oneof![
        1 => pick(HOSTS).prop_map(RefM::Host),
        1 => pick(HOST_RES).prop_map(RefM::HostRegexp),
        1 => pick(PATHS).prop_map(RefM::Path),
        1 => pick(PATHS).prop_map(RefM::PathPrefix),
        1 => pick(PATH_RES).prop_map(RefM::PathRegexp),
        1 => pick(METHODS).prop_map(RefM::Method),
        1 => (pick(HEADER_NAMES), pick(HEADER_VALUES)).prop_map(|(n, v)| RefM::Header(n, v)),
        1 => (pick(HEADER_NAMES), pick(VALUE_RES)).prop_map(|(n, v)| RefM::HeaderRegexp(n, v)),
        2 => (pick(QUERY_KEYS), prop::option::of(pick(QUERY_VALUES)))
            .prop_map(|(k, v)| RefM::Query(k, v)),
        2 => (pick(QUERY_KEYS), pick(VALUE_RES)).prop_map(|(k, v)| RefM::QueryRegexp(k, v)),
        1 => pick(CIDRS).prop_map(RefM::ClientIp),
    ]
}

fn arb_expr() -> impl Strategy<Value = RefE> {
    arb_matcher().prop_map(RefE::M).prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| RefE::Not(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| RefE::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| RefE::Or(Box::new(a), Box::new(b))),
        ]
    })
}

fn arb_req() -> impl Strategy<Value = Req> {
    (
        pick(REQ_HOSTS),
        pick(PATHS),
        prop::option::of(prop::collection::vec(pick(QUERY_SEGMENTS), 0..4)),
        pick(REQ_METHODS),
        prop::collection::vec((pick(REQ_HEADER_NAMES), pick(HEADER_VALUES)), 0..4),
        prop::option::of(pick(REQ_IPS)),
    )
        .prop_map(|(host, path, query, method, headers, ip)| Req {
            host,
            path,
            query: query.map(|segs| segs.join("&")),
            method,
            headers,
            ip: ip.map(|s| s.parse().unwrap()),
        })
}

/// Tiny deterministic generator for rendering choices (whitespace, quotes, parens).
struct Choices(u64);

impl Choices {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn space(&mut self, out: &mut String) {
        out.push_str(["", "", " ", "  ", "\n\t", "\r\n"][self.next(6) as usize]);
    }

    fn string(&mut self, s: &str, out: &mut String) {
        if self.next(2) == 0 {
            out.push('`');
            out.push_str(s);
            out.push('`');
            return;
        }
        out.push('"');
        for c in s.chars() {
            match (c, self.next(4)) {
                ('"', _) => out.push_str("\\\""),
                ('\\', _) => out.push_str("\\\\"),
                (c, 0) => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                (c, 1) if c.is_ascii() => out.push_str(&format!("\\x{:02X}", u32::from(c))),
                (c, _) => out.push(c),
            }
        }
        out.push('"');
    }
}

fn render_matcher(mt: &RefM, ch: &mut Choices, out: &mut String) {
    let (name, args): (&str, Vec<&str>) = match mt {
        RefM::Host(h) => ("Host", vec![h]),
        RefM::HostRegexp(r) => ("HostRegexp", vec![r]),
        RefM::Path(p) => ("Path", vec![p]),
        RefM::PathPrefix(p) => ("PathPrefix", vec![p]),
        RefM::PathRegexp(r) => ("PathRegexp", vec![r]),
        RefM::Method(x) => ("Method", vec![x]),
        RefM::Header(n, v) => ("Header", vec![n, v]),
        RefM::HeaderRegexp(n, r) => ("HeaderRegexp", vec![n, r]),
        RefM::Query(k, None) => ("Query", vec![k]),
        RefM::Query(k, Some(v)) => ("Query", vec![k, v]),
        RefM::QueryRegexp(k, r) => ("QueryRegexp", vec![k, r]),
        RefM::ClientIp(c) => ("ClientIP", vec![c]),
    };
    match ch.next(8) {
        0 => out.push_str(&name.to_lowercase()),
        1 => out.push_str(&name.to_uppercase()),
        _ => out.push_str(name),
    }
    ch.space(out);
    out.push('(');
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        ch.space(out);
        ch.string(a, out);
        ch.space(out);
    }
    if ch.next(8) == 0 {
        out.push(',');
    }
    out.push(')');
}

/// Render with the minimum parentheses the precedence needs (`min_prec`: 1 for an
/// `||` operand, 2 for an `&&` operand, 3 for a `!` operand), plus random extra ones.
fn render(e: &RefE, min_prec: u8, ch: &mut Choices, out: &mut String) {
    let prec = match e {
        RefE::Or(..) => 1,
        RefE::And(..) => 2,
        RefE::Not(_) | RefE::M(_) => 3,
    };
    let parens = prec < min_prec || ch.next(6) == 0;
    if parens {
        out.push('(');
        ch.space(out);
    }
    match e {
        RefE::M(mt) => render_matcher(mt, ch, out),
        RefE::Not(inner) => {
            out.push('!');
            ch.space(out);
            render(inner, 3, ch, out);
        }
        RefE::And(a, b) | RefE::Or(a, b) => {
            render(a, prec, ch, out);
            ch.space(out);
            out.push_str(if prec == 1 { "||" } else { "&&" });
            ch.space(out);
            render(b, prec, ch, out);
        }
    }
    if parens {
        ch.space(out);
        out.push(')');
    }
}

fn ref_host(h: &str) -> String {
    let h = match h.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None if h.matches(':').count() == 1 => h.split(':').next().unwrap_or(h),
        None => h,
    };
    h.to_lowercase()
}

fn ref_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Go's url.ParseQuery, the slow obvious way.
fn ref_query(q: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for seg in q.split('&') {
        if seg.is_empty() || seg.contains(';') {
            continue;
        }
        let (k, v) = match seg.find('=') {
            Some(i) => (&seg[..i], &seg[i + 1..]),
            None => (seg, ""),
        };
        if let (Some(k), Some(v)) = (ref_unescape(k), ref_unescape(v)) {
            pairs.push((k, v));
        }
    }
    pairs
}

fn bits(ip: IpAddr) -> Vec<bool> {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.iter().flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1)).collect()
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn ref_cidr_contains(cidr: &str, client: IpAddr) -> bool {
    let (addr, len) = match cidr.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().unwrap(), Some(l.parse::<usize>().unwrap())),
        None => (cidr.parse::<IpAddr>().unwrap(), None),
    };
    let net_bits = bits(addr);
    let mut len = len.unwrap_or(net_bits.len());
    let mut net_bits = net_bits;
    if unmap(addr) != addr && len >= 96 {
        net_bits = bits(unmap(addr));
        len -= 96;
    }
    let client_bits = bits(unmap(client));
    client_bits.len() == net_bits.len() && client_bits[..len] == net_bits[..len]
}

fn ref_re(pattern: &str, s: &str) -> bool {
    regex::Regex::new(pattern).unwrap().is_match(s)
}

fn ref_eval_m(mt: &RefM, r: &Req) -> bool {
    let header_values = |name: &str| -> Vec<&str> {
        r.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    };
    let query_values = |key: &str| -> Vec<String> {
        r.query
            .as_deref()
            .map(ref_query)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    };
    match mt {
        RefM::Host(h) => {
            let req_host = ref_host(&r.host);
            let h = h.to_lowercase();
            !req_host.is_empty()
                && (req_host == h
                    || h.strip_suffix('.') == Some(req_host.as_str())
                    || req_host.strip_suffix('.') == Some(h.as_str()))
        }
        RefM::HostRegexp(re) => ref_re(re, &ref_host(&r.host)),
        RefM::Path(p) => r.path == *p,
        RefM::PathPrefix(p) => r.path.starts_with(p.as_str()),
        RefM::PathRegexp(re) => ref_re(re, &r.path),
        RefM::Method(x) => r.method == x.to_uppercase(),
        RefM::Header(n, v) => header_values(n).contains(&v.as_str()),
        RefM::HeaderRegexp(n, re) => header_values(n).iter().any(|v| ref_re(re, v)),
        RefM::Query(k, v) => query_values(k).contains(&v.clone().unwrap_or_default()),
        RefM::QueryRegexp(k, re) => query_values(k).iter().any(|v| ref_re(re, v)),
        RefM::ClientIp(c) => r.ip.is_some_and(|ip| ref_cidr_contains(c, ip)),
    }
}

fn ref_eval(e: &RefE, r: &Req) -> bool {
    match e {
        RefE::M(mt) => ref_eval_m(mt, r),
        RefE::Not(inner) => !ref_eval(inner, r),
        RefE::And(a, b) => ref_eval(a, r) && ref_eval(b, r),
        RefE::Or(a, b) => ref_eval(a, r) || ref_eval(b, r),
    }
}

const TOKEN_SOUP: &[&str] = &[
    "Host",
    "Path",
    "Query",
    "ClientIP",
    "HostSNI",
    "x",
    "(",
    ")",
    ",",
    "!",
    "&&",
    "||",
    "&",
    "|",
    " ",
    "\n",
    "`a`",
    "`/`",
    "\"b\\\"\"",
    "\"\\u00e9\"",
    "\"\\x",
    "`",
    "\"",
    "\\",
    "é",
    "'",
    "`10.0.0.0/8`",
    "`(`",
    "1",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn compiled_rule_agrees_with_reference(
        expr in arb_expr(),
        seed in 1u64..,
        reqs in prop::collection::vec(arb_req(), 1..12),
    ) {
        let mut src = String::new();
        let mut ch = Choices(seed);
        ch.space(&mut src);
        render(&expr, 1, &mut ch, &mut src);
        ch.space(&mut src);
        let compiled = Rule::parse(&src)
            .map_err(|e| TestCaseError::fail(format!("{src:?} did not parse: {e}")))?;
        prop_assert_eq!(compiled.default_priority(), src.len());
        for r in &reqs {
            prop_assert_eq!(
                r.check(&compiled),
                ref_eval(&expr, r),
                "rule {:?} on {:?}", src, r
            );
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(src in "\\PC{0,64}") {
        if let Err(e) = Rule::parse(&src) {
            prop_assert!(e.column >= 1 && e.column <= src.chars().count() + 1, "{:?}: {}", src, e);
        }
    }

    #[test]
    fn parse_never_panics_on_token_soup(
        toks in prop::collection::vec(prop::sample::select(TOKEN_SOUP), 0..24),
    ) {
        let src = toks.concat();
        match Rule::parse(&src) {
            Ok(r) => {
                // Evaluating any parsed rule must not panic either.
                let _ = req().ip("10.0.0.1").query("a=1").check(&r);
            }
            Err(e) => {
                prop_assert!(e.column >= 1 && e.column <= src.chars().count() + 1, "{:?}: {}", src, e);
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}

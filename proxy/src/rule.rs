//! Traefik v3 router rule language: parser and compiled matcher.
//!
//! A rule such as ``Host(`example.com`) && (PathPrefix(`/api`) || !Method(`GET`))``
//! is parsed once into a [`Rule`] (regexes compiled, hosts lower-cased, CIDRs parsed)
//! and then evaluated per request with [`Rule::matches`], which does not allocate
//! except in rare cases (an upper-case request host with `HostRegexp`, or a
//! percent-encoded query value with `QueryRegexp`).
//!
//! Grammar (precedence `!` > `&&` > `||`, binary operators left-associative):
//!
//! ```text
//! rule    := or
//! or      := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | primary
//! primary := "(" or ")" | NAME "(" [ STRING ( "," STRING )* [ "," ] ] ")"
//! STRING  := `raw` | "double-quoted with Go escapes"
//! ```
//!
//! Matchers follow Traefik v3 (`pkg/muxer/http/matcher.go`): `Host`, `HostRegexp`,
//! `Path`, `PathPrefix`, `PathRegexp`, `Method`, `Header`, `HeaderRegexp`, `Query`,
//! `QueryRegexp` and `ClientIP`. Like Traefik, a matcher name is also accepted in
//! all-lower-case, all-upper-case and "Title" spelling (`host`, `HOST`,
//! `Pathprefix`). Regexes are unanchored (a match anywhere counts), as in Go.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderName;
use regex::bytes::Regex;

/// What a rule can look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Host without port, as sent (Host header or :authority); matching is case-insensitive.
    pub host: &'a str,
    /// Path component of the request target, without the query.
    pub path: &'a str,
    /// Raw query string without the leading `?`, if any.
    pub query: Option<&'a str>,
    /// Request method, upper case.
    pub method: &'a str,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// Peer address of the client, if known.
    pub client_ip: Option<IpAddr>,
}

/// A rule that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct RuleError {
    /// 1-based column (in characters) in the rule text where the problem was found.
    pub column: usize,
    /// What was wrong and what was expected.
    pub message: String,
}

impl RuleError {
    fn new(column: usize, message: impl Into<String>) -> Self {
        RuleError { column, message: message.into() }
    }
}

/// A compiled rule.
///
/// Two rules compare equal when their source text is identical.
#[derive(Debug, Clone)]
pub struct Rule {
    source: Box<str>,
    expr: Expr,
}

impl Rule {
    /// Parse and compile a rule.
    pub fn parse(src: &str) -> Result<Rule, RuleError> {
        if src.chars().all(is_space) {
            return Err(RuleError::new(1, "empty rule"));
        }
        Ok(Rule { source: src.into(), expr: parse_expr(src, false)? })
    }

    /// Whether the request matches.
    pub fn matches(&self, req: &RequestInfo<'_>) -> bool {
        self.expr.eval(req)
    }

    /// The rule text this rule was parsed from, verbatim.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Traefik's default router priority: the length of the rule text.
    ///
    /// Traefik computes `len(rule)` in Go, i.e. the length in **bytes** of the
    /// UTF-8 text (including whitespace); this returns the same so that routers
    /// sort exactly as in Traefik. For ASCII rules this equals the length in
    /// characters.
    pub fn default_priority(&self) -> usize {
        self.source.len()
    }

    /// The literal names of its `Host` matchers (lower-cased, in rule order, without
    /// those under a `!`): what a certificate for the router must cover, as Traefik
    /// derives ACME domains and TLS options from a router's rule.
    pub fn hosts(&self) -> Vec<&str> {
        literal_names(&self.expr, |m| match m {
            Matcher::Host(h) => Some(h),
            _ => None,
        })
    }
}

/// The names `pick` takes from the matchers of `expr` (in rule order, once each, none
/// from under a `!`).
fn literal_names<'a>(expr: &'a Expr, pick: fn(&'a Matcher) -> Option<&'a str>) -> Vec<&'a str> {
    fn walk<'a>(e: &'a Expr, pick: fn(&'a Matcher) -> Option<&'a str>, out: &mut Vec<&'a str>) {
        match e {
            Expr::Match(m) => {
                if let Some(n) = pick(m).filter(|n| !out.contains(n)) {
                    out.push(n);
                }
            }
            Expr::Not(_) => {}
            Expr::And(es) | Expr::Or(es) => es.iter().for_each(|e| walk(e, pick, out)),
        }
    }
    let mut out = Vec::new();
    walk(expr, pick, &mut out);
    out
}

/// Parse `src` as an HTTP (`tcp == false`) or a TCP router rule.
fn parse_expr(src: &str, tcp: bool) -> Result<Expr, RuleError> {
    if src.chars().all(is_space) {
        return Err(RuleError::new(1, "empty rule"));
    }
    let mut parser = Parser { lexer: Lexer { src, pos: 0, col: 1 }, peeked: None, tcp };
    let expr = parser.parse_or(0)?;
    let tok = parser.next()?;
    if tok.kind != Tok::End {
        return Err(RuleError::new(
            tok.col,
            format!(
                "unexpected {} after a complete expression (expected \"&&\", \"||\" or end of rule)",
                tok.kind.describe()
            ),
        ));
    }
    Ok(expr)
}

/// What a TCP rule can look at: the connection, and the ClientHello when it is TLS.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnInfo<'a> {
    /// Whether the connection starts with a TLS ClientHello.
    pub tls: bool,
    /// The ClientHello's server name, lower-cased.
    pub sni: Option<&'a str>,
    /// The ClientHello's ALPN protocols.
    pub alpn: &'a [Vec<u8>],
    /// Peer address of the client.
    pub client_ip: Option<IpAddr>,
}

/// A compiled TCP router rule (Traefik v3's `pkg/muxer/tcp`): `HostSNI`,
/// `HostSNIRegexp`, `ClientIP` and `ALPN`, with the same operators as HTTP rules.
/// ``HostSNI(`*`)`` matches every connection, TLS or not.
#[derive(Debug, Clone)]
pub struct TcpRule {
    source: Box<str>,
    expr: Expr,
}

impl TcpRule {
    /// Parse and compile a TCP rule.
    pub fn parse(src: &str) -> Result<TcpRule, RuleError> {
        Ok(TcpRule { source: src.into(), expr: parse_expr(src, true)? })
    }

    /// Whether the connection matches.
    pub fn matches(&self, conn: &ConnInfo<'_>) -> bool {
        self.expr.eval_conn(conn)
    }

    /// The rule text, verbatim.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Traefik's default priority: the rule's length in bytes.
    pub fn default_priority(&self) -> usize {
        self.source.len()
    }

    /// Whether the rule needs the ClientHello (a `HostSNI` other than `*`, a
    /// `HostSNIRegexp` or an `ALPN`): such a rule never matches a connection that is not
    /// TLS, and a non-TLS router cannot use it (Traefik refuses it too).
    pub fn needs_hello(&self) -> bool {
        fn walk(e: &Expr) -> bool {
            match e {
                Expr::Match(Matcher::HostSni(h)) => &**h != "*",
                Expr::Match(Matcher::HostSniRegexp(_) | Matcher::Alpn(_)) => true,
                Expr::Match(_) => false,
                Expr::Not(e) => walk(e),
                Expr::And(es) | Expr::Or(es) => es.iter().any(walk),
            }
        }
        walk(&self.expr)
    }

    /// The literal `HostSNI` names (not `*`), for certificates of terminating routers.
    pub fn hosts(&self) -> Vec<&str> {
        literal_names(&self.expr, |m| match m {
            Matcher::HostSni(h) if &**h != "*" => Some(h),
            _ => None,
        })
    }
}

impl PartialEq for TcpRule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Rule {}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rule::parse(s)
    }
}

// ---------------------------------------------------------------------------
// Compiled form and evaluation
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Expr {
    Match(Matcher),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Expr {
    fn eval(&self, req: &RequestInfo<'_>) -> bool {
        match self {
            Expr::Match(m) => m.eval(req),
            Expr::Not(e) => !e.eval(req),
            Expr::And(es) => es.iter().all(|e| e.eval(req)),
            Expr::Or(es) => es.iter().any(|e| e.eval(req)),
        }
    }

    fn eval_conn(&self, conn: &ConnInfo<'_>) -> bool {
        match self {
            Expr::Match(m) => m.eval_conn(conn),
            Expr::Not(e) => !e.eval_conn(conn),
            Expr::And(es) => es.iter().all(|e| e.eval_conn(conn)),
            Expr::Or(es) => es.iter().any(|e| e.eval_conn(conn)),
        }
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    /// Lower-cased host.
    Host(Box<str>),
    HostRegexp(Regex),
    Path(Box<str>),
    PathPrefix(Box<str>),
    PathRegexp(Regex),
    /// Upper-cased method.
    Method(Box<str>),
    Header(HeaderName, Box<str>),
    HeaderRegexp(HeaderName, Regex),
    /// Key and value; `Query(`k`)` is `Query(`k`, ``)` as in Traefik.
    Query(Box<str>, Box<str>),
    QueryRegexp(Box<str>, Regex),
    ClientIp(IpNet),
    /// Lower-cased server name, or `*`.
    HostSni(Box<str>),
    HostSniRegexp(Regex),
    Alpn(Box<[u8]>),
}

impl Matcher {
    fn eval_conn(&self, conn: &ConnInfo<'_>) -> bool {
        match self {
            Matcher::HostSni(h) if &**h == "*" => true,
            Matcher::HostSni(h) => conn.sni.is_some_and(|sni| host_matches(sni, h)),
            Matcher::HostSniRegexp(re) => conn.sni.is_some_and(|sni| re.is_match(sni.to_ascii_lowercase().as_bytes())),
            Matcher::Alpn(p) => conn.alpn.iter().any(|a| a.as_slice() == &**p),
            Matcher::ClientIp(net) => conn.client_ip.is_some_and(|ip| net.contains(ip)),
            // The parser admits no HTTP matcher in a TCP rule.
            _ => false,
        }
    }

    fn eval(&self, req: &RequestInfo<'_>) -> bool {
        match self {
            Matcher::Host(host) => host_matches(strip_port(req.host), host),
            Matcher::HostRegexp(re) => {
                let host = strip_port(req.host);
                let lower: Cow<'_, str> = if host.chars().any(char::is_uppercase) {
                    Cow::Owned(host.to_lowercase())
                } else {
                    Cow::Borrowed(host)
                };
                re.is_match(lower.as_bytes())
            }
            Matcher::Path(p) => req.path == &**p,
            Matcher::PathPrefix(p) => req.path.starts_with(&**p),
            Matcher::PathRegexp(re) => re.is_match(req.path.as_bytes()),
            Matcher::Method(m) => req.method == &**m,
            Matcher::Header(name, value) => req.headers.get_all(name).iter().any(|v| v.as_bytes() == value.as_bytes()),
            Matcher::HeaderRegexp(name, re) => req.headers.get_all(name).iter().any(|v| re.is_match(v.as_bytes())),
            Matcher::Query(key, value) => {
                req.query.is_some_and(|q| query_pairs(q).any(|(k, v)| decoded_eq(k, key) && decoded_eq(v, value)))
            }
            Matcher::QueryRegexp(key, re) => req.query.is_some_and(|q| {
                query_pairs(q).any(|(k, v)| decoded_eq(k, key) && percent_decode(v).is_some_and(|v| re.is_match(&v)))
            }),
            Matcher::ClientIp(net) => req.client_ip.is_some_and(|ip| net.contains(ip)),
            // The parser admits no TCP matcher in an HTTP rule.
            Matcher::HostSni(_) | Matcher::HostSniRegexp(_) | Matcher::Alpn(_) => false,
        }
    }
}

/// Traefik's host comparison: equal, or equal modulo one trailing dot on either side.
fn host_matches(req_host: &str, host: &str) -> bool {
    if req_host.is_empty() {
        return false;
    }
    if req_host.eq_ignore_ascii_case(host) {
        return true;
    }
    if let Some(h) = host.strip_suffix('.') {
        if req_host.eq_ignore_ascii_case(h) {
            return true;
        }
    }
    if let Some(r) = req_host.strip_suffix('.') {
        if r.eq_ignore_ascii_case(host) {
            return true;
        }
    }
    false
}

/// Defensive: drop a `:port` suffix (and IPv6 brackets) if the caller left one on.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &rest[..end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `key=value` pairs of a raw query string, still encoded, split like Go's
/// `url.ParseQuery`: segments separated by `&`, empty segments and segments
/// containing `;` skipped, the first `=` separating key from value.
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|seg| !seg.is_empty() && !seg.contains(';'))
        .map(|seg| seg.split_once('=').unwrap_or((seg, "")))
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether the query-unescaped form of `raw` (`+` is a space, `%XX` a byte) is
/// exactly `expected`. A malformed `%` escape makes it false: Go's
/// `url.ParseQuery` drops such pairs. Does not allocate.
fn decoded_eq(raw: &str, expected: &str) -> bool {
    let raw = raw.as_bytes();
    let mut want = expected.as_bytes().iter();
    let mut i = 0;
    while i < raw.len() {
        let byte = match raw[i] {
            b'+' => b' ',
            b'%' => {
                let hi = raw.get(i + 1).copied().and_then(hex_val);
                let lo = raw.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        i += 2;
                        hi << 4 | lo
                    }
                    _ => return false,
                }
            }
            b => b,
        };
        if want.next() != Some(&byte) {
            return false;
        }
        i += 1;
    }
    want.next().is_none()
}

/// Query-unescape `raw`; `None` if it has a malformed `%` escape. Borrows when
/// there is nothing to decode.
fn percent_decode(raw: &str) -> Option<Cow<'_, [u8]>> {
    let bytes = raw.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(Cow::Owned(out))
}

/// An IP network (an address with a prefix length; a single address is a /32 or /128).
///
/// IPv4-mapped IPv6 forms (`::ffff:10.0.0.0/104`, `::ffff:10.0.0.1`) are stored as
/// IPv4, and client addresses are unmapped before the check, as Traefik does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpNet {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl IpNet {
    fn parse(s: &str) -> Result<IpNet, String> {
        match s.split_once('/') {
            Some((addr, bits)) => {
                let ip: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bad_bits = || format!("prefix length {bits:?} is not a number from 0 to {max}");
                if bits.is_empty()
                    || !bits.bytes().all(|b| b.is_ascii_digit())
                    || (bits.len() > 1 && bits.starts_with('0'))
                {
                    return Err(bad_bits());
                }
                let bits: u32 = bits.parse().map_err(|_| bad_bits())?;
                if bits > max {
                    return Err(bad_bits());
                }
                Ok(IpNet::new(ip, bits))
            }
            None => {
                // A single address may carry an IPv6 zone (`fe80::1%eth0`); Traefik
                // ignores zones when comparing.
                let addr = match s.split_once('%') {
                    Some((a, zone)) if a.contains(':') && !zone.is_empty() => a,
                    _ => s,
                };
                let ip: IpAddr = addr.parse().map_err(|_| "not an IP address or CIDR (e.g. 10.0.0.0/8)".to_string())?;
                let bits = if ip.is_ipv4() { 32 } else { 128 };
                Ok(IpNet::new(ip, bits))
            }
        }
    }

    fn new(ip: IpAddr, bits: u32) -> IpNet {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                IpNet::V4 { net: u32::from(v4) & mask, mask }
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if bits >= 96 => IpNet::new(IpAddr::V4(v4), bits - 96),
                _ => {
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    IpNet::V6 { net: u128::from(v6) & mask, mask }
                }
            },
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip.to_canonical()) {
            (IpNet::V4 { net, mask }, IpAddr::V4(v4)) => u32::from(v4) & mask == *net,
            (IpNet::V6 { net, mask }, IpAddr::V6(v6)) => u128::from(v6) & mask == *net,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

/// Whitespace between tokens: what Go's scanner accepts.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok<'s> {
    AndAnd,
    OrOr,
    Bang,
    LParen,
    RParen,
    Comma,
    Str(String),
    Ident(&'s str),
    End,
}

impl Tok<'_> {
    fn describe(&self) -> String {
        match self {
            Tok::AndAnd => "\"&&\"".into(),
            Tok::OrOr => "\"||\"".into(),
            Tok::Bang => "\"!\"".into(),
            Tok::LParen => "\"(\"".into(),
            Tok::RParen => "\")\"".into(),
            Tok::Comma => "\",\"".into(),
            Tok::Str(_) => "a string".into(),
            Tok::Ident(name) => format!("\"{name}\""),
            Tok::End => "end of rule".into(),
        }
    }
}

#[derive(Debug)]
struct Token<'s> {
    kind: Tok<'s>,
    col: usize,
}

struct Lexer<'s> {
    src: &'s str,
    /// Byte offset of the next character.
    pos: usize,
    /// 1-based character column of the next character.
    col: usize,
}

impl<'s> Lexer<'s> {
    fn peek_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.pos += c.len_utf8();
        self.col += 1;
        Some(c)
    }

    fn next_token(&mut self) -> Result<Token<'s>, RuleError> {
        while self.peek_char().is_some_and(is_space) {
            self.bump();
        }
        let col = self.col;
        let start = self.pos;
        let Some(c) = self.bump() else {
            return Ok(Token { kind: Tok::End, col });
        };
        let kind = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '!' => Tok::Bang,
            '&' | '|' => {
                if self.peek_char() == Some(c) {
                    self.bump();
                    if c == '&' {
                        Tok::AndAnd
                    } else {
                        Tok::OrOr
                    }
                } else {
                    return Err(RuleError::new(
                        col,
                        format!("unexpected \"{c}\" (expected \"{c}{c}\")"),
                    ));
                }
            }
            '`' => Tok::Str(self.raw_string(col)?),
            '"' => Tok::Str(self.quoted_string(col)?),
            '\'' => {
                return Err(RuleError::new(
                    col,
                    "single quotes are not string delimiters (use backticks `...` or double quotes \"...\")",
                ))
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                while self
                    .peek_char()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.bump();
                }
                Tok::Ident(&self.src[start..self.pos])
            }
            c => {
                return Err(RuleError::new(
                    col,
                    format!(
                        "unexpected character {c:?} (U+{:04X}); expected a matcher, an operator (\"&&\", \"||\", \"!\"), a parenthesis or a quoted string",
                        u32::from(c)
                    ),
                ))
            }
        };
        Ok(Token { kind, col })
    }

    /// Body of a backtick string (raw; carriage returns dropped, as in Go).
    fn raw_string(&mut self, open_col: usize) -> Result<String, RuleError> {
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err(RuleError::new(open_col, "unterminated string: missing closing backtick \"`\"")),
                Some('`') => return Ok(out),
                Some('\r') => {}
                Some(c) => out.push(c),
            }
        }
    }

    /// Body of a double-quoted string with Go escapes.
    fn quoted_string(&mut self, open_col: usize) -> Result<String, RuleError> {
        let unterminated = || RuleError::new(open_col, "unterminated string: missing closing double quote '\"'");
        let mut out = String::new();
        loop {
            let col = self.col;
            match self.bump() {
                None => return Err(unterminated()),
                Some('"') => return Ok(out),
                Some('\n') => {
                    return Err(RuleError::new(
                        col,
                        "newline in double-quoted string (use a backtick string for multi-line values)",
                    ))
                }
                Some('\\') => {
                    let Some(e) = self.bump() else {
                        return Err(unterminated());
                    };
                    let c = match e {
                        '"' => '"',
                        '\\' => '\\',
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        'a' => '\u{7}',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'v' => '\u{b}',
                        'x' => ascii_escape(col, self.escape_digits(col, 2, 16)?)?,
                        'u' | 'U' => {
                            let v = self.escape_digits(col, if e == 'u' { 4 } else { 8 }, 16)?;
                            char::from_u32(v).ok_or_else(|| {
                                RuleError::new(
                                    col,
                                    format!("escape is not a valid Unicode code point (U+{v:X})"),
                                )
                            })?
                        }
                        '0'..='7' => {
                            // Go octal escape: exactly three digits, the first already read.
                            let first = e.to_digit(8).unwrap_or(0);
                            ascii_escape(col, first * 64 + self.escape_digits(col, 2, 8)?)?
                        }
                        other => {
                            return Err(RuleError::new(
                                col,
                                format!(
                                    "invalid escape \"\\{other}\" in double-quoted string (valid: \\\" \\\\ \\n \\t \\r \\xHH \\uHHHH ...; use a backtick string for regular expressions)"
                                ),
                            ))
                        }
                    };
                    out.push(c);
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// Value of `n` digits in `radix` following an escape introduced at column `col`.
    fn escape_digits(&mut self, col: usize, n: usize, radix: u32) -> Result<u32, RuleError> {
        let mut v: u32 = 0;
        for _ in 0..n {
            let d = self.peek_char().and_then(|c| c.to_digit(radix)).ok_or_else(|| {
                RuleError::new(col, format!("invalid escape in double-quoted string: expected {n} base-{radix} digits"))
            })?;
            self.bump();
            v = v * radix + d;
        }
        Ok(v)
    }
}

/// Go's `\xHH` and octal escapes denote bytes; only ASCII ones stand alone as UTF-8.
fn ascii_escape(col: usize, v: u32) -> Result<char, RuleError> {
    char::from_u32(v).filter(char::is_ascii).ok_or_else(|| {
        RuleError::new(col, "byte escape above 0x7f is not supported (use \\u for non-ASCII characters)")
    })
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/// Deepest nesting of parentheses and `!` accepted (keeps recursion bounded).
const MAX_DEPTH: usize = 128;

const HTTP_MATCHERS: &str =
    "Host, HostRegexp, Path, PathPrefix, PathRegexp, Method, Header, HeaderRegexp, Query, QueryRegexp, ClientIP";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    HostRegexp,
    Path,
    PathPrefix,
    PathRegexp,
    Method,
    Header,
    HeaderRegexp,
    Query,
    QueryRegexp,
    ClientIp,
    HostSni,
    HostSniRegexp,
    Alpn,
}

const KINDS: [(Kind, &str); 11] = [
    (Kind::Host, "Host"),
    (Kind::HostRegexp, "HostRegexp"),
    (Kind::Path, "Path"),
    (Kind::PathPrefix, "PathPrefix"),
    (Kind::PathRegexp, "PathRegexp"),
    (Kind::Method, "Method"),
    (Kind::Header, "Header"),
    (Kind::HeaderRegexp, "HeaderRegexp"),
    (Kind::Query, "Query"),
    (Kind::QueryRegexp, "QueryRegexp"),
    (Kind::ClientIp, "ClientIP"),
];

const TCP_ONLY: [&str; 3] = ["HostSNI", "HostSNIRegexp", "ALPN"];

const TCP_KINDS: [(Kind, &str); 4] = [
    (Kind::HostSni, "HostSNI"),
    (Kind::HostSniRegexp, "HostSNIRegexp"),
    (Kind::ClientIp, "ClientIP"),
    (Kind::Alpn, "ALPN"),
];

const TCP_MATCHERS: &str = "HostSNI, HostSNIRegexp, ClientIP, ALPN";

/// Traefik registers each matcher as `Name`, `name`, `NAME` and `Name` title-cased
/// after lower-casing (`Pathprefix`).
fn spelling_matches(written: &str, canonical: &str) -> bool {
    if written == canonical {
        return true;
    }
    if !written.eq_ignore_ascii_case(canonical) {
        return false;
    }
    let mut rest = written.bytes();
    let first_ok = rest.next().is_some_and(|b| b.is_ascii_uppercase());
    let lower = written.bytes().all(|b| !b.is_ascii_uppercase());
    let upper = written.bytes().all(|b| !b.is_ascii_lowercase());
    let title = first_ok && rest.all(|b| !b.is_ascii_uppercase());
    lower || upper || title
}

impl Kind {
    fn name(self) -> &'static str {
        KINDS.iter().chain(TCP_KINDS.iter()).find(|(k, _)| *k == self).map_or("?", |(_, n)| n)
    }

    fn resolve_tcp(name: &str, col: usize) -> Result<Kind, RuleError> {
        if let Some((k, _)) = TCP_KINDS.iter().find(|(_, n)| spelling_matches(name, n)) {
            return Ok(*k);
        }
        if let Some((_, n)) = KINDS.iter().find(|(_, n)| spelling_matches(name, n)) {
            return Err(RuleError::new(col, format!("{n} is an HTTP matcher; a TCP router rule takes {TCP_MATCHERS}")));
        }
        Err(RuleError::new(col, format!("unknown matcher \"{name}\" (expected one of {TCP_MATCHERS})")))
    }

    /// Accepted argument counts (min, max).
    fn arity(self) -> (usize, usize) {
        match self {
            Kind::Header | Kind::HeaderRegexp => (2, 2),
            Kind::Query | Kind::QueryRegexp => (1, 2),
            _ => (1, 1),
        }
    }

    fn resolve(name: &str, col: usize) -> Result<Kind, RuleError> {
        if let Some((k, _)) = KINDS.iter().find(|(_, n)| spelling_matches(name, n)) {
            return Ok(*k);
        }
        if let Some(tcp) = TCP_ONLY.iter().find(|n| spelling_matches(name, n)) {
            return Err(RuleError::new(
                col,
                format!("{tcp} is a TCP-only matcher; it cannot be used in an HTTP router rule"),
            ));
        }
        let v2_hint = match name {
            "Headers" => Some("Header"),
            "HeadersRegexp" => Some("HeaderRegexp"),
            "HostHeader" => Some("Host"),
            _ => None,
        };
        if let Some(v3) = v2_hint {
            return Err(RuleError::new(
                col,
                format!("unknown matcher \"{name}\" (this is Traefik v2 syntax; use {v3} in v3)"),
            ));
        }
        if let Some((_, n)) = KINDS.iter().find(|(_, n)| n.eq_ignore_ascii_case(name)) {
            return Err(RuleError::new(col, format!("unknown matcher \"{name}\" (did you mean {n}?)")));
        }
        Err(RuleError::new(col, format!("unknown matcher \"{name}\" (expected one of {HTTP_MATCHERS})")))
    }
}

struct Parser<'s> {
    lexer: Lexer<'s>,
    peeked: Option<Token<'s>>,
    /// A TCP router rule (its own matchers).
    tcp: bool,
}

impl<'s> Parser<'s> {
    fn next(&mut self) -> Result<Token<'s>, RuleError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lexer.next_token(),
        }
    }

    fn peek(&mut self) -> Result<&Token<'s>, RuleError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lexer.next_token()?);
        }
        match &self.peeked {
            Some(t) => Ok(t),
            None => Err(RuleError::new(self.lexer.col, "internal parser error")),
        }
    }

    fn parse_or(&mut self, depth: usize) -> Result<Expr, RuleError> {
        let first = self.parse_and(depth)?;
        if self.peek()?.kind != Tok::OrOr {
            return Ok(first);
        }
        let mut items = Vec::with_capacity(2);
        push_flat(&mut items, first, true);
        while self.peek()?.kind == Tok::OrOr {
            self.next()?;
            let e = self.parse_and(depth)?;
            push_flat(&mut items, e, true);
        }
        Ok(Expr::Or(items))
    }

    fn parse_and(&mut self, depth: usize) -> Result<Expr, RuleError> {
        let first = self.parse_unary(depth)?;
        if self.peek()?.kind != Tok::AndAnd {
            return Ok(first);
        }
        let mut items = Vec::with_capacity(2);
        push_flat(&mut items, first, false);
        while self.peek()?.kind == Tok::AndAnd {
            self.next()?;
            let e = self.parse_unary(depth)?;
            push_flat(&mut items, e, false);
        }
        Ok(Expr::And(items))
    }

    fn parse_unary(&mut self, depth: usize) -> Result<Expr, RuleError> {
        let tok = self.peek()?;
        if tok.kind != Tok::Bang {
            return self.parse_primary(depth);
        }
        let col = tok.col;
        self.next()?;
        if depth >= MAX_DEPTH {
            return Err(too_deep(col));
        }
        Ok(match self.parse_unary(depth + 1)? {
            Expr::Not(inner) => *inner,
            e => Expr::Not(Box::new(e)),
        })
    }

    fn parse_primary(&mut self, depth: usize) -> Result<Expr, RuleError> {
        let tok = self.next()?;
        match tok.kind {
            Tok::LParen => {
                if depth >= MAX_DEPTH {
                    return Err(too_deep(tok.col));
                }
                let inner = self.parse_or(depth + 1)?;
                let close = self.next()?;
                if close.kind != Tok::RParen {
                    return Err(RuleError::new(
                        close.col,
                        format!("expected \")\" to close \"(\" at column {}, found {}", tok.col, close.kind.describe()),
                    ));
                }
                Ok(inner)
            }
            Tok::Ident(name) => self.parse_call(name, tok.col),
            other => Err(RuleError::new(
                tok.col,
                format!("expected a matcher such as Host(`example.com`), \"!\" or \"(\", found {}", other.describe()),
            )),
        }
    }

    fn parse_call(&mut self, name: &str, name_col: usize) -> Result<Expr, RuleError> {
        let kind = if self.tcp { Kind::resolve_tcp(name, name_col)? } else { Kind::resolve(name, name_col)? };
        let kname = kind.name();
        let open = self.next()?;
        if open.kind != Tok::LParen {
            return Err(RuleError::new(
                open.col,
                format!("expected \"(\" after matcher name {kname}, found {}", open.kind.describe()),
            ));
        }
        let args_col = self.peek()?.col;
        let mut args: Vec<(String, usize)> = Vec::with_capacity(2);
        loop {
            let tok = self.next()?;
            match tok.kind {
                Tok::RParen => break,
                Tok::Str(s) => args.push((s, tok.col)),
                other => {
                    return Err(RuleError::new(
                        tok.col,
                        format!(
                            "expected a string argument (in backticks or double quotes) for {kname}, found {}",
                            other.describe()
                        ),
                    ))
                }
            }
            let sep = self.next()?;
            match sep.kind {
                Tok::Comma => {}
                Tok::RParen => break,
                Tok::Str(_) => {
                    return Err(RuleError::new(
                        sep.col,
                        format!("expected \",\" between arguments of {kname}, found a string"),
                    ))
                }
                other => {
                    return Err(RuleError::new(
                        sep.col,
                        format!("expected \")\" after arguments of {kname}, found {}", other.describe()),
                    ))
                }
            }
        }
        let (min, max) = kind.arity();
        if args.len() < min || args.len() > max {
            let want = match (min, max) {
                (1, 1) => "1 argument".to_string(),
                (a, b) if a == b => format!("{a} arguments"),
                (a, b) => format!("{a} or {b} arguments"),
            };
            let mut msg = format!("{kname} takes {want}, got {}", args.len());
            if kind == Kind::Host && args.len() > 1 {
                msg.push_str(" (Traefik v3: combine hosts with ||, e.g. Host(`a.com`) || Host(`b.com`))");
            }
            return Err(RuleError::new(args_col, msg));
        }
        build_matcher(kind, args).map(Expr::Match)
    }
}

fn too_deep(col: usize) -> RuleError {
    RuleError::new(col, format!("rule is nested too deeply (more than {MAX_DEPTH} levels of parentheses or \"!\")"))
}

/// Append `e` to an `Or` (`or == true`) or `And` list, flattening a nested list of the same kind.
fn push_flat(items: &mut Vec<Expr>, e: Expr, or: bool) {
    match e {
        Expr::Or(inner) if or => items.extend(inner),
        Expr::And(inner) if !or => items.extend(inner),
        e => items.push(e),
    }
}

fn compile_regex(kname: &str, pattern: &str, col: usize) -> Result<Regex, RuleError> {
    Regex::new(pattern).map_err(|err| {
        let text = err.to_string();
        let detail = text.lines().find_map(|l| l.strip_prefix("error: ")).unwrap_or(&text).trim();
        let mut msg = format!("invalid regular expression {pattern:?} for {kname}: {detail}");
        if pattern.contains('{') && pattern.contains(':') {
            msg.push_str(" (Traefik v3 regexps have no {name:pattern} placeholders)");
        }
        RuleError::new(col, msg)
    })
}

fn header_name(kname: &str, name: &str, col: usize) -> Result<HeaderName, RuleError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| RuleError::new(col, format!("invalid header name {name:?} for {kname}")))
}

fn build_matcher(kind: Kind, args: Vec<(String, usize)>) -> Result<Matcher, RuleError> {
    let kname = kind.name();
    let mut args = args.into_iter();
    let (a0, c0) = args.next().unwrap_or_default();
    let second = args.next();
    let m = match kind {
        Kind::Host | Kind::HostRegexp if !a0.is_ascii() => {
            return Err(RuleError::new(
                c0,
                format!(
                    "invalid value {a0:?} for {kname}: non-ASCII characters are not allowed (use the punycode form)"
                ),
            ))
        }
        Kind::Host => Matcher::Host(a0.to_ascii_lowercase().into()),
        Kind::HostRegexp => Matcher::HostRegexp(compile_regex(kname, &a0, c0)?),
        Kind::Path | Kind::PathPrefix if !a0.starts_with('/') => {
            return Err(RuleError::new(c0, format!("invalid value {a0:?} for {kname}: a path must start with \"/\"")))
        }
        Kind::Path => Matcher::Path(a0.into()),
        Kind::PathPrefix => Matcher::PathPrefix(a0.into()),
        Kind::PathRegexp => Matcher::PathRegexp(compile_regex(kname, &a0, c0)?),
        Kind::Method => Matcher::Method(a0.to_uppercase().into()),
        Kind::Header | Kind::HeaderRegexp => {
            let name = header_name(kname, &a0, c0)?;
            let (value, c1) = second.unwrap_or_default();
            if kind == Kind::Header {
                Matcher::Header(name, value.into())
            } else {
                Matcher::HeaderRegexp(name, compile_regex(kname, &value, c1)?)
            }
        }
        Kind::Query => Matcher::Query(a0.into(), second.unwrap_or_default().0.into()),
        Kind::QueryRegexp => match second {
            Some((value, c1)) => Matcher::QueryRegexp(a0.into(), compile_regex(kname, &value, c1)?),
            None => Matcher::Query(a0.into(), "".into()),
        },
        Kind::HostSni if !a0.is_ascii() => {
            return Err(RuleError::new(c0, format!("invalid value {a0:?} for HostSNI: use the punycode form")))
        }
        Kind::HostSni if a0.is_empty() => {
            return Err(RuleError::new(c0, "HostSNI needs a name, or `*` for every connection"))
        }
        Kind::HostSni => Matcher::HostSni(a0.to_ascii_lowercase().into()),
        Kind::HostSniRegexp => Matcher::HostSniRegexp(compile_regex(kname, &a0, c0)?),
        Kind::Alpn if a0 == "acme-tls/1" => {
            return Err(RuleError::new(c0, "ALPN(`acme-tls/1`) is reserved for ACME tls-alpn-01 validations"))
        }
        Kind::Alpn if a0.is_empty() => return Err(RuleError::new(c0, "ALPN needs a protocol name, e.g. `h2`")),
        Kind::Alpn => Matcher::Alpn(a0.as_bytes().into()),
        Kind::ClientIp => Matcher::ClientIp(
            IpNet::parse(&a0)
                .map_err(|why| RuleError::new(c0, format!("invalid IP address or CIDR {a0:?} for ClientIP: {why}")))?,
        ),
    };
    Ok(m)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

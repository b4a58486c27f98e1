//! Traefik v3 rule language: parser, compiled matcher (STUB, being written).

use std::net::IpAddr;

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

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {}

impl Rule {
    /// Parse and compile a rule.
    pub fn parse(_src: &str) -> Result<Rule, RuleError> {
        Ok(Rule {})
    }

    /// Whether the request matches.
    pub fn matches(&self, _req: &RequestInfo<'_>) -> bool {
        true
    }
}

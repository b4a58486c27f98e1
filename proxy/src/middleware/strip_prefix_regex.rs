//! `stripPrefixRegex`: remove from the request path the first match of the first
//! pattern that matches at the start of the path, and record what was removed in
//! `X-Forwarded-Prefix`, as Traefik does. Patterns are compiled once, at build time.

use pingora_proxy::Session;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::{options, Apply, BuildCx, BuildError, MwState, Verdict};

/// Header carrying the stripped prefix.
pub const FORWARDED_PREFIX: &str = "x-forwarded-prefix";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    regex: Vec<String>,
}

/// A compiled `stripPrefixRegex`.
#[derive(Debug)]
pub struct StripPrefixRegex {
    patterns: Vec<Regex>,
}

/// Build from Traefik's `stripPrefixRegex` options.
pub fn build(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    let o: Options = options("stripPrefixRegex", config)?;
    Ok(Box::new(StripPrefixRegex::new(&o.regex)?))
}

impl StripPrefixRegex {
    /// Compile `patterns` (Traefik's `regex` list).
    pub fn new(patterns: &[String]) -> Result<StripPrefixRegex, BuildError> {
        let patterns = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Regex::new(p).map_err(|e| BuildError::new(format!("stripPrefixRegex.regex[{i}]"), e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(StripPrefixRegex { patterns })
    }

    /// The new path and the removed prefix, when a pattern's match is a non-empty
    /// prefix of `path` (Traefik: the first such pattern wins).
    pub fn strip<'p>(&self, path: &'p str) -> Option<(String, &'p str)> {
        for re in &self.patterns {
            let Some(m) = re.find(path) else { continue };
            if m.as_str().is_empty() || !path.starts_with(m.as_str()) {
                continue;
            }
            let prefix = m.as_str();
            let rest = &path[prefix.len()..];
            let rest = if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") };
            return Some((rest, &path[..prefix.len()]));
        }
        None
    }
}

#[async_trait::async_trait]
impl Apply for StripPrefixRegex {
    async fn request(
        &self,
        session: &mut Session,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        let stripped = self.strip(session.req_header().uri.path()).map(|(rest, prefix)| (rest, prefix.to_string()));
        if let Some((rest, prefix)) = stripped {
            super::replace_path::set_path(session, &rest, None)?;
            session.req_header_mut().append_header(FORWARDED_PREFIX, prefix)?;
        }
        Ok(Verdict::Next)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mw(p: &[&str]) -> StripPrefixRegex {
        StripPrefixRegex::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn strips_the_matched_prefix_and_keeps_a_leading_slash() {
        let m = mw(&["/foo/[a-z0-9]+/[0-9]+/"]);
        assert_eq!(m.strip("/foo/abc/12/bar"), Some(("/bar".to_string(), "/foo/abc/12/")));
        let m = mw(&["/api"]);
        assert_eq!(m.strip("/apiv2/x"), Some(("/v2/x".to_string(), "/api")));
        assert_eq!(m.strip("/api"), Some(("/".to_string(), "/api")));
    }

    #[test]
    fn a_match_that_is_not_a_prefix_or_is_empty_strips_nothing() {
        assert_eq!(mw(&["/b"]).strip("/a/b/c"), None);
        assert_eq!(mw(&["x*"]).strip("/a"), None);
        // The first pattern that strips wins.
        assert_eq!(mw(&["/zz", "/a/", "/a/b"]).strip("/a/b/c").unwrap().1, "/a/");
    }

    #[test]
    fn a_bad_pattern_names_its_index() {
        let e = StripPrefixRegex::new(&["ok".into(), "(".into()]).unwrap_err();
        assert_eq!(e.field, "stripPrefixRegex.regex[1]");
    }
}

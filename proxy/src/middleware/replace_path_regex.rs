//! `replacePathRegex`: rewrite the request path with a regular expression and a
//! replacement (`$1`, `${name}` groups), keeping the original in `X-Replaced-Path`, as
//! Traefik does. The query is untouched. The pattern is compiled once, at build time.

use pingora_proxy::Session;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::replace_path::REPLACED_PATH;
use super::{options, Apply, BuildCx, BuildError, MwState, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    regex: String,
    #[serde(default)]
    replacement: String,
}

/// A compiled `replacePathRegex`.
#[derive(Debug)]
pub struct ReplacePathRegex {
    regex: Regex,
    replacement: String,
}

/// Build from Traefik's `replacePathRegex` options.
pub fn build(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    let o: Options = options("replacePathRegex", config)?;
    let regex = Regex::new(&o.regex).map_err(|e| BuildError::new("replacePathRegex.regex", e.to_string()))?;
    Ok(Box::new(ReplacePathRegex { regex, replacement: o.replacement }))
}

impl ReplacePathRegex {
    /// The rewritten path, when the pattern matches and the replacement is not empty
    /// (Traefik leaves the request alone otherwise). Every match is replaced.
    pub fn rewrite(&self, path: &str) -> Option<String> {
        if self.replacement.is_empty() || !self.regex.is_match(path) {
            return None;
        }
        let new = self.regex.replace_all(path, self.replacement.as_str());
        Some(if new.starts_with('/') { new.into_owned() } else { format!("/{new}") })
    }
}

#[async_trait::async_trait]
impl Apply for ReplacePathRegex {
    async fn request(
        &self,
        session: &mut Session,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        if let Some(path) = self.rewrite(session.req_header().uri.path()) {
            super::replace_path::set_path(session, &path, Some(REPLACED_PATH))?;
        }
        Ok(Verdict::Next)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mw(re: &str, rep: &str) -> ReplacePathRegex {
        ReplacePathRegex { regex: Regex::new(re).unwrap(), replacement: rep.into() }
    }

    #[test]
    fn groups_are_substituted() {
        assert_eq!(mw("^/foo/(.*)", "/bar/$1").rewrite("/foo/a/b"), Some("/bar/a/b".into()));
        assert_eq!(mw("^/(?P<v>v[0-9])/(.*)", "/${2}/${v}").rewrite("/v1/x"), Some("/x/v1".into()));
        assert_eq!(mw("a", "b").rewrite("/a/a"), Some("/b/b".into()));
    }

    #[test]
    fn no_match_or_empty_replacement_leaves_the_path() {
        assert_eq!(mw("^/foo", "/bar").rewrite("/baz"), None);
        assert_eq!(mw("^/foo", "").rewrite("/foo"), None);
    }
}

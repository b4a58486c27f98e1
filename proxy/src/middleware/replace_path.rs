//! `replacePath`: replace the request's path (the query stays), keeping the original in
//! `X-Replaced-Path`, as Traefik does. It runs in the request phase, so middlewares after
//! it and the upstream see the new path.

use pingora_proxy::Session;
use serde::Deserialize;
use serde_json::Value;

use super::{options, Apply, BuildCx, BuildError, MwState, Verdict};

/// Header carrying the path before replacement.
pub const REPLACED_PATH: &str = "x-replaced-path";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    path: String,
}

/// A compiled `replacePath`.
#[derive(Debug)]
pub struct ReplacePath {
    path: String,
}

/// Build from Traefik's `replacePath` options.
pub fn build(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    let o: Options = options("replacePath", config)?;
    if !o.path.starts_with('/') {
        return Err(BuildError::new("replacePath.path", format!("{:?} must start with '/'", o.path)));
    }
    http::uri::PathAndQuery::try_from(o.path.as_str())
        .map_err(|e| BuildError::new("replacePath.path", format!("{:?} is not a valid path: {e}", o.path)))?;
    Ok(Box::new(ReplacePath { path: o.path }))
}

/// Set `session`'s request path to `path` (keeping the query), recording the old one in
/// `header` when given.
pub fn set_path(session: &mut Session, path: &str, header: Option<&'static str>) -> pingora_core::Result<()> {
    let req = session.req_header_mut();
    let old = req.uri.path().to_string();
    let pq = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let uri = http::Uri::builder().path_and_query(pq).build().map_err(|e| {
        pingora_core::Error::because(pingora_core::ErrorType::InternalError, "rewritten path is invalid", e)
    })?;
    if let Some(h) = header {
        req.insert_header(h, old)?;
    }
    req.set_uri(uri);
    Ok(())
}

#[async_trait::async_trait]
impl Apply for ReplacePath {
    async fn request(
        &self,
        session: &mut Session,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        set_path(session, &self.path, Some(REPLACED_PATH))?;
        Ok(Verdict::Next)
    }
}

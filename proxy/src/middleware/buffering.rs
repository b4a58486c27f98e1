//! `buffering`: limit the size of request and response bodies, as Traefik does. A
//! request whose `Content-Length` says more than `maxRequestBodyBytes` is answered 413
//! before any upstream is contacted; a request body without a length is held back
//! (buffered in memory) as it arrives, so the upstream never receives a partial body:
//! once it exceeds the limit, the client gets 413. A response whose `Content-Length`
//! exceeds `maxResponseBodyBytes` becomes a 500 (its body is dropped); a streamed one
//! that grows past it is cut off (its head is already on its way to the client).
//!
//! Constellation never writes bodies to disk: `memRequestBodyBytes` and
//! `memResponseBodyBytes` are checked but bodies are held in memory up to the maximum.

use bytes::{Bytes, BytesMut};
use http::header;
use pingora_core::{Error, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::Deserialize;
use serde_json::Value;

use super::{options, Apply, BuildCx, BuildError, MwState, Reply, Verdict};

/// Traefik's default for the in-memory part of a body.
pub const DEFAULT_MEM_BYTES: i64 = 1_048_576;

/// The body of the 500 that replaces a too-large response.
const TOO_LARGE_RESPONSE: &str = "Internal Server Error";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Options {
    #[serde(default)]
    max_request_body_bytes: i64,
    #[serde(default)]
    mem_request_body_bytes: Option<i64>,
    #[serde(default)]
    max_response_body_bytes: i64,
    #[serde(default)]
    mem_response_body_bytes: Option<i64>,
    #[serde(default)]
    retry_expression: String,
}

/// A compiled `buffering`.
#[derive(Debug)]
pub struct Buffering {
    /// 0: no limit.
    max_request: u64,
    /// 0: no limit.
    max_response: u64,
}

fn non_negative(field: &str, v: i64) -> Result<u64, BuildError> {
    u64::try_from(v).map_err(|_| BuildError::new(format!("buffering.{field}"), "must not be negative"))
}

/// Build from Traefik's `buffering` options.
pub fn build(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    let o: Options = options("buffering", config)?;
    if !o.retry_expression.trim().is_empty() {
        return Err(BuildError::new(
            "buffering.retryExpression",
            "not supported: Constellation already retries idempotent requests on another server (see docs/failover.md)",
        ));
    }
    let max_request = non_negative("maxRequestBodyBytes", o.max_request_body_bytes)?;
    let max_response = non_negative("maxResponseBodyBytes", o.max_response_body_bytes)?;
    non_negative("memRequestBodyBytes", o.mem_request_body_bytes.unwrap_or(DEFAULT_MEM_BYTES))?;
    non_negative("memResponseBodyBytes", o.mem_response_body_bytes.unwrap_or(DEFAULT_MEM_BYTES))?;
    Ok(Box::new(Buffering { max_request, max_response }))
}

/// The request body held back so far.
#[derive(Default)]
struct Held(BytesMut);

/// Response state: bytes seen, and whether the body is being replaced by the 500.
struct Response {
    seen: u64,
    replaced: bool,
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

// The middleware's slot holds the request's `Held` until the body is sent, then the
// response's state.
#[async_trait::async_trait]
impl Apply for Buffering {
    async fn request(
        &self,
        session: &mut Session,
        _state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        if self.max_request > 0 && content_length(&session.req_header().headers).is_some_and(|l| l > self.max_request) {
            return Ok(Verdict::Respond(Reply::text(413, "Request Entity Too Large")));
        }
        Ok(Verdict::Next)
    }

    fn wants_request_body(&self) -> bool {
        self.max_request > 0
    }

    async fn request_body(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        state: &mut MwState,
        index: usize,
    ) -> pingora_core::Result<()> {
        // A declared length was checked in the request phase; only bodies of unknown
        // length are held back.
        if content_length(&session.req_header().headers).is_some() {
            return Ok(());
        }
        if state.get::<Held>(index).is_none() {
            state.put(index, Held::default());
        }
        let Some(Held(held)) = state.get_mut::<Held>(index) else { return Ok(()) };
        if let Some(chunk) = body.take() {
            if held.len() as u64 + chunk.len() as u64 > self.max_request {
                held.clear();
                return Err(Error::explain(ErrorType::HTTPStatus(413), "request body larger than maxRequestBodyBytes"));
            }
            held.extend_from_slice(&chunk);
        }
        // An empty chunk holds the body back; `None` would end it upstream.
        *body = Some(if end { std::mem::take(held).freeze() } else { Bytes::new() });
        Ok(())
    }

    async fn response(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        state: &mut MwState,
        index: usize,
    ) -> pingora_core::Result<()> {
        if self.max_response == 0 {
            return Ok(());
        }
        let replaced = content_length(&resp.headers).is_some_and(|l| l > self.max_response);
        if replaced {
            resp.set_status(500)?;
            for h in [header::CONTENT_ENCODING, header::TRANSFER_ENCODING, header::ETAG, header::CONTENT_RANGE] {
                resp.remove_header(&h);
            }
            resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
            resp.insert_header(header::CONTENT_LENGTH, TOO_LARGE_RESPONSE.len().to_string())?;
        }
        state.put(index, Response { seen: 0, replaced });
        Ok(())
    }

    fn wants_body(&self) -> bool {
        self.max_response > 0
    }

    fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        state: &mut MwState,
        index: usize,
    ) -> pingora_core::Result<()> {
        let Some(r) = state.get_mut::<Response>(index) else { return Ok(()) };
        if r.replaced {
            *body = if end { Some(Bytes::from_static(TOO_LARGE_RESPONSE.as_bytes())) } else { None };
            return Ok(());
        }
        r.seen += body.as_ref().map_or(0, |b| b.len() as u64);
        if r.seen > self.max_response {
            return Err(Error::explain(ErrorType::InternalError, "response body larger than maxResponseBodyBytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let cfg = crate::DynamicConfig::default();
        let addresses = crate::AddressMap::new();
        let settings = crate::settings::ProxySettings::default();
        let files = crate::transport::TransportFiles::default();
        let cx = BuildCx { name: "b", settings: &settings, files: &files, cfg: &cfg, addresses: &addresses };
        let err = |v: Value| build(&v, &cx).err().map(|e| e.field);
        assert_eq!(
            err(serde_json::json!({"retryExpression": "IsNetworkError() && Attempts() < 2"})).as_deref(),
            Some("buffering.retryExpression")
        );
        assert_eq!(
            err(serde_json::json!({"maxRequestBodyBytes": -1})).as_deref(),
            Some("buffering.maxRequestBodyBytes")
        );
        assert_eq!(
            err(serde_json::json!({"memResponseBodyBytes": -5})).as_deref(),
            Some("buffering.memResponseBodyBytes")
        );
        assert_eq!(
            err(serde_json::json!({"maxRequestBodyBytes": "x"})).as_deref(),
            Some("buffering.maxRequestBodyBytes")
        );
        assert!(build(&serde_json::json!({"maxRequestBodyBytes": 10, "maxResponseBodyBytes": 10}), &cx).is_ok());
    }
}

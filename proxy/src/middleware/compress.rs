//! `compress`: compress responses with gzip, brotli or zstd, chosen from the request's
//! `Accept-Encoding` (highest q-value first; on a tie, the order of `encodings`, as in
//! Traefik). A response is compressed only when the request is not `HEAD`, the response
//! has a body (not 1xx/204/304/206), no `Content-Encoding` yet, a content type the
//! options allow, and a known length of at least `minResponseBodyBytes` (a response of
//! unknown length is compressed: its head goes out before the body is seen). The
//! compressed body is streamed (chunked on HTTP/1.1) without `Content-Length`, with
//! `Vary: Accept-Encoding`. The per-request encoder is kept in [`MwState`].

use bytes::Bytes;
use http::header;
use pingora_core::protocols::http::compression::{Algorithm, Encode};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::Deserialize;
use serde_json::Value;

use super::{options, Apply, BuildCx, BuildError, MwState};

/// Traefik's default minimum body size for compression.
pub const DEFAULT_MIN_BYTES: u64 = 1024;

/// Compression level used for every encoding (a fast, reasonable default).
const LEVEL: u32 = 5;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Options {
    #[serde(default)]
    excluded_content_types: Vec<String>,
    #[serde(default)]
    included_content_types: Vec<String>,
    #[serde(default)]
    min_response_body_bytes: i64,
    #[serde(default)]
    encodings: Option<Vec<String>>,
    #[serde(default)]
    default_encoding: String,
}

/// A content coding the middleware can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip`.
    Gzip,
    /// `br`.
    Brotli,
    /// `zstd`.
    Zstd,
}

impl Coding {
    fn parse(s: &str) -> Option<Coding> {
        [Coding::Gzip, Coding::Brotli, Coding::Zstd].into_iter().find(|c| c.as_str().eq_ignore_ascii_case(s))
    }

    /// The token in `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Coding::Gzip => Algorithm::Gzip,
            Coding::Brotli => Algorithm::Brotli,
            Coding::Zstd => Algorithm::Zstd,
        }
    }
}

/// A compiled `compress`.
#[derive(Debug)]
pub struct Compress {
    excludes: Vec<String>,
    includes: Vec<String>,
    min_bytes: u64,
    encodings: Vec<Coding>,
    default_encoding: Option<Coding>,
}

/// The media type of a `Content-Type` value: before any `;`, lowercase, no whitespace.
fn media_type(v: &str) -> String {
    let t = v.split(';').next().unwrap_or("");
    t.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_lowercase).collect()
}

fn content_types(field: &str, list: &[String]) -> Result<Vec<String>, BuildError> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let t = media_type(v);
            match t.split_once('/') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok(t),
                _ => Err(BuildError::new(format!("compress.{field}[{i}]"), format!("{v:?} is not a media type"))),
            }
        })
        .collect()
}

/// Build from Traefik's `compress` options.
pub fn build(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    let config =
        if config.is_null() || config.as_bool() == Some(true) { &Value::Object(Default::default()) } else { config };
    let o: Options = options("compress", config)?;
    if !o.excluded_content_types.is_empty() && !o.included_content_types.is_empty() {
        return Err(BuildError::new(
            "compress.includedContentTypes",
            "excludedContentTypes and includedContentTypes are mutually exclusive",
        ));
    }
    // gRPC is never compressed by this middleware, as in Traefik.
    let mut excludes = vec!["application/grpc".to_string()];
    excludes.extend(content_types("excludedContentTypes", &o.excluded_content_types)?);
    let includes = content_types("includedContentTypes", &o.included_content_types)?;
    if o.min_response_body_bytes < 0 {
        return Err(BuildError::new("compress.minResponseBodyBytes", "must not be negative"));
    }
    let min_bytes = if o.min_response_body_bytes == 0 { DEFAULT_MIN_BYTES } else { o.min_response_body_bytes as u64 };
    let names = o.encodings.unwrap_or_else(|| vec!["gzip".into(), "br".into(), "zstd".into()]);
    if names.is_empty() {
        return Err(BuildError::new("compress.encodings", "at least one encoding must be given"));
    }
    let mut encodings = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let c = Coding::parse(n).filter(|c| c.as_str() == n).ok_or_else(|| {
            BuildError::new(format!("compress.encodings[{i}]"), format!("unsupported encoding {n:?} (gzip, br, zstd)"))
        })?;
        if !encodings.contains(&c) {
            encodings.push(c);
        }
    }
    let default_encoding = match o.default_encoding.as_str() {
        "" => None,
        d => match Coding::parse(d).filter(|c| c.as_str() == d && encodings.contains(c)) {
            Some(c) => Some(c),
            None => {
                return Err(BuildError::new("compress.defaultEncoding", format!("{d:?} is not one of the encodings")))
            }
        },
    };
    Ok(Box::new(Compress { excludes, includes, min_bytes, encodings, default_encoding }))
}

impl Compress {
    /// The coding to use for a request with these `Accept-Encoding` values (`None` in
    /// the iterator means the header is absent); `None` means do not compress.
    pub fn choose<'a>(&self, mut accept: impl Iterator<Item = &'a [u8]>) -> Option<Coding> {
        let Some(first) = accept.next() else { return self.default_encoding };
        // (q in thousandths, priority, coding or None for identity).
        let mut best: Option<(u16, isize, Option<Coding>)> = None;
        let n = self.encodings.len() as isize;
        for line in std::iter::once(first).chain(accept) {
            let Ok(line) = std::str::from_utf8(line) else { continue };
            for part in line.split(',') {
                let mut it = part.split(';');
                let name = it.next().unwrap_or("").trim();
                if name.is_empty() {
                    continue;
                }
                let mut q = 1000u16;
                for p in it {
                    if let Some((k, v)) = p.split_once('=') {
                        if k.trim().eq_ignore_ascii_case("q") {
                            q = v.trim().parse::<f32>().map(|f| (f.clamp(0.0, 1.0) * 1000.0) as u16).unwrap_or(0);
                        }
                    }
                }
                if q == 0 {
                    continue;
                }
                let cand = if name == "*" {
                    (q, -1, Some(self.default_encoding.or(self.encodings.first().copied())))
                } else if name.eq_ignore_ascii_case("identity") {
                    (q, n, Some(None))
                } else {
                    match Coding::parse(name).and_then(|c| self.encodings.iter().position(|e| *e == c)) {
                        Some(p) => (q, p as isize, Some(Some(self.encodings[p]))),
                        None => (q, 0, None),
                    }
                };
                let (q, prio, Some(coding)) = cand else { continue };
                // Higher q wins; on a tie, the lower priority: the wildcard first, then
                // the order of `encodings`, identity last (Traefik's order).
                let better = best.is_none_or(|(bq, bp, _)| q > bq || (q == bq && prio < bp));
                if better {
                    best = Some((q, prio, coding));
                }
            }
        }
        best.and_then(|(_, _, c)| c)
    }

    fn type_allowed(&self, resp: &ResponseHeader) -> bool {
        let t = resp.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(media_type);
        if !self.includes.is_empty() {
            return t.is_some_and(|t| self.includes.contains(&t));
        }
        !t.is_some_and(|t| self.excludes.contains(&t))
    }
}

/// The per-request encoder: Pingora's for gzip and zstd; brotli through the crate
/// directly, since Pingora's brotli wrapper flushes but never ends the stream.
enum Encoder {
    Pingora(Box<dyn Encode + Send + Sync>),
    Brotli(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
}

impl Encoder {
    fn new(coding: Coding) -> Option<Encoder> {
        match coding {
            Coding::Brotli => {
                Some(Encoder::Brotli(Some(Box::new(brotli::CompressorWriter::new(Vec::new(), 4096, LEVEL, 22)))))
            }
            c => c.algorithm().compressor(LEVEL).map(Encoder::Pingora),
        }
    }

    fn encode(&mut self, input: &[u8], end: bool) -> pingora_core::Result<Bytes> {
        match self {
            Encoder::Pingora(e) => e.encode(input, end),
            Encoder::Brotli(slot) => {
                let err = |e: std::io::Error| {
                    pingora_core::Error::because(pingora_core::ErrorType::InternalError, "brotli compression", e)
                };
                let Some(w) = slot.as_mut() else { return Ok(Bytes::new()) };
                std::io::Write::write_all(w.as_mut(), input).map_err(err)?;
                if end {
                    let w = slot.take().map(|w| w.into_inner()).unwrap_or_default();
                    return Ok(Bytes::from(w));
                }
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
        }
    }
}

fn add_vary(resp: &mut ResponseHeader) -> pingora_core::Result<()> {
    let has = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("accept-encoding") || t.trim() == "*"))
    });
    if !has {
        resp.append_header(header::VARY, "Accept-Encoding")?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Apply for Compress {
    async fn response(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        state: &mut MwState,
        index: usize,
    ) -> pingora_core::Result<()> {
        let req = session.req_header();
        if req.method == http::Method::HEAD {
            return Ok(());
        }
        // Traefik also skips requests whose own Content-Type is excluded (event streams).
        if let Some(t) = req.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
            if self.excludes.contains(&media_type(t)) {
                return Ok(());
            }
        }
        let h2 = req.version == http::Version::HTTP_2;
        let Some(coding) = self.choose(req.headers.get_all(header::ACCEPT_ENCODING).iter().map(|v| v.as_bytes()))
        else {
            return Ok(());
        };
        let status = resp.status.as_u16();
        if status < 200 || status == 204 || status == 304 || status == 206 {
            return Ok(());
        }
        add_vary(resp)?;
        if resp.headers.contains_key(header::CONTENT_ENCODING) || resp.headers.contains_key(header::CONTENT_RANGE) {
            return Ok(());
        }
        if !self.type_allowed(resp) {
            return Ok(());
        }
        let len = resp.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if len.is_some_and(|l| l < self.min_bytes) {
            return Ok(());
        }
        let Some(enc) = Encoder::new(coding) else { return Ok(()) };
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.remove_header(&header::ACCEPT_RANGES);
        resp.insert_header(header::CONTENT_ENCODING, coding.as_str())?;
        if !h2 {
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        state.put(index, enc);
        Ok(())
    }

    fn wants_body(&self) -> bool {
        true
    }

    fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        state: &mut MwState,
        index: usize,
    ) -> pingora_core::Result<()> {
        let Some(enc) = state.get_mut::<Encoder>(index) else { return Ok(()) };
        let input = body.take().unwrap_or_default();
        let out = enc.encode(&input, end)?;
        // An empty chunk would end a chunked body early: send nothing until there is output.
        *body = if out.is_empty() { None } else { Some(out) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mw(encodings: &[&str], default: &str) -> Compress {
        Compress {
            excludes: vec![],
            includes: vec![],
            min_bytes: DEFAULT_MIN_BYTES,
            encodings: encodings.iter().filter_map(|e| Coding::parse(e)).collect(),
            default_encoding: Coding::parse(default),
        }
    }

    fn pick(m: &Compress, h: &[&str]) -> Option<&'static str> {
        m.choose(h.iter().map(|s| s.as_bytes())).map(Coding::as_str)
    }

    #[test]
    fn accept_encoding_negotiation() {
        let m = mw(&["gzip", "br", "zstd"], "");
        assert_eq!(pick(&m, &[]), None);
        assert_eq!(pick(&m, &[""]), None);
        assert_eq!(pick(&m, &["identity"]), None);
        assert_eq!(pick(&m, &["gzip"]), Some("gzip"));
        assert_eq!(pick(&m, &["GZIP"]), Some("gzip"));
        assert_eq!(pick(&m, &["br, gzip, zstd"]), Some("gzip"));
        assert_eq!(pick(&m, &["zstd, br"]), Some("br"));
        assert_eq!(pick(&m, &["gzip;q=0.5, zstd"]), Some("zstd"));
        assert_eq!(pick(&m, &["gzip;q=0, br;q=0.1"]), Some("br"));
        assert_eq!(pick(&m, &["*"]), Some("gzip"));
        assert_eq!(pick(&m, &["*;q=0.5, zstd"]), Some("zstd"));
        assert_eq!(pick(&m, &["deflate"]), None);
        assert_eq!(pick(&m, &["identity, gzip"]), Some("gzip"));
        assert_eq!(pick(&m, &["gzip;q=0.2, identity"]), None);
        let z = mw(&["zstd", "br"], "br");
        assert_eq!(pick(&z, &["gzip, br, zstd"]), Some("zstd"));
        assert_eq!(pick(&z, &[]), Some("br"));
        assert_eq!(pick(&z, &["*"]), Some("br"));
        assert_eq!(pick(&z, &["gzip"]), None);
    }

    #[test]
    fn media_types_are_normalised() {
        assert_eq!(media_type(" Text/HTML ; charset=utf-8"), "text/html");
    }

    #[test]
    fn bad_options_name_the_field() {
        let cfg = crate::DynamicConfig::default();
        let addresses = crate::AddressMap::new();
        let settings = crate::settings::ProxySettings::default();
        let files = crate::transport::TransportFiles::default();
        let cx = BuildCx { name: "c", settings: &settings, files: &files, cfg: &cfg, addresses: &addresses };
        let err = |v: Value| build(&v, &cx).err().map(|e| e.field);
        assert_eq!(err(serde_json::json!({"encodings": ["deflate"]})).as_deref(), Some("compress.encodings[0]"));
        assert_eq!(err(serde_json::json!({"encodings": []})).as_deref(), Some("compress.encodings"));
        assert_eq!(
            err(serde_json::json!({"encodings": ["gzip"], "defaultEncoding": "br"})).as_deref(),
            Some("compress.defaultEncoding")
        );
        assert_eq!(
            err(serde_json::json!({"excludedContentTypes": ["a/b"], "includedContentTypes": ["c/d"]})).as_deref(),
            Some("compress.includedContentTypes")
        );
        assert_eq!(
            err(serde_json::json!({"minResponseBodyBytes": -1})).as_deref(),
            Some("compress.minResponseBodyBytes")
        );
        assert_eq!(err(serde_json::json!({"bogus": 1})).as_deref(), Some("compress.bogus"));
        assert!(build(&serde_json::json!({}), &cx).is_ok());
    }
}

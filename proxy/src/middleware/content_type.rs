//! `contentType`: Traefik's switch for Content-Type detection. Constellation (Pingora)
//! never sniffs a response body, so the proxy never adds a `Content-Type` the upstream
//! did not send: `autoDetect: false` (Traefik v3's behaviour without the middleware) is
//! what happens anyway and is accepted as such. Turning detection on (`contentType: {}`
//! or `autoDetect: true`) would need the body before the head is sent; it is refused
//! rather than silently not done.

use serde::Deserialize;
use serde_json::Value;

use super::{options, Apply, BuildCx, BuildError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Options {
    auto_detect: Option<bool>,
}

/// A compiled `contentType` with detection off: it changes nothing.
#[derive(Debug)]
pub struct ContentType;

/// Build from Traefik's `contentType` options.
pub fn build(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    Ok(Box::new(compile(config)?))
}

/// Check the options: only detection off is applied.
fn compile(config: &Value) -> Result<ContentType, BuildError> {
    let empty = Value::Object(Default::default());
    let config = if config.is_null() { &empty } else { config };
    let o: Options = options("contentType", config)?;
    match o.auto_detect {
        Some(false) => Ok(ContentType),
        Some(true) => Err(BuildError::new(
            "contentType.autoDetect",
            "true is not supported: Constellation never sniffs response bodies for a Content-Type",
        )),
        None => Err(BuildError::new(
            "contentType",
            "Content-Type detection (contentType without autoDetect: false) is not supported: \
             Constellation never sniffs response bodies; set autoDetect: false or drop the middleware",
        )),
    }
}

#[async_trait::async_trait]
impl Apply for ContentType {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_detection_off_is_accepted() {
        assert!(compile(&serde_json::json!({"autoDetect": false})).is_ok());
        assert_eq!(compile(&serde_json::json!({"autoDetect": true})).unwrap_err().field, "contentType.autoDetect");
        assert_eq!(compile(&serde_json::json!({})).unwrap_err().field, "contentType");
        assert_eq!(compile(&Value::Null).unwrap_err().field, "contentType");
        assert!(compile(&serde_json::json!({"x": 1})).unwrap_err().message.contains("unknown field"));
    }
}

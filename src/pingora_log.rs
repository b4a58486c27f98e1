//! Pingora's log line that any client can cause at will, kept out of the error log.
//!
//! pingora-proxy 0.9.1 (`HttpProxy::handle_new_request`, target `pingora_proxy`) logs
//! `error!("Fail to proxy: {e}, downstream session type: {t}")` for every connection
//! that ends with an error before its request head is complete: a client closing or
//! resetting mid-headers, or a head read timing out. That happens before any
//! `ProxyHttp` hook runs, so the proxy cannot see it, and one client could flood the
//! log on demand. This layer recognises exactly that line (target, level, both message
//! fragments, a downstream error), drops the ERROR line, logs it again at debug under
//! the target `constellation::downstream`, and counts client disconnects in
//! `constellation_downstream_disconnects_total{stage="headers"}`. Every other line,
//! Pingora's included, passes unchanged.

use std::fmt;
use std::sync::OnceLock;

use prometheus::IntCounterVec;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Where disconnects are counted, once the agent has its metrics.
static DISCONNECTS: OnceLock<IntCounterVec> = OnceLock::new();

/// Count recognised disconnects into `counter` (label `stage`) from now on.
pub fn count_into(counter: IntCounterVec) {
    let _ = DISCONNECTS.set(counter);
}

/// The layer (install it in front of the formatter).
pub struct ClientNoise;

/// What the layer did with a line.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Not the line: pass it.
    Pass,
    /// The line, for a client that closed or reset mid-headers.
    Disconnect,
    /// The line, for another client-side failure (e.g. a head read timeout).
    ClientError,
}

#[derive(Default)]
struct Fields {
    target: Option<String>,
    message: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "log.target" => self.target = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

/// Classify one log line by its target and message.
fn verdict(target: &str, message: &str) -> Verdict {
    const PREFIX: &str = "Fail to proxy: Downstream ";
    if target != "pingora_proxy" || !message.contains(", downstream session type: ") {
        return Verdict::Pass;
    }
    let Some(rest) = message.strip_prefix(PREFIX) else { return Verdict::Pass };
    if rest.starts_with("ConnectionClosed ") || rest.starts_with("ReadError ") {
        Verdict::Disconnect
    } else {
        Verdict::ClientError
    }
}

impl<S: Subscriber> Layer<S> for ClientNoise {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Only ERROR lines from Pingora (bridged from the `log` crate, target "log", or
        // native) are looked at; everything else costs one comparison.
        if *meta.level() != Level::ERROR || !matches!(meta.target(), "log" | "pingora_proxy") {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let target = fields.target.as_deref().unwrap_or(meta.target());
        let v = verdict(target, &fields.message);
        if v == Verdict::Pass {
            return true;
        }
        if v == Verdict::Disconnect {
            if let Some(c) = DISCONNECTS.get() {
                c.with_label_values(&["headers"]).inc();
            }
        }
        tracing::debug!(target: "constellation::downstream", error = %fields.message, "client connection ended before its request head was complete");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_mid_headers_line_is_recognised() {
        let closed = "Fail to proxy: Downstream ConnectionClosed context: while reading request headers, bytes already read: 7, downstream session type: HTTP/1";
        let reset = "Fail to proxy: Downstream ReadError context: while reading request headers cause: Connection reset by peer (os error 104), downstream session type: HTTP/1";
        let timeout = "Fail to proxy: Downstream ReadTimedout context: timeout: 60s, downstream session type: HTTP/1";
        assert_eq!(verdict("pingora_proxy", closed), Verdict::Disconnect);
        assert_eq!(verdict("pingora_proxy", reset), Verdict::Disconnect);
        assert_eq!(verdict("pingora_proxy", timeout), Verdict::ClientError);
        // Another crate, or Pingora's other lines, pass.
        assert_eq!(verdict("pingora_core", closed), Verdict::Pass);
        assert_eq!(
            verdict(
                "pingora_proxy",
                "Fail to proxy: Upstream ConnectError, status: 502, tries: 1, retry: false, GET /"
            ),
            Verdict::Pass
        );
        assert_eq!(
            verdict("pingora_proxy", "failed to send error response to downstream: Downstream WriteError"),
            Verdict::Pass
        );
    }
}

//! The built-in welcome backend that the embedded default configuration routes to, so
//! a fresh `constellation agent` answers something useful on port 8080.

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

/// Answers every request with a short page naming the node.
pub struct Welcome {
    /// Node name shown on the page.
    pub node: String,
}

#[async_trait]
impl ServeHttp for Welcome {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let body = if path == "/healthz" {
            "ok\n".to_string()
        } else {
            format!(
                "Constellation is running on node {}.\n\
                 This page comes from the built-in welcome backend, reached through the\n\
                 SmartFailoverProxy. Point [routes] files at your own Traefik dynamic\n\
                 configuration to route real services; see `constellation config default`.\n",
                self.node
            )
        };
        let mut r = Response::new(body.into_bytes());
        let len = r.body().len();
        r.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
        r
    }
}

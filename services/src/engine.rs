//! The one way this workspace connects to a Docker engine: a unix socket path or
//! `unix://`/`tcp://`/`http://` URL, with the API version negotiated (this machine kind's
//! engine speaks 1.41; bollard defaults to a newer one).

use bollard::Docker;

/// The engine's default local socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Why the engine could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The socket path does not exist.
    #[error("the Docker socket {0} does not exist (is the engine installed and running?)")]
    NoSocket(String),
    /// Connecting or negotiating failed.
    #[error("cannot reach the Docker engine at {endpoint}: {message}")]
    Unreachable {
        /// Endpoint tried.
        endpoint: String,
        /// What failed.
        message: String,
    },
}

/// Whether `endpoint` names a local socket (rather than a network address).
pub fn is_socket(endpoint: &str) -> bool {
    !(endpoint.starts_with("tcp://") || endpoint.starts_with("http://") || endpoint.starts_with("https://"))
}

/// The socket path an endpoint names (`unix://` stripped), when it is one.
pub fn socket_path(endpoint: &str) -> Option<&str> {
    is_socket(endpoint).then(|| endpoint.trim_start_matches("unix://"))
}

/// Connect to `endpoint` (default [`DEFAULT_SOCKET`]) and negotiate the API version.
/// `timeout_secs` bounds each request (event streams are not requests: they stay open).
pub async fn connect(endpoint: Option<&str>, timeout_secs: u64) -> Result<Docker, EngineError> {
    let endpoint = endpoint.unwrap_or(DEFAULT_SOCKET);
    let unreachable =
        |e: bollard::errors::Error| EngineError::Unreachable { endpoint: endpoint.to_string(), message: e.to_string() };
    let docker = match socket_path(endpoint) {
        Some(path) => {
            if !std::path::Path::new(path).exists() {
                return Err(EngineError::NoSocket(path.to_string()));
            }
            Docker::connect_with_unix(path, timeout_secs, bollard::API_DEFAULT_VERSION).map_err(unreachable)?
        }
        None => {
            let addr = endpoint.replacen("tcp://", "http://", 1);
            Docker::connect_with_http(&addr, timeout_secs, bollard::API_DEFAULT_VERSION).map_err(unreachable)?
        }
    };
    docker.negotiate_version().await.map_err(unreachable)
}

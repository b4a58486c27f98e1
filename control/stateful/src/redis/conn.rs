//! Connections to sentinels and Redis servers: plain or TLS, bounded by a timeout, with
//! AUTH sent by hand so that a refusal keeps the server's own words (`WRONGPASS ...`).

use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError};

use super::{parse_host_port, Secret};

/// How the follower dials: TLS roots (when `tls`) and the per-query time limit.
#[derive(Clone)]
pub(crate) struct Dialer {
    tls: Option<Option<Vec<u8>>>,
    pub(crate) timeout: Duration,
}

impl Dialer {
    /// `tls`: `None` for plain TCP, `Some(ca_pem)` for TLS (`None` inside: system roots).
    pub(crate) fn new(tls: Option<Option<Vec<u8>>>, timeout: Duration) -> Dialer {
        Dialer { tls, timeout }
    }

    fn client(&self, addr: &str, password: Option<&Secret>) -> Result<Client, String> {
        let (host, port) = parse_host_port(addr)?;
        let conn_addr = match &self.tls {
            None => ConnectionAddr::Tcp(host, port),
            Some(_) => ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
        };
        let mut settings = redis::RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(p) = password {
            settings = settings.set_password(p.expose());
        }
        let info: ConnectionInfo = conn_addr
            .into_connection_info()
            .map_err(|e| format!("{addr}: {}", describe(&e)))?
            .set_redis_settings(settings);
        match &self.tls {
            None => Client::open(info),
            Some(root_cert) => {
                Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: root_cert.clone() })
            }
        }
        .map_err(|e| format!("{addr}: {}", describe(&e)))
    }

    /// A connection to `addr`, authenticated with `password` when given.
    pub(crate) async fn connect(&self, addr: &str, password: Option<&Secret>) -> Result<MultiplexedConnection, String> {
        let client = self.client(addr, None)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connecting = client.get_multiplexed_async_connection_with_config(&config);
        let mut conn = match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) if !e.is_timeout() => return Err(format!("cannot connect to {addr}: {}", describe(&e))),
            _ => return Err(format!("cannot connect to {addr}: no answer in {} ms", self.timeout.as_millis())),
        };
        if let Some(p) = password {
            let mut auth = redis::cmd("AUTH");
            auth.arg(p.expose());
            match tokio::time::timeout(self.timeout, auth.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if !e.is_timeout() => return Err(format!("AUTH failed at {addr}: {}", describe(&e))),
                _ => return Err(format!("AUTH at {addr}: no answer in {} ms", self.timeout.as_millis())),
            }
        }
        Ok(conn)
    }

    /// A pub/sub connection to `addr` (authenticated during the handshake).
    pub(crate) async fn pubsub(&self, addr: &str, password: Option<&Secret>) -> Result<PubSub, String> {
        let client = self.client(addr, password)?;
        match tokio::time::timeout(self.timeout, client.get_async_pubsub()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(format!("cannot subscribe at {addr}: {}", describe(&e))),
            Err(_) => Err(format!("cannot subscribe at {addr}: no answer in {} ms", self.timeout.as_millis())),
        }
    }
}

/// Runs `cmd` on `conn` within `timeout`; errors name `addr`.
pub(crate) async fn query<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    cmd: &redis::Cmd,
    addr: &str,
    timeout: Duration,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, cmd.query_async::<T>(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if !e.is_timeout() => Err(format!("{addr}: {}", describe(&e))),
        _ => Err(format!("{addr}: no answer in {} ms", timeout.as_millis())),
    }
}

/// A Redis error as the server said it (`WRONGPASS invalid username-password pair ...`),
/// else the client's description.
pub(crate) fn describe(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => e.to_string(),
    }
}

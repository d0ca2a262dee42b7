//! Connecting to the message servers trueup reads streams from and publishes to (NATS,
//! Redis), the same way for sources and targets: bounded by a timeout, and a failure says
//! why at once.

use std::time::Duration;

/// A NATS client for `url`, waiting at most `timeout` for the server.
///
/// The client ignores credentials written in a URL, so they are taken out and passed on
/// their own: `user:password@` as a user and password, a lone `token@` as a token.
pub async fn nats_connect(url: &str, timeout: Duration) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        // Connecting waits for the server (no connecting in the background), and a lost
        // connection is tried again only a few times before reads and publishes fail.
        .max_reconnects(Some(3));
    let mut url = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, password) = (decode(url.username()), url.password().map(decode));
    options = match (user.is_empty(), password) {
        (false, Some(password)) => options.user_and_password(user, password),
        (false, None) => options.token(user),
        (true, _) => options,
    };
    let _ = url.set_username("");
    let _ = url.set_password(None);
    match tokio::time::timeout(timeout, options.connect(url.as_str())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(super::error_chain(&e)),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// A multiplexed Redis connection for `url`; connecting and every answer wait at most
/// `timeout`.
pub async fn redis_connect(
    url: &str,
    timeout: Duration,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| super::error_chain(&e))
}

/// A connection made on first use and made again after it broke: a long-running `trueup
/// serve` outlives server restarts, which a connection held forever would not (a NATS client
/// gives up after a few reconnects; a multiplexed Redis connection never reconnects).
pub struct Reconnecting<T> {
    slot: tokio::sync::Mutex<Option<T>>,
}

impl<T> Default for Reconnecting<T> {
    fn default() -> Self {
        Self {
            slot: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Clone> Reconnecting<T> {
    /// The connection, made by `connect` when there is none (one connect at a time).
    pub async fn get<E, Fut>(&self, connect: impl FnOnce() -> Fut) -> Result<T, E>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = connect().await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// The connection as it is, if one was made.
    pub async fn current(&self) -> Option<T> {
        self.slot.lock().await.clone()
    }

    /// Drops the connection: the next `get` connects again.
    pub async fn forget(&self) {
        self.slot.lock().await.take();
    }
}

/// Whether a NATS client is past use: closed after its reconnects ran out, or not connected.
pub fn nats_broken(client: &async_nats::Client) -> bool {
    client.connection_state() != async_nats::connection::State::Connected
}

/// Whether a Redis error means the connection is gone (rather than a refused command).
pub fn redis_broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

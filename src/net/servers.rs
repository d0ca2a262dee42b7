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

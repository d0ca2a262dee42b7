//! Opening database connections so that a failure says why, at once.
//!
//! sqlx's pool retries a refused connection (and a failing `after_connect`) silently until
//! its acquire timeout, then reports only "pool timed out": an unreachable database looked
//! like a slow one for 15 s. Before waiting on a pool that holds no connection, trueup
//! connects once directly, so a refused, unresolvable or rejected connection fails now with
//! its own error. A refusal for a connection limit is asked again for a moment (see
//! [`LIMIT_WAIT`]). Used by sources, the store and SQL targets.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{ConnectOptions, Connection, Database, Pool};

/// How long the direct connection may take before the database counts as not answering.
pub const CONNECT_PROBE: Duration = Duration::from_secs(5);

/// Why a connection could not be had, with where it was going.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to {endpoint}: {cause}")]
pub struct ConnectError {
    pub endpoint: String,
    pub cause: String,
    /// Every connection the pool may open stayed in use: more connections (or fewer reads
    /// at once) is the remedy, which each caller words for its own setting.
    pub pool_busy: bool,
}

/// How long a connection the server refuses for a connection limit (its own, the user's or
/// role's, the database's) is tried again, from the first refusal. A session the client has
/// closed still counts until the server has ended it, a moment later: a user allowed exactly
/// the pool's size would otherwise be refused the pool's connection opened right after the
/// probe below, or one opened after a failed read closed its own. (sqlx's pool retries
/// PostgreSQL's refusal, 53300, itself, for its whole acquire timeout, and then says only
/// that it timed out; MySQL's it returns at once.)
pub const LIMIT_WAIT: Duration = Duration::from_secs(2);

/// A pooled connection; on an empty pool, a direct connection first proves the database
/// answers (and is closed again: once per call, so a retry does not open the race again).
/// A refusal for a connection limit is tried again for [`LIMIT_WAIT`], then reported as the
/// server worded it, with how often it was refused.
pub async fn acquire<DB: Database>(
    pool: &Pool<DB>,
    endpoint: &str,
) -> Result<PoolConnection<DB>, ConnectError> {
    let failed = |cause: String| ConnectError {
        endpoint: endpoint.to_owned(),
        cause,
        pool_busy: false,
    };
    let mut answered = false;
    let mut first_refusal = None;
    let mut refusals = 0u32;
    let mut pause = Duration::from_millis(10);
    let refused = loop {
        match once(pool, &mut answered).await {
            Ok(conn) => return Ok(conn),
            Err(Some(e)) if over_connection_limit(&e) => {
                refusals += 1;
                let since = *first_refusal.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() + pause >= LIMIT_WAIT {
                    break e;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            Err(Some(e)) => break e,
            Err(None) => {
                return Err(failed(format!(
                    "no answer within {}s",
                    CONNECT_PROBE.as_secs()
                )));
            }
        }
    };
    Err(match refused {
        // sqlx says only "pool timed out", after it either waited for a busy connection or
        // kept failing to open another (refused, too many connections on the server).
        sqlx::Error::PoolTimedOut => {
            let (open, max) = (pool.size(), pool.options().get_max_connections());
            let within = pool.options().get_acquire_timeout();
            if open >= max {
                return Err(ConnectError {
                    pool_busy: true,
                    ..failed(format!(
                        "no connection of its pool came free within {within:?}: all {max} stayed in use"
                    ))
                });
            }
            failed(format!(
                "no connection could be had within {within:?}: {open} of at most {max} were open and in use, and opening another failed (the server may refuse more connections)"
            ))
        }
        e if refusals > 1 && over_connection_limit(&e) => failed(format!(
            "{e} (refused {refusals} times over {:.1}s)",
            first_refusal.map_or(0.0, |t| t.elapsed().as_secs_f64())
        )),
        e => failed(e.to_string()),
    })
}

/// One try of [`acquire`]: the probe on an empty pool (until one answered, `answered`),
/// then the pool. `Err(None)`: the probe had no answer within [`CONNECT_PROBE`].
async fn once<DB: Database>(
    pool: &Pool<DB>,
    answered: &mut bool,
) -> Result<PoolConnection<DB>, Option<sqlx::Error>> {
    if !*answered && pool.size() == 0 {
        let options = pool.connect_options();
        match tokio::time::timeout(CONNECT_PROBE, options.connect()).await {
            Ok(Ok(conn)) => {
                *answered = true;
                let _ = conn.close().await;
            }
            Ok(Err(e)) => return Err(Some(e)),
            Err(_) => return Err(None),
        }
    }
    pool.acquire().await.map_err(Some)
}

/// Whether the server refused a connection for a limit on how many it, the user (or role)
/// or the database may have at once: PostgreSQL's `too_many_connections`; MySQL's and
/// MariaDB's "too many connections" (1040) and `max_user_connections` refusals (1203, and
/// 1226 for that resource: 1226 also names the hourly limits, which a moment does not lift).
fn over_connection_limit(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else {
        return false;
    };
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return pg.code() == "53300";
    }
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return mysql_connection_limit(my.number(), my.message());
    }
    false
}

/// Whether MySQL's or MariaDB's error `code` (with its `message`) refuses a connection for a
/// limit on connections at once: ER_CON_COUNT_ERROR, ER_TOO_MANY_USER_CONNECTIONS, and
/// ER_USER_LIMIT_REACHED where the limit is the user's connections (not its queries or
/// connections per hour, which a moment does not lift).
pub(crate) fn mysql_connection_limit(code: u16, message: &str) -> bool {
    match code {
        1040 | 1203 => true,
        1226 => message.contains("'max_user_connections'"),
        _ => false,
    }
}

/// Closes a pool, waiting at most `within` for its connections to come back (one ping's round
/// trip; sources, targets and the store give 5 s). sqlx pings a connection as it returns to the
/// pool, with no deadline of its own: one released just as its network stalled holds the pool
/// open for as long as the stall lasts, and `close` waits for it. Past `within` such a connection is left to the process's end (nothing waits on it,
/// nothing is written through it), and the pool says so once.
pub async fn close_within<DB: Database>(pool: &Pool<DB>, within: Duration, endpoint: &str) {
    if tokio::time::timeout(within, pool.close()).await.is_err() {
        tracing::warn!(
            endpoint,
            "a connection to {endpoint} did not close within {}s (its network stalled); left open",
            within.as_secs()
        );
    }
}

/// `host:port` (or the file) of a database URL, for messages: never the credentials or the
/// query.
pub fn endpoint(url: &str) -> String {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return path.split('?').next().unwrap_or(path).to_owned();
    }
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => "the database".to_owned(),
        },
        Err(_) => "the database".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn an_endpoint_is_the_host_and_port_without_credentials_or_query() {
        assert_eq!(
            endpoint("postgres://u:pw@db.example:6432/x?password=pw"),
            "db.example:6432"
        );
        assert_eq!(endpoint("mysql://root@127.0.0.1/x"), "127.0.0.1");
        assert_eq!(endpoint("sqlite:///var/x.db?mode=ro"), "/var/x.db");
        assert_eq!(endpoint("not a url"), "the database");
    }
}

//! The systems approved actions change: writable SQL connections and HTTP APIs. This is the
//! only code in trueup that writes to a system it monitors, and only `plan::apply` calls it,
//! for actions of an approved plan.
//!
//! Exactly once on SQL targets: the action's statement and a row in the target's marker table
//! (keyed by the action's idempotency key) commit in one transaction. A second attempt — a
//! worker that died after committing, or two applies racing — finds the marker and does
//! nothing. On HTTP targets every request carries the action's `Idempotency-Key`, stable
//! across retries, plans and restarts; the receiver drops repeats. NATS messages carry it as
//! `Nats-Msg-Id` (JetStream drops repeats within the stream's duplicate window); a Redis
//! `XADD` and its marker are one atomic script.

mod http;
mod nats;
mod redis;
mod sql;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, TargetConfig};
use crate::domain::ActionSpec;
use http::{HttpConn, http_client};
use nats::NatsConn;
use redis::RedisConn;
use sql::SqlConn;

/// What executing one action did.
#[derive(Debug, Clone, PartialEq)]
pub enum Executed {
    /// The change was made; details for the record (rows affected, HTTP status).
    Applied(serde_json::Value),
    /// The target already holds this action's marker: it was applied before (why, worded
    /// for the target).
    AlreadyApplied(String),
    /// The target already held this very action, delivered by an earlier attempt whose
    /// outcome was never recorded (a lost ack, a killed worker): it is applied, and recorded
    /// so, since the target itself may forget (a JetStream duplicate window ends).
    Delivered(String),
    Failed(TargetError),
}

/// Why a target could not be opened, asked or written to. Each says what to do where there is
/// something to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("target `{target}`: bad URL {url}: {message}")]
    BadUrl {
        target: String,
        url: String,
        message: String,
    },
    #[error("target `{target}`: cannot build an HTTP client: {message}")]
    HttpClient { target: String, message: String },
    #[error(
        "target `{target}` is not configured any more; add it back under `targets:` or reject the plan"
    )]
    NotConfigured { target: String },
    #[error("target `{target}` is not a {wanted} target any more")]
    WrongKind { target: String, wanted: String },
    #[error("a manual step is done by a person, not executed")]
    Manual,
    /// The database could not be reached (its address and the cause).
    #[error("{0}")]
    Unreachable(String),
    #[error(
        "target `{target}`: no answer within {deadline_secs}s (its statement_timeout and {grace_secs}s more); the connection was closed"
    )]
    Stalled {
        target: String,
        deadline_secs: u64,
        grace_secs: u64,
    },
    #[error(
        "target `{target}`: cannot create the marker table `{table}`: {message}; create it, or grant CREATE to trueup's role"
    )]
    MarkerCreate {
        target: String,
        table: String,
        message: String,
    },
    #[error("cannot read the marker {marker}: {message}")]
    MarkerRead { marker: String, message: String },
    #[error(
        "target `{target}`: the marker table `{table}` compares idempotency keys as {column}: two actions whose keys differ only in case or trailing spaces would count as one, and the second be skipped as applied; make the column binary: ALTER TABLE {table} MODIFY idempotency_key VARBINARY(767) NOT NULL"
    )]
    MarkerNotExact {
        target: String,
        table: String,
        column: String,
    },
    #[error(
        "idempotency key of {bytes} bytes: target `{target}`'s marker table holds at most {max}; shorten the `idempotency_key` template"
    )]
    KeyTooLong {
        target: String,
        bytes: usize,
        max: usize,
    },
    #[error("parameter ${n} ({type_name}): {value} is not {wanted}")]
    ParamValue {
        n: usize,
        type_name: String,
        value: String,
        wanted: &'static str,
    },
    #[error(
        "parameter ${n} has type {type_name}, which trueup does not bind; cast it in the statement, e.g. CAST({{{{...}}}} AS text)::{}",
        type_name.to_lowercase()
    )]
    ParamType { n: usize, type_name: String },
    #[error("the statement takes {takes} parameters but the action has {given}")]
    ParamCount { takes: usize, given: usize },
    /// What the database said.
    #[error("{0}")]
    Database(String),
    #[error("`{0}` is not a URL")]
    NotAUrl(String),
    #[error("{url} is outside target `{target}`'s base_url {base_url}")]
    OutsideBase {
        url: String,
        target: String,
        base_url: String,
    },
    /// The address guard refused the request (an internal network).
    #[error("{0}")]
    Refused(String),
    #[error("`{0}` is not an HTTP method")]
    NotAMethod(String),
    #[error("HTTP {status}: {excerpt}")]
    Status {
        status: String,
        excerpt: String,
        /// How long the server asked to be left alone (`Retry-After` on a 429 or 503).
        retry_after: Option<std::time::Duration>,
    },
    /// The request failed on the way (connect, TLS, timeout), with every cause.
    #[error("{0}")]
    Request(String),
    /// A NATS or Redis server refused or failed the publish (what it said, what to do).
    #[error("target `{target}`: {message}")]
    Server { target: String, message: String },
}

/// A target's record that an idempotency key was applied: why it counts, and (SQL targets,
/// whose marker row says so) the plan and action whose commit wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMark {
    pub why: String,
    pub by: Option<(i64, i64)>,
}

impl TargetError {
    /// How long the target asked to wait before it is tried again, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            TargetError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<sqlx::Error> for TargetError {
    fn from(e: sqlx::Error) -> Self {
        TargetError::Database(e.to_string())
    }
}

enum Target {
    Sql(SqlConn),
    Http(HttpConn),
    Nats(NatsConn),
    Redis(RedisConn),
}

/// Every configured target, connected lazily.
pub struct Targets {
    by_name: BTreeMap<String, Arc<Target>>,
}

impl Targets {
    pub fn open(config: &Config) -> Result<Self, TargetError> {
        let mut by_name = BTreeMap::new();
        for (name, t) in &config.targets {
            let target = match t {
                TargetConfig::Sql(s) => Target::Sql(SqlConn::open(s)?),
                TargetConfig::Http(h) => Target::Http(HttpConn {
                    client: http_client(h)?,
                    cfg: h.clone(),
                }),
                TargetConfig::Nats(n) => Target::Nats(NatsConn::open(n)),
                TargetConfig::Redis(r) => Target::Redis(RedisConn::open(r)),
            };
            by_name.insert(name.to_string(), Arc::new(target));
        }
        Ok(Self { by_name })
    }

    /// Executes one action. `Manual` actions are never executed.
    pub async fn execute(
        &self,
        spec: &ActionSpec,
        idempotency_key: &str,
        plan: i64,
        seq: i64,
    ) -> Executed {
        let Some(name) = spec.target() else {
            return Executed::Failed(TargetError::Manual);
        };
        let Some(target) = self.by_name.get(name) else {
            return Executed::Failed(TargetError::NotConfigured {
                target: name.to_owned(),
            });
        };
        match (target.as_ref(), spec) {
            (
                Target::Sql(conn),
                ActionSpec::Sql {
                    statement, params, ..
                },
            ) => {
                if let Err(e) = conn.ensure_marker().await {
                    return Executed::Failed(e);
                }
                conn.execute(statement, params, idempotency_key, plan, seq)
                    .await
            }
            (
                Target::Http(conn),
                ActionSpec::Http {
                    method,
                    url,
                    headers,
                    body,
                    ..
                },
            ) => {
                conn.execute(method, url, headers, body.as_ref(), idempotency_key)
                    .await
            }
            (
                Target::Nats(conn),
                ActionSpec::Nats {
                    subject,
                    headers,
                    body,
                    ..
                },
            ) => conn.execute(subject, headers, body, idempotency_key).await,
            (Target::Redis(conn), ActionSpec::Redis { stream, fields, .. }) => {
                conn.execute(stream, fields, idempotency_key).await
            }
            _ => Executed::Failed(TargetError::WrongKind {
                target: name.to_owned(),
                wanted: spec.type_name().to_owned(),
            }),
        }
    }

    /// Why the target records this action as applied, if it does (SQL and Redis markers;
    /// HTTP and NATS cannot tell).
    pub async fn already_applied(
        &self,
        spec: &ActionSpec,
        idempotency_key: &str,
    ) -> Result<Option<AppliedMark>, TargetError> {
        let Some(target) = spec.target().and_then(|n| self.by_name.get(n)) else {
            return Ok(None);
        };
        Ok(match target.as_ref() {
            Target::Sql(conn) => conn
                .marker_of(idempotency_key)
                .await?
                .map(|by| AppliedMark {
                    why: conn.marker_says(),
                    by: Some(by),
                }),
            Target::Redis(conn) => conn
                .has_marker(idempotency_key)
                .await?
                .then(|| AppliedMark {
                    why: conn.marker_says(),
                    by: None,
                }),
            Target::Http(_) | Target::Nats(_) => None,
        })
    }

    pub async fn close(&self) {
        for t in self.by_name.values() {
            match t.as_ref() {
                Target::Sql(conn) => conn.close().await,
                Target::Nats(conn) => conn.close().await,
                Target::Http(_) | Target::Redis(_) => {}
            }
        }
    }
}

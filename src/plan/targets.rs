//! The systems approved actions change: writable SQL connections and HTTP APIs. This is the
//! only code in trueup that writes to a system it monitors, and only `plan::apply` calls it,
//! for actions of an approved plan.
//!
//! Exactly once on SQL targets: the action's statement and a row in the target's marker table
//! (keyed by the action's idempotency key) commit in one transaction. A second attempt — a
//! worker that died after committing, or two applies racing — finds the marker and does
//! nothing. On HTTP targets every request carries the action's `Idempotency-Key`, stable
//! across retries, plans and restarts; the receiver drops repeats.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Executor as _, Statement as _, TypeInfo as _};
use tokio::sync::OnceCell;

use super::netguard;
use crate::config::{Config, HttpTarget, SourceKind, SqlTarget, TargetConfig};
use crate::domain::ActionSpec;

/// What executing one action did.
#[derive(Debug, Clone, PartialEq)]
pub enum Executed {
    /// The change was made; details for the record (rows affected, HTTP status).
    Applied(serde_json::Value),
    /// The target already holds this action's marker: it was applied before.
    AlreadyApplied,
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
    #[error("cannot read the marker table `{table}`: {message}")]
    MarkerRead { table: String, message: String },
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
    Status { status: String, excerpt: String },
    /// The request failed on the way (connect, TLS, timeout), with every cause.
    #[error("{0}")]
    Request(String),
}

impl From<sqlx::Error> for TargetError {
    fn from(e: sqlx::Error) -> Self {
        TargetError::Database(e.to_string())
    }
}

enum Pool {
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
    Sqlite(sqlx::SqlitePool),
}

/// Runs the same code against whichever pool it is (the engines' pool types differ).
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            Pool::Postgres($p) => $body,
            Pool::MySql($p) => $body,
            Pool::Sqlite($p) => $body,
        }
    };
}

/// Runs `$body` on a connection of `$conn`'s pool (bound as `$c`) within the target's deadline
/// (its statement_timeout and `TARGET_GRACE`): an unreachable database fails at once with its
/// cause, a stalled one fails at the deadline and its connection is closed, never pooled.
/// Evaluates to `Result<_, TargetError>`.
macro_rules! on_conn_within {
    ($conn:expr, $pool:expr, $c:ident => $body:expr) => {{
        let sql_conn: &SqlConn = $conn;
        let deadline = sql_conn.cfg.statement_timeout.as_std() + TARGET_GRACE;
        let endpoint = crate::connect::endpoint(sql_conn.cfg.url.expose());
        let started = std::time::Instant::now();
        let stalled = || TargetError::Stalled {
            target: sql_conn.cfg.name.to_string(),
            deadline_secs: deadline.as_secs(),
            grace_secs: TARGET_GRACE.as_secs(),
        };
        // (Taking a pooled connection pings it, which a stalled network also holds up.)
        match tokio::time::timeout(deadline, crate::connect::acquire($pool, &endpoint)).await {
            Err(_) => Err(stalled()),
            Ok(Err(e)) => Err(TargetError::Unreachable(e.to_string())),
            Ok(Ok(mut $c)) => {
                let left = deadline.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, async { $body }).await {
                    Ok(done) => done,
                    Err(_) => {
                        $c.close_on_drop();
                        Err(stalled())
                    }
                }
            }
        }
    }};
}

impl Pool {
    /// How the engine writes the first positional parameter.
    fn param1(&self) -> &'static str {
        match self {
            Pool::MySql(_) => "?",
            Pool::Postgres(_) | Pool::Sqlite(_) => "$1",
        }
    }
}

struct SqlConn {
    cfg: SqlTarget,
    pool: Pool,
    marker_ready: OnceCell<()>,
}

struct HttpConn {
    cfg: HttpTarget,
    client: reqwest::Client,
}

enum Target {
    Sql(SqlConn),
    Http(HttpConn),
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
                TargetConfig::Sql(s) => Target::Sql(SqlConn {
                    pool: sql_pool(s)?,
                    cfg: s.clone(),
                    marker_ready: OnceCell::new(),
                }),
                TargetConfig::Http(h) => Target::Http(HttpConn {
                    client: http_client(h)?,
                    cfg: h.clone(),
                }),
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
            _ => Executed::Failed(TargetError::WrongKind {
                target: name.to_owned(),
                wanted: spec.type_name().to_owned(),
            }),
        }
    }

    /// Whether the target records this action as applied (SQL markers; HTTP cannot tell).
    pub async fn already_applied(
        &self,
        spec: &ActionSpec,
        idempotency_key: &str,
    ) -> Result<bool, TargetError> {
        let Some(target) = spec.target().and_then(|n| self.by_name.get(n)) else {
            return Ok(false);
        };
        match target.as_ref() {
            Target::Sql(conn) => conn.has_marker(idempotency_key).await,
            Target::Http(_) => Ok(false),
        }
    }

    pub async fn close(&self) {
        for t in self.by_name.values() {
            if let Target::Sql(conn) = t.as_ref() {
                on_pool!(&conn.pool, p => p.close().await);
            }
        }
    }
}

fn sql_pool(cfg: &SqlTarget) -> Result<Pool, TargetError> {
    let bad = |e: sqlx::Error| TargetError::BadUrl {
        target: cfg.name.to_string(),
        url: cfg.url.to_string(),
        message: e.to_string(),
    };
    // (Errors while executing name the target once, where they are reported.)
    let timeout_ms = cfg.statement_timeout.as_std().as_millis().to_string();
    Ok(match cfg.kind {
        SourceKind::Postgres => Pool::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(15))
                .connect_lazy_with(
                    sqlx::postgres::PgConnectOptions::from_str(cfg.url.expose())
                        .map_err(bad)?
                        .application_name("trueup-apply")
                        .options([("statement_timeout", timeout_ms)]),
                ),
        ),
        SourceKind::MySql => Pool::MySql(
            sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(15))
                .connect_lazy_with(
                    sqlx::mysql::MySqlConnectOptions::from_str(cfg.url.expose()).map_err(bad)?,
                ),
        ),
        SourceKind::Sqlite => Pool::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(
                    sqlx::sqlite::SqliteConnectOptions::from_str(cfg.url.expose())
                        .map_err(bad)?
                        .busy_timeout(Duration::from_secs(10)),
                ),
        ),
    })
}

fn http_client(cfg: &HttpTarget) -> Result<reqwest::Client, TargetError> {
    let base = cfg.base_url.clone();
    let guarded = !cfg.allow_private_network;
    // Follow a few redirects, only under the base URL and (unless allowed) to public addresses.
    let redirects =
        reqwest::redirect::Policy::custom(move |attempt| {
            match netguard::check_redirect(attempt.url(), attempt.previous().len(), &base, guarded)
            {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(why),
            }
        });
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(cfg.timeout.as_std())
        .redirect(redirects)
        .user_agent(concat!("trueup/", env!("CARGO_PKG_VERSION")));
    if guarded {
        builder = builder.dns_resolver(Arc::new(netguard::GuardedResolver));
    }
    builder.build().map_err(|e| TargetError::HttpClient {
        target: cfg.name.to_string(),
        message: e.to_string(),
    })
}

impl HttpConn {
    async fn execute(
        &self,
        method: &str,
        url: &str,
        headers: &BTreeMap<String, String>,
        body: Option<&serde_json::Value>,
        idempotency_key: &str,
    ) -> Executed {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Executed::Failed(TargetError::NotAUrl(url.to_owned()));
        };
        if !parsed.as_str().starts_with(&self.cfg.base_url) {
            return Executed::Failed(TargetError::OutsideBase {
                url: parsed.to_string(),
                target: self.cfg.name.to_string(),
                base_url: self.cfg.base_url.clone(),
            });
        }
        if !self.cfg.allow_private_network
            && let Err(e) = netguard::check_url(&parsed)
        {
            return Executed::Failed(TargetError::Refused(e.to_string()));
        }
        let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
            return Executed::Failed(TargetError::NotAMethod(method.to_owned()));
        };
        let mut request = self.client.request(method, parsed);
        for (name, value) in &self.cfg.headers {
            request = request.header(name, secrecy::ExposeSecret::expose_secret(value));
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request = request.header("Idempotency-Key", idempotency_key);
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Executed::Applied(serde_json::json!({ "http_status": status.as_u16() }))
                } else {
                    let text = response.text().await.unwrap_or_default();
                    let excerpt: String = text.chars().take(300).collect();
                    Executed::Failed(TargetError::Status {
                        status: status.to_string(),
                        excerpt,
                    })
                }
            }
            Err(e) => {
                // The guard's refusal is the most useful part of a connect error.
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg = format!("{msg}: {s}");
                    source = s.source();
                }
                Executed::Failed(TargetError::Request(msg))
            }
        }
    }
}

impl SqlConn {
    fn marker(&self) -> &str {
        &self.cfg.marker_table
    }

    /// Creates the marker table if it does not exist (once per process).
    async fn ensure_marker(&self) -> Result<(), TargetError> {
        self.marker_ready
            .get_or_try_init(|| async {
                let m = self.marker();
                let ddl = match &self.pool {
                    Pool::Postgres(_) => format!(
                        "CREATE TABLE IF NOT EXISTS {m} (idempotency_key TEXT PRIMARY KEY, plan_id BIGINT NOT NULL, seq INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    ),
                    Pool::MySql(_) => format!(
                        "CREATE TABLE IF NOT EXISTS {m} (idempotency_key VARCHAR(64) PRIMARY KEY, plan_id BIGINT NOT NULL, seq INTEGER NOT NULL, applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
                    ),
                    Pool::Sqlite(_) => format!(
                        "CREATE TABLE IF NOT EXISTS {m} (idempotency_key TEXT PRIMARY KEY, plan_id INTEGER NOT NULL, seq INTEGER NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
                    ),
                };
                let created = on_pool!(&self.pool, p => p.execute(ddl.as_str()).await.map(|_| ()));
                match created {
                    Ok(()) => Ok(()),
                    // Two processes creating it at once: PostgreSQL reports a duplicate type;
                    // the table exists either way.
                    Err(e) if matches!(self.marker_exists().await, Ok(true)) => {
                        tracing::debug!(error = %e, "marker table created concurrently");
                        Ok(())
                    }
                    Err(e) => Err(TargetError::MarkerCreate {
                        target: self.cfg.name.to_string(),
                        table: m.to_owned(),
                        message: e.to_string(),
                    }),
                }
            })
            .await
            .map(|_| ())
    }

    /// Whether the marker table exists (a dry run must not create it).
    async fn marker_exists(&self) -> Result<bool, TargetError> {
        let m = self.marker();
        let sql = match &self.pool {
            Pool::Postgres(_) => {
                "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE tablename = $1 AND schemaname = ANY (current_schemas(false))"
            }
            Pool::MySql(_) => {
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?"
            }
            Pool::Sqlite(_) => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
            }
        };
        let n: Result<i64, sqlx::Error> =
            on_pool!(&self.pool, p => sqlx::query_scalar(sql).bind(m).fetch_one(p).await);
        n.map(|n| n > 0).map_err(|e| TargetError::MarkerRead {
            table: m.to_owned(),
            message: format!("cannot reach it: {e}"),
        })
    }

    async fn has_marker(&self, key: &str) -> Result<bool, TargetError> {
        if self.marker_ready.get().is_none() {
            if !self.marker_exists().await? {
                // Nothing was ever applied through this target.
                return Ok(false);
            }
            // It exists: no need to ask again (or to create it) in this process.
            let _ = self.marker_ready.set(());
        }
        let m = self.marker();
        let sql = format!(
            "SELECT 1 FROM {m} WHERE idempotency_key = {}",
            self.pool.param1()
        );
        let found: Result<Option<i32>, TargetError> = on_pool!(&self.pool, p => on_conn_within!(self, p, c => {
            sqlx::query_scalar::<_, i32>(&sql)
                .bind(key)
                .fetch_optional(&mut *c)
                .await
                .map_err(TargetError::from)
        }));
        found
            .map(|r| r.is_some())
            .map_err(|e| TargetError::MarkerRead {
                table: m.to_owned(),
                message: e.to_string(),
            })
    }

    async fn execute(
        &self,
        statement: &str,
        params: &[serde_json::Value],
        key: &str,
        plan: i64,
        seq: i64,
    ) -> Executed {
        // The server stops a statement at its statement_timeout; an action still waiting
        // well past that waits on a network or a server that stalled. Whether a cut one
        // committed, its marker row tells the next try.
        let marker = self.marker();
        let result = match &self.pool {
            Pool::Postgres(p) => on_conn_within!(self, p, c => {
                pg_execute(&mut c, marker, statement, params, key, plan, seq).await
            }),
            Pool::MySql(p) => on_conn_within!(self, p, c => {
                mysql_execute(&mut c, marker, statement, params, key, plan, seq).await
            }),
            Pool::Sqlite(p) => on_conn_within!(self, p, c => {
                sqlite_execute(&mut c, marker, statement, params, key, plan, seq).await
            }),
        };
        match result {
            Ok(Some(rows)) => Executed::Applied(serde_json::json!({ "rows_affected": rows })),
            Ok(None) => Executed::AlreadyApplied,
            Err(e) => Executed::Failed(e),
        }
    }
}

/// A parameter bound with the type PostgreSQL inferred for it, so `$1` works for a NUMERIC,
/// UUID or TIMESTAMPTZ column as well as for text.
enum PgParam {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    Decimal(rust_decimal::Decimal),
    F32(f32),
    F64(f64),
    Text(String),
    Uuid(sqlx::types::Uuid),
    Date(chrono::NaiveDate),
    Naive(chrono::NaiveDateTime),
    Timestamp(chrono::DateTime<chrono::Utc>),
    Json(serde_json::Value),
}

fn pg_param(type_name: &str, v: &serde_json::Value, n: usize) -> Result<PgParam, TargetError> {
    use serde_json::Value as J;
    if v.is_null() {
        return Ok(PgParam::Null);
    }
    let text = || match v {
        J::String(s) => s.clone(),
        other => other.to_string(),
    };
    let wrong = |wanted: &'static str| TargetError::ParamValue {
        n,
        type_name: type_name.to_owned(),
        value: v.to_string(),
        wanted,
    };
    let int = || -> Result<i64, TargetError> {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| wrong("an integer"))
    };
    let instant = || -> Result<chrono::DateTime<chrono::Utc>, TargetError> {
        chrono::DateTime::parse_from_rfc3339(&text())
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| wrong("an RFC 3339 timestamp"))
    };
    Ok(match type_name {
        "BOOL" => PgParam::Bool(v.as_bool().ok_or_else(|| wrong("a boolean"))?),
        "INT2" => PgParam::I16(i16::try_from(int()?).map_err(|_| wrong("a SMALLINT"))?),
        "INT4" => PgParam::I32(i32::try_from(int()?).map_err(|_| wrong("an INTEGER"))?),
        "INT8" => PgParam::I64(int()?),
        "NUMERIC" => PgParam::Decimal(
            rust_decimal::Decimal::from_str(&text())
                .or_else(|_| rust_decimal::Decimal::from_scientific(&text()))
                .map_err(|_| wrong("a number"))?,
        ),
        "FLOAT4" => PgParam::F32(text().parse().map_err(|_| wrong("a number"))?),
        "FLOAT8" => PgParam::F64(text().parse().map_err(|_| wrong("a number"))?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" | "UNKNOWN" => PgParam::Text(text()),
        "UUID" => PgParam::Uuid(text().parse().map_err(|_| wrong("a UUID"))?),
        "DATE" => PgParam::Date(text().parse().map_err(|_| wrong("a date"))?),
        "TIMESTAMP" => PgParam::Naive(instant()?.naive_utc()),
        "TIMESTAMPTZ" => PgParam::Timestamp(instant()?),
        "JSON" | "JSONB" => PgParam::Json(v.clone()),
        other => {
            return Err(TargetError::ParamType {
                n,
                type_name: other.to_owned(),
            });
        }
    })
}

/// How long past its statement_timeout an action may wait before trueup gives up on it.
const TARGET_GRACE: Duration = Duration::from_secs(5);

async fn pg_execute(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>,
    marker: &str,
    statement: &str,
    params: &[serde_json::Value],
    key: &str,
    plan: i64,
    seq: i64,
) -> Result<Option<u64>, TargetError> {
    let err = TargetError::from;
    let mut tx = sqlx::Connection::begin(&mut **conn).await.map_err(err)?;
    let fresh = sqlx::query(&format!(
        "INSERT INTO {marker} (idempotency_key, plan_id, seq) VALUES ($1, $2, $3) ON CONFLICT (idempotency_key) DO NOTHING"
    ))
    .bind(key)
    .bind(plan)
    .bind(seq as i32)
    .execute(&mut *tx)
    .await
    .map_err(err)?
    .rows_affected();
    if fresh == 0 {
        return Ok(None);
    }
    // Ask the server what type each parameter has, then bind the values as those types.
    let prepared = (&mut *tx).prepare(statement).await.map_err(err)?;
    let types: Vec<String> = match prepared.parameters() {
        Some(sqlx::Either::Left(types)) => types.iter().map(|t| t.name().to_owned()).collect(),
        _ => Vec::new(),
    };
    if types.len() != params.len() {
        return Err(TargetError::ParamCount {
            takes: types.len(),
            given: params.len(),
        });
    }
    let mut query = sqlx::query(statement);
    for (n, (t, v)) in types.iter().zip(params).enumerate() {
        query = match pg_param(t, v, n + 1)? {
            PgParam::Null => query.bind(None::<String>),
            PgParam::Bool(x) => query.bind(x),
            PgParam::I16(x) => query.bind(x),
            PgParam::I32(x) => query.bind(x),
            PgParam::I64(x) => query.bind(x),
            PgParam::Decimal(x) => query.bind(x),
            PgParam::F32(x) => query.bind(x),
            PgParam::F64(x) => query.bind(x),
            PgParam::Text(x) => query.bind(x),
            PgParam::Uuid(x) => query.bind(x),
            PgParam::Date(x) => query.bind(x),
            PgParam::Naive(x) => query.bind(x),
            PgParam::Timestamp(x) => query.bind(x),
            PgParam::Json(x) => query.bind(sqlx::types::Json(x)),
        };
    }
    let rows = query.execute(&mut *tx).await.map_err(err)?.rows_affected();
    tx.commit().await.map_err(err)?;
    Ok(Some(rows))
}

/// MySQL and SQLite convert a bound string or number to the column's type themselves.
/// `$timestamps_as_datetime`: MySQL refuses RFC 3339 text (`…T10:00:00Z`) for DATETIME and
/// TIMESTAMP columns, so such values go as date-times (UTC); SQLite keeps them as text.
macro_rules! bind_loose {
    ($query:expr, $params:expr, $timestamps_as_datetime:expr) => {{
        let mut q = $query;
        for v in $params {
            q = match v {
                serde_json::Value::Null => q.bind(None::<String>),
                serde_json::Value::Bool(b) => q.bind(*b),
                serde_json::Value::Number(n) if n.is_i64() => q.bind(n.as_i64()),
                serde_json::Value::Number(n) => q.bind(n.to_string()),
                serde_json::Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
                    Ok(t) if $timestamps_as_datetime => q.bind(t.naive_utc()),
                    _ => q.bind(s.clone()),
                },
                other => q.bind(other.to_string()),
            };
        }
        q
    }};
}

/// MySQL and SQLite: the marker row, then the statement with its values bound loosely, in
/// one transaction begun by `$begin`; `None` when the marker was there already.
macro_rules! marked_execute {
    ($begin:expr, $insert_marker:expr, $statement:expr, $params:expr, $key:expr, $plan:expr, $seq:expr, $datetimes:expr) => {{
        let err = TargetError::from;
        let mut tx = $begin.await.map_err(err)?;
        let fresh = sqlx::query(&$insert_marker)
            .bind($key)
            .bind($plan)
            .bind($seq)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
        if fresh == 0 {
            return Ok(None);
        }
        let rows = bind_loose!(sqlx::query($statement), $params, $datetimes)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
        tx.commit().await.map_err(err)?;
        Ok(Some(rows))
    }};
}

async fn mysql_execute(
    conn: &mut sqlx::pool::PoolConnection<sqlx::MySql>,
    marker: &str,
    statement: &str,
    params: &[serde_json::Value],
    key: &str,
    plan: i64,
    seq: i64,
) -> Result<Option<u64>, TargetError> {
    marked_execute!(
        sqlx::Connection::begin(&mut **conn),
        format!("INSERT IGNORE INTO {marker} (idempotency_key, plan_id, seq) VALUES (?, ?, ?)"),
        statement,
        params,
        key,
        plan,
        seq,
        true
    )
}

async fn sqlite_execute(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
    marker: &str,
    statement: &str,
    params: &[serde_json::Value],
    key: &str,
    plan: i64,
    seq: i64,
) -> Result<Option<u64>, TargetError> {
    marked_execute!(
        sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE"),
        format!("INSERT OR IGNORE INTO {marker} (idempotency_key, plan_id, seq) VALUES (?, ?, ?)"),
        statement,
        params,
        key,
        plan,
        seq,
        false
    )
}

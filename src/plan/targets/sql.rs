//! SQL targets: a pool per target, the marker table, and each action's statement committed
//! with its marker row in one transaction, within the target's deadline.

use std::str::FromStr;
use std::time::Duration;

use sqlx::{Executor as _, Statement as _, TypeInfo as _};
use tokio::sync::OnceCell;

use super::{Executed, TargetError};
use crate::config::{SourceKind, SqlTarget};

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

pub(super) struct SqlConn {
    pub(super) cfg: SqlTarget,
    pool: Pool,
    marker_ready: OnceCell<()>,
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

impl SqlConn {
    pub(super) fn open(cfg: &SqlTarget) -> Result<Self, TargetError> {
        Ok(Self {
            pool: sql_pool(cfg)?,
            cfg: cfg.clone(),
            marker_ready: OnceCell::new(),
        })
    }

    /// Closes the pool, waiting at most [`TARGET_GRACE`] (see [`crate::connect::close_within`]).
    pub(super) async fn close(&self) {
        let endpoint = crate::connect::endpoint(self.cfg.url.expose());
        on_pool!(&self.pool, p => crate::connect::close_within(p, TARGET_GRACE, &endpoint).await);
    }

    fn marker(&self) -> &str {
        &self.cfg.marker_table
    }

    /// Creates the marker table if it does not exist (once per process).
    pub(super) async fn ensure_marker(&self) -> Result<(), TargetError> {
        self.marker_ready
            .get_or_try_init(|| async {
                let m = self.marker();
                let ddl = match &self.pool {
                    Pool::Postgres(_) => format!(
                        "CREATE TABLE IF NOT EXISTS {m} (idempotency_key TEXT PRIMARY KEY, plan_id BIGINT NOT NULL, seq INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    ),
                    Pool::MySql(_) => format!(
                        "CREATE TABLE IF NOT EXISTS {m} (idempotency_key VARBINARY({MYSQL_KEY_BYTES}) PRIMARY KEY, plan_id BIGINT NOT NULL, seq INTEGER NOT NULL, applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
                    ),
                    Pool::Sqlite(_) => format!(
                        "CREATE TABLE IF NOT EXISTS {m} (idempotency_key TEXT PRIMARY KEY, plan_id INTEGER NOT NULL, seq INTEGER NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
                    ),
                };
                let created = on_pool!(&self.pool, p => p.execute(ddl.as_str()).await.map(|_| ()));
                match created {
                    Ok(()) => self.marker_exact().await,
                    // Two processes creating it at once: PostgreSQL reports a duplicate type;
                    // the table exists either way.
                    Err(e) if matches!(self.marker_exists().await, Ok(true)) => {
                        tracing::debug!(error = %e, "marker table created concurrently");
                        self.marker_exact().await
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

    /// A MySQL/MariaDB marker table made before its key was binary (or by hand) may compare
    /// keys by a text collation: case-insensitive, and PAD SPACE on MariaDB, so `evt_AbC` and
    /// `evt_abc` are one key and the second action is skipped as applied. Such a table is
    /// refused, saying how to make it exact.
    async fn marker_exact(&self) -> Result<(), TargetError> {
        let Pool::MySql(p) = &self.pool else {
            return Ok(());
        };
        let m = self.marker();
        let column: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT CAST(DATA_TYPE AS CHAR), CAST(COLLATION_NAME AS CHAR) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? AND column_name = 'idempotency_key'",
        )
        .bind(m)
        .fetch_optional(p)
        .await
        .map_err(|e| TargetError::MarkerRead {
            marker: format!("table `{m}`"),
            message: e.to_string(),
        })?;
        match column {
            Some((data_type, _))
                if matches!(
                    data_type.to_ascii_lowercase().as_str(),
                    "varbinary" | "binary"
                ) =>
            {
                Ok(())
            }
            Some((data_type, collation)) => Err(TargetError::MarkerNotExact {
                target: self.cfg.name.to_string(),
                table: m.to_owned(),
                column: match collation {
                    Some(c) => format!("{data_type} under collation {c}"),
                    None => data_type,
                },
            }),
            None => Err(TargetError::MarkerRead {
                marker: format!("table `{m}`"),
                message: "it has no column idempotency_key; drop it and let trueup create it"
                    .into(),
            }),
        }
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
            marker: format!("table `{m}`"),
            message: format!("cannot reach it: {e}"),
        })
    }

    /// Why an action with a marker counts as applied.
    pub(super) fn marker_says(&self) -> String {
        format!(
            "the target's marker table `{}` records it as applied",
            self.cfg.marker_table
        )
    }

    /// The plan and action (`seq`) whose commit wrote `key`'s marker, if one did.
    pub(super) async fn marker_of(&self, key: &str) -> Result<Option<(i64, i64)>, TargetError> {
        if self.marker_ready.get().is_none() {
            if !self.marker_exists().await? {
                // Nothing was ever applied through this target.
                return Ok(None);
            }
            // It exists: no need to ask again (or to create it) in this process, once it
            // tells keys apart exactly (this is where an apply meets it first).
            self.marker_exact().await?;
            let _ = self.marker_ready.set(());
        }
        let m = self.marker();
        let sql = format!(
            "SELECT CAST(plan_id AS {int}), CAST(seq AS {int}) FROM {m} WHERE idempotency_key = {}",
            self.pool.param1(),
            int = match &self.pool {
                Pool::MySql(_) => "SIGNED",
                _ => "BIGINT",
            }
        );
        let found: Result<Option<(i64, i64)>, TargetError> = on_pool!(&self.pool, p => on_conn_within!(self, p, c => {
            sqlx::query_as::<_, (i64, i64)>(&sql)
                .bind(key)
                .fetch_optional(&mut *c)
                .await
                .map_err(TargetError::from)
        }));
        found.map_err(|e| TargetError::MarkerRead {
            marker: format!("table `{m}`"),
            message: e.to_string(),
        })
    }

    pub(super) async fn execute(
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
            // Longer than its marker column: refused, never cut short to collide with another.
            Pool::MySql(_) if key.len() > MYSQL_KEY_BYTES => Err(TargetError::KeyTooLong {
                target: self.cfg.name.to_string(),
                bytes: key.len(),
                max: MYSQL_KEY_BYTES,
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
            Ok(None) => Executed::AlreadyApplied(self.marker_says()),
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

/// The longest idempotency key a MySQL/MariaDB marker table holds (its `VARBINARY` key, inside
/// the 767-byte index limit of InnoDB's older row formats); `INSERT IGNORE` would cut a longer
/// one short.
const MYSQL_KEY_BYTES: usize = 767;

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

use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlValueRef};
use sqlx::{Column, Decode, Executor, MySql, MySqlPool, Row as _, Statement, TypeInfo, ValueRef};

use crate::config::SourceConfig;
use crate::domain::{SourceName, Value};

use super::decode::{Kind, Unrepresentable, unsupported};
use super::{
    Feed, Leased, ReadRequest, RoleAudit, SourceError, decode_value, resolve_needed, wrap,
};

pub(super) fn pool(cfg: &SourceConfig, timeout_ms: u64) -> Result<MySqlPool, SourceError> {
    let opts =
        MySqlConnectOptions::from_str(cfg.url.expose()).map_err(|e| SourceError::Connect {
            source_name: cfg.name.clone(),
            message: format!("bad URL {}: {e}", cfg.url),
        })?;
    Ok(MySqlPoolOptions::new()
        .max_connections(cfg.pool_size)
        .acquire_timeout(Duration::from_secs(15))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION READ ONLY").await?;
                let version: String = sqlx::query_scalar("SELECT VERSION()")
                    .fetch_one(&mut *conn)
                    .await?;
                // MariaDB and MySQL name their statement time limits differently.
                let limit = if version.contains("MariaDB") {
                    format!(
                        "SET SESSION max_statement_time = {}",
                        timeout_ms as f64 / 1000.0
                    )
                } else {
                    format!("SET SESSION max_execution_time = {timeout_ms}")
                };
                conn.execute(limit.as_str()).await?;
                Ok(())
            })
        })
        .connect_lazy_with(opts))
}

pub(super) async fn audit_role(
    name: &SourceName,
    endpoint: &str,
    pool: &MySqlPool,
) -> Result<RoleAudit, SourceError> {
    let mut conn = super::connect(name, endpoint, pool).await?;
    let connect = |e: sqlx::Error| SourceError::Connect {
        source_name: name.clone(),
        message: e.to_string(),
    };
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT PRIVILEGE_TYPE, 'all databases' FROM information_schema.USER_PRIVILEGES \
           WHERE GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''') \
             AND PRIVILEGE_TYPE IN ('SUPER', 'FILE', 'INSERT', 'UPDATE', 'DELETE', 'DROP', 'ALTER', 'CREATE') \
         UNION ALL \
         SELECT PRIVILEGE_TYPE, TABLE_SCHEMA FROM information_schema.SCHEMA_PRIVILEGES \
           WHERE GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''') \
             AND PRIVILEGE_TYPE IN ('INSERT', 'UPDATE', 'DELETE', 'DROP', 'ALTER') \
         UNION ALL \
         SELECT PRIVILEGE_TYPE, CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) FROM information_schema.TABLE_PRIVILEGES \
           WHERE GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''') \
             AND PRIVILEGE_TYPE IN ('INSERT', 'UPDATE', 'DELETE', 'DROP', 'ALTER') \
         LIMIT 24",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(connect)?;
    let mut audit = RoleAudit::default();
    for (privilege, on) in rows {
        match privilege.as_str() {
            "SUPER" => audit.privileged.push(
                "the user has SUPER (can change server settings and write in spite of read-only mode)"
                    .to_owned(),
            ),
            "FILE" => audit.privileged.push(
                "the user has FILE (can read and write files on the database host)".to_owned(),
            ),
            _ if audit.writable.len() < 8 => audit.writable.push(format!("{privilege} on {on}")),
            _ => {}
        }
    }
    Ok(audit)
}

pub(super) async fn read(pool: MySqlPool, req: ReadRequest, mut feed: Feed) {
    let mut conn = match Leased::acquire(&pool, &feed).await {
        Ok(c) => c,
        Err(err) => return feed.fail(err).await,
    };
    let abandoned = feed.abandoned();
    // Stop as soon as nobody reads: a cancelled or timed-out run must not keep a connection
    // busy until its query ends.
    let outcome = tokio::select! {
        r = run(&mut conn, &req, &mut feed) => r,
        () = abandoned => Err(None),
    };
    match outcome {
        Ok(()) => {
            if conn.execute("ROLLBACK").await.is_ok() {
                conn.reusable();
            }
        }
        Err(stop) => {
            // (`Leased` closes the connection: a failed or abandoned read never returns it.)
            if let Some(err) = stop {
                feed.fail(err).await;
            }
        }
    }
}

async fn run(
    conn: &mut sqlx::pool::PoolConnection<MySql>,
    req: &ReadRequest,
    feed: &mut Feed,
) -> Result<(), Option<SourceError>> {
    let conn: &mut sqlx::MySqlConnection = conn;
    conn.execute("START TRANSACTION READ ONLY")
        .await
        .map_err(|e| Some(feed.query_error(e)))?;
    let inner = wrap(&req.query);
    let stmt = (&mut *conn)
        .prepare(&inner)
        .await
        .map_err(|e| Some(feed.query_error(e)))?;
    let columns: Vec<String> = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
    let declared: Vec<Option<Kind>> = stmt
        .columns()
        .iter()
        .map(|c| kind_of(c.type_info().name()))
        .collect();
    let order = resolve_needed(feed.source(), &columns, req).map_err(Some)?;
    let order_sql: Vec<String> = order
        .iter()
        .map(|c| {
            let i = super::index_of(&columns, c).unwrap_or(0);
            let quoted = format!("`{}`", c.replace('`', "``"));
            if declared[i].is_some_and(Kind::is_text) {
                // UTF-8 bytes, no padding, whatever the column's charset: the order trueup
                // compares keys in.
                format!("CAST(CONVERT({quoted} USING utf8mb4) AS BINARY)")
            } else {
                quoted
            }
        })
        .collect();
    let filter_idx = super::resolve_filter(feed.source(), &columns, req).map_err(Some)?;
    let mut sql = inner;
    if !filter_idx.is_empty() {
        let conditions: Vec<String> = filter_idx
            .iter()
            .map(|&i| format!("`{}` = ?", columns[i].replace('`', "``")))
            .collect();
        sql = format!("{sql} WHERE {}", conditions.join(" AND "));
    }
    if !order_sql.is_empty() {
        sql = format!("{sql} ORDER BY {}", order_sql.join(", "));
    }
    feed.send_columns(columns.clone()).await.map_err(|_| None)?;

    let mut query = sqlx::query(&sql).persistent(false);
    for (&i, (_, value)) in filter_idx.iter().zip(&req.filter) {
        query = match (declared[i], value) {
            (_, serde_json::Value::Bool(b)) => query.bind(*b),
            (_, serde_json::Value::Number(n)) if n.is_i64() => query.bind(n.as_i64()),
            (Some(Kind::Timestamp | Kind::Naive), serde_json::Value::String(s)) => {
                match chrono::DateTime::parse_from_rfc3339(s) {
                    Ok(t) => query.bind(t.naive_utc()),
                    Err(_) => query.bind(s.clone()),
                }
            }
            (_, serde_json::Value::String(s)) => query.bind(s.clone()),
            (_, other) => query.bind(other.to_string()),
        };
    }
    let mut rows = query.fetch(&mut *conn);
    let mut kinds: Option<Vec<Kind>> = None;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| Some(feed.query_error(e)))?
    {
        // The executed statement's column types are the truth; build decoders from them once.
        let kinds = match &kinds {
            Some(k) => k,
            None => {
                let k = row
                    .columns()
                    .iter()
                    .map(|c| {
                        kind_of(c.type_info().name()).ok_or_else(|| {
                            unsupported(feed.source(), c.name(), c.type_info().name())
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(Some)?;
                kinds.insert(k)
            }
        };
        let mut values = Vec::with_capacity(kinds.len());
        for (i, kind) in kinds.iter().enumerate() {
            let raw = row.try_get_raw(i).map_err(|e| Some(feed.query_error(e)))?;
            values.push(
                decode_value(feed.source(), &columns[i], || decode(*kind, raw)).map_err(Some)?,
            );
        }
        // The driver's copy of a row can be large (a buffer sized for it): free it before
        // waiting for room in the channel.
        drop(row);
        feed.push_row(values).await?;
    }
    feed.finish().await.map_err(|_| None)?;
    Ok(())
}

fn kind_of(type_name: &str) -> Option<Kind> {
    Some(match type_name {
        "BOOLEAN" | "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => Kind::I64,
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
        | "BIGINT UNSIGNED" | "YEAR" => Kind::U64,
        "DECIMAL" => Kind::Decimal,
        "FLOAT" => Kind::F32,
        "DOUBLE" => Kind::F64,
        "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" => {
            Kind::Text
        }
        "JSON" => Kind::Json,
        "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" => Kind::Bytes,
        "DATE" => Kind::Date,
        "TIME" => Kind::Time,
        "DATETIME" => Kind::Naive,
        "TIMESTAMP" => Kind::Timestamp,
        // A NULL literal column: every value is NULL.
        "NULL" => Kind::Text,
        _ => return None,
    })
}

fn decode(kind: Kind, raw: MySqlValueRef<'_>) -> Result<Value, sqlx::error::BoxDynError> {
    if raw.is_null() {
        return Ok(Value::Null);
    }
    fn d<'r, T: Decode<'r, MySql>>(raw: MySqlValueRef<'r>) -> Result<T, sqlx::error::BoxDynError> {
        T::decode(raw)
    }
    Ok(match kind {
        Kind::I64 => Value::Int(d(raw)?),
        Kind::U64 => {
            let v: u64 = d(raw)?;
            i64::try_from(v)
                .map(Value::Int)
                .unwrap_or_else(|_| Value::Decimal(v.into()))
        }
        Kind::Decimal => Value::Decimal(d(raw)?),
        Kind::F32 => Value::Float(d::<f32>(raw)?.into()),
        Kind::F64 => Value::Float(d(raw)?),
        Kind::Text => Value::Text(d(raw)?),
        Kind::Json => Value::Json(d(raw)?),
        Kind::Bytes => Value::Bytes(d(raw)?),
        Kind::Date => Value::Date(d(raw)?),
        Kind::Time => Value::Time(time_of_day(d(raw)?)?),
        Kind::Naive => Value::Timestamp(d::<chrono::NaiveDateTime>(raw)?.and_utc()),
        Kind::Timestamp => Value::Timestamp(d(raw)?),
        _ => return Err("unexpected column kind for MySQL".into()),
    })
}

/// MySQL's TIME is a signed duration up to 838:59:59; the driver's time-of-day reading drops
/// the sign and refuses hours past 23. trueup compares times of day, so anything else is
/// refused with what it is.
fn time_of_day(
    t: sqlx::mysql::types::MySqlTime,
) -> Result<chrono::NaiveTime, sqlx::error::BoxDynError> {
    let of_day = t
        .is_valid_time_of_day()
        .then(|| {
            chrono::NaiveTime::from_hms_micro_opt(
                t.hours(),
                u32::from(t.minutes()),
                u32::from(t.seconds()),
                t.microseconds(),
            )
        })
        .flatten();
    of_day.ok_or_else(|| {
        Unrepresentable::OutOfRange {
            value: format!(
                "the duration {}{}:{:02}:{:02}, not a time of day",
                if t.is_negative() { "-" } else { "" },
                t.hours(),
                t.minutes(),
                t.seconds()
            ),
            text_type: "CHAR",
        }
        .into()
    })
}

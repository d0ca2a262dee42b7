use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteValueRef};
use sqlx::{Column, Decode, Executor, Row as _, Sqlite, SqlitePool, Statement, TypeInfo, ValueRef};

use crate::config::SourceConfig;
use crate::domain::Value;

use super::decode::{Kind, SqliteHint, sqlite_text};
use super::{Feed, Leased, ReadRequest, SourceError, decode_value, resolve_needed, wrap};

pub(super) fn pool(cfg: &SourceConfig) -> Result<SqlitePool, SourceError> {
    let opts = SqliteConnectOptions::from_str(cfg.url.expose())
        .map_err(|e| SourceError::Connect {
            source_name: cfg.name.clone(),
            message: format!("bad URL {}: {e}", cfg.url),
        })?
        // Read-only at the file level, and no writes at the statement level either.
        .read_only(true)
        .create_if_missing(false)
        .pragma("query_only", "ON");
    Ok(SqlitePoolOptions::new()
        .max_connections(cfg.pool_size)
        .acquire_timeout(Duration::from_secs(15))
        .connect_lazy_with(opts))
}

pub(super) async fn read(pool: SqlitePool, req: ReadRequest, mut feed: Feed) {
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
    conn: &mut sqlx::pool::PoolConnection<Sqlite>,
    req: &ReadRequest,
    feed: &mut Feed,
) -> Result<(), Option<SourceError>> {
    let conn: &mut sqlx::SqliteConnection = conn;
    if super::has_several_statements(&req.query) {
        return Err(Some(feed.query_error(
            "the query holds more than one statement; an invariant query is a single SELECT",
        )));
    }
    // One snapshot for the whole read.
    conn.execute("BEGIN")
        .await
        .map_err(|e| Some(feed.query_error(e)))?;
    let inner = wrap(&req.query);
    let stmt = (&mut *conn)
        .prepare(&inner)
        .await
        .map_err(|e| Some(feed.query_error(e)))?;
    let columns: Vec<String> = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
    let kinds: Vec<Kind> = stmt
        .columns()
        .iter()
        .map(|c| Kind::Dynamic(hint(c.type_info().name())))
        .collect();
    let order = resolve_needed(feed.source(), &columns, req).map_err(Some)?;
    let order_sql: Vec<String> = order
        .iter()
        .map(|c| format!("\"{}\" COLLATE BINARY", c.replace('"', "\"\"")))
        .collect();
    let filter_idx = super::resolve_filter(feed.source(), &columns, req).map_err(Some)?;
    let mut sql = inner;
    if !filter_idx.is_empty() {
        let conditions: Vec<String> = filter_idx
            .iter()
            .map(|&i| format!("\"{}\" = ?", columns[i].replace('"', "\"\"")))
            .collect();
        sql = format!("{sql} WHERE {}", conditions.join(" AND "));
    }
    if !order_sql.is_empty() {
        sql = format!("{sql} ORDER BY {}", order_sql.join(", "));
    }
    feed.send_columns(columns.clone()).await.map_err(|_| None)?;

    let mut query = sqlx::query(&sql).persistent(false);
    for (_, value) in &req.filter {
        query = match value {
            serde_json::Value::Bool(b) => query.bind(*b),
            serde_json::Value::Number(n) if n.is_i64() => query.bind(n.as_i64()),
            serde_json::Value::Number(n) => query.bind(n.as_f64()),
            serde_json::Value::String(s) => query.bind(s.clone()),
            other => query.bind(other.to_string()),
        };
    }
    let mut rows = query.fetch(&mut *conn);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| Some(feed.query_error(e)))?
    {
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

fn hint(declared: &str) -> SqliteHint {
    match declared {
        "BOOLEAN" => SqliteHint::Bool,
        "DATE" => SqliteHint::Date,
        "TIME" => SqliteHint::Time,
        "DATETIME" => SqliteHint::Datetime,
        _ => SqliteHint::None,
    }
}

fn decode(kind: Kind, raw: SqliteValueRef<'_>) -> Result<Value, sqlx::error::BoxDynError> {
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let Kind::Dynamic(hint) = kind else {
        return Err("unexpected column kind for SQLite".into());
    };
    fn d<'r, T: Decode<'r, Sqlite>>(
        raw: SqliteValueRef<'r>,
    ) -> Result<T, sqlx::error::BoxDynError> {
        T::decode(raw)
    }
    let storage = raw.type_info().name().to_owned();
    Ok(match (storage.as_str(), hint) {
        ("INTEGER", SqliteHint::Bool) => Value::Bool(d::<i64>(raw)? != 0),
        ("INTEGER", SqliteHint::Datetime) => {
            let secs: i64 = d(raw)?;
            chrono::DateTime::from_timestamp(secs, 0)
                .map(Value::Timestamp)
                .unwrap_or(Value::Int(secs))
        }
        ("INTEGER", _) => Value::Int(d(raw)?),
        ("REAL", _) => Value::Float(d(raw)?),
        ("TEXT", _) => sqlite_text(d(raw)?, hint),
        ("BLOB", _) => Value::Bytes(d(raw)?),
        (other, _) => return Err(format!("unexpected SQLite storage class {other}").into()),
    })
}

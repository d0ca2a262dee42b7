use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteValueRef};
use sqlx::{Decode, Executor, Sqlite, SqlitePool, TypeInfo, ValueRef};

use crate::config::SqlSource as SourceConfig;
use crate::domain::Value;

use super::decode::{Kind, SqliteHint, sqlite_text};
use super::sql::{DecodeResult, FilterParam, SqlQuery, bind_typed};
use super::{ReadRequest, SourceError};

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
        .connect_lazy_with(super::quiet_slow_statements(opts)))
}

/// SQLite's side of a read (see [`super::sql`]).
pub(super) struct Dialect;

impl super::sql::Dialect for Dialect {
    type DB = Sqlite;

    async fn begin(
        &self,
        conn: &mut sqlx::SqliteConnection,
        req: &ReadRequest,
    ) -> Result<(), sqlx::error::BoxDynError> {
        // PostgreSQL and MySQL refuse several statements in one prepared string; SQLite
        // would run them all.
        if super::has_several_statements(req.query.sql().unwrap_or_default()) {
            return Err(
                "the query holds more than one statement; an invariant query is a single SELECT"
                    .into(),
            );
        }
        // One snapshot for the whole read (the file is open read-only, `query_only` on).
        conn.execute("BEGIN").await?;
        Ok(())
    }

    fn quote(&self, column: &str) -> String {
        format!("\"{}\"", column.replace('"', "\"\""))
    }

    fn kind_of(&self, type_name: &str) -> Option<Kind> {
        Some(Kind::Dynamic(hint(type_name)))
    }

    fn order_term(&self, quoted: &str, _kind: Option<Kind>) -> String {
        format!("{quoted} COLLATE BINARY")
    }

    fn latest_instant(&self, quoted: &str) -> String {
        // The latest as time orders them, whatever text form each row uses (see instant_term).
        format!("strftime('%Y-%m-%dT%H:%M:%fZ', max(julianday({quoted})))")
    }

    fn instant_term(&self, quoted: &str, _kind: Option<Kind>, _n: usize, op: &str) -> String {
        // SQLite keeps instants as text in several forms (`T` or a space, a zone or none):
        // compared as Julian days, every form ISO 8601 allows orders as time does.
        format!("julianday({quoted}) {op} julianday(?)")
    }

    fn bind<'q>(&self, query: SqlQuery<'q, Sqlite>, param: FilterParam) -> SqlQuery<'q, Sqlite> {
        // SQLite has no decimal type: the number's text, as a decimal column stores it.
        let text = |d: rust_decimal::Decimal| d.to_string();
        bind_typed!(query, param, decimal: text, timestamp: |t| t)
    }

    fn decode(&self, kind: Kind, raw: SqliteValueRef<'_>) -> DecodeResult {
        decode(kind, raw)
    }
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

fn decode(kind: Kind, raw: SqliteValueRef<'_>) -> DecodeResult {
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
        // A declared BOOLEAN holds any integer: only 0 and 1 are the booleans (SQLite's own
        // `flag = 1` is false for 2); another stays the integer it is, equal to no boolean.
        ("INTEGER", SqliteHint::Bool) => match d::<i64>(raw)? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => Value::Int(other),
        },
        ("INTEGER", SqliteHint::Datetime) => {
            let secs: i64 = d(raw)?;
            chrono::DateTime::from_timestamp(secs, 0)
                .map(Value::Timestamp)
                .unwrap_or(Value::Int(secs))
        }
        ("INTEGER", _) => Value::Int(d(raw)?),
        ("REAL", _) => Value::Float(d(raw)?),
        ("TEXT", _) => sqlite_text(d::<&str>(raw)?, hint),
        ("BLOB", _) => Value::Bytes(d(raw)?),
        (other, _) => return Err(format!("unexpected SQLite storage class {other}").into()),
    })
}

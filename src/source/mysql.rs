use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlValueRef};
use sqlx::{Decode, Executor, MySql, MySqlPool, ValueRef};

use crate::config::SqlSource as SourceConfig;
use crate::domain::Value;

use super::decode::{Kind, Unrepresentable, exact_decimal};
use super::sql::{BulkRead, BulkShape, DecodeResult, FilterParam, SqlQuery, bind_typed};
use super::stream::Feed;
use super::{ReadRequest, RoleAudit, SourceError};

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
        .connect_lazy_with(super::quiet_slow_statements(opts)))
}

pub(super) async fn audit_role(
    source: &super::Source,
    pool: &MySqlPool,
) -> Result<RoleAudit, SourceError> {
    let name = &source.name;
    // Without a turn: every read waits for this audit, a reconcile's included, and one
    // holding all of the source's turns would wait for ever on an audit waiting for a turn.
    // It is one short query, once per process.
    let mut lease =
        super::Leased::acquire(name, &source.endpoint, super::Turn::default(), pool).await?;
    let conn: &mut sqlx::MySqlConnection = &mut lease;
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
    // Nothing was left open on it: the pool may have it again.
    lease.reusable();
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

/// MySQL's and MariaDB's side of a read (see [`super::sql`]).
#[derive(Default)]
pub(super) struct Dialect {
    /// Where statements without parameters read their rows, when the source's URL allows
    /// (see [`super::mysql_bulk`]); elsewhere, and without it, sqlx reads them.
    pub(super) bulk: Option<std::sync::Arc<super::mysql_bulk::Bulk>>,
}

impl super::sql::Dialect for Dialect {
    type DB = MySql;

    const KINDS_FROM_FIRST_ROW: bool = true;

    const CHECKSUM_ENGINE: Option<super::checksum::Engine> = Some(super::checksum::Engine::MySql);

    async fn begin(
        &self,
        conn: &mut sqlx::MySqlConnection,
        _req: &ReadRequest,
    ) -> Result<(), sqlx::error::BoxDynError> {
        // (The statement time limit is the session's, set when the connection opened.)
        conn.execute("START TRANSACTION READ ONLY").await?;
        Ok(())
    }

    fn quote(&self, column: &str) -> String {
        format!("`{}`", column.replace('`', "``"))
    }

    fn kind_of(&self, type_name: &str) -> Option<Kind> {
        kind_of(type_name)
    }

    fn order_term(&self, quoted: &str, kind: Option<Kind>) -> String {
        if kind.is_some_and(Kind::is_text) {
            // UTF-8 bytes, no padding, whatever the column's charset.
            format!("CAST(CONVERT({quoted} USING utf8mb4) AS BINARY)")
        } else {
            quoted.to_owned()
        }
    }

    fn bind<'q>(&self, query: SqlQuery<'q, MySql>, param: FilterParam) -> SqlQuery<'q, MySql> {
        // The session's time zone is UTC (sqlx sets it), as trueup reads TIMESTAMPs.
        let utc = |t: chrono::DateTime<chrono::Utc>| t.naive_utc();
        bind_typed!(query, param, decimal: |d| d, timestamp: utc)
    }

    fn decode(&self, kind: Kind, raw: MySqlValueRef<'_>) -> DecodeResult {
        decode(kind, raw)
    }

    fn bulk<'a>(
        &'a self,
        _conn: &'a mut sqlx::MySqlConnection,
        statement: &'a str,
        shape: BulkShape<'a>,
        feed: &'a mut Feed,
    ) -> Option<impl Future<Output = Result<BulkRead, Option<SourceError>>> + Send + 'a> {
        // (MySQL digests no values: every column arrives whole.)
        let bulk = self.bulk.clone().filter(|b| b.available())?;
        // The `mysql` client rewrites what it takes for a named parameter (`:name`) before
        // the server sees the statement; its lexer is not the server's, so a statement that
        // could hold one (even in a literal or a comment) reads through sqlx.
        let named = statement
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b':' && (w[1] == b'_' || w[1].is_ascii_lowercase()));
        if named {
            return None;
        }
        Some(super::mysql_bulk::read(
            bulk,
            statement,
            shape.columns,
            feed,
        ))
    }
}

pub(super) fn kind_of(type_name: &str) -> Option<Kind> {
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

fn decode(kind: Kind, raw: MySqlValueRef<'_>) -> DecodeResult {
    if raw.is_null() {
        return Ok(Value::Null);
    }
    fn d<'r, T: Decode<'r, MySql>>(raw: MySqlValueRef<'r>) -> Result<T, sqlx::error::BoxDynError> {
        T::decode(raw)
    }
    Ok(match kind {
        // sqlx names an unsigned TINYINT(1) BOOLEAN, and its signed reading of the one byte
        // would turn 200 into -56.
        Kind::I64 if <u64 as sqlx::Type<MySql>>::compatible(&raw.type_info()) => {
            Value::Int(i64::try_from(d::<u64>(raw)?)?)
        }
        Kind::I64 => Value::Int(d(raw)?),
        Kind::U64 => {
            let v: u64 = d(raw)?;
            i64::try_from(v)
                .map(Value::Int)
                .unwrap_or_else(|_| Value::Decimal(v.into()))
        }
        // As MySQL writes it: sqlx's decimal would round what has too many digits.
        Kind::Decimal => Value::Decimal(exact_decimal("DECIMAL", d::<&str>(raw)?)?),
        Kind::F32 => Value::Float(d::<f32>(raw)?.into()),
        Kind::F64 => Value::Float(d(raw)?),
        Kind::Text => Value::Text(d::<&str>(raw)?.into()),
        Kind::Json => Value::Json(Box::new(super::decode::exact_json(d(raw)?, "CHAR")?)),
        Kind::Bytes => Value::Bytes(d(raw)?),
        Kind::Date => Value::Date(d(raw)?),
        Kind::Time => {
            let t: sqlx::mysql::types::MySqlTime = d(raw)?;
            Value::Time(time_of_day(
                // (Not `is_negative`: sqlx 0.8.6's answers `is_positive`.)
                !t.is_positive(),
                t.hours(),
                t.minutes(),
                t.seconds(),
                t.microseconds(),
            )?)
        }
        Kind::Naive => Value::Timestamp(d::<chrono::NaiveDateTime>(raw)?.and_utc()),
        Kind::Timestamp => Value::Timestamp(d(raw)?),
        _ => return Err("unexpected column kind for MySQL".into()),
    })
}

/// MySQL's TIME is a signed duration up to 838:59:59; the driver's time-of-day reading drops
/// the sign and refuses hours past 23. trueup compares times of day, so anything else is
/// refused with what it is. `hours` counts whole days too.
pub(super) fn time_of_day(
    negative: bool,
    hours: u32,
    minutes: u8,
    seconds: u8,
    microseconds: u32,
) -> Result<chrono::NaiveTime, sqlx::error::BoxDynError> {
    let of_day = (!negative && hours < 24)
        .then(|| {
            chrono::NaiveTime::from_hms_micro_opt(
                hours,
                u32::from(minutes),
                u32::from(seconds),
                microseconds,
            )
        })
        .flatten();
    of_day.ok_or_else(|| {
        Unrepresentable::OutOfRange {
            value: format!(
                "the duration {}{hours}:{minutes:02}:{seconds:02}, not a time of day",
                if negative { "-" } else { "" },
            ),
            text_type: "CHAR",
        }
        .into()
    })
}

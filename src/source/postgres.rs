use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgValueRef};
use sqlx::{Column, Decode, Executor, PgPool, Postgres, Row as _, Statement, TypeInfo, ValueRef};

use crate::config::SourceConfig;
use crate::domain::{EVIDENCE_VALUE_CAP, SourceName, Value};

use super::decode::{Kind, pg_time, unsupported};
use super::{
    DIGEST_OVER, Feed, Leased, ReadRequest, RoleAudit, SourceError, decode_value, resolve_needed,
    wrap,
};

pub(super) fn pool(cfg: &SourceConfig, timeout_ms: u64) -> Result<PgPool, SourceError> {
    let opts = PgConnectOptions::from_str(cfg.url.expose())
        .map_err(|e| SourceError::Connect {
            source_name: cfg.name.clone(),
            message: format!("bad URL {}: {e}", cfg.url),
        })?
        .application_name("trueup")
        .options([
            ("default_transaction_read_only", "on".to_owned()),
            ("statement_timeout", timeout_ms.to_string()),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(cfg.pool_size)
        .acquire_timeout(Duration::from_secs(15))
        .connect_lazy_with(opts))
}

pub(super) async fn audit_role(
    name: &SourceName,
    endpoint: &str,
    pool: &PgPool,
) -> Result<RoleAudit, SourceError> {
    let mut conn = super::connect(name, endpoint, pool).await?;
    let connect = |e: sqlx::Error| SourceError::Connect {
        source_name: name.clone(),
        message: e.to_string(),
    };
    // One round trip. `pg_has_role(..., 'MEMBER')` follows memberships whether or not they
    // are inherited: a role that can `SET ROLE` to a privileged one is as privileged.
    let row = sqlx::query(
        "SELECT r.rolsuper, \
           r.rolcreaterole AND current_setting('server_version_num')::int < 160000, \
           ARRAY(SELECT m.rolname::text FROM pg_roles m \
              WHERE m.rolname IN ('pg_execute_server_program', 'pg_write_server_files', 'pg_read_server_files') \
                AND pg_has_role(current_user, m.oid, 'MEMBER') ORDER BY 1), \
           ARRAY(SELECT m.rolname::text FROM pg_roles m \
              WHERE m.rolname <> current_user AND m.rolsuper \
                AND pg_has_role(current_user, m.oid, 'MEMBER') ORDER BY 1), \
           (SELECT string_agg(t, ', ') FROM ( \
              SELECT format('%I.%I', n.nspname, c.relname) AS t \
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind IN ('r', 'p', 'v', 'f') \
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                AND n.nspname NOT LIKE 'pg_toast%' \
                AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') \
              ORDER BY 1 LIMIT 5) w), \
           (SELECT string_agg(m.rolname, ', ') FROM pg_roles m \
              WHERE m.rolname <> current_user AND NOT m.rolsuper \
                AND pg_has_role(current_user, m.oid, 'MEMBER') \
                AND EXISTS ( \
                  SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p') \
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                    AND has_table_privilege(m.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE'))), \
           ARRAY(SELECT extname::text FROM pg_extension \
              WHERE extname IN ('dblink', 'postgres_fdw') ORDER BY 1) \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(connect)?;
    let mut audit = RoleAudit::default();
    let superuser = row.try_get::<bool, _>(0).map_err(connect)?;
    if superuser {
        // Everything below follows from it; saying so once is clearer.
        audit.privileged.push("the role is a superuser".to_owned());
    }
    if !superuser && row.try_get::<bool, _>(1).map_err(connect)? {
        audit.privileged.push(
            "the role has CREATEROLE, which before PostgreSQL 16 can grant itself pg_execute_server_program"
                .to_owned(),
        );
    }
    for role in row
        .try_get::<Vec<String>, _>(2)
        .map_err(connect)?
        .into_iter()
        .filter(|_| !superuser)
    {
        let can = match role.as_str() {
            "pg_execute_server_program" => "run programs on the database host",
            "pg_write_server_files" => "write files on the database host",
            _ => "read files on the database host",
        };
        audit
            .privileged
            .push(format!("the role is a member of {role} (can {can})"));
    }
    let superusers = row.try_get::<Vec<String>, _>(3).map_err(connect)?;
    if !superuser && !superusers.is_empty() {
        audit.privileged.push(format!(
            "the role can SET ROLE to the superuser {}",
            superusers.join(", ")
        ));
    }
    if let Some(tables) = row.try_get::<Option<String>, _>(4).map_err(connect)? {
        audit
            .writable
            .push(format!("INSERT/UPDATE/DELETE/TRUNCATE on {tables}"));
    }
    if let Some(roles) = row.try_get::<Option<String>, _>(5).map_err(connect)? {
        audit
            .writable
            .push(format!("can SET ROLE to {roles}, which can write"));
    }
    for ext in row.try_get::<Vec<String>, _>(6).map_err(connect)? {
        audit.links.push(format!(
            "the database has the extension {ext}, whose connections no read-only transaction covers; a privileged role could write through it"
        ));
    }
    Ok(audit)
}

pub(super) async fn read(pool: PgPool, req: ReadRequest, timeout_ms: u64, mut feed: Feed) {
    let mut conn = match Leased::acquire(&pool, &feed).await {
        Ok(c) => c,
        Err(err) => return feed.fail(err).await,
    };
    let abandoned = feed.abandoned();
    // Stop as soon as nobody reads: a cancelled or timed-out run must not keep a connection
    // busy until its query ends.
    let outcome = tokio::select! {
        r = run(&mut conn, &req, timeout_ms, &mut feed) => r,
        () = abandoned => Err(None),
    };
    match outcome {
        Ok(()) => {
            // Always roll back: whatever the query did to the session is undone.
            if sqlx::query("ROLLBACK").execute(&mut **conn).await.is_ok() {
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

/// `Err(None)`: the evaluator stopped listening.
async fn run(
    conn: &mut sqlx::pool::PoolConnection<Postgres>,
    req: &ReadRequest,
    timeout_ms: u64,
    feed: &mut Feed,
) -> Result<(), Option<SourceError>> {
    let conn: &mut sqlx::PgConnection = conn;
    sqlx::query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *conn)
        .await
        .map_err(|e| Some(feed.query_error(e)))?;
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(timeout_ms.to_string())
        .execute(&mut *conn)
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
        .map(|c| {
            kind_of(c.type_info().name())
                .ok_or_else(|| unsupported(feed.source(), c.name(), c.type_info().name()))
        })
        .collect::<Result<_, _>>()
        .map_err(Some)?;
    let order = resolve_needed(feed.source(), &columns, req).map_err(Some)?;
    let order_sql: Vec<String> = order
        .iter()
        .map(|c| {
            let i = super::index_of(&columns, c).unwrap_or(0);
            let quoted = format!("\"{}\"", c.replace('"', "\"\""));
            if kinds[i].is_text() {
                format!("({quoted})::text COLLATE \"C\"")
            } else {
                // Plain ascending order, so a key index can serve it. Where NULLs land does
                // not matter: the merge skips rows with a NULL key.
                quoted
            }
        })
        .collect();
    let filter_idx = super::resolve_filter(feed.source(), &columns, req).map_err(Some)?;
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    for (n, (&i, (_, value))) in filter_idx.iter().zip(&req.filter).enumerate() {
        let quoted = format!("\"{}\"", columns[i].replace('"', "\"\""));
        let (param, as_text) = filter_param(kinds[i], value).ok_or_else(|| {
            Some(super::filter_value_error(
                feed.source(),
                &columns[i],
                value,
                &format!("{:?}", kinds[i]),
            ))
        })?;
        conditions.push(if as_text {
            format!("({quoted})::text = ${}", n + 1)
        } else {
            format!("{quoted} = ${}", n + 1)
        });
        params.push(param);
    }
    // Long text and bytes values of digestible columns stay in the database: it sends their
    // length, SHA-256 and start instead (four columns in place of one).
    let digest = req.digestible(&columns);
    // (Columns are selected by name from the subquery: a query returning one name twice
    // keeps its values whole.)
    let unique = columns
        .iter()
        .enumerate()
        .all(|(i, c)| !columns[..i].iter().any(|o| o.eq_ignore_ascii_case(c)));
    let digest: Vec<bool> = digest
        .iter()
        .zip(&kinds)
        .map(|(d, k)| unique && *d && matches!(k, Kind::Text | Kind::Bytes))
        .collect();
    let mut sql = if digest.iter().any(|d| *d) {
        let list: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let q = format!("trueup_q.\"{}\"", c.replace('"', "\"\""));
                if !digest[i] {
                    return q;
                }
                let long = format!("octet_length({q}) > {DIGEST_OVER}");
                // Length and digest of the UTF-8 bytes, whatever the database's encoding,
                // so they match what trueup computes of the same text.
                let (bytes, sha, start) = if kinds[i] == Kind::Bytes {
                    (
                        format!("octet_length({q})"),
                        format!("sha256({q})"),
                        format!("substring({q} from 1 for {})", (EVIDENCE_VALUE_CAP - 2) / 2),
                    )
                } else {
                    let utf8 = format!("convert_to({q}::text, 'UTF8')");
                    (
                        format!("octet_length({utf8})"),
                        format!("sha256({utf8})"),
                        format!("left({q}::text, {EVIDENCE_VALUE_CAP})"),
                    )
                };
                format!(
                    "CASE WHEN {long} THEN NULL ELSE {q} END, CASE WHEN {long} THEN {bytes} END, \
                     CASE WHEN {long} THEN encode({sha}, 'hex') END, CASE WHEN {long} THEN {start} END"
                )
            })
            .collect();
        super::wrap_selecting(&req.query, &list.join(", "))
    } else {
        inner
    };
    if !conditions.is_empty() {
        sql = format!("{sql} WHERE {}", conditions.join(" AND "));
    }
    if !order_sql.is_empty() {
        sql = format!("{sql} ORDER BY {}", order_sql.join(", "));
    }
    feed.send_columns(columns.clone()).await.map_err(|_| None)?;

    let mut query = sqlx::query(&sql).persistent(false);
    for p in params {
        query = match p {
            FilterParam::Bool(v) => query.bind(v),
            FilterParam::I16(v) => query.bind(v),
            FilterParam::I32(v) => query.bind(v),
            FilterParam::I64(v) => query.bind(v),
            FilterParam::Decimal(v) => query.bind(v),
            FilterParam::F64(v) => query.bind(v),
            FilterParam::Text(v) => query.bind(v),
            FilterParam::Date(v) => query.bind(v),
            FilterParam::Time(v) => query.bind(v),
            FilterParam::Naive(v) => query.bind(v),
            FilterParam::Timestamp(v) => query.bind(v),
        };
    }
    let mut rows = query.fetch(&mut *conn);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| Some(feed.query_error(e)))?
    {
        let mut values = Vec::with_capacity(kinds.len());
        let mut at = 0;
        for (i, kind) in kinds.iter().enumerate() {
            let raw = row.try_get_raw(at).map_err(|e| Some(feed.query_error(e)))?;
            let value = if digest[i] {
                let parts: Vec<PgValueRef<'_>> = (at + 1..at + 4)
                    .map(|j| row.try_get_raw(j))
                    .collect::<Result<_, _>>()
                    .map_err(|e| Some(feed.query_error(e)))?;
                at += 4;
                decode_value(feed.source(), &columns[i], || match parts[0].is_null() {
                    true => decode(*kind, raw),
                    false => digested(*kind, &parts),
                })
                .map_err(Some)?
            } else {
                at += 1;
                decode_value(feed.source(), &columns[i], || decode(*kind, raw)).map_err(Some)?
            };
            values.push(value);
        }
        // The driver's copy of a row can be large (a buffer sized for it): free it before
        // waiting for room in the channel.
        drop(row);
        feed.push_row(values).await?;
    }
    feed.finish().await.map_err(|_| None)?;
    Ok(())
}

/// A key value bound with the type of the column it is compared with, so the key's index
/// serves the lookup.
enum FilterParam {
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    Decimal(rust_decimal::Decimal),
    F64(f64),
    Text(String),
    Date(chrono::NaiveDate),
    Time(chrono::NaiveTime),
    Naive(chrono::NaiveDateTime),
    Timestamp(chrono::DateTime<chrono::Utc>),
}

/// The parameter for comparing a column of `kind` with a canonical JSON value, and whether the
/// column is compared as text.
fn filter_param(kind: Kind, value: &serde_json::Value) -> Option<(FilterParam, bool)> {
    use serde_json::Value as J;
    let decimal = || match value {
        J::Number(n) => rust_decimal::Decimal::from_str(&n.to_string()).ok(),
        J::String(s) => rust_decimal::Decimal::from_str(s).ok(),
        _ => None,
    };
    let text = || match value {
        J::String(s) => Some(s.clone()),
        J::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let instant = || {
        value
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    Some(match kind {
        Kind::Bool => (FilterParam::Bool(value.as_bool()?), false),
        Kind::I16 => (
            FilterParam::I16(i16::try_from(value.as_i64()?).ok()?),
            false,
        ),
        Kind::I32 => (
            FilterParam::I32(i32::try_from(value.as_i64()?).ok()?),
            false,
        ),
        Kind::I64 | Kind::U32 => (FilterParam::I64(value.as_i64()?), false),
        Kind::U64 | Kind::Decimal => (FilterParam::Decimal(decimal()?), false),
        Kind::F32 | Kind::F64 => (FilterParam::F64(value.as_f64()?), false),
        Kind::Text | Kind::PaddedText | Kind::Uuid => (FilterParam::Text(text()?), true),
        Kind::Date => (FilterParam::Date(value.as_str()?.parse().ok()?), false),
        Kind::Time => (FilterParam::Time(value.as_str()?.parse().ok()?), false),
        Kind::Naive => (FilterParam::Naive(instant()?.naive_utc()), false),
        Kind::Timestamp => (FilterParam::Timestamp(instant()?), false),
        Kind::Json | Kind::Bytes | Kind::Dynamic(_) => return None,
    })
}

fn kind_of(type_name: &str) -> Option<Kind> {
    Some(match type_name {
        "BOOL" => Kind::Bool,
        "INT2" => Kind::I16,
        "INT4" => Kind::I32,
        "INT8" => Kind::I64,
        "OID" => Kind::U32,
        "NUMERIC" => Kind::Decimal,
        "FLOAT4" => Kind::F32,
        "FLOAT8" => Kind::F64,
        "TEXT" | "VARCHAR" | "NAME" | "UNKNOWN" | "citext" | "CITEXT" => Kind::Text,
        "BPCHAR" | "CHAR" => Kind::PaddedText,
        "UUID" => Kind::Uuid,
        "DATE" => Kind::Date,
        "TIME" => Kind::Time,
        "TIMESTAMP" => Kind::Naive,
        "TIMESTAMPTZ" => Kind::Timestamp,
        "JSON" | "JSONB" => Kind::Json,
        "BYTEA" => Kind::Bytes,
        _ => return None,
    })
}

type DecodeResult = Result<Value, sqlx::error::BoxDynError>;

/// PostgreSQL's binary NUMERIC (base-10000 digits, weight, sign, display scale) straight to a
/// `Decimal`: one integer pass instead of the general conversion, which divides per digit and
/// showed up as an eighth of the reconcile's CPU time. `None` for what it does not cover
/// (NaN, infinities, more than 28 digits of scale or 96 bits of mantissa).
fn numeric_to_decimal(bytes: &[u8]) -> Option<rust_decimal::Decimal> {
    let word = |i: usize| -> Option<i32> {
        Some(i32::from(i16::from_be_bytes([
            *bytes.get(i)?,
            *bytes.get(i + 1)?,
        ])))
    };
    let ndigits = usize::try_from(word(0)?).ok()?;
    let weight = word(2)?;
    let sign = u16::from_be_bytes([*bytes.get(4)?, *bytes.get(5)?]);
    let scale = u16::from_be_bytes([*bytes.get(6)?, *bytes.get(7)?]);
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        _ => return None,
    };
    if scale > 28 || bytes.len() != 8 + 2 * ndigits {
        return None;
    }
    let mut mantissa: i128 = 0;
    for i in 0..ndigits {
        let digit = i128::from(word(8 + 2 * i)?);
        // This digit's power of ten once the value is scaled by 10^scale.
        let exp = 4 * (weight - i as i32) + i32::from(scale);
        let term = if exp >= 0 {
            digit.checked_mul(10_i128.checked_pow(u32::try_from(exp).ok()?)?)?
        } else {
            // Past the display scale only zeros remain in a digit group.
            digit / 10_i128.checked_pow(u32::try_from(-exp).ok()?)?
        };
        mantissa = mantissa.checked_add(term)?;
    }
    if negative {
        mantissa = -mantissa;
    }
    rust_decimal::Decimal::try_from_i128_with_scale(mantissa, u32::from(scale)).ok()
}

/// A long value as the database described it: its length, SHA-256 (hex) and start.
fn digested(kind: Kind, parts: &[PgValueRef<'_>]) -> DecodeResult {
    let bytes = <i32 as Decode<Postgres>>::decode(parts[0].clone())?;
    let sha256 = <String as Decode<Postgres>>::decode(parts[1].clone())?;
    let prefix = match kind {
        Kind::Bytes => crate::domain::value_bytes_prefix(&<Vec<u8> as Decode<Postgres>>::decode(
            parts[2].clone(),
        )?),
        _ => crate::domain::value_text_prefix(&<String as Decode<Postgres>>::decode(
            parts[2].clone(),
        )?)
        .to_owned(),
    };
    Ok(Value::Digest(Box::new(crate::domain::Digested {
        class: if kind == Kind::Bytes {
            crate::domain::ValueClass::Bytes
        } else {
            crate::domain::ValueClass::Text
        },
        bytes: bytes as u64,
        sha256,
        prefix,
    })))
}

fn decode(kind: Kind, raw: PgValueRef<'_>) -> DecodeResult {
    if raw.is_null() {
        return Ok(Value::Null);
    }
    fn d<'r, T: Decode<'r, Postgres>>(raw: PgValueRef<'r>) -> Result<T, sqlx::error::BoxDynError> {
        T::decode(raw)
    }
    Ok(match kind {
        Kind::Bool => Value::Bool(d(raw)?),
        Kind::I16 => Value::Int(d::<i16>(raw)?.into()),
        Kind::I32 => Value::Int(d::<i32>(raw)?.into()),
        Kind::I64 => Value::Int(d(raw)?),
        Kind::U32 => Value::Int(d::<sqlx::postgres::types::Oid>(raw)?.0.into()),
        Kind::Decimal => match raw.format() {
            sqlx::postgres::PgValueFormat::Binary => {
                let bytes = raw.as_bytes()?;
                match numeric_to_decimal(bytes) {
                    Some(v) => Value::Decimal(v),
                    // NaN, infinities and values beyond 28 digits: sqlx says what is wrong.
                    None => Value::Decimal(d(raw)?),
                }
            }
            sqlx::postgres::PgValueFormat::Text => Value::Decimal(d(raw)?),
        },
        Kind::F32 => Value::Float(d::<f32>(raw)?.into()),
        Kind::F64 => Value::Float(d(raw)?),
        Kind::Text => Value::Text(d(raw)?),
        Kind::PaddedText => Value::Text(d::<String>(raw)?.trim_end_matches(' ').to_owned()),
        Kind::Uuid => Value::Text(d::<sqlx::types::Uuid>(raw)?.to_string()),
        Kind::Date | Kind::Time | Kind::Naive | Kind::Timestamp
            if raw.format() == sqlx::postgres::PgValueFormat::Binary =>
        {
            let bytes = raw.as_bytes()?;
            match kind {
                Kind::Date => Value::Date(pg_time::date(bytes)?),
                Kind::Time => Value::Time(pg_time::time(bytes)?),
                _ => Value::Timestamp(pg_time::timestamp(bytes)?),
            }
        }
        Kind::Date => Value::Date(d(raw)?),
        Kind::Time => Value::Time(d(raw)?),
        Kind::Naive => Value::Timestamp(d::<chrono::NaiveDateTime>(raw)?.and_utc()),
        Kind::Timestamp => Value::Timestamp(d(raw)?),
        Kind::Json => Value::Json(d(raw)?),
        Kind::Bytes => Value::Bytes(d(raw)?),
        Kind::U64 | Kind::Dynamic(_) => return Err("unexpected column kind for PostgreSQL".into()),
    })
}

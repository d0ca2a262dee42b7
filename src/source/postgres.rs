use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgValueRef};
use sqlx::{Decode, PgPool, Postgres, Row as _, ValueRef};

use crate::config::SourceConfig;
use crate::domain::{EVIDENCE_VALUE_CAP, SourceName, Value};

use super::decode::{Kind, pg_time};
use super::sql::{DecodeResult, FilterParam, SqlQuery, bind_typed};
use super::{DIGEST_OVER, ReadRequest, RoleAudit, SourceError};

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

/// PostgreSQL's side of a read (see [`super::sql`]).
pub(super) struct Dialect {
    pub(super) timeout_ms: u64,
}

impl super::sql::Dialect for Dialect {
    type DB = Postgres;

    async fn begin(
        &self,
        conn: &mut sqlx::PgConnection,
        _req: &ReadRequest,
    ) -> Result<(), sqlx::error::BoxDynError> {
        sqlx::query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *conn)
            .await?;
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(self.timeout_ms.to_string())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    fn quote(&self, column: &str) -> String {
        format!("\"{}\"", column.replace('"', "\"\""))
    }

    fn kind_of(&self, type_name: &str) -> Option<Kind> {
        kind_of(type_name)
    }

    fn order_term(&self, quoted: &str, kind: Option<Kind>) -> String {
        if kind.is_some_and(Kind::is_text) {
            format!("({quoted})::text COLLATE \"C\"")
        } else {
            // Plain ascending order, so a key index can serve it. Where NULLs land does not
            // matter: the merge skips rows with a NULL key.
            quoted.to_owned()
        }
    }

    fn filter_term(&self, quoted: &str, kind: Option<Kind>, n: usize) -> String {
        match kind {
            Some(Kind::Text | Kind::PaddedText | Kind::Uuid) => format!("({quoted})::text = ${n}"),
            _ => format!("{quoted} = ${n}"),
        }
    }

    fn bind<'q>(
        &self,
        query: SqlQuery<'q, Postgres>,
        param: FilterParam,
    ) -> SqlQuery<'q, Postgres> {
        bind_typed!(query, param, decimal: |d| d, timestamp: |t| t)
    }

    fn decode(&self, kind: Kind, raw: PgValueRef<'_>) -> DecodeResult {
        decode(kind, raw)
    }

    fn digests(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Text | Kind::Bytes)
    }

    fn digest_select(&self, q: &str, kind: Kind) -> String {
        let long = format!("octet_length({q}) > {DIGEST_OVER}");
        // Length and digest of the UTF-8 bytes, whatever the database's encoding, so they
        // match what trueup computes of the same text.
        let (bytes, sha, start) = if kind == Kind::Bytes {
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
    }

    fn digested(&self, kind: Kind, parts: &[PgValueRef<'_>]) -> DecodeResult {
        digested(kind, parts)
    }
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

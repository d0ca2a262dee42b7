use std::future::Future;
use std::str::FromStr;

use futures_util::TryStreamExt;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgValueRef};
use sqlx::{PgPool, Postgres, Row as _, ValueRef};

use crate::config::SqlSource as SourceConfig;
use crate::domain::{EVIDENCE_VALUE_CAP, Value};

use super::decode::Kind;
use super::pg_wire;
use super::sql::{BulkRead, BulkShape, DecodeResult, FilterParam, RowShape, SqlQuery, bind_typed};
use super::stream::Feed;
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
        .connect_lazy_with(super::quiet_slow_statements(opts)))
}

pub(super) async fn audit_role(
    source: &super::Source,
    pool: &PgPool,
) -> Result<RoleAudit, SourceError> {
    let name = &source.name;
    // Without a turn: every read waits for this audit, a reconcile's included, and one
    // holding all of the source's turns would wait for ever on an audit waiting for a turn.
    // It is one short query, once per process.
    let mut lease =
        super::Leased::acquire(name, &source.endpoint, super::Turn::default(), pool).await?;
    let conn: &mut sqlx::PgConnection = &mut lease;
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
    // Nothing was left open on it: the pool may have it again.
    lease.reusable();
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

    const CHECKSUM_ENGINE: Option<super::checksum::Engine> =
        Some(super::checksum::Engine::Postgres);

    // A summary runs under the server's own JIT settings: over 10M rows the compiled
    // expressions and tuple deforming take 1.39 s where the interpreter takes 1.92 s; under
    // ~2M rows the plan stays below `jit_above_cost` and nothing is compiled (docs/scale.md).

    fn origin(column: &sqlx::postgres::PgColumn) -> Option<(u32, i16)> {
        column
            .relation_id()
            .zip(column.relation_attribute_no())
            .map(|(table, attribute)| (table.0, attribute))
    }

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

    fn placeholder(&self, n: usize) -> String {
        format!("${n}")
    }

    fn key_operand(&self, quoted: &str, kind: Option<Kind>) -> String {
        match kind {
            Some(Kind::Text | Kind::PaddedText | Kind::Uuid) => format!("({quoted})::text"),
            _ => quoted.to_owned(),
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

    /// `COPY (statement) TO STDOUT (FORMAT binary)`: each row one message of the connection's
    /// read buffer, decoded where it lies, without the driver's per-row machinery. COPY TO only
    /// reads, so it runs in the read's read-only transaction under its statement timeout.
    fn bulk<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        statement: &'a str,
        shape: BulkShape<'a>,
        feed: &'a mut Feed,
    ) -> Option<impl Future<Output = Result<BulkRead, Option<SourceError>>> + Send + 'a> {
        let shape = RowShape {
            columns: shape.columns,
            kinds: shape.kinds?,
            digest: shape.digest,
        };
        Some(async move {
            let copy = format!("COPY ({statement}) TO STDOUT (FORMAT binary)");
            let mut messages = conn
                .copy_out_raw(&copy)
                .await
                .map_err(|e| Some(feed.query_error(e)))?;
            let mut rows = pg_wire::CopyRows::new(shape.wire_columns());
            let mut fields = Vec::with_capacity(shape.wire_columns());
            while let Some(message) = messages
                .try_next()
                .await
                .map_err(|e| Some(feed.query_error(e)))?
            {
                if !rows
                    .row(&message, &mut fields)
                    .map_err(|e| Some(feed.query_error(e)))?
                {
                    continue;
                }
                let field = |i: usize| Ok(fields[i].clone().map(|r| &message[r]));
                let values = shape
                    .decode(
                        feed.source(),
                        field,
                        Option::is_none,
                        |kind, raw| raw.map_or(Ok(Value::Null), |b| pg_wire::value(kind, b)),
                        |kind, [length, sha256, start]| match (length, sha256, start) {
                            (Some(l), Some(s), Some(p)) => pg_wire::digested(kind, l, s, p),
                            _ => Err("a digest with a NULL part".into()),
                        },
                    )
                    .map_err(Some)?;
                // The row's message is a slice of the connection's buffer: let it go before
                // waiting for room in the channel.
                drop(message);
                if feed.add_row(values).map_err(Some)? {
                    feed.send_batch().await.map_err(|_| None)?;
                }
            }
            // A COPY that ended without its trailer did not send every row.
            if !rows.ended() {
                return Err(Some(
                    feed.query_error("the binary COPY ended before its trailer"),
                ));
            }
            Ok(BulkRead::Complete)
        })
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

/// A long value as the database described it: its length, SHA-256 (hex) and start.
fn digested(kind: Kind, parts: &[PgValueRef<'_>]) -> DecodeResult {
    let [length, sha256, start] = parts else {
        return Err(format!("a digest in {} parts, expected 3", parts.len()).into());
    };
    pg_wire::digested(
        kind,
        length.as_bytes()?,
        sha256.as_bytes()?,
        start.as_bytes()?,
    )
}

fn decode(kind: Kind, raw: PgValueRef<'_>) -> DecodeResult {
    if raw.is_null() {
        return Ok(Value::Null);
    }
    match raw.format() {
        // What sqlx asks the server for: every result column in binary.
        sqlx::postgres::PgValueFormat::Binary => pg_wire::value(kind, raw.as_bytes()?),
        sqlx::postgres::PgValueFormat::Text => {
            Err("a value in text format, where trueup reads PostgreSQL's binary format".into())
        }
    }
}

/// Whether the key column `key` of `query` (described as `described`) cannot repeat: the query
/// returns each row of one table at most once ([`super::checksum::single_table`]) and the key is
/// that table's column, under a unique, valid, non-partial index on it alone; an inherited
/// table counts only with `ONLY` (its children's rows are not under its index).
pub(super) async fn key_unique(
    source: &super::Source,
    pool: &PgPool,
    query: &str,
    described: &super::checksum::Described,
    key: usize,
) -> Result<bool, SourceError> {
    let (Some((table, only)), Some(Some((relation, column)))) = (
        super::checksum::single_table(query),
        described.origins.get(key).copied(),
    ) else {
        return Ok(false);
    };
    super::summarize::within_read(
        &Dialect {
            timeout_ms: source.timeout_ms,
        },
        source,
        pool,
        |c| {
            Box::pin(async move {
                sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_index i ON i.indrelid = c.oid \
                   WHERE c.oid = to_regclass($1) AND c.oid = $2::oid \
                     AND (c.relkind = 'p' OR (c.relkind = 'r' AND ($3 OR NOT EXISTS \
                          (SELECT 1 FROM pg_inherits h WHERE h.inhparent = c.oid)))) \
                     AND i.indisunique AND i.indisvalid AND i.indpred IS NULL \
                     AND i.indexprs IS NULL AND i.indnkeyatts = 1 AND i.indkey[0] = $4)",
                )
                .bind(table)
                .bind(i64::from(relation))
                .bind(only)
                .bind(column)
                .fetch_one(&mut *c)
                .await
            })
        },
    )
    .await
}

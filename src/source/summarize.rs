//! Running what [`super::checksum`] composes: each statement on a leased connection in a
//! read-only transaction of its own, the way a read runs (the same [`Dialect::begin`], the
//! connection pooled again only after a rollback, closed on any failure or past the
//! statement timeout and [`super::READ_GRACE`]).

use sqlx::{Column, Database, Executor, Statement, TypeInfo};

use super::checksum::{Described, Engine, Flavor, Summary, SummaryRequest};
use super::sql::Dialect;
use super::{Leased, ReadRequest, Source, SourceError};

/// What every statement here reads its values as: text, parsed by trueup, so both engines'
/// results decode one way.
type Text = Option<String>;

pub(super) async fn within_read<D, T>(
    dialect: &D,
    source: &Source,
    pool: &sqlx::Pool<D::DB>,
    work: impl for<'c> FnOnce(
        &'c mut <D::DB as Database>::Connection,
    ) -> futures_util::future::BoxFuture<'c, Result<T, sqlx::Error>>,
) -> Result<T, SourceError>
where
    D: Dialect,
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
{
    let query_error = |e: &dyn std::fmt::Display| SourceError::Query {
        source_name: source.name.clone(),
        message: e.to_string(),
    };
    let deadline = std::time::Duration::from_millis(source.timeout_ms) + super::READ_GRACE;
    let mut conn = Leased {
        conn: super::connect(&source.name, &source.endpoint, pool).await?,
        reusable: false,
    };
    let begin = ReadRequest {
        query: String::new(),
        needed: Vec::new(),
        order_by: Vec::new(),
        filter: Vec::new(),
        digest_long_except: None,
        key_range: None,
    };
    let run = async {
        let c: &mut <D::DB as Database>::Connection = &mut conn;
        dialect
            .begin(&mut *c, &begin)
            .await
            .map_err(|e| query_error(&e))?;
        if let Some(settings) = dialect.summary_settings() {
            (&mut *c)
                .execute(settings)
                .await
                .map_err(|e| query_error(&e))?;
        }
        let out = work(&mut *c).await.map_err(|e| query_error(&e))?;
        (&mut *c)
            .execute("ROLLBACK")
            .await
            .map_err(|e| query_error(&e))?;
        Ok::<_, SourceError>(out)
    };
    let out = tokio::time::timeout(deadline, run)
        .await
        .map_err(|_| SourceError::Incomplete {
            source_name: source.name.clone(),
            cause: format!(
                "a checksum query did not end within {}s (the source's statement_timeout and {}s more): the network or the database stalled; the connection was closed",
                deadline.as_secs(),
                super::READ_GRACE.as_secs()
            ),
        })??;
    conn.reusable();
    Ok(out)
}

/// The result columns of `query` and their kinds, from preparing it (nothing runs).
pub(super) async fn describe<D>(
    dialect: &D,
    source: &Source,
    pool: &sqlx::Pool<D::DB>,
    query: &str,
) -> Result<Described, SourceError>
where
    D: Dialect,
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
{
    let wrapped = super::wrap(query);
    let columns = within_read(dialect, source, pool, |c| {
        Box::pin(async move {
            let stmt = (&mut *c).prepare(&wrapped).await?;
            Ok(stmt
                .columns()
                .iter()
                .map(|c| {
                    (
                        c.name().to_owned(),
                        c.type_info().name().to_owned(),
                        D::origin(c),
                    )
                })
                .collect::<Vec<_>>())
        })
    })
    .await?;
    Ok(Described {
        kinds: columns.iter().map(|(_, t, _)| dialect.kind_of(t)).collect(),
        origins: columns.iter().map(|(_, _, o)| *o).collect(),
        columns: columns.into_iter().map(|(c, _, _)| c).collect(),
    })
}

fn fetch_texts<'c, DB: Database>(
    conn: &'c mut DB::Connection,
    sql: String,
    columns: usize,
) -> futures_util::future::BoxFuture<'c, Result<Vec<Vec<Text>>, sqlx::Error>>
where
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'r> Text: sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row as _;
    Box::pin(async move {
        let rows = sqlx::query::<DB>(&sql).fetch_all(&mut *conn).await?;
        rows.iter()
            .map(|row| (0..columns).map(|i| row.try_get::<Text, _>(i)).collect())
            .collect()
    })
}

/// The smallest and largest key `query` returns (`None`: no row with a key).
pub(super) async fn key_bounds<D>(
    dialect: &D,
    source: &Source,
    pool: &sqlx::Pool<D::DB>,
    query: &str,
    key: &str,
) -> Result<Option<(i64, i64)>, SourceError>
where
    D: Dialect,
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    for<'q> <D::DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::DB>,
    for<'r> Text: sqlx::Decode<'r, D::DB>,
    String: sqlx::Type<D::DB>,
    usize: sqlx::ColumnIndex<<D::DB as Database>::Row>,
{
    let key = format!("trueup_q.{}", dialect.quote(key));
    let list = match D::CHECKSUM_ENGINE {
        Some(Engine::MySql) => format!("CAST(MIN({key}) AS CHAR), CAST(MAX({key}) AS CHAR)"),
        _ => format!("min({key})::int8::text, max({key})::int8::text"),
    };
    let sql = super::wrap_selecting(query, &list);
    let rows = within_read(dialect, source, pool, |c| fetch_texts::<D::DB>(c, sql, 2)).await?;
    let bad = |what: &str| SourceError::Query {
        source_name: source.name.clone(),
        message: format!("the key's bounds: {what}"),
    };
    let [row] = rows.as_slice() else {
        return Err(bad("not one row"));
    };
    let parse = |t: &Text| -> Result<Option<i64>, SourceError> {
        t.as_deref()
            .map(|s| {
                s.parse::<i64>()
                    .map_err(|_| bad(&format!("`{s}` is not a bigint")))
            })
            .transpose()
    };
    Ok(parse(&row[0])?.zip(parse(&row[1])?))
}

/// Summarises `req`'s segments in the database.
pub(super) async fn summarize<D>(
    dialect: &D,
    source: &Source,
    pool: &sqlx::Pool<D::DB>,
    req: &SummaryRequest,
) -> Result<Summary, SourceError>
where
    D: Dialect,
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    for<'q> <D::DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::DB>,
    for<'r> Text: sqlx::Decode<'r, D::DB>,
    String: sqlx::Type<D::DB>,
    usize: sqlx::ColumnIndex<<D::DB as Database>::Row>,
{
    let engine = D::CHECKSUM_ENGINE.ok_or_else(|| unsupported(source))?;
    let sql = super::checksum::summary_sql(engine, req, |c| dialect.quote(c));
    let rows = within_read(dialect, source, pool, |c| fetch_texts::<D::DB>(c, sql, 4)).await?;
    let bad = |message: String| SourceError::Query {
        source_name: source.name.clone(),
        message: format!("a checksum summary: {message}"),
    };
    let number = |t: &Text, what: &str| -> Result<i128, SourceError> {
        match t.as_deref() {
            None => Ok(0),
            Some(s) => s
                .parse::<i128>()
                .map_err(|_| bad(format!("its {what} `{s}` is not an integer"))),
        }
    };
    let mut summary = Summary::default();
    for row in &rows {
        let rows_in = u64::try_from(number(&row[1], "row count")?).unwrap_or(0);
        let segment = super::checksum::SegmentSummary {
            rows: rows_in,
            sum: number(&row[2], "sum")?,
            repeats: u64::try_from(number(&row[3], "repeat count")?).unwrap_or(0),
        };
        match &row[0] {
            None => summary.null_keys = rows_in,
            Some(_) => {
                let b = u64::try_from(number(&row[0], "bucket")?)
                    .ok()
                    .filter(|b| *b < req.buckets)
                    .ok_or_else(|| bad(format!("a bucket outside 0..{}", req.buckets)))?;
                summary.buckets.insert(b, segment);
            }
        }
    }
    Ok(summary)
}

/// Fixed values hashed as `flavor` hashes them here (see [`super::checksum::probe_sql`]).
pub(super) async fn probe<D>(
    dialect: &D,
    source: &Source,
    pool: &sqlx::Pool<D::DB>,
    flavor: Flavor,
) -> Result<String, SourceError>
where
    D: Dialect,
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    for<'q> <D::DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::DB>,
    for<'r> Text: sqlx::Decode<'r, D::DB>,
    String: sqlx::Type<D::DB>,
    usize: sqlx::ColumnIndex<<D::DB as Database>::Row>,
{
    let engine = D::CHECKSUM_ENGINE.ok_or_else(|| unsupported(source))?;
    let sql = super::checksum::probe_sql(engine, flavor);
    let rows = within_read(dialect, source, pool, |c| fetch_texts::<D::DB>(c, sql, 1)).await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .unwrap_or_default())
}

fn unsupported(source: &Source) -> SourceError {
    SourceError::Query {
        source_name: source.name.clone(),
        message: format!(
            "{} sources compute no segment checksums; stream this invariant (`mode: stream`)",
            source.kind.as_str()
        ),
    }
}

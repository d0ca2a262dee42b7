//! Running what [`super::checksum`] composes: each statement on a leased connection in a
//! read-only transaction of its own, the way a read runs (the same [`Dialect::begin`], the
//! connection pooled again only after a rollback, closed on any failure or past the
//! statement timeout and [`super::READ_GRACE`]).

use sqlx::{Column, Database, Executor, Statement, TypeInfo};

use super::checksum::{Described, Engine, Flavor, SegmentSummary, SummaryRequest, Totals};
use super::sql::Dialect;
use super::{KeyRanges, Leased, ReadRequest, Source, SourceError};
use crate::domain::Read;

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
    // The turn first, outside the deadline: waiting for it is not a stall.
    let turn = source.gate.turn(&source.name).await?;
    let mut conn = Leased::acquire(&source.name, &source.endpoint, turn, pool).await?;
    let begin = ReadRequest::plain(Read::Sql(String::new()));
    let run = async {
        let c: &mut <D::DB as Database>::Connection = &mut conn;
        dialect
            .begin(&mut *c, &begin)
            .await
            .map_err(|e| query_error(&e))?;
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

/// Runs `sql` (a statement of [`super::checksum`]'s, no parameters) in a read of its own and
/// returns its rows, each value as text (`columns` of them). The one generic step of every
/// statement here: the engine-neutral functions below reach it through
/// [`Source::fetch_texts`].
pub(super) async fn fetch<D>(
    dialect: &D,
    source: &Source,
    pool: &sqlx::Pool<D::DB>,
    sql: String,
    columns: usize,
) -> Result<Vec<Vec<Text>>, SourceError>
where
    D: Dialect,
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    for<'q> <D::DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::DB>,
    for<'r> Text: sqlx::Decode<'r, D::DB>,
    String: sqlx::Type<D::DB>,
    usize: sqlx::ColumnIndex<<D::DB as Database>::Row>,
{
    use sqlx::Row as _;
    within_read(dialect, source, pool, |c| {
        Box::pin(async move {
            let rows = sqlx::query::<D::DB>(&sql).fetch_all(&mut *c).await?;
            rows.iter()
                .map(|row| (0..columns).map(|i| row.try_get::<Text, _>(i)).collect())
                .collect()
        })
    })
    .await
}

/// The smallest and largest key `query` returns (`None`: no row with a key).
pub(super) async fn key_bounds(
    source: &Source,
    query: &str,
    key: &str,
) -> Result<Option<(i64, i64)>, SourceError> {
    let column = key;
    let key = format!("trueup_q.{}", source.quote(key));
    let list = match source.checksum_engine() {
        Some(Engine::MySql) => format!("CAST(MIN({key}) AS CHAR), CAST(MAX({key}) AS CHAR)"),
        _ => format!("CAST(min({key}) AS TEXT), CAST(max({key}) AS TEXT)"),
    };
    let rows = source
        .fetch_texts(super::wrap_selecting(query, &list), 2)
        .await?;
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
                    .map_err(|_| {
                        bad(&format!(
                            "the key `{column}` holds `{s}`, not an integer: segments of a key range split integer keys only"
                        ))
                    })
            })
            .transpose()
    };
    Ok(parse(&row[0])?.zip(parse(&row[1])?))
}

/// Summarises `req`'s segments in the database, sent to `to` in bucket order a chunk at a
/// time; gives the rows with a NULL key.
pub(super) async fn summarize(
    source: &Source,
    req: &SummaryRequest,
    to: Chunks,
) -> Result<u64, SourceError> {
    let engine = source
        .checksum_engine()
        .ok_or_else(|| unsupported(source))?;
    let mut sql = super::checksum::summary_sql(engine, req, |c| source.quote(c));
    // Qualified: a bare `b` would name the output column, `b` as text ("10" < "2").
    sql.push_str(" ORDER BY trueup_s.b");
    let setting = super::checksum::summary_memory(engine, req);
    source
        .fold_summary(setting, sql, req.buckets, to)
        .await?
        .map_err(|message| SourceError::Query {
            source_name: source.name.clone(),
            message: format!("a checksum summary: {message}"),
        })
}

/// Where an ordered summary goes: its buckets in bucket order, a chunk at a time.
pub type Chunks = tokio::sync::mpsc::Sender<Vec<(u64, SegmentSummary)>>;

/// Buckets to a chunk of an ordered summary.
const CHUNK: usize = 4096;

/// Sends a chunk of buckets to `to`, leaving `chunk` empty.
async fn send_chunk(chunk: &mut Vec<(u64, SegmentSummary)>, to: &Chunks) -> Result<(), Stopped> {
    let full = std::mem::replace(chunk, Vec::with_capacity(CHUNK));
    to.send(full).await.map_err(|_| Stopped)
}

/// The comparison stopped reading a summary before its end (it failed elsewhere): the
/// summary fails too, so that a count it did not finish is never given as whole.
struct Stopped;

impl Stopped {
    const WHY: &'static str = "the comparison stopped reading its buckets before their end";
}

/// Runs a summary statement ordered by bucket, after `setting` (a statement changing a
/// setting for this transaction only) if any, and sends its buckets to `to` a chunk at a
/// time as they arrive: none is kept as text or held, since a fine split's summary has a
/// row for every 16 rows of the table. Gives the rows with a NULL key; `Ok(Err(why))`: a
/// row that is no summary's, or no one reads the buckets any more. (The comparison checks
/// their order, for every engine alike.)
pub(super) async fn fold_summary<D>(
    dialect: &D,
    source: &Source,
    pool: &sqlx::Pool<D::DB>,
    setting: Option<String>,
    sql: String,
    buckets: u64,
    to: Chunks,
) -> Result<Result<u64, String>, SourceError>
where
    D: Dialect,
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    for<'q> <D::DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::DB>,
    for<'r> Option<&'r str>: sqlx::Decode<'r, D::DB>,
    for<'r> &'r str: sqlx::Type<D::DB>,
    usize: sqlx::ColumnIndex<<D::DB as Database>::Row>,
{
    use futures_util::TryStreamExt as _;
    use sqlx::Row as _;
    within_read(dialect, source, pool, |c| {
        Box::pin(async move {
            if let Some(setting) = &setting {
                (&mut *c).execute(setting.as_str()).await?;
            }
            let mut rows = sqlx::query::<D::DB>(&sql).fetch(&mut *c);
            let mut chunk = Vec::with_capacity(CHUNK);
            let mut null_keys = 0;
            while let Some(row) = rows.try_next().await? {
                let cell = |i: usize| row.try_get::<Option<&str>, _>(i);
                let cells = [cell(0)?, cell(1)?, cell(2)?, cell(3)?];
                match summary_row(cells, buckets) {
                    Ok(SummaryRow::Bucket(b, segment)) => chunk.push((b, segment)),
                    Ok(SummaryRow::NullKeys(rows)) => null_keys = rows,
                    Err(why) => return Ok(Err(why)),
                }
                if chunk.len() >= CHUNK && send_chunk(&mut chunk, &to).await.is_err() {
                    return Ok(Err(Stopped::WHY.to_owned()));
                }
            }
            if !chunk.is_empty() && send_chunk(&mut chunk, &to).await.is_err() {
                return Ok(Err(Stopped::WHY.to_owned()));
            }
            Ok(Ok(null_keys))
        })
    })
    .await
}

/// One row of a summary statement.
#[derive(Debug, PartialEq, Eq)]
enum SummaryRow {
    Bucket(u64, SegmentSummary),
    /// The NULL bucket: rows with a NULL key.
    NullKeys(u64),
}

/// Reads one summary row (bucket, rows, sum, repeats; a NULL bucket for the NULL keys).
fn summary_row(cells: [Option<&str>; 4], buckets: u64) -> Result<SummaryRow, String> {
    let number = |t: Option<&str>, what: &str| -> Result<i128, String> {
        t.map_or(Ok(0), |s| {
            s.parse::<i128>()
                .map_err(|_| format!("its {what} `{s}` is not an integer"))
        })
    };
    let [bucket, rows, sum, repeats] = cells;
    let rows = u64::try_from(number(rows, "row count")?).unwrap_or(0);
    let segment = SegmentSummary {
        rows,
        sum: number(sum, "sum")?.into(),
        repeats: u64::try_from(number(repeats, "repeat count")?).unwrap_or(0),
    };
    match bucket {
        None => Ok(SummaryRow::NullKeys(rows)),
        Some(_) => {
            let b = u64::try_from(number(bucket, "bucket")?)
                .ok()
                .filter(|b| *b < buckets)
                .ok_or_else(|| format!("a bucket outside 0..{buckets}"))?;
            Ok(SummaryRow::Bucket(b, segment))
        }
    }
}

/// Totals `req`'s range on a PostgreSQL source, over only `only`'s keys when given (see
/// [`super::checksum::totals_sql`]).
pub(super) async fn totals(
    source: &Source,
    req: &SummaryRequest,
    only: Option<&KeyRanges>,
) -> Result<Totals, SourceError> {
    let sql = super::checksum::totals_sql(req, only, |c| source.quote(c));
    let rows = source.fetch_texts(sql, 6).await?;
    let [row] = rows.as_slice() else {
        return Err(SourceError::Query {
            source_name: source.name.clone(),
            message: format!(
                "checksum totals: {} rows where one was expected",
                rows.len()
            ),
        });
    };
    Totals::parse(row).map_err(|why| SourceError::Query {
        source_name: source.name.clone(),
        message: format!("checksum totals: {why}"),
    })
}

/// Fixed values hashed as `flavor` hashes them here (see [`super::checksum::probe_sql`]).
pub(super) async fn probe(source: &Source, flavor: Flavor) -> Result<String, SourceError> {
    let engine = source
        .checksum_engine()
        .ok_or_else(|| unsupported(source))?;
    let rows = source
        .fetch_texts(super::checksum::probe_sql(engine, flavor), 1)
        .await?;
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
            source.class
        ),
    }
}

/// A SQLite side's summary, computed here: its file is local, so its rows are read in key
/// order and hashed by [`super::checksum::canonical_value`] as the other engine writes them.
/// Its buckets go to `to` a chunk at a time as they are complete; gives the rows with a NULL
/// key.
pub(super) async fn in_process(
    source: &Source,
    req: &SummaryRequest,
    to: &Chunks,
) -> Result<u64, SourceError> {
    use super::checksum::{canonical_row_hash_of, canonical_value};
    use crate::domain::Value;
    let key = crate::domain::ColumnName::parse(&req.hash.key).map_err(|e| SourceError::Query {
        source_name: source.name.clone(),
        message: e.to_string(),
    })?;
    // The NULL keys are counted on the first, whole-range request: it reads every row.
    let mut rows = source
        .read(ReadRequest {
            query: Read::Sql(req.query.clone()),
            needed: Vec::new(),
            order_by: vec![key],
            filter: Vec::new(),
            digest_long_except: None,
            key_ranges: (!req.null_keys).then(|| {
                KeyRanges::between(req.range.column.clone(), req.range.low, req.range.high)
            }),
            keys: None,
            changed_since: None,
        })
        .await?;
    let columns = rows.columns().to_vec();
    let index = |name: &str| {
        super::index_of(&columns, name).ok_or_else(|| SourceError::MissingColumn {
            source_name: source.name.clone(),
            column: name.to_owned(),
            role: "a compared column",
            available: columns.join(", "),
        })
    };
    let key_at = index(&req.hash.key)?;
    let compared = req
        .hash
        .columns
        .iter()
        .map(|(c, _, _)| index(c))
        .collect::<Result<Vec<_>, _>>()?;
    let width = i128::from(req.width());
    let (low, high) = (req.range.low, req.range.high);
    let stopped = |_: Stopped| SourceError::Query {
        source_name: source.name.clone(),
        message: format!("a checksum summary: {}", Stopped::WHY),
    };
    let mut chunk: Vec<(u64, SegmentSummary)> = Vec::with_capacity(CHUNK);
    let mut null_keys = 0;
    let mut previous: Option<i64> = None;
    let mut parts = Vec::with_capacity(compared.len() + 1);
    while let Some(batch) = rows.next_batch().await {
        for row in batch? {
            let k = match &row[key_at] {
                Value::Null => {
                    null_keys += 1;
                    continue;
                }
                Value::Int(k) => *k,
                other => {
                    return Err(SourceError::NoCanonicalForm {
                        source_name: source.name.clone(),
                        column: req.hash.key.clone(),
                        value: format!("{} {}", other.class(), other.to_evidence_json()),
                    });
                }
            };
            if k < low || k > high {
                continue;
            }
            parts.clear();
            let kinds = std::iter::once(req.hash.key_kind)
                .chain(req.hash.columns.iter().map(|(_, kind, _)| *kind));
            for (&i, other) in std::iter::once(&key_at).chain(&compared).zip(kinds) {
                parts.push(canonical_value(&row[i], other).ok_or_else(|| {
                    SourceError::NoCanonicalForm {
                        source_name: source.name.clone(),
                        column: columns[i].clone(),
                        value: format!("{} {}", row[i].class(), row[i].to_evidence_json()),
                    }
                })?);
            }
            let bucket = ((i128::from(k) - i128::from(low)) / width) as u64;
            // Rows come in key order, so buckets in bucket order: a new bucket closes the
            // one before, and a full chunk of closed ones goes.
            if chunk.last().is_none_or(|(b, _)| *b != bucket) {
                if chunk.len() >= CHUNK {
                    send_chunk(&mut chunk, to).await.map_err(stopped)?;
                }
                chunk.push((bucket, SegmentSummary::default()));
            }
            let (_, segment) = chunk.last_mut().expect("pushed above");
            segment.rows += 1;
            segment.sum = (segment.sum.get() + canonical_row_hash_of(&parts)).into();
            if previous == Some(k) {
                segment.repeats += 1;
            }
            previous = Some(k);
        }
    }
    if !chunk.is_empty() {
        send_chunk(&mut chunk, to).await.map_err(stopped)?;
    }
    Ok(null_keys)
}

/// [`super::checksum::probe_sql`]'s canonical probe, computed here.
pub(super) fn in_process_probe() -> String {
    use super::checksum::{canonical_row_hash_of, canonical_value};
    use crate::domain::Value;
    let t = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().ok();
    let values = [
        Some(Value::Int(5_000_000_001)),
        Some(Value::Bool(true)),
        "-12.340".parse().ok().map(Value::Decimal),
        Some(Value::Text("trueup ✓|~".into())),
        t("2026-01-02T03:04:05.678901Z").map(Value::Timestamp),
        "2026-12-03".parse().ok().map(Value::Date),
        "03:04:05.5".parse().ok().map(Value::Time),
        Some(Value::Bytes(vec![0x00, 0xc3, 0xa9, 0x7f])),
    ];
    values
        .iter()
        .map(|v| {
            v.as_ref()
                .and_then(|v| canonical_value(v, probe_kind(v)))
                .map(|c| canonical_row_hash_of(&[c]).to_string())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The kind the probe's other side has for a probe value: its own.
fn probe_kind(value: &crate::domain::Value) -> super::decode::Kind {
    use super::decode::Kind;
    use crate::domain::Value;
    match value {
        Value::Bool(_) => Kind::Bool,
        Value::Decimal(_) => Kind::Decimal,
        _ => Kind::I64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_row_is_a_bucket_or_the_null_keys_or_an_error_naming_the_cell() {
        let seg = |rows: u64, sum: i128| SegmentSummary {
            rows,
            sum: sum.into(),
            repeats: 0,
        };
        let wide = "-170141183460469231731687303715884105728"; // i128::MIN: a sum never wraps
        assert_eq!(
            summary_row([Some("3"), Some("10"), Some(wide), Some("0")], 8),
            Ok(SummaryRow::Bucket(3, seg(10, i128::MIN)))
        );
        assert_eq!(
            summary_row([None, Some("4"), Some("0"), Some("0")], 8),
            Ok(SummaryRow::NullKeys(4))
        );
        assert_eq!(
            summary_row([Some("8"), Some("1"), Some("1"), Some("0")], 8),
            Err("a bucket outside 0..8".to_owned())
        );
        assert_eq!(
            summary_row([Some("1"), Some("x"), Some("1"), Some("0")], 8),
            Err("its row count `x` is not an integer".to_owned())
        );
    }
}

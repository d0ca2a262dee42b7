//! The one read path of the SQL engines: lease a connection, open a read-only transaction,
//! prepare the wrapped query, compose the key filter and the key order, stream and decode
//! the rows, roll back. Each engine says only what differs, as a [`Dialect`]: how a read
//! begins, how to quote, order and compare a column, which types it reads and how it decodes
//! them (and, on PostgreSQL, how a long value is digested in the database).

use std::future::Future;
use std::str::FromStr;

use futures_util::TryStreamExt;
use sqlx::query::Query;
use sqlx::{Column, Database, Executor, IntoArguments, Row as _, Statement, TypeInfo};

use crate::domain::Value;

use super::decode::{Kind, unsupported};
use super::{
    Feed, Leased, ReadRequest, SourceError, decode_row, filter_value_error, index_of,
    resolve_filter, resolve_needed, wrap, wrap_selecting,
};

pub(super) type DecodeResult = Result<Value, sqlx::error::BoxDynError>;

/// A query of `DB` being built.
pub(super) type SqlQuery<'q, DB> = Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// What one SQL engine does its own way; everything else about a read is [`read`]'s.
pub(super) trait Dialect: Send + Sync + 'static {
    type DB: Database + sqlx::database::HasStatementCache;

    /// Whether the prepared statement's column types can differ from the executed result's
    /// (MySQL): decoders are then built from the first row, and the declared types only
    /// guide ordering and key filters.
    const KINDS_FROM_FIRST_ROW: bool = false;

    /// The engine whose segment checksums [`super::checksum`] composes for this dialect;
    /// `None`: it computes none (its reconciles stream).
    const CHECKSUM_ENGINE: Option<super::checksum::Engine> = None;

    /// The table (its id) and column number a result column is read from unchanged, where
    /// the engine says so.
    fn origin(_column: &<Self::DB as Database>::Column) -> Option<(u32, i16)> {
        None
    }

    /// Opens the read's transaction: read-only, one snapshot, the statement timeout set.
    fn begin<'c>(
        &'c self,
        conn: &'c mut <Self::DB as Database>::Connection,
        req: &'c ReadRequest,
    ) -> impl Future<Output = Result<(), sqlx::error::BoxDynError>> + Send + 'c;

    /// A column name as a quoted identifier.
    fn quote(&self, column: &str) -> String;

    /// How trueup reads a column the database calls `type_name`; `None`: it does not.
    fn kind_of(&self, type_name: &str) -> Option<Kind>;

    /// The `ORDER BY` term for a key column: byte-wise for text, so that every engine sorts
    /// keys in the order `Value::key_cmp` compares them.
    fn order_term(&self, quoted: &str, kind: Option<Kind>) -> String;

    /// The `n`th parameter (from 1) as the statement writes it.
    fn placeholder(&self, _n: usize) -> String {
        "?".to_owned()
    }

    /// A key column as a `WHERE` term compares it with a parameter.
    fn key_operand(&self, quoted: &str, _kind: Option<Kind>) -> String {
        quoted.to_owned()
    }

    /// The `WHERE` term comparing a key column with the `n`th parameter.
    fn filter_term(&self, quoted: &str, kind: Option<Kind>, n: usize) -> String {
        format!(
            "{} = {}",
            self.key_operand(quoted, kind),
            self.placeholder(n)
        )
    }

    /// The select-list expression for the latest instant in a change column.
    fn latest_instant(&self, quoted: &str) -> String {
        format!("max({quoted})")
    }

    /// The `WHERE` term keeping rows whose change column is at or after (`op` `>=`) or at or
    /// before (`<=`) the instant in the `n`th parameter.
    fn instant_term(&self, quoted: &str, _kind: Option<Kind>, n: usize, op: &str) -> String {
        format!("{quoted} {op} {}", self.placeholder(n))
    }

    /// Binds a key value as a parameter of the engine's type for it.
    fn bind<'q>(&self, query: SqlQuery<'q, Self::DB>, param: FilterParam)
    -> SqlQuery<'q, Self::DB>;

    /// One value of a column of `kind`.
    fn decode(&self, kind: Kind, raw: <Self::DB as Database>::ValueRef<'_>) -> DecodeResult;

    /// Whether a long value of a column of `kind` can be digested in the database.
    fn digests(&self, _kind: Kind) -> bool {
        false
    }

    /// The four select-list expressions standing for a digestible column `quoted`: the value
    /// when it is short (else NULL), then the long value's length, SHA-256 (hex) and start.
    fn digest_select(&self, quoted: &str, _kind: Kind) -> String {
        quoted.to_owned()
    }

    /// A long value from the three parts [`Dialect::digest_select`] added.
    fn digested(
        &self,
        _kind: Kind,
        _parts: &[<Self::DB as Database>::ValueRef<'_>],
    ) -> DecodeResult {
        Err("this engine does not digest values".into())
    }

    /// Reads a composed statement without parameters into `feed` the engine's bulk way, if it
    /// has one (PostgreSQL: a binary COPY; MySQL: a client of its own, see
    /// [`super::mysql_bulk`]), decoding by `shape` as [`read`] does and
    /// ending only on the engine's proof that every row came; `None`: it has none. A bulk
    /// read that stops early may leave its connection out of step, so it must fail the read
    /// (and the connection is closed); only a complete one returns `Ok(Complete)`, and only
    /// one that fed nothing `Ok(NotStarted)`.
    fn bulk<'a>(
        &'a self,
        _conn: &'a mut <Self::DB as Database>::Connection,
        _statement: &'a str,
        _shape: BulkShape<'a>,
        _feed: &'a mut Feed,
    ) -> Option<impl Future<Output = Result<BulkRead, Option<SourceError>>> + Send + 'a> {
        None::<std::future::Ready<_>>
    }
}

/// How a bulk read that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BulkRead {
    /// Every row came.
    Complete,
    /// It could not start and fed nothing (MySQL: the server refused its connection): the
    /// read goes on the ordinary way, on the connection that holds its turn.
    NotStarted,
}

/// What a bulk read knows of its result before it starts: the column names, their kinds
/// where the prepared statement is the truth about them (`None`: the executed result's own
/// types are, see [`Dialect::KINDS_FROM_FIRST_ROW`]) and which arrive digested.
#[derive(Clone, Copy)]
pub(super) struct BulkShape<'a> {
    pub(super) columns: &'a [String],
    pub(super) kinds: Option<&'a [Kind]>,
    pub(super) digest: &'a [bool],
}

/// How a result's rows decode: per column its name, its kind and whether it arrives as the
/// four wire columns of a digest (see [`Dialect::digest_select`]).
pub(super) struct RowShape<'a> {
    pub(super) columns: &'a [String],
    pub(super) kinds: &'a [Kind],
    pub(super) digest: &'a [bool],
}

impl RowShape<'_> {
    /// Columns on the wire: a digested column is four.
    pub(super) fn wire_columns(&self) -> usize {
        self.kinds.len() + 3 * self.digest.iter().filter(|d| **d).count()
    }

    /// One row from its wire fields, whatever their form `F`: `field(i)` is the `i`th wire
    /// field, `whole` decodes a value (NULL included), `digested` a long value from its
    /// length, digest and start. The length is NULL when the value was short enough to come
    /// whole.
    pub(super) fn decode<F>(
        &self,
        source: &crate::domain::SourceName,
        mut field: impl FnMut(usize) -> Result<F, SourceError>,
        is_null: impl Fn(&F) -> bool,
        whole: impl Fn(Kind, F) -> DecodeResult,
        digested: impl Fn(Kind, [F; 3]) -> DecodeResult,
    ) -> Result<crate::source::Row, SourceError> {
        decode_row(source, self.columns, |column| {
            let mut values = Vec::with_capacity(self.kinds.len());
            let mut at = 0;
            for (i, kind) in self.kinds.iter().enumerate() {
                column.set(i);
                let raw = field(at)?;
                let value = if self.digest[i] {
                    let parts = [field(at + 1)?, field(at + 2)?, field(at + 3)?];
                    at += 4;
                    if is_null(&parts[0]) {
                        whole(*kind, raw)
                    } else {
                        digested(*kind, parts)
                    }
                } else {
                    at += 1;
                    whole(*kind, raw)
                };
                values.push(
                    value.map_err(|e| super::decode::decode_error(source, &self.columns[i], e))?,
                );
            }
            Ok(values)
        })
    }
}

/// Binds a [`FilterParam`] as its own Rust type (the engine's encoding of it), but decimals
/// and instants as the engine takes them: `decimal` and `timestamp` map those first.
macro_rules! bind_typed {
    ($query:expr, $param:expr, decimal: $decimal:expr, timestamp: $timestamp:expr) => {
        match $param {
            FilterParam::Bool(v) => $query.bind(v),
            FilterParam::I16(v) => $query.bind(v),
            FilterParam::I32(v) => $query.bind(v),
            FilterParam::I64(v) => $query.bind(v),
            FilterParam::Decimal(v) => $query.bind(($decimal)(v)),
            FilterParam::F64(v) => $query.bind(v),
            FilterParam::Text(v) => $query.bind(v),
            FilterParam::Bytes(v) => $query.bind(v),
            FilterParam::Date(v) => $query.bind(v),
            FilterParam::Time(v) => $query.bind(v),
            FilterParam::Naive(v) => $query.bind(v),
            FilterParam::Timestamp(v) => $query.bind(($timestamp)(v)),
        }
    };
}
pub(super) use bind_typed;

/// A key value, bound with the type of the column it is compared with, so that the key's
/// index serves the lookup and no engine compares a number with a string.
pub(super) enum FilterParam {
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    Decimal(rust_decimal::Decimal),
    F64(f64),
    Text(String),
    Bytes(Vec<u8>),
    Date(chrono::NaiveDate),
    Time(chrono::NaiveTime),
    Naive(chrono::NaiveDateTime),
    Timestamp(chrono::DateTime<chrono::Utc>),
}

impl FilterParam {
    /// The parameter comparing a column of `kind` with a key value in its canonical JSON (as
    /// `Value::to_json` writes it); `None` when the value cannot be one of that column. A
    /// column whose type only its values tell (SQLite, or a type the statement does not
    /// declare) takes the value's own type.
    pub(super) fn for_column(kind: Option<Kind>, value: &serde_json::Value) -> Option<Self> {
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
        let bytes = || hex::decode(value.as_str()?.strip_prefix("\\x")?).ok();
        Some(match kind {
            Some(Kind::Bool) => Self::Bool(value.as_bool()?),
            Some(Kind::I16) => Self::I16(i16::try_from(value.as_i64()?).ok()?),
            Some(Kind::I32) => Self::I32(i32::try_from(value.as_i64()?).ok()?),
            Some(Kind::I64 | Kind::U32) => Self::I64(value.as_i64()?),
            Some(Kind::U64 | Kind::Decimal) => Self::Decimal(decimal()?),
            Some(Kind::F32 | Kind::F64) => Self::F64(value.as_f64()?),
            Some(Kind::Text | Kind::PaddedText | Kind::Uuid) => Self::Text(text()?),
            Some(Kind::Bytes) => Self::Bytes(bytes()?),
            Some(Kind::Date) => Self::Date(value.as_str()?.parse().ok()?),
            Some(Kind::Time) => Self::Time(value.as_str()?.parse().ok()?),
            Some(Kind::Naive) => Self::Naive(instant()?.naive_utc()),
            Some(Kind::Timestamp) => Self::Timestamp(instant()?),
            Some(Kind::Json) => return None,
            None | Some(Kind::Dynamic(_)) => match value {
                J::Bool(b) => Self::Bool(*b),
                J::Number(n) => match n.as_i64() {
                    Some(i) => Self::I64(i),
                    None => Self::F64(n.as_f64()?),
                },
                J::String(s) => Self::Text(s.clone()),
                _ => return None,
            },
        })
    }
}

/// Reads `req` from `pool` into `feed`, then rolls back. The connection goes back to the
/// pool only after a read that ended and rolled back; one that failed, was abandoned (nobody
/// listens any more: a cancelled or timed-out run) or panicked is closed.
pub(super) async fn read<D>(dialect: D, pool: sqlx::Pool<D::DB>, req: ReadRequest, mut feed: Feed)
where
    D: Dialect,
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    for<'q> <D::DB as Database>::Arguments<'q>: IntoArguments<'q, D::DB>,
    usize: sqlx::ColumnIndex<<D::DB as Database>::Row>,
{
    let turn = std::mem::take(&mut feed.turn);
    let mut conn = match Leased::acquire(&feed.source, &feed.endpoint, turn, &pool).await {
        Ok(c) => c,
        Err(err) => return feed.fail(err).await,
    };
    let abandoned = feed.abandoned();
    // Stop as soon as nobody reads: a cancelled or timed-out run must not keep a connection
    // busy until its query ends.
    let outcome = tokio::select! {
        r = run(&dialect, &mut conn, &req, &mut feed) => r,
        () = abandoned => Err(None),
    };
    match outcome {
        Ok(()) => {
            // Always roll back: whatever the query did to the session is undone.
            if (&mut **conn).execute("ROLLBACK").await.is_ok() {
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
async fn run<D>(
    dialect: &D,
    conn: &mut Leased<D::DB>,
    req: &ReadRequest,
    feed: &mut Feed,
) -> Result<(), Option<SourceError>>
where
    D: Dialect,
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    for<'q> <D::DB as Database>::Arguments<'q>: IntoArguments<'q, D::DB>,
    usize: sqlx::ColumnIndex<<D::DB as Database>::Row>,
{
    let conn: &mut <D::DB as Database>::Connection = conn;
    dialect
        .begin(&mut *conn, req)
        .await
        .map_err(|e| Some(feed.query_error(e)))?;
    let inner = wrap(req.sql(&feed.source).map_err(Some)?);
    let stmt = (&mut *conn)
        .prepare(&inner)
        .await
        .map_err(|e| Some(feed.query_error(e)))?;
    let columns: Vec<String> = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
    let declared: Vec<Option<Kind>> = stmt
        .columns()
        .iter()
        .map(|c| dialect.kind_of(c.type_info().name()))
        .collect();
    let mut kinds: Option<Vec<Kind>> = if D::KINDS_FROM_FIRST_ROW {
        None
    } else {
        let known = stmt
            .columns()
            .iter()
            .zip(&declared)
            .map(|(c, k)| {
                k.ok_or_else(|| unsupported(feed.source(), c.name(), c.type_info().name()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(Some)?;
        Some(known)
    };
    let mut sql = compose(dialect, req, &columns, &declared, feed).map_err(Some)?;
    feed.keep_only = sql.keep_only.take();
    feed.send_columns(columns.clone()).await.map_err(|_| None)?;

    if sql.params.is_empty() {
        let shape = BulkShape {
            columns: &columns,
            kinds: kinds.as_deref(),
            digest: &sql.digest,
        };
        let read_in_bulk = match dialect.bulk(&mut *conn, &sql.text, shape, feed) {
            Some(bulk) => bulk.await? == BulkRead::Complete,
            None => false,
        };
        if read_in_bulk {
            feed.finish().await.map_err(|_| None)?;
            return Ok(());
        }
    }
    let mut query = sqlx::query::<D::DB>(&sql.text).persistent(false);
    for p in sql.params {
        query = dialect.bind(query, p);
    }
    let mut rows = query.fetch(&mut *conn);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| Some(feed.query_error(e)))?
    {
        // The executed statement's column types are the truth where the prepared one's may
        // not be: build the decoders from the first row then, once.
        let kinds = match &kinds {
            Some(k) => k,
            None => {
                let k = row
                    .columns()
                    .iter()
                    .map(|c| {
                        dialect.kind_of(c.type_info().name()).ok_or_else(|| {
                            unsupported(feed.source(), c.name(), c.type_info().name())
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(Some)?;
                kinds.insert(k)
            }
        };
        let shape = RowShape {
            columns: &columns,
            kinds,
            digest: &sql.digest,
        };
        let values = shape
            .decode(
                feed.source(),
                |at| row.try_get_raw(at).map_err(|e| feed.query_error(e)),
                sqlx::ValueRef::is_null,
                |kind, raw| dialect.decode(kind, raw),
                |kind, parts| dialect.digested(kind, &parts),
            )
            .map_err(Some)?;
        // The driver's copy of a row can be large (a buffer sized for it): free it before
        // waiting for room in the channel.
        drop(row);
        feed.push_row(values).await?;
    }
    feed.finish().await.map_err(|_| None)?;
    Ok(())
}

/// The statement a read sends: the wrapped query, its digests, key filter and key order.
struct Composed {
    text: String,
    params: Vec<FilterParam>,
    /// A keyed read's keys and their columns' positions (see [`Feed`]'s `keep_only`).
    keep_only: Option<(super::KeySet, Vec<usize>)>,
    /// Per result column: whether it arrives as four columns (see [`Dialect::digest_select`]).
    digest: Vec<bool>,
}

fn compose<D: Dialect>(
    dialect: &D,
    req: &ReadRequest,
    columns: &[String],
    declared: &[Option<Kind>],
    feed: &Feed,
) -> Result<Composed, SourceError> {
    let source = feed.source();
    let order = resolve_needed(source, columns, req)?;
    let filter = resolve_filter(source, columns, req)?;

    let mut conditions = Vec::new();
    let mut params = Vec::new();
    for (n, (&i, (_, value))) in filter.iter().zip(&req.filter).enumerate() {
        let param = FilterParam::for_column(declared[i], value).ok_or_else(|| {
            let wanted = declared[i].map_or_else(|| "its type".to_owned(), |k| format!("{k:?}"));
            filter_value_error(source, &columns[i], value, &wanted)
        })?;
        conditions.push(dialect.filter_term(&dialect.quote(&columns[i]), declared[i], n + 1));
        params.push(param);
    }

    let mut keep_only = None;
    if let Some(set) = &req.keys {
        let columns_at = set
            .columns
            .iter()
            .map(|c| {
                index_of(columns, c.as_str()).ok_or_else(|| super::SourceError::MissingColumn {
                    source_name: source.clone(),
                    column: c.to_string(),
                    role: "a key",
                    available: columns.join(", "),
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        // One integer column: the keys are written as integer literals (Rust formats them, so
        // nothing of the user's is spliced), which keeps PostgreSQL's bulk path and spares
        // the binding of a thousand parameters.
        let integer_literals = match columns_at.as_slice() {
            [i] => {
                declared[*i].is_some_and(|k| {
                    matches!(
                        k,
                        Kind::I16
                            | Kind::I32
                            | Kind::I64
                            | Kind::U32
                            | Kind::U64
                            | Kind::Decimal
                            | Kind::Dynamic(_)
                    )
                }) && set
                    .keys
                    .iter()
                    .all(|k| matches!(k.as_slice(), [Value::Int(_)]))
            }
            _ => false,
        };
        let mut alternatives = Vec::with_capacity(set.keys.len());
        for key in set.keys.iter().filter(|_| !integer_literals) {
            let mut terms = Vec::with_capacity(columns_at.len());
            for (&i, value) in columns_at.iter().zip(key) {
                let value = &value.to_canonical_json();
                let param = FilterParam::for_column(declared[i], value).ok_or_else(|| {
                    let wanted =
                        declared[i].map_or_else(|| "its type".to_owned(), |k| format!("{k:?}"));
                    filter_value_error(source, &columns[i], value, &wanted)
                })?;
                params.push(param);
                terms.push((i, params.len()));
            }
            alternatives.push(terms);
        }
        keep_only = Some((set.clone(), columns_at.clone()));
        conditions.push(match columns_at.as_slice() {
            _ if set.keys.is_empty() => "1 = 0".to_owned(),
            [i] if integer_literals => {
                let list: Vec<String> = set
                    .keys
                    .iter()
                    .filter_map(|k| match k.as_slice() {
                        [Value::Int(i)] => Some(i.to_string()),
                        _ => None,
                    })
                    .collect();
                format!("{} IN ({})", dialect.quote(&columns[*i]), list.join(", "))
            }
            // One column: an IN list, which every engine plans as lookups in the key index.
            [i] => {
                let list: Vec<String> = alternatives
                    .iter()
                    .map(|terms| dialect.placeholder(terms[0].1))
                    .collect();
                let operand = dialect.key_operand(&dialect.quote(&columns[*i]), declared[*i]);
                format!("{operand} IN ({})", list.join(", "))
            }
            _ => {
                let ored: Vec<String> = alternatives
                    .iter()
                    .map(|terms| {
                        let anded: Vec<String> = terms
                            .iter()
                            .map(|&(i, n)| {
                                dialect.filter_term(&dialect.quote(&columns[i]), declared[i], n)
                            })
                            .collect();
                        format!("({})", anded.join(" AND "))
                    })
                    .collect();
                format!("({})", ored.join(" OR "))
            }
        });
    }

    if let Some(changed) = &req.changed_since {
        let i = index_of(columns, changed.column.as_str()).ok_or_else(|| {
            super::SourceError::MissingColumn {
                source_name: source.clone(),
                column: changed.column.to_string(),
                role: "the column a read starts from (the incremental change column, or the window's time column)",
                available: columns.join(", "),
            }
        })?;
        let bounds =
            std::iter::once((changed.since, ">=")).chain(changed.until.map(|until| (until, "<=")));
        for (at, op) in bounds {
            let instant =
                serde_json::Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
            let param = FilterParam::for_column(declared[i], &instant).ok_or_else(|| {
                super::SourceError::Decode {
                    source_name: source.clone(),
                    column: columns[i].clone(),
                    message: format!(
                        "it is {}, which cannot be compared with an instant; the incremental change column (`reconcile.incremental.column`) or the window's `time_column` must be a timestamp",
                        declared[i].map_or_else(|| "of an unknown type".to_owned(), |k| format!("{k:?}"))
                    ),
                }
            })?;
            params.push(param);
            conditions.push(dialect.instant_term(
                &dialect.quote(&columns[i]),
                declared[i],
                params.len(),
                op,
            ));
        }
    }

    if let Some(ranges) = &req.key_ranges {
        let i = index_of(columns, ranges.column.as_str()).ok_or_else(|| {
            super::SourceError::MissingColumn {
                source_name: source.clone(),
                column: ranges.column.to_string(),
                role: "a key",
                available: columns.join(", "),
            }
        })?;
        conditions.push(ranges.condition(&dialect.quote(&columns[i])));
    }

    // Long text and bytes values of digestible columns stay in the database: it sends their
    // length, SHA-256 and start instead. (Columns are selected by name from the subquery: a
    // query returning one name twice keeps its values whole.)
    let unique = columns
        .iter()
        .enumerate()
        .all(|(i, c)| !columns[..i].iter().any(|o| o.eq_ignore_ascii_case(c)));
    let digest: Vec<bool> = req
        .digestible(columns)
        .iter()
        .zip(declared)
        .map(|(d, k)| unique && *d && k.is_some_and(|k| dialect.digests(k)))
        .collect();
    let mut text = if digest.iter().any(|d| *d) {
        let list: Vec<String> = columns
            .iter()
            .zip(declared)
            .zip(&digest)
            .map(|((c, kind), digest)| {
                let q = format!("trueup_q.{}", dialect.quote(c));
                match kind {
                    Some(kind) if *digest => dialect.digest_select(&q, *kind),
                    _ => q,
                }
            })
            .collect();
        wrap_selecting(req.sql(source)?, &list.join(", "))
    } else {
        wrap(req.sql(source)?)
    };
    if !conditions.is_empty() {
        text = format!("{text} WHERE {}", conditions.join(" AND "));
    }
    let order: Vec<String> = order
        .iter()
        .map(|c| {
            let kind = index_of(columns, c).and_then(|i| declared[i]);
            dialect.order_term(&dialect.quote(c), kind)
        })
        .collect();
    if !order.is_empty() {
        text = format!("{text} ORDER BY {}", order.join(", "));
    }
    Ok(Composed {
        text,
        params,
        digest,
        keep_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SourceName;

    /// A row of `note` (digested: four wire fields), `amount` and `id`, decoded as a reading
    /// loop decodes it; `whole` panics on the `id` column's value (wire field 5).
    fn decode_with(
        field: impl FnMut(usize) -> Result<usize, SourceError>,
    ) -> Result<crate::source::Row, SourceError> {
        let columns: Vec<String> = ["note", "amount", "id"].map(String::from).to_vec();
        let shape = RowShape {
            columns: &columns,
            kinds: &[Kind::Text, Kind::Decimal, Kind::I64],
            digest: &[true, false, false],
        };
        shape.decode(
            &SourceName::parse("ledger").unwrap(),
            field,
            |at| *at == 1,
            |kind, at| match (kind, at) {
                (Kind::I64, 5) => panic!("attempt to shift left with overflow"),
                (Kind::Decimal, 4) => Err("not a decimal".into()),
                (_, at) => Ok(Value::Int(at as i64)),
            },
            |_, [length, _, _]| Ok(Value::Int(100 + length as i64)),
        )
    }

    #[test]
    fn a_decoder_that_panics_or_refuses_fails_the_row_naming_the_column_not_the_wire_field() {
        let err = decode_with(|at| Ok(if at == 4 { 9 } else { at })).unwrap_err();
        let SourceError::Decode {
            column, message, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(column, "id", "{err}");
        assert!(
            message.starts_with("the value could not be decoded (its decoder panicked: attempt to shift left with overflow)"),
            "{message}"
        );
        let refused = decode_with(Ok).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "source `ledger`: column `amount`: not a decimal; cast the column to text in the query if its values do not fit"
        );
        // A wire field that cannot be read is the read's failure as it was said, not a value's.
        let unread = decode_with(|at| match at {
            5 => Err(SourceError::Query {
                source_name: SourceName::parse("ledger").unwrap(),
                message: "the connection was reset".into(),
            }),
            4 => Ok(9),
            at => Ok(at),
        })
        .unwrap_err();
        assert!(matches!(unread, SourceError::Query { .. }), "{unread}");
    }
}

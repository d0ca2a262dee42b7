//! Read-only access to the databases trueup checks.
//!
//! Architecture invariant: nothing in this module can change a source. Every rule query
//! - is wrapped as a subquery (`SELECT * FROM (<query>) AS trueup_q ...`), so it can only be
//!   a SELECT: no `COMMIT`, `SET`, DDL or data-modifying CTE parses there;
//! - is sent through the extended (prepared-statement) protocol, which refuses several
//!   statements in one string;
//! - runs inside a read-only transaction with a statement timeout, which is always rolled
//!   back, so even session settings changed by a function call inside it are undone;
//! - on any failure, the connection is closed instead of going back to the pool.
//!
//! SQLite sources are opened read-only with `query_only` on.

mod decode;
mod mysql;
mod postgres;
mod sql;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::mpsc;

use crate::config::{PrivilegedPolicy, SourceConfig, SourceKind, WritablePolicy};
use crate::domain::{ColumnName, SourceName, Value};

/// One row, in the column order of [`RowStream::columns`].
pub type Row = Vec<Value>;

/// Rows travel from the reading task to the evaluator in batches of at most this many rows,
/// or [`BATCH_BYTES`] of values, whichever comes first; with the channel's bounds (in batches
/// and in bytes) it caps the rows in memory per stream, whatever their size.
pub const BATCH_ROWS: usize = 2048;
const BATCH_BYTES: usize = 4 << 20;
const CHANNEL_BATCHES: usize = 4;
/// Row bytes waiting in one stream's channel at most; a batch larger than this waits until
/// the channel is empty.
const CHANNEL_BYTES: usize = 8 << 20;
/// How long past its statement_timeout a read may go on before trueup gives up on it.
const READ_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// The largest row trueup reads; a larger one fails the read, naming its biggest column.
pub const MAX_ROW_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("source `{source_name}`: cannot connect: {message}")]
    Connect {
        source_name: SourceName,
        message: String,
    },
    #[error("source `{source_name}`: query failed: {message}")]
    Query {
        source_name: SourceName,
        message: String,
    },
    #[error(
        "source `{source_name}`: the query returns no column `{column}` (needed as {role}); it returns: {available}. Alias a column `AS {column}` in the query"
    )]
    MissingColumn {
        source_name: SourceName,
        column: String,
        role: &'static str,
        available: String,
    },
    #[error(
        "source `{source_name}`: column `{column}` has type {db_type}, which trueup does not read; cast it in the query, e.g. `CAST({column} AS TEXT)`"
    )]
    UnsupportedType {
        source_name: SourceName,
        column: String,
        db_type: String,
    },
    #[error("source `{source_name}`: column `{column}`: {message}")]
    Decode {
        source_name: SourceName,
        column: String,
        message: String,
    },
    #[error(
        "source `{source_name}`: its database role can write ({what}) and the source says `on_writable: refuse`; connect with a read-only role"
    )]
    Writable {
        source_name: SourceName,
        what: String,
    },
    #[error(
        "source `{source_name}`: the read did not finish ({cause}); the run is failed and no violation changes"
    )]
    Incomplete {
        source_name: SourceName,
        cause: String,
    },
    #[error(
        "source `{source_name}`: its database role is privileged ({what}): in spite of the read-only transaction it could change data or run programs on the database host. Connect with a role that only has SELECT on the tables the invariants read, or, accepting the risk, set `allow_privileged_role: true` on the source"
    )]
    Privileged {
        source_name: SourceName,
        what: String,
    },
    #[error(
        "source `{source_name}`: a row holds {bytes} bytes, over the {limit} a row may have (column `{column}` alone holds {column_bytes}); select a digest or a prefix of it instead, e.g. `md5({column})` or `left({column}, 1000)`"
    )]
    RowTooLarge {
        source_name: SourceName,
        column: String,
        column_bytes: usize,
        bytes: usize,
        limit: usize,
    },
    #[error("source `{source_name}` is not configured")]
    Unknown { source_name: SourceName },
}

/// A column the evaluator needs, and why (for the error when it is absent).
#[derive(Debug, Clone)]
pub struct Needed {
    pub column: ColumnName,
    pub role: &'static str,
}

/// What a source's database role could do beyond reading, found by asking the database.
#[derive(Debug, Clone, Default)]
pub struct RoleAudit {
    /// Powers no read-only transaction contains: superuser, running server programs, touching
    /// server files. Refused unless the source says `allow_privileged_role: true`.
    pub privileged: Vec<String>,
    /// Write grants on tables: warned about, or refused with `on_writable: refuse`.
    pub writable: Vec<String>,
    /// Ways out of the session (`dblink`, `postgres_fdw`): warned about.
    pub links: Vec<String>,
}

/// What to read: the user's query, the columns it must return and the order to return rows in.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    pub query: String,
    pub needed: Vec<Needed>,
    /// Sort by these columns, byte-wise for text (see `domain::value`). NULLs may come first
    /// or last: readers of ordered streams skip rows with a NULL key.
    pub order_by: Vec<ColumnName>,
    /// Only rows whose columns equal these values (canonical JSON, as stored with a
    /// violation's key): how one violation is re-checked without reading the whole table.
    /// Values are bound as parameters of the column's type, never spliced.
    pub filter: Vec<(ColumnName, serde_json::Value)>,
    /// `Some`: a text or bytes value longer than [`DIGEST_OVER`] may arrive as a
    /// [`Value::Digest`] the database computed (its length, SHA-256 and start) instead of
    /// crossing the network whole — except in the columns listed here, in keys, filter
    /// columns and needed columns other than compared ones. `None`: every value whole.
    pub digest_long_except: Option<Vec<String>>,
}

/// Text and bytes values longer than this may be read as digests (see
/// [`ReadRequest::digest_long_except`]).
pub const DIGEST_OVER: usize = 64 << 10;

impl ReadRequest {
    /// Which result columns may arrive as digests.
    pub(crate) fn digestible(&self, columns: &[String]) -> Vec<bool> {
        let Some(except) = &self.digest_long_except else {
            return vec![false; columns.len()];
        };
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        columns
            .iter()
            .map(|c| {
                !except.iter().any(|e| same(e, c))
                    && !self.order_by.iter().any(|k| same(k.as_str(), c))
                    && !self.filter.iter().any(|(k, _)| same(k.as_str(), c))
                    && !self
                        .needed
                        .iter()
                        .any(|n| n.role != COMPARED && same(n.column.as_str(), c))
            })
            .collect()
    }
}

/// The role of a needed column that is only compared (and so may be read as a digest).
pub const COMPARED: &str = "a compared column";

/// What a reading task sends, in this order: the columns once, row batches, then `End`.
/// A stream that closes without `End` did not finish: the reader failed, panicked or was
/// cancelled, and its rows must never be taken for the whole result.
enum Chunk {
    Columns(Arc<[String]>),
    /// Rows, with their share of the channel's byte budget (released once taken out).
    Rows(Vec<Row>, Option<tokio::sync::OwnedSemaphorePermit>),
    End,
}

type ChunkTx = mpsc::Sender<Result<Chunk, SourceError>>;

/// Rows arriving from a source, in batches.
pub struct RowStream {
    source: SourceName,
    columns: Arc<[String]>,
    rx: mpsc::Receiver<Result<Chunk, SourceError>>,
    state: StreamState,
}

enum StreamState {
    Open,
    Finished,
    Failed(SourceError),
}

impl RowStream {
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Index of a result column, matching names exactly first, then ignoring case.
    pub fn index_of(&self, column: &str) -> Option<usize> {
        index_of(&self.columns, column)
    }

    /// The next batch; `None` only once the source has said it returned every row. A reader
    /// that stops without saying so is an error ([`SourceError::Incomplete`]), never the end,
    /// and a failed stream keeps answering with its error.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<Row>, SourceError>> {
        match &self.state {
            StreamState::Open => {}
            StreamState::Finished => return None,
            StreamState::Failed(e) => return Some(Err(e.clone())),
        }
        let failure = match self.rx.recv().await {
            Some(Ok(Chunk::Rows(rows, _budget))) => return Some(Ok(rows)),
            Some(Ok(Chunk::End)) => {
                self.state = StreamState::Finished;
                return None;
            }
            Some(Ok(Chunk::Columns(_))) => SourceError::Incomplete {
                source_name: self.source.clone(),
                cause: "the reader sent its columns twice".into(),
            },
            Some(Err(e)) => e,
            None => SourceError::Incomplete {
                source_name: self.source.clone(),
                cause: "the reading task stopped before the last row".into(),
            },
        };
        self.state = StreamState::Failed(failure.clone());
        Some(Err(failure))
    }

    /// A stream over rows already in memory (tests, and sources that are not databases).
    pub fn from_rows(columns: Vec<String>, rows: Vec<Row>) -> Self {
        let (tx, rx) = mpsc::channel(rows.len().div_ceil(BATCH_ROWS) + 1);
        for chunk in rows.chunks(BATCH_ROWS) {
            let _ = tx.try_send(Ok(Chunk::Rows(chunk.to_vec(), None)));
        }
        let _ = tx.try_send(Ok(Chunk::End));
        Self {
            source: SourceName::parse("memory").expect("a valid source name"),
            columns: columns.into(),
            rx,
            state: StreamState::Open,
        }
    }

    /// A stream whose reader sends `batches` and then stops without `End`, as a reader that
    /// died mid-read does (tests of the engine's handling of an incomplete read).
    #[cfg(test)]
    pub(crate) fn cut_off(columns: Vec<String>, batches: Vec<Vec<Row>>) -> Self {
        let (tx, rx) = mpsc::channel(batches.len() + 1);
        for b in batches {
            let _ = tx.try_send(Ok(Chunk::Rows(b, None)));
        }
        Self {
            source: SourceName::parse("memory").expect("a valid source name"),
            columns: columns.into(),
            rx,
            state: StreamState::Open,
        }
    }
}

pub(crate) fn index_of(columns: &[String], column: &str) -> Option<usize> {
    columns.iter().position(|c| c == column).or_else(|| {
        let mut matches = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.eq_ignore_ascii_case(column));
        match (matches.next(), matches.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    })
}

/// Checks the needed columns against what the query returns; gives each needed column's
/// actual name.
pub(crate) fn resolve_needed(
    source: &SourceName,
    columns: &[String],
    req: &ReadRequest,
) -> Result<Vec<String>, SourceError> {
    let mut order = Vec::new();
    for n in &req.needed {
        if index_of(columns, n.column.as_str()).is_none() {
            return Err(SourceError::MissingColumn {
                source_name: source.clone(),
                column: n.column.to_string(),
                role: n.role,
                available: columns.join(", "),
            });
        }
    }
    for c in &req.order_by {
        let i = index_of(columns, c.as_str()).ok_or_else(|| SourceError::MissingColumn {
            source_name: source.clone(),
            column: c.to_string(),
            role: "a key",
            available: columns.join(", "),
        })?;
        order.push(columns[i].clone());
    }
    Ok(order)
}

/// The actual result-column name of each filter column, in filter order.
pub(crate) fn resolve_filter(
    source: &SourceName,
    columns: &[String],
    req: &ReadRequest,
) -> Result<Vec<usize>, SourceError> {
    req.filter
        .iter()
        .map(|(c, _)| {
            index_of(columns, c.as_str()).ok_or_else(|| SourceError::MissingColumn {
                source_name: source.clone(),
                column: c.to_string(),
                role: "a key",
                available: columns.join(", "),
            })
        })
        .collect()
}

/// A filter value that cannot be bound as the column's type.
pub(crate) fn filter_value_error(
    source: &SourceName,
    column: &str,
    value: &serde_json::Value,
    wanted: &str,
) -> SourceError {
    SourceError::Decode {
        source_name: source.clone(),
        column: column.to_owned(),
        message: format!("key value {value} cannot be compared as {wanted}"),
    }
}

/// The user's query as a subquery: only a row-returning query parses there.
pub(crate) fn wrap(query: &str) -> String {
    wrap_selecting(query, "*")
}

/// The user's query as a subquery, selecting `list` from it.
pub(crate) fn wrap_selecting(query: &str, list: &str) -> String {
    // The newline before `)` keeps a trailing `-- comment` from swallowing it.
    format!("SELECT {list} FROM (\n{query}\n) AS trueup_q")
}

#[derive(Clone)]
enum Pool {
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
    Sqlite(sqlx::SqlitePool),
}

/// A connected source.
#[derive(Clone)]
pub struct Source {
    name: SourceName,
    kind: SourceKind,
    timeout_ms: u64,
    pool: Pool,
    on_writable: WritablePolicy,
    on_privileged: PrivilegedPolicy,
    /// `host:port` (or the file), for connection errors.
    endpoint: Arc<str>,
    /// The role's audit, made once per process on first contact (at start, or at the first
    /// read if the database was down then); every read waits for it.
    role: Arc<tokio::sync::OnceCell<RoleAudit>>,
}

impl Source {
    /// Builds the pool; connections open on first use, so one unreachable source does not
    /// stop the others.
    pub fn open(cfg: &SourceConfig) -> Result<Self, SourceError> {
        let timeout_ms = cfg
            .statement_timeout
            .as_std()
            .as_millis()
            .min(u64::MAX as u128) as u64;
        let pool = match cfg.kind {
            SourceKind::Postgres => Pool::Postgres(postgres::pool(cfg, timeout_ms)?),
            SourceKind::MySql => Pool::MySql(mysql::pool(cfg, timeout_ms)?),
            SourceKind::Sqlite => Pool::Sqlite(sqlite::pool(cfg)?),
        };
        Ok(Self {
            name: cfg.name.clone(),
            kind: cfg.kind,
            timeout_ms,
            pool,
            on_writable: cfg.on_writable,
            on_privileged: cfg.on_privileged,
            endpoint: crate::connect::endpoint(cfg.url.expose()).into(),
            role: Arc::default(),
        })
    }

    pub fn name(&self) -> &SourceName {
        &self.name
    }

    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// What the source's database role could do beyond reading (nothing, for SQLite files,
    /// which are opened read-only).
    pub async fn audit_role(&self) -> Result<RoleAudit, SourceError> {
        match &self.pool {
            Pool::Postgres(p) => postgres::audit_role(&self.name, &self.endpoint, p).await,
            Pool::MySql(p) => mysql::audit_role(&self.name, &self.endpoint, p).await,
            Pool::Sqlite(_) => Ok(RoleAudit::default()),
        }
    }

    /// The role's audit (made on first use, with its warnings logged then), or the refusal
    /// the source's policies call for. Nothing is read through a role that was refused.
    pub async fn vet(&self) -> Result<&RoleAudit, SourceError> {
        let audit = self
            .role
            .get_or_try_init(|| async {
                let audit = self.audit_role().await?;
                self.warn_about(&audit);
                Ok::<_, SourceError>(audit)
            })
            .await?;
        if !audit.privileged.is_empty() && self.on_privileged == PrivilegedPolicy::Refuse {
            return Err(SourceError::Privileged {
                source_name: self.name.clone(),
                what: audit.privileged.join("; "),
            });
        }
        if !audit.writable.is_empty() && self.on_writable == WritablePolicy::Refuse {
            return Err(SourceError::Writable {
                source_name: self.name.clone(),
                what: audit.writable.join("; "),
            });
        }
        Ok(audit)
    }

    fn warn_about(&self, audit: &RoleAudit) {
        let name = &self.name;
        if !audit.privileged.is_empty() && self.on_privileged == PrivilegedPolicy::Allow {
            tracing::warn!(
                source = %name,
                "SOURCE ROLE IS PRIVILEGED and `allow_privileged_role: true` accepts it: {}. A query can write through dblink or run programs on the database host in spite of trueup's guards; connect with a role that only has SELECT",
                audit.privileged.join("; ")
            );
        }
        if !audit.writable.is_empty() && self.on_writable == WritablePolicy::Warn {
            tracing::warn!(
                source = %name,
                "SOURCE ROLE CAN WRITE: {}. trueup only reads and guards every query, but a read-only role is the real protection: GRANT SELECT only, or set `on_writable: refuse`",
                audit.writable.join("; ")
            );
        }
        for link in &audit.links {
            tracing::warn!(source = %name, "{link}");
        }
    }

    /// Whether the role is known to be privileged and allowed to be (for `/metrics`);
    /// `None` until the role has been audited.
    pub fn privileged_allowed(&self) -> Option<bool> {
        self.role
            .get()
            .map(|a| !a.privileged.is_empty() && self.on_privileged == PrivilegedPolicy::Allow)
    }

    /// Starts reading; returns once the query is prepared and its columns are known.
    ///
    /// The reader runs in its own task. A panic there (a driver that cannot decode a value,
    /// say) is caught and reaches the evaluator as an error naming the source, never as the
    /// end of the rows; the connection it held is closed, not pooled.
    pub async fn read(&self, req: ReadRequest) -> Result<RowStream, SourceError> {
        self.vet().await?;
        fail::fail_point!("source.read", |_| Err(SourceError::Connect {
            source_name: self.name.clone(),
            message: "connection reset (injected by the fail point source.read)".into(),
        }));
        let (tx, mut rx) = mpsc::channel(CHANNEL_BATCHES);
        let net = tx.clone();
        let feed = Feed {
            // Fail points are looked up once per read, never per value.
            decode_fault: injected("source.decode"),
            source: self.name.clone(),
            endpoint: Arc::clone(&self.endpoint),
            columns: Arc::from(Vec::new()),
            batch: Vec::new(),
            batch_bytes: 0,
            budget: Arc::new(tokio::sync::Semaphore::new(CHANNEL_BYTES >> 10)),
            tx,
        };
        let reader: futures_util::future::BoxFuture<'static, ()> = match self.pool.clone() {
            Pool::Postgres(p) => {
                let dialect = postgres::Dialect {
                    timeout_ms: self.timeout_ms,
                };
                Box::pin(sql::read(dialect, p, req, feed))
            }
            Pool::MySql(p) => Box::pin(sql::read(mysql::Dialect, p, req, feed)),
            Pool::Sqlite(p) => Box::pin(sql::read(sqlite::Dialect, p, req, feed)),
        };
        let source_name = self.name.clone();
        // The server stops a statement at its statement_timeout; a read still going well past
        // that waits on a network or a server that stalled. Dropping the reader closes its
        // connection. (A SQLite file has no network and no statement timeout.)
        let deadline = match self.kind {
            SourceKind::Sqlite => std::time::Duration::MAX,
            _ => std::time::Duration::from_millis(self.timeout_ms) + READ_GRACE,
        };
        tokio::spawn(async move {
            let err = match tokio::time::timeout(
                deadline,
                std::panic::AssertUnwindSafe(reader).catch_unwind(),
            )
            .await
            {
                Ok(Ok(())) => return,
                Ok(Err(panic)) => SourceError::Incomplete {
                    source_name,
                    cause: format!("the reader panicked: {}", panic_message(&*panic)),
                },
                Err(_) => SourceError::Incomplete {
                    source_name,
                    cause: format!(
                        "the read did not end within {}s (the source's statement_timeout and {}s more, connecting included): the network or the database stalled; the connection was closed",
                        deadline.as_secs(),
                        READ_GRACE.as_secs()
                    ),
                },
            };
            let _ = net.send(Err(err)).await;
        });
        let incomplete = |cause: &str| SourceError::Incomplete {
            source_name: self.name.clone(),
            cause: cause.into(),
        };
        match rx.recv().await {
            Some(Ok(Chunk::Columns(columns))) => Ok(RowStream {
                source: self.name.clone(),
                columns,
                rx,
                state: StreamState::Open,
            }),
            Some(Ok(_)) => Err(incomplete("the reader sent rows before its columns")),
            Some(Err(e)) => Err(e),
            None => Err(incomplete(
                "the reading task stopped before the query started",
            )),
        }
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Postgres(p) => p.close().await,
            Pool::MySql(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }
}

/// The reading task's outlet: the column names once, then row batches, then the end.
pub(crate) struct Feed {
    /// The fail point `source.decode` is set (test builds): the first row fails to decode.
    decode_fault: bool,
    source: SourceName,
    endpoint: Arc<str>,
    columns: Arc<[String]>,
    /// The batch being filled, and the bytes of its values.
    batch: Vec<Row>,
    batch_bytes: usize,
    /// The channel's byte budget, in KiB.
    budget: Arc<tokio::sync::Semaphore>,
    tx: ChunkTx,
}

/// The reader stopped because nobody listens any more.
pub(crate) struct Abandoned;

impl Feed {
    pub(crate) fn source(&self) -> &SourceName {
        &self.source
    }

    /// Resolves when the reader of this feed is gone (the evaluation finished early, timed
    /// out or was cancelled): the read should stop and drop its connection.
    pub(crate) fn abandoned(&self) -> impl std::future::Future<Output = ()> + use<> {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }

    pub(crate) async fn send_columns(&mut self, columns: Vec<String>) -> Result<(), Abandoned> {
        self.columns = columns.into();
        self.tx
            .send(Ok(Chunk::Columns(Arc::clone(&self.columns))))
            .await
            .map_err(|_| Abandoned)
    }

    /// Adds a row to the batch, sending the batch once it is full (by rows or by bytes).
    /// `Err(None)`: nobody listens any more; `Err(Some)`: the row is over [`MAX_ROW_BYTES`].
    pub(crate) async fn push_row(&mut self, row: Row) -> Result<(), Option<SourceError>> {
        if self.decode_fault {
            return Err(Some(decode::decode_error(
                &self.source,
                self.columns.first().map_or("", String::as_str),
                "the value cannot be decoded (injected by the fail point source.decode)".into(),
            )));
        }
        let bytes: usize = row.iter().map(Value::size).sum();
        if bytes > MAX_ROW_BYTES {
            let (i, biggest) = row
                .iter()
                .enumerate()
                .max_by_key(|(_, v)| v.size())
                .expect("a row over the limit has a value");
            return Err(Some(SourceError::RowTooLarge {
                source_name: self.source.clone(),
                column: self.columns.get(i).cloned().unwrap_or_default(),
                column_bytes: biggest.size(),
                bytes,
                limit: MAX_ROW_BYTES,
            }));
        }
        self.batch.push(row);
        self.batch_bytes += bytes;
        if self.batch.len() >= BATCH_ROWS || self.batch_bytes >= BATCH_BYTES {
            self.send_batch().await.map_err(|_| None)?;
        }
        Ok(())
    }

    async fn send_batch(&mut self) -> Result<(), Abandoned> {
        // A reader that stops here ends its stream without the end marker.
        fail::fail_point!("source.batch", |_| Err(Abandoned));
        let whole = (CHANNEL_BYTES >> 10) as u32;
        let kib = ((self.batch_bytes >> 10) as u32).clamp(1, whole);
        let share = Arc::clone(&self.budget)
            .acquire_many_owned(kib)
            .await
            .map_err(|_| Abandoned)?;
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_ROWS));
        self.batch_bytes = 0;
        self.tx
            .send(Ok(Chunk::Rows(batch, Some(share))))
            .await
            .map_err(|_| Abandoned)?;
        if kib == whole {
            // A batch as large as the whole budget (rows of megabytes): read the next row only
            // once the evaluator has taken this one, so that one such row is in flight between
            // the two, not three.
            drop(
                self.budget
                    .acquire_many(whole)
                    .await
                    .map_err(|_| Abandoned)?,
            );
        }
        Ok(())
    }

    /// Sends the last (possibly empty) batch and then says the result is complete: the only
    /// way a stream ends without an error.
    pub(crate) async fn finish(&mut self) -> Result<(), Abandoned> {
        if !self.batch.is_empty() {
            self.send_batch().await?;
        }
        self.tx.send(Ok(Chunk::End)).await.map_err(|_| Abandoned)
    }

    /// Reports an error to whoever is waiting: the caller of `read` if the query never
    /// started, the evaluator otherwise.
    pub(crate) async fn fail(self, err: SourceError) {
        let _ = self.tx.send(Err(err)).await;
    }

    pub(crate) fn query_error(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::Query {
            source_name: self.source.clone(),
            message: e.to_string(),
        }
    }
}

/// A pooled connection for one read. It goes back to the pool only if the read marked it
/// [`Leased::reusable`] (it ended and rolled back); a read that failed, panicked, was cancelled
/// or ran out of time closes it, so no connection carrying an open transaction, a half-read
/// result or a stalled socket is handed to the next read.
pub(crate) struct Leased<DB: sqlx::Database> {
    conn: sqlx::pool::PoolConnection<DB>,
    reusable: bool,
}

impl<DB: sqlx::Database> Leased<DB> {
    pub(crate) async fn acquire(pool: &sqlx::Pool<DB>, feed: &Feed) -> Result<Self, SourceError> {
        connect(&feed.source, &feed.endpoint, pool)
            .await
            .map(|conn| Self {
                conn,
                reusable: false,
            })
    }

    /// The read ended cleanly (its transaction rolled back): the pool may have it again.
    pub(crate) fn reusable(&mut self) {
        self.reusable = true;
    }
}

impl<DB: sqlx::Database> std::ops::Deref for Leased<DB> {
    type Target = sqlx::pool::PoolConnection<DB>;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for Leased<DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl<DB: sqlx::Database> Drop for Leased<DB> {
    fn drop(&mut self) {
        if !self.reusable || std::thread::panicking() {
            self.conn.close_on_drop();
        }
    }
}

/// A pooled connection to a source, or why there is none (at once, not after the pool's
/// timeout: see [`crate::connect`]).
pub(crate) async fn connect<DB: sqlx::Database>(
    source: &SourceName,
    endpoint: &str,
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::pool::PoolConnection<DB>, SourceError> {
    crate::connect::acquire(pool, endpoint)
        .await
        .map_err(|e| SourceError::Connect {
            source_name: source.clone(),
            message: e.to_string(),
        })
}

/// Decodes one value, turning a driver panic into a decode error for its column: a value the
/// driver cannot represent fails the read with the column's name, it never ends it.
pub(crate) fn decode_value(
    source: &SourceName,
    column: &str,
    decode: impl FnOnce() -> Result<Value, sqlx::error::BoxDynError>,
) -> Result<Value, SourceError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(decode::decode_error(source, column, e)),
        Err(panic) => Err(decode::decode_error(
            source,
            column,
            format!(
                "the database driver could not decode a value ({})",
                panic_message(&*panic)
            )
            .into(),
        )),
    }
}

/// Whether the fail point `name` is set (test builds; always `false` in a release build). Its
/// `panic` action panics here.
pub(crate) fn injected(name: &str) -> bool {
    fail::fail_point!(name, |_| true);
    let _ = name; // (unused where fail points compile to nothing)
    false
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Every configured source, opened.
#[derive(Clone, Default)]
pub struct Sources {
    by_name: BTreeMap<SourceName, Source>,
}

impl Sources {
    /// Opens each source and audits its role: a privileged role (unless allowed) or a writable
    /// one under `on_writable: refuse` stops here, with the reason. A source that cannot be
    /// reached now is only warned about: its role is audited at its first read, which fails
    /// with the connection error until then.
    pub async fn open_all(
        configs: &BTreeMap<SourceName, SourceConfig>,
    ) -> Result<Self, SourceError> {
        let mut by_name = BTreeMap::new();
        for (name, cfg) in configs {
            let source = Source::open(cfg)?;
            match source.vet().await {
                Ok(_) => {}
                Err(e @ (SourceError::Privileged { .. } | SourceError::Writable { .. })) => {
                    return Err(e);
                }
                Err(e) => tracing::warn!(source = %name, "cannot check the role's privileges: {e}"),
            }
            by_name.insert(name.clone(), source);
        }
        Ok(Self { by_name })
    }

    /// Each source whose role has been audited, and whether it is privileged (and allowed to
    /// be, since a refused one is never read).
    pub fn privileged(&self) -> impl Iterator<Item = (&SourceName, bool)> {
        self.by_name
            .iter()
            .filter_map(|(name, s)| s.privileged_allowed().map(|p| (name, p)))
    }

    pub fn get(&self, name: &SourceName) -> Result<&Source, SourceError> {
        self.by_name.get(name).ok_or_else(|| SourceError::Unknown {
            source_name: name.clone(),
        })
    }

    pub async fn close(&self) {
        for s in self.by_name.values() {
            s.close().await;
        }
    }
}

/// Whether `sql` holds more than one statement: a `;` outside string literals, quoted
/// identifiers and comments. PostgreSQL and MySQL refuse such strings at the protocol level;
/// SQLite would run every statement, so trueup refuses them before it prepares anything.
pub(crate) fn has_several_statements(sql: &str) -> bool {
    let body = sql.trim().trim_end_matches(';');
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == q {
                        // A doubled quote is an escaped quote inside the literal.
                        if bytes.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::has_several_statements;

    #[test]
    fn one_statement_with_semicolons_inside_literals_and_comments_is_one() {
        for sql in [
            "SELECT 1",
            "SELECT 1;",
            "SELECT ';' AS x",
            "SELECT 'it''s; fine' AS x",
            "SELECT \"a;b\" FROM t",
            "SELECT 1 -- trailing; comment",
            "SELECT /* ; */ 1",
            "SELECT [a;b] FROM t",
        ] {
            assert!(!has_several_statements(sql), "{sql}");
        }
    }

    #[test]
    fn a_second_statement_is_found() {
        for sql in [
            "SELECT 1; DELETE FROM t",
            "SELECT 1 AS id); DELETE FROM t; SELECT (1",
            "SELECT 'x'; PRAGMA query_only = OFF",
            "SELECT 1 /* c */; ATTACH 'x.db' AS y",
        ] {
            assert!(has_several_statements(sql), "{sql}");
        }
    }
}

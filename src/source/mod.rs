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

mod checksum;
mod decode;
mod event_log;
mod http;
mod mysql;
mod mysql_bulk;
mod nats;
mod pg_wire;
mod postgres;
mod query;
mod redis;
mod sort;
mod sql;
mod sqlite;
mod stream;
mod summarize;
mod turn;
mod unordered;

pub use checksum::{Described, Flavor, RowHash, SegmentSummary, SummaryRequest, Totals, key_shift};
pub use event_log::{LogEventRow, LogReader, to_row as event_row};
pub use query::{
    COMPARED, ChangedSince, DIGEST_OVER, KeyRange, KeyRanges, KeySet, Needed, ReadRequest,
};
pub(crate) use query::{
    filter_value_error, has_several_statements, index_of, resolve_filter, resolve_needed, wrap,
    wrap_selecting,
};
pub(crate) use stream::Feed;
pub use stream::RowStream;
use stream::{Chunk, StreamState};
use turn::{Gate, Turn};
pub use turn::{TURN_WAIT, TurnUse};

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::mpsc;

use crate::config::{PrivilegedPolicy, SourceClass, SourceConfig, SourceKind, WritablePolicy};
use crate::domain::{Read, SourceName, Value};

/// A source's statements run as long as their data takes (a checksum over 10M rows takes
/// seconds, by design; `statement_timeout` is the limit): sqlx's default warning for every
/// statement over a second, with the whole SQL, would be noise on every run. Debug level.
fn quiet_slow_statements<O: sqlx::ConnectOptions>(options: O) -> O {
    options.log_slow_statements(log::LevelFilter::Debug, std::time::Duration::from_secs(1))
}

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
    #[error("source `{source_name}`: column `{column}` holds {value}, which has no checksum form")]
    NoCanonicalForm {
        source_name: SourceName,
        column: String,
        value: String,
    },
    #[error("source `{source_name}` is not configured")]
    Unknown { source_name: SourceName },
    /// Both sides of a reconcile read one source at once, each on a connection of its own:
    /// with a single connection the second waited for the first until the pool gave up
    /// (unless the first side's rows all fit in its channel).
    #[error(
        "source `{source_name}` has pool_size {pool_size}, and this reconcile reads both of its sides from it at once, each on a connection of its own: set `pool_size: 2` or more on it"
    )]
    PoolTooSmall {
        source_name: SourceName,
        pool_size: u32,
    },
    /// Other reads held every connection's turn for as long as a read may wait.
    #[error(
        "source `{source_name}`: no turn on its {pool_size} connections came within {} minutes, other reads held them all: raise its `pool_size`, or run fewer invariants on it at once",
        TURN_WAIT.as_secs() / 60
    )]
    NoTurn {
        source_name: SourceName,
        pool_size: u32,
    },
    #[error("source `{source_name}` is {is}: {why}")]
    WrongClass {
        source_name: SourceName,
        /// "an HTTP API", "a database".
        is: &'static str,
        why: String,
    },
    #[error(
        "source `{source_name}`: {request}: {message}; the run is failed and no violation changes"
    )]
    Api {
        source_name: SourceName,
        /// The request as `GET <url>` (the URL without the base's credentials, which never
        /// are in it).
        request: String,
        message: String,
    },
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

#[derive(Clone)]
enum Pool {
    Postgres(sqlx::PgPool),
    /// sqlx's pool, and how to open the bulk reads' connections where the URL allows.
    MySql(sqlx::MySqlPool, Option<Arc<mysql_bulk::Bulk>>),
    Sqlite(sqlx::SqlitePool),
    Http(Arc<http::Api>),
    Nats(Arc<nats::Nats>),
    Redis(Arc<redis::Redis>),
    Log(Arc<event_log::Log>),
}

/// A connected source.
#[derive(Clone)]
pub struct Source {
    name: SourceName,
    class: SourceClass,
    timeout_ms: u64,
    pool: Pool,
    on_writable: WritablePolicy,
    on_privileged: PrivilegedPolicy,
    /// `host:port` (or the file), for connection errors.
    endpoint: Arc<str>,
    /// The role's audit, made once per process on first contact (at start, or at the first
    /// read if the database was down then); every read waits for it.
    role: Arc<tokio::sync::OnceCell<RoleAudit>>,
    /// Who may take one of its connections (see `source/turn.rs`).
    gate: Gate,
}

impl Source {
    /// Builds the pool; connections open on first use, so one unreachable source does not
    /// stop the others.
    pub fn open(cfg: &SourceConfig) -> Result<Self, SourceError> {
        let cfg = match cfg {
            SourceConfig::Sql(cfg) => cfg,
            SourceConfig::Nats(cfg) => {
                let nats = nats::Nats::open(cfg);
                return Ok(Self {
                    name: cfg.name.clone(),
                    class: SourceClass::Nats,
                    timeout_ms: cfg.timeout.as_std().as_millis().min(u64::MAX as u128) as u64,
                    endpoint: nats.endpoint().into(),
                    pool: Pool::Nats(Arc::new(nats)),
                    on_writable: WritablePolicy::Warn,
                    on_privileged: PrivilegedPolicy::Refuse,
                    role: Arc::default(),
                    gate: Gate::Open,
                });
            }
            SourceConfig::Redis(cfg) => {
                let redis = redis::Redis::open(cfg);
                return Ok(Self {
                    name: cfg.name.clone(),
                    class: SourceClass::Redis,
                    timeout_ms: cfg.timeout.as_std().as_millis().min(u64::MAX as u128) as u64,
                    endpoint: redis.endpoint().into(),
                    pool: Pool::Redis(Arc::new(redis)),
                    on_writable: WritablePolicy::Warn,
                    on_privileged: PrivilegedPolicy::Refuse,
                    role: Arc::default(),
                    gate: Gate::Open,
                });
            }
            SourceConfig::Http(api) => {
                return Ok(Self {
                    name: api.name.clone(),
                    class: SourceClass::Http,
                    timeout_ms: api.timeout.as_std().as_millis().min(u64::MAX as u128) as u64,
                    pool: Pool::Http(Arc::new(http::Api::open(api)?)),
                    on_writable: WritablePolicy::Warn,
                    on_privileged: PrivilegedPolicy::Refuse,
                    endpoint: api.base_url.as_str().into(),
                    role: Arc::default(),
                    gate: Gate::Open,
                });
            }
        };
        let timeout_ms = cfg
            .statement_timeout
            .as_std()
            .as_millis()
            .min(u64::MAX as u128) as u64;
        let pool = match cfg.kind {
            SourceKind::Postgres => Pool::Postgres(postgres::pool(cfg, timeout_ms)?),
            SourceKind::MySql => Pool::MySql(
                mysql::pool(cfg, timeout_ms)?,
                mysql_bulk::Bulk::for_url(cfg.url.expose(), timeout_ms).map(Arc::new),
            ),
            SourceKind::Sqlite => Pool::Sqlite(sqlite::pool(cfg)?),
        };
        Ok(Self {
            name: cfg.name.clone(),
            class: SourceClass::Sql(cfg.kind),
            timeout_ms,
            pool,
            on_writable: cfg.on_writable,
            on_privileged: cfg.on_privileged,
            endpoint: crate::connect::endpoint(cfg.url.expose()).into(),
            role: Arc::default(),
            gate: Gate::Open,
        })
    }

    pub fn name(&self) -> &SourceName {
        &self.name
    }

    /// The most connections this source opens at once; `None` where it keeps no pool.
    pub fn pool_size(&self) -> Option<u32> {
        match &self.pool {
            Pool::Postgres(p) => Some(p.options().get_max_connections()),
            Pool::MySql(p, _) => Some(p.options().get_max_connections()),
            Pool::Sqlite(p) => Some(p.options().get_max_connections()),
            Pool::Http(_) | Pool::Nats(_) | Pool::Redis(_) | Pool::Log(_) => None,
        }
    }

    /// Why `what` cannot be had from this source, which is not a database.
    fn not_sql(&self, what: &str) -> SourceError {
        SourceError::WrongClass {
            source_name: self.name.clone(),
            is: match self.class {
                SourceClass::Nats => "a NATS JetStream server",
                SourceClass::Redis => "a Redis server",
                SourceClass::Log => "an event log",
                _ => "an HTTP API",
            },
            why: format!("{what} needs a database"),
        }
    }

    /// `read`'s SQL, or why `what` cannot be had from this source (an HTTP API's).
    pub fn sql_of<'a>(&self, read: &'a Read, what: &str) -> Result<&'a str, SourceError> {
        read.sql().ok_or_else(|| self.not_sql(what))
    }

    /// A database of an engine, or an HTTP API.
    pub fn class(&self) -> SourceClass {
        self.class
    }

    /// What the source's database role could do beyond reading (nothing, for SQLite files,
    /// which are opened read-only).
    pub async fn audit_role(&self) -> Result<RoleAudit, SourceError> {
        match &self.pool {
            Pool::Postgres(p) => postgres::audit_role(self, p).await,
            Pool::MySql(p, _) => mysql::audit_role(self, p).await,
            // A SQLite file is opened read-only; an API is only ever sent GET requests.
            // A SQLite file is opened read-only; an API is only ever sent GET requests; a
            // stream is read by an ordered consumer, which acknowledges nothing.
            Pool::Sqlite(_) | Pool::Http(_) | Pool::Nats(_) | Pool::Redis(_) | Pool::Log(_) => {
                Ok(RoleAudit::default())
            }
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
        // The turn is waited for here, before the read's deadline starts: a read queued behind
        // a long reconcile is waiting, not stalled. A caller that gives up leaves the queue.
        let turn = self.gate.turn(&self.name).await?;
        let (tx, mut rx) = mpsc::channel(CHANNEL_BATCHES);
        let net = tx.clone();
        let feed = Feed {
            // Fail points are looked up once per read, never per value.
            decode_fault: injected("source.decode"),
            source: self.name.clone(),
            endpoint: Arc::clone(&self.endpoint),
            turn,
            columns: Arc::from(Vec::new()),
            batch: Vec::new(),
            batch_bytes: 0,
            budget: Arc::new(tokio::sync::Semaphore::new(CHANNEL_BYTES >> 10)),
            tx,
            keep_only: None,
        };
        let reader: futures_util::future::BoxFuture<'static, ()> = match self.pool.clone() {
            Pool::Postgres(p) => {
                let dialect = postgres::Dialect {
                    timeout_ms: self.timeout_ms,
                };
                Box::pin(sql::read(dialect, p, req, feed))
            }
            Pool::MySql(p, bulk) => Box::pin(sql::read(mysql::Dialect { bulk }, p, req, feed)),
            Pool::Sqlite(p) => Box::pin(sql::read(sqlite::Dialect, p, req, feed)),
            Pool::Http(api) => Box::pin(http::read(api, req, feed)),
            Pool::Nats(nats) => Box::pin(nats::read(nats, req, feed)),
            Pool::Redis(redis) => Box::pin(redis::read(redis, req, feed)),
            Pool::Log(log) => Box::pin(event_log::read(log, req, feed)),
        };
        let source_name = self.name.clone();
        // The server stops a statement at its statement_timeout; a read still going well past
        // that waits on a network or a server that stalled. Dropping the reader closes its
        // connection. (A SQLite file has no network and no statement timeout.)
        // An API's pages each have the source's timeout, and each retry its own; its read
        // as a whole has as many pages as the API holds.
        let deadline = match self.class {
            SourceClass::Sql(SourceKind::Sqlite)
            | SourceClass::Http
            | SourceClass::Nats
            | SourceClass::Redis
            | SourceClass::Log => std::time::Duration::MAX,
            SourceClass::Sql(_) => std::time::Duration::from_millis(self.timeout_ms) + READ_GRACE,
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

    /// The latest instant in the change column `column` of `query`'s rows (`None`: no row has
    /// one): where an incremental reconcile's next run starts reading.
    pub async fn latest_change(
        &self,
        query: &str,
        column: &crate::domain::ColumnName,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, SourceError> {
        use decode::Kind;
        use sql::Dialect as _;
        let described = self.describe(query).await?;
        let i = index_of(&described.columns, column.as_str()).ok_or_else(|| {
            SourceError::MissingColumn {
                source_name: self.name.clone(),
                column: column.to_string(),
                role: "the incremental change column",
                available: described.columns.join(", "),
            }
        })?;
        let not_an_instant = |what: String| SourceError::Decode {
            source_name: self.name.clone(),
            column: described.columns[i].clone(),
            message: format!(
                "the incremental change column holds {what}, not a timestamp; name a column whose timestamp moves when a row changes under `reconcile.incremental.column`"
            ),
        };
        if let Some(kind) = described.kinds[i]
            && !matches!(kind, Kind::Timestamp | Kind::Naive | Kind::Dynamic(_))
        {
            return Err(not_an_instant(format!("{kind:?} values")));
        }
        let quoted = format!("trueup_m.{}", self.quote(&described.columns[i]));
        let expr = match &self.pool {
            Pool::Postgres(_) => self.pg_dialect().latest_instant(&quoted),
            Pool::MySql(..) => mysql::Dialect::default().latest_instant(&quoted),
            Pool::Sqlite(_) => sqlite::Dialect.latest_instant(&quoted),
            Pool::Http(_) | Pool::Nats(_) | Pool::Redis(_) | Pool::Log(_) => {
                return Err(self.not_sql("a change column's latest instant"));
            }
        };
        let statement = format!("SELECT {expr} AS trueup_latest FROM ({query}) AS trueup_m");
        let mut rows = self.read(ReadRequest::plain(Read::Sql(statement))).await?;
        let mut value = Value::Null;
        while let Some(batch) = rows.next_batch().await {
            if let Some(v) = batch?.into_iter().next().and_then(|r| r.into_iter().next()) {
                value = v;
            }
        }
        match value {
            Value::Null => Ok(None),
            Value::Timestamp(t) => Ok(Some(t)),
            Value::Text(text) => match decode::sqlite_text(&text, decode::SqliteHint::Datetime) {
                Value::Timestamp(t) => Ok(Some(t)),
                other => Err(not_an_instant(format!("`{other}`"))),
            },
            other => Err(not_an_instant(format!("{} values", other.class()))),
        }
    }

    /// Runs a statement of [`checksum`]'s in a read of its own; its rows as text.
    async fn fetch_texts(
        &self,
        sql: String,
        columns: usize,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        match &self.pool {
            Pool::Postgres(p) => summarize::fetch(&self.pg_dialect(), self, p, sql, columns).await,
            Pool::MySql(p, _) => {
                summarize::fetch(&mysql::Dialect::default(), self, p, sql, columns).await
            }
            Pool::Sqlite(p) => summarize::fetch(&sqlite::Dialect, self, p, sql, columns).await,
            Pool::Http(_) | Pool::Nats(_) | Pool::Redis(_) | Pool::Log(_) => {
                Err(self.not_sql("a statement"))
            }
        }
    }

    /// Runs a summary statement of [`checksum`]'s in a read of its own, after a setting, and
    /// folds its rows as they arrive (see [`summarize::fold_summary`]).
    async fn fold_summary(
        &self,
        setting: Option<String>,
        sql: String,
        buckets: u64,
        to: summarize::Chunks,
    ) -> Result<Result<u64, String>, SourceError> {
        match &self.pool {
            Pool::Postgres(p) => {
                let dialect = self.pg_dialect();
                summarize::fold_summary(&dialect, self, p, setting, sql, buckets, to).await
            }
            Pool::MySql(p, _) => {
                let dialect = mysql::Dialect::default();
                summarize::fold_summary(&dialect, self, p, setting, sql, buckets, to).await
            }
            Pool::Http(_) | Pool::Nats(_) | Pool::Redis(_) | Pool::Log(_) => {
                Err(self.not_sql("a checksum"))
            }
            Pool::Sqlite(p) => {
                let dialect = sqlite::Dialect;
                summarize::fold_summary(&dialect, self, p, setting, sql, buckets, to).await
            }
        }
    }

    /// A column name quoted for this source's engine.
    fn quote(&self, column: &str) -> String {
        use sql::Dialect as _;
        match &self.pool {
            Pool::Postgres(_) => self.pg_dialect().quote(column),
            Pool::MySql(..) => mysql::Dialect::default().quote(column),
            // Never reached: every caller works on a database's query.
            Pool::Sqlite(_) | Pool::Http(_) | Pool::Nats(_) | Pool::Redis(_) | Pool::Log(_) => {
                sqlite::Dialect.quote(column)
            }
        }
    }

    /// The engine whose segment summaries this source's database computes.
    fn checksum_engine(&self) -> Option<checksum::Engine> {
        use sql::Dialect;
        match &self.pool {
            Pool::Postgres(_) => postgres::Dialect::CHECKSUM_ENGINE,
            Pool::MySql(..) => mysql::Dialect::CHECKSUM_ENGINE,
            Pool::Sqlite(_) => sqlite::Dialect::CHECKSUM_ENGINE,
            Pool::Http(_) | Pool::Nats(_) | Pool::Redis(_) | Pool::Log(_) => None,
        }
    }

    fn pg_dialect(&self) -> postgres::Dialect {
        postgres::Dialect {
            timeout_ms: self.timeout_ms,
        }
    }

    /// The result columns of `query` and how trueup reads them; nothing runs.
    pub async fn describe(&self, query: &str) -> Result<Described, SourceError> {
        self.vet().await?;
        match &self.pool {
            Pool::Postgres(p) => summarize::describe(&self.pg_dialect(), self, p, query).await,
            Pool::MySql(p, _) => {
                summarize::describe(&mysql::Dialect::default(), self, p, query).await
            }
            Pool::Sqlite(p) => summarize::describe(&sqlite::Dialect, self, p, query).await,
            Pool::Http(_) | Pool::Nats(_) | Pool::Redis(_) | Pool::Log(_) => {
                Err(self.not_sql("describing a query"))
            }
        }
    }

    /// Whether the key column `key` (an index into `described`) provably never repeats in
    /// `query`'s rows; `false` when not proven (always, on MySQL/MariaDB).
    pub async fn key_unique(
        &self,
        query: &str,
        described: &Described,
        key: usize,
    ) -> Result<bool, SourceError> {
        self.vet().await?;
        match &self.pool {
            Pool::Postgres(p) => postgres::key_unique(self, p, query, described, key).await,
            _ => Ok(false),
        }
    }

    /// The smallest and largest value of the integer column `key` in `query`'s rows.
    pub async fn key_bounds(
        &self,
        query: &str,
        key: &str,
    ) -> Result<Option<(i64, i64)>, SourceError> {
        self.vet().await?;
        summarize::key_bounds(self, query, key).await
    }

    /// Segment summaries of `req` sent to `to` in bucket order, a chunk at a time, so that
    /// they can be compared as they arrive without holding them; gives the NULL keys.
    pub async fn summarize_ordered(
        &self,
        req: &SummaryRequest,
        to: summarize::Chunks,
    ) -> Result<u64, SourceError> {
        self.vet().await?;
        fail::fail_point!("source.summarize", |_| Err(SourceError::Query {
            source_name: self.name.clone(),
            message: "connection reset (injected by the fail point source.summarize)".into(),
        }));
        match &self.pool {
            Pool::Postgres(_) | Pool::MySql(..) => summarize::summarize(self, req, to).await,
            // Computed here from its rows in key order, so in bucket order already.
            Pool::Sqlite(_) => summarize::in_process(self, req, &to).await,
            Pool::Http(_) | Pool::Nats(_) | Pool::Redis(_) | Pool::Log(_) => {
                Err(self.not_sql("a checksum"))
            }
        }
    }

    /// `req`'s range totalled in one row (over only `only`'s keys when given), without
    /// buckets: PostgreSQL sources only (the typed flavor's; the engine asks no other).
    pub async fn totals(
        &self,
        req: &SummaryRequest,
        only: Option<&KeyRanges>,
    ) -> Result<Totals, SourceError> {
        self.vet().await?;
        fail::fail_point!("source.totals", |_| Err(SourceError::Query {
            source_name: self.name.clone(),
            message: "connection reset (injected by the fail point source.totals)".into(),
        }));
        match &self.pool {
            Pool::Postgres(_) => summarize::totals(self, req, only).await,
            _ => Err(SourceError::Query {
                source_name: self.name.clone(),
                message: format!(
                    "{} sources total no key range in one statement (PostgreSQL's typed checksums only)",
                    self.class
                ),
            }),
        }
    }

    /// Fixed values hashed the way `flavor` hashes rows here: two sources whose probes are
    /// equal hash every value alike. `None`: this source cannot hash that way (the typed
    /// flavor is PostgreSQL's).
    pub async fn checksum_probe(&self, flavor: Flavor) -> Result<Option<String>, SourceError> {
        self.vet().await?;
        match (&self.pool, flavor) {
            (Pool::Postgres(_), _) | (Pool::MySql(..), Flavor::Canonical) => {
                summarize::probe(self, flavor).await.map(Some)
            }
            (Pool::Sqlite(_), Flavor::Canonical) => Ok(Some(summarize::in_process_probe())),
            _ => Ok(None),
        }
    }

    /// Closes the pool, waiting at most [`READ_GRACE`] (see [`crate::connect::close_within`]).
    pub async fn close(&self) {
        let within = READ_GRACE;
        let endpoint = &*self.endpoint;
        match &self.pool {
            Pool::Postgres(p) => crate::connect::close_within(p, within, endpoint).await,
            Pool::MySql(p, _) => crate::connect::close_within(p, within, endpoint).await,
            Pool::Sqlite(p) => crate::connect::close_within(p, within, endpoint).await,
            Pool::Http(_) => {}
            Pool::Nats(nats) => nats.close().await,
            Pool::Redis(_) | Pool::Log(_) => {}
        }
    }
}

/// A pooled connection for one read, with its turn (see `source/turn.rs`). It goes back to the pool
/// only if the read marked it [`Leased::reusable`] (it ended and rolled back); a read that
/// failed, panicked, was cancelled or ran out of time closes it, so no connection carrying an
/// open transaction, a half-read result or a stalled socket is handed to the next read. The
/// turn is given back once the connection is handed back (after the rollback, not when the
/// reader sent its end); sqlx then returns or closes it in the background, so the next reader
/// with a turn may wait on the pool for that, normally a round trip.
pub(crate) struct Leased<DB: sqlx::Database> {
    conn: sqlx::pool::PoolConnection<DB>,
    reusable: bool,
    // Declared after `conn`, so dropped after it is handed back.
    _turn: Turn,
}

impl<DB: sqlx::Database> Leased<DB> {
    /// A connection for a read holding `turn` (see [`Gate::turn`]): at once, not after the
    /// pool's timeout (see [`crate::connect`]), or why there is none.
    pub(crate) async fn acquire(
        source: &SourceName,
        endpoint: &str,
        turn: Turn,
        pool: &sqlx::Pool<DB>,
    ) -> Result<Self, SourceError> {
        let conn = crate::connect::acquire(pool, endpoint)
            .await
            .map_err(|e| SourceError::Connect {
                source_name: source.clone(),
                message: if e.pool_busy {
                    format!(
                        "{e} (every read takes a turn on them first, so connections handed back were slow to return or close: check the network to the database; a larger `pool_size` on the source gives room meanwhile)"
                    )
                } else {
                    e.to_string()
                },
            })?;
        Ok(Self {
            conn,
            reusable: false,
            _turn: turn,
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

/// Runs one row's decoding, turning a panic of a decoder (a driver's, or a bug of trueup's)
/// into a decode error for the column the decoding last said it was at (it is handed a cell
/// to set to each column's index before its value): a value the driver cannot represent
/// fails the read with the column's name, it never ends it. One catch a row, not one a
/// value: a catch per value, with its closure and the moves of its result, cost about 6 % of
/// trueup's CPU on a streamed run of 10M rows.
pub(crate) fn decode_row<T>(
    source: &SourceName,
    columns: &[String],
    decode: impl FnOnce(&std::cell::Cell<usize>) -> Result<T, SourceError>,
) -> Result<T, SourceError> {
    let at = std::cell::Cell::new(0);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(&at))).unwrap_or_else(|panic| {
        let column = columns.get(at.get()).map_or("", String::as_str);
        Err(decode::decode_error(
            source,
            column,
            format!(
                "the value could not be decoded (its decoder panicked: {})",
                panic_message(&*panic)
            )
            .into(),
        ))
    })
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
    /// with the connection error until then. Every read of a database source opened here
    /// takes a turn on its connections (see `source/turn.rs`).
    pub async fn open_all(
        configs: &BTreeMap<SourceName, SourceConfig>,
    ) -> Result<Self, SourceError> {
        let mut by_name = BTreeMap::new();
        for (name, cfg) in configs {
            let mut source = Source::open(cfg)?;
            match source.vet().await {
                Ok(_) => {}
                Err(e @ (SourceError::Privileged { .. } | SourceError::Writable { .. })) => {
                    return Err(e);
                }
                Err(e) => tracing::warn!(source = %name, "cannot check the role's privileges: {e}"),
            }
            if let Some(pool_size) = source.pool_size() {
                source.gate = Gate::new_shared(pool_size);
            }
            by_name.insert(name.clone(), source);
        }
        Ok(Self { by_name })
    }

    /// The sources as a reconcile reading `left` and `right` sees them: it has taken a turn
    /// on each side's database (two where both read one) at once, in source-name order, so
    /// that two runs reading the same two databases the other way round cannot each hold the
    /// one the other waits for; its reads take turns among those. Waits while other reads
    /// hold them; refuses at once a database whose pool can never give both. The turns are
    /// given back once the view and the last connection its reads took are gone.
    pub async fn for_reconcile(
        &self,
        left: &SourceName,
        right: &SourceName,
    ) -> Result<Sources, SourceError> {
        let mut wanted: BTreeMap<&SourceName, u32> = BTreeMap::new();
        for name in [left, right] {
            *wanted.entry(name).or_default() += 1;
        }
        let mut view = self.clone();
        for (name, n) in wanted {
            let gate = self.get(name)?.gate.reserve(name, n).await?;
            if let Some(source) = view.by_name.get_mut(name) {
                source.gate = gate;
            }
        }
        Ok(view)
    }

    /// Each database source's turns on its connections, as they are used now.
    pub fn turn_use(&self) -> impl Iterator<Item = (&SourceName, TurnUse)> {
        self.by_name
            .iter()
            .filter_map(|(name, s)| s.gate.usage().map(|u| (name, u)))
    }

    /// Each source whose role has been audited, and whether it is privileged (and allowed to
    /// be, since a refused one is never read).
    pub fn privileged(&self) -> impl Iterator<Item = (&SourceName, bool)> {
        self.by_name
            .iter()
            .filter_map(|(name, s)| s.privileged_allowed().map(|p| (name, p)))
    }

    /// Adds each of `logs` as a source (`log:NAME`), read through `reader` (the store).
    pub fn attach_logs<'a>(
        &mut self,
        logs: impl IntoIterator<Item = &'a crate::domain::LogName>,
        reader: Arc<dyn LogReader>,
    ) {
        for log in logs {
            let name = SourceName::of_log(log);
            let source = Source {
                name: name.clone(),
                class: SourceClass::Log,
                timeout_ms: 0,
                pool: Pool::Log(Arc::new(event_log::Log {
                    name: name.clone(),
                    reader: Arc::clone(&reader),
                })),
                on_writable: WritablePolicy::Warn,
                on_privileged: PrivilegedPolicy::Refuse,
                endpoint: Arc::from("trueup's store"),
                role: Arc::default(),
                gate: Gate::Open,
            };
            self.by_name.insert(name, source);
        }
    }

    pub fn get(&self, name: &SourceName) -> Result<&Source, SourceError> {
        self.by_name.get(name).ok_or_else(|| SourceError::Unknown {
            source_name: name.clone(),
        })
    }

    /// Closes every source's pool at once, so stalled ones wait their bound together; a
    /// reconcile still waiting for its turn fails at once.
    pub async fn close(&self) {
        for source in self.by_name.values() {
            source.gate.close();
        }
        futures_util::future::join_all(self.by_name.values().map(|s| s.close())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a row of `id, amount, currency` whose `panics_at`th value panics, the way a
    /// reading loop does.
    fn decode_panicking_at(panics_at: usize) -> Result<Row, SourceError> {
        let source = SourceName::parse("ledger").unwrap();
        let columns: Vec<String> = ["id", "amount", "currency"].map(String::from).to_vec();
        decode_row(&source, &columns, |at| {
            let mut values = Vec::new();
            for i in 0..columns.len() {
                at.set(i);
                if panics_at == i {
                    panic!("index out of range for slice of length 3");
                }
                values.push(Value::Int(i as i64));
            }
            Ok(values)
        })
    }

    #[test]
    fn a_decoder_that_panics_fails_the_row_naming_the_column_it_was_decoding() {
        let err = decode_panicking_at(1).unwrap_err();
        let SourceError::Decode {
            column, message, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(column, "amount");
        assert_eq!(
            message,
            "the value could not be decoded (its decoder panicked: index out of range for slice of length 3); cast the column to text in the query if its values do not fit"
        );
        let first = decode_panicking_at(0).unwrap_err();
        assert!(
            matches!(&first, SourceError::Decode { column, .. } if column == "id"),
            "{first}"
        );
    }
}

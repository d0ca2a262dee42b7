//! MySQL's and MariaDB's bulk read: the rows of a statement without parameters, read by the
//! synchronous `mysql` client on a thread of its own and decoded here.
//!
//! sqlx's MySQL row stream costs about 500 ns a row before trueup decodes anything (nested
//! streams, a tracing span and `Arc` clones per row); the synchronous client reads the same
//! binary-protocol rows for 0.38× of sqlx's CPU (docs/scale.md, step 2). The read still starts
//! on sqlx's connection, which holds the read's turn and prepared the statement trueup
//! composed; this connection only reads its rows, then closes.
//!
//! It connects as sqlx does, or not at all: [`Bulk::for_url`] is `None` for a URL with a
//! setting it does not reproduce (a TLS mode, a character set, a time zone), and those
//! sources read through sqlx. The session is sqlx's: the same SQL mode, UTC, utf8mb4, a
//! read-only transaction under the source's statement time limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mysql::consts::{ColumnFlags, ColumnType};
use mysql::prelude::Queryable;

use crate::domain::{SourceName, Value};

use super::decode::{Kind, Unrepresentable, decode_error, unsupported};
use super::sql::{BulkRead, DecodeResult};
use super::stream::Feed;
use super::{Row, SourceError, decode_row};

/// What the reading thread sends at once: at most this many rows, or the first row to reach
/// [`BATCH_BYTES`] of values; the channel holds two such batches, so that a read of large
/// rows keeps a few megabytes in flight, as sqlx's path does. As many rows as a stream's
/// batch: a batch of small rows then goes on to the evaluator as it is
/// ([`Feed::push_rows`]).
const ROWS_PER_BATCH: usize = super::BATCH_ROWS;
const BATCH_BYTES: usize = 1 << 20;

/// How to open the bulk connection of one source.
pub(super) struct Bulk {
    opts: mysql::Opts,
    timeout_ms: u64,
    /// Whether the last refusal was warned of: once per spell of refusals, not per read.
    refusal_warned: AtomicBool,
    /// Until when reads do not try this connection after a refusal (each try may wait for
    /// the connect timeout), reading on the pooled one.
    resting_until: Mutex<Option<std::time::Instant>>,
}

/// How long reads leave the bulk connection alone after the server refused it.
const REST_AFTER_REFUSAL: std::time::Duration = std::time::Duration::from_secs(60);

impl Bulk {
    /// The bulk connection for a source at `url` (as sqlx reads it), or `None` when the URL
    /// asks for a setting this connection would not reproduce exactly.
    pub(super) fn for_url(url: &str, timeout_ms: u64) -> Option<Self> {
        let url = reqwest::Url::parse(url).ok()?;
        let decoded = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|s| s.into_owned())
        };
        let mut socket = None;
        for (key, value) in url.query_pairs() {
            match (&*key, &*value) {
                // sqlx is built without TLS: `preferred` connects in plain, `disabled` too.
                ("ssl-mode" | "sslmode", m)
                    if m.eq_ignore_ascii_case("disabled")
                        || m.eq_ignore_ascii_case("preferred") => {}
                ("statement-cache-capacity", _) => {}
                ("socket", path) => socket = Some(path.to_owned()),
                _ => return None,
            }
        }
        // sqlx connects as `root` when the URL names no user.
        let user = match decoded(url.username())? {
            u if u.is_empty() => "root".to_owned(),
            u => u,
        };
        let password = match url.password() {
            Some(p) => Some(decoded(p)?),
            None => None,
        };
        let database = decoded(url.path().trim_start_matches('/'))?;
        let opts = mysql::OptsBuilder::new()
            .ip_or_hostname(Some(url.host_str().unwrap_or("localhost")))
            .tcp_port(url.port().unwrap_or(3306))
            .socket(socket)
            // sqlx connects where the URL says; the client would otherwise switch to the
            // server's Unix socket when it is local, and a user may authenticate differently.
            .prefer_socket(false)
            .user(Some(user))
            .pass(password)
            .db_name((!database.is_empty()).then_some(database))
            .tcp_connect_timeout(Some(crate::connect::CONNECT_PROBE))
            // A server or network that stalls: the socket gives up once the read's own
            // deadline (the statement's limit and the grace) has passed, which on sqlx's path
            // stops the whole read.
            .read_timeout(Some(deadline(timeout_ms)))
            .write_timeout(Some(deadline(timeout_ms)))
            // The client otherwise takes the server's `max_allowed_packet` (16 MiB on
            // MariaDB) and fails a longer row with "Packet is larger than max_allowed_packet":
            // as on sqlx's path, every row the server sends arrives (the protocol's limit is
            // 1 GiB), and one over `MAX_ROW_BYTES` is refused by name. (One round trip less.)
            .max_allowed_packet(Some(1 << 30))
            .init(vec![
                // sqlx's session, so that a statement means the same on both connections.
                "SET sql_mode=(SELECT CONCAT(@@sql_mode, ',PIPES_AS_CONCAT,NO_ENGINE_SUBSTITUTION')), \
                 time_zone='+00:00', NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
                "SET SESSION TRANSACTION READ ONLY",
            ]);
        Some(Self {
            opts: opts.into(),
            timeout_ms,
            refusal_warned: AtomicBool::new(false),
            resting_until: Mutex::new(None),
        })
    }

    /// Whether a read may try this connection (not within [`REST_AFTER_REFUSAL`] of a
    /// refusal).
    pub(super) fn available(&self) -> bool {
        let resting = self
            .resting_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        resting.is_none_or(|until| std::time::Instant::now() >= until)
    }

    /// The connection opened after any rest ran out: a later refusal is a new spell, warned
    /// of again. (One opened during a rest, having started before it, ends no spell: reads
    /// near the limit would otherwise warn in turns.)
    fn opened(&self) {
        if self.available() {
            self.refusal_warned.store(false, Ordering::Relaxed);
        }
    }

    /// Says that a read of `source` goes on through sqlx because this connection could not be
    /// opened, and rests it: a warning for the first refusal of a spell, then debug lines (a
    /// reconcile's segments are many reads).
    fn refused(&self, source: &SourceName, refusal: &Refusal) {
        *self
            .resting_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(std::time::Instant::now() + REST_AFTER_REFUSAL);
        let why = &refusal.why;
        let rest = REST_AFTER_REFUSAL.as_secs();
        if self.refusal_warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(source = %source, "a MySQL bulk read's connection could not be opened ({why}); reading on the pooled connection");
        } else if refusal.no_connection_to_spare {
            tracing::warn!(
                source = %source,
                "the server has no connection to spare for a MySQL bulk read ({why}): reads take their rows on the pooled connection for the next {rest}s, at more CPU per row; allow the user two connections per read (max_user_connections, max_connections) to read in bulk"
            );
        } else {
            tracing::warn!(
                source = %source,
                "a MySQL bulk read's connection could not be opened ({why}): reads take their rows on the pooled connection for the next {rest}s, at more CPU per row"
            );
        }
    }
}

/// Why the bulk connection could not be opened, and whether the server said it has no
/// connection to spare (for this user or at all).
struct Refusal {
    why: String,
    no_connection_to_spare: bool,
}

impl From<mysql::Error> for Refusal {
    fn from(e: mysql::Error) -> Self {
        let no_connection_to_spare = matches!(&e, mysql::Error::MySqlError(m)
            if crate::connect::mysql_connection_limit(m.code, &m.message));
        Self {
            why: e.to_string(),
            no_connection_to_spare,
        }
    }
}

/// How long a bulk read's socket waits for the server: the read's deadline.
fn deadline(timeout_ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(timeout_ms) + super::READ_GRACE
}

/// Between a read and its thread: where the reading connection is (once it is open), and
/// whether the read was dropped, the result ended or the query was killed. One lock, so that
/// a read dropped while its thread connects is seen before the statement runs.
#[derive(Default)]
struct Reader(Mutex<ReaderState>);

#[derive(Default)]
struct ReaderState {
    /// The reading connection's id and the server it is on (`@@hostname`, `@@port`).
    at: Option<(u32, String, u16)>,
    dropped: bool,
    finished: bool,
    /// The thread let go of the reading connection (it is closed, or about to be).
    closed: bool,
    kill: Kill,
}

/// MySQL's and MariaDB's answer to `KILL` of a connection that is not (or no longer) there.
const ER_NO_SUCH_THREAD: u16 = 1094;

/// How far the KILL of the reading connection's query went.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Kill {
    #[default]
    NotTried,
    Trying,
    Done,
    Failed,
}

impl Reader {
    fn state(&self) -> std::sync::MutexGuard<'_, ReaderState> {
        // (Plain flags: what a panicking holder left is still right.)
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The thread is about to run its statement on connection `id` of `server`; `false`: the
    /// read was dropped meanwhile, run nothing.
    fn starting(&self, id: u32, server: (String, u16)) -> bool {
        let mut state = self.state();
        state.at = Some((id, server.0, server.1));
        !state.dropped
    }

    /// The server ended the result: there is nothing to stop any more.
    fn finished(&self) {
        self.state().finished = true;
    }

    /// The thread is about to close the reading connection (its query ended, or it gave up
    /// the result unread, or it failed).
    fn closing(&self) {
        self.state().closed = true;
    }

    /// The read is dropped: whether a running query is left to stop.
    fn dropped(&self) -> bool {
        let mut state = self.state();
        state.dropped = true;
        state.at.is_some() && !state.finished && state.kill == Kill::NotTried
    }

    /// Kills the reading connection, once, unless its result ended: the rest of it is not
    /// wanted (nobody reads the rows any more, or one failed), and its client would otherwise
    /// read it to its end as it lets go of it. The killing connection first checks that it
    /// reached the reading one's server (not another node behind the same address): ids are
    /// unique per server only. `true` when there is nothing left to stop: its result ended,
    /// it never started, a KILL (this one or an earlier one) went through, or one found the
    /// connection gone after its thread closed it (which ends the query where a KILL cannot).
    fn stop(&self, bulk: &Bulk) -> bool {
        let (id, host, port) = {
            let mut state = self.state();
            state.dropped = true;
            if state.finished {
                return true;
            }
            match (state.kill, &state.at) {
                (Kill::Done, _) | (Kill::NotTried, None) => return true,
                (Kill::Trying | Kill::Failed, _) => return false,
                (Kill::NotTried, Some(at)) => {
                    let at = at.clone();
                    state.kill = Kill::Trying;
                    at
                }
            }
        };
        let killed = mysql::Conn::new(bulk.opts.clone()).and_then(|mut c| {
            let here: Option<(String, u16)> = c.query_first("SELECT @@hostname, @@port")?;
            if here == Some((host.clone(), port)) {
                c.query_drop(format!("KILL {id}")).map(|()| true)
            } else {
                Ok(false)
            }
        });
        let mut state = self.state();
        // The thread closed the reading connection while this KILL was on its way (the read's
        // drop raced the thread's end: its result ended or failed, or it gave up the rest),
        // and the KILL did not find it. That answer alone proves nothing (behind a proxy the
        // id may be the proxy's), but the thread closing its connection is what a failed KILL
        // leads to anyway: no warning.
        let closed_by_its_thread = state.closed
            && matches!(&killed, Err(mysql::Error::MySqlError(e)) if e.code == ER_NO_SUCH_THREAD);
        let done = matches!(killed, Ok(true)) || closed_by_its_thread;
        state.kill = if done { Kill::Done } else { Kill::Failed };
        drop(state);
        match killed {
            Ok(true) => {}
            Err(_) if closed_by_its_thread => {}
            Ok(false) => tracing::warn!(
                "could not stop a MySQL bulk read's query: a new connection reached another server than {host}:{port}; the read closes its connection instead"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "could not stop a MySQL bulk read's query; the read closes its connection instead"
            ),
        }
        done
    }
}

/// Stops the reading thread's query when the read is dropped before the thread is done (an
/// evaluation that ended early, timed out or was cancelled), without waiting for the thread
/// to notice at its next batch: it may be waiting on the server. A thread still connecting
/// sees the drop before it runs its statement.
struct StopOnDrop {
    bulk: Arc<Bulk>,
    reader: Arc<Reader>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.reader.dropped() {
            return;
        }
        let (bulk, reader) = (Arc::clone(&self.bulk), Arc::clone(&self.reader));
        // (Outside a runtime, at shutdown, the thread stops at its next batch or deadline.)
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn_blocking(move || reader.stop(&bulk)));
        }
    }
}

/// What the reading thread says: batches of decoded rows, then `Done` only after the server
/// said the result ended, or why it stopped.
enum Said {
    /// Its connection could not be opened: nothing ran, nothing was sent.
    Refused(Refusal),
    Rows(Vec<Row>),
    Done,
    Failed(SourceError),
}

/// Reads `statement`'s rows into `feed`, named by `columns` and decoded by the result's own
/// column types. `Ok(Complete)` only when the server ended the result: a read cut short
/// fails. `Ok(NotStarted)` when the server refused the reading connection (a user allowed
/// one connection fewer than a bulk read takes, a full server): nothing was fed, and the
/// read goes on through sqlx.
pub(super) async fn read(
    bulk: Arc<Bulk>,
    statement: &str,
    columns: &[String],
    feed: &mut Feed,
) -> Result<BulkRead, Option<SourceError>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = Arc::new(Reader::default());
    let reading = Reading {
        source: feed.source().clone(),
        columns: columns.to_vec(),
        statement: statement.to_owned(),
        reader: Arc::clone(&reader),
    };
    let thread = {
        let bulk = Arc::clone(&bulk);
        tokio::task::spawn_blocking(move || reading.stream(&bulk, &tx))
    };
    let stop = StopOnDrop { bulk, reader };
    loop {
        match rx.recv().await {
            Some(Said::Refused(refusal)) => {
                stop.bulk.refused(feed.source(), &refusal);
                return Ok(BulkRead::NotStarted);
            }
            Some(Said::Rows(rows)) => feed.push_rows(rows).await?,
            Some(Said::Done) => return Ok(BulkRead::Complete),
            Some(Said::Failed(e)) => return Err(Some(e)),
            None => {
                // The thread ended without a word: it panicked.
                let why = match thread.await {
                    Err(e) if e.is_panic() => super::panic_message(&*e.into_panic()),
                    _ => "it ended without saying why".to_owned(),
                };
                return Err(Some(feed.query_error(format!(
                    "the bulk read stopped before the last row: {why}"
                ))));
            }
        }
    }
}

/// The reading connection, which tells its reader before it closes (on every path, a panic
/// included): a KILL that then finds no such connection knows why.
struct Closing<'r> {
    conn: mysql::Conn,
    reader: &'r Reader,
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.reader.closing();
        // (`conn` closes after this.)
    }
}

/// One bulk read, on its thread: the rows are decoded where they arrive, so that the
/// client's buffers are freed on the thread that allocated them.
struct Reading {
    source: SourceName,
    columns: Vec<String>,
    statement: String,
    reader: Arc<Reader>,
}

impl Reading {
    /// A failure of the read's statement, as [`Feed::query_error`] words it.
    fn query_error(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::Query {
            source_name: self.source.clone(),
            message: e.to_string(),
        }
    }

    /// Connects, runs the statement in a read-only transaction and sends its rows. When
    /// nobody listens any more, or a row fails, it stops its query rather than read the rest.
    fn stream(self, bulk: &Bulk, tx: &tokio::sync::mpsc::Sender<Said>) {
        // Whatever keeps the connection from opening, the read's own on sqlx's side is open
        // and in its transaction: the read goes on there rather than fail.
        let (conn, server) = match Self::open(bulk) {
            Ok(opened) => opened,
            Err(refusal) => {
                let _ = tx.blocking_send(Said::Refused(refusal));
                return;
            }
        };
        bulk.opened();
        let mut conn = Closing {
            conn,
            reader: &self.reader,
        };
        // (Where a result was open and may still run, `send_rows` stopped its query, or
        // closing the connection here ends it; before, none runs.)
        let sent = self.send_rows(bulk, &mut conn.conn, server, tx);
        drop(conn);
        if let Err(Some(e)) = sent {
            let _ = tx.blocking_send(Said::Failed(e));
        }
    }

    /// The reading connection, in sqlx's session and a read-only transaction under the
    /// source's time limit, and the server it reached (`@@hostname`, `@@port`).
    fn open(bulk: &Bulk) -> Result<(mysql::Conn, (String, u16)), Refusal> {
        let mut conn = mysql::Conn::new(bulk.opts.clone())?;
        let (version, host, port): (String, String, u16) = conn
            .query_first("SELECT VERSION(), @@hostname, @@port")?
            .ok_or_else(|| Refusal {
                why: "the server did not say its version".to_owned(),
                no_connection_to_spare: false,
            })?;
        // MariaDB and MySQL name their statement time limits differently.
        let limit = if version.contains("MariaDB") {
            format!(
                "SET SESSION max_statement_time = {}",
                bulk.timeout_ms as f64 / 1000.0
            )
        } else {
            format!("SET SESSION max_execution_time = {}", bulk.timeout_ms)
        };
        conn.query_drop(limit)?;
        conn.query_drop("START TRANSACTION READ ONLY")?;
        Ok((conn, (host, port)))
    }

    /// Runs the statement on `conn` and sends its rows; `Err(None)`: nobody listens any more.
    /// After an `Err`, `conn` may hold a result it forgot unread: close it, never reuse it
    /// (another statement on it would read the rest of that result first).
    fn send_rows(
        &self,
        bulk: &Bulk,
        conn: &mut mysql::Conn,
        server: (String, u16),
        tx: &tokio::sync::mpsc::Sender<Said>,
    ) -> Result<(), Option<SourceError>> {
        if !self.reader.starting(conn.connection_id(), server) {
            return Err(None);
        }
        let mut result = conn
            .exec_iter(&*self.statement, ())
            .map_err(|e| Some(self.query_error(e)))?;
        let types: Vec<&'static str> = result.columns().as_ref().iter().map(type_name).collect();
        let sent = self.send_result(&mut result, &types, tx);
        // Before letting go of the result, which reads it to its end.
        if sent.is_err() && !self.reader.stop(bulk) {
            // The query may still be running: reading the rest of its result could take
            // minutes. The result is forgotten instead (its column list, a few hundred bytes,
            // is never freed) and the connection closed under it (by the caller): the
            // server's next write fails, which ends the query.
            std::mem::forget(result);
            return sent;
        }
        drop(result);
        sent?;
        // The result ended: nothing to stop from here on.
        self.reader.finished();
        tx.blocking_send(Said::Done).map_err(|_| None)
    }

    /// Decodes and sends the rows of `result`, whose columns sqlx would name `types`.
    fn send_result(
        &self,
        result: &mut mysql::QueryResult<'_, '_, '_, mysql::Binary>,
        types: &[&'static str],
        tx: &tokio::sync::mpsc::Sender<Said>,
    ) -> Result<(), Option<SourceError>> {
        if types.len() != self.columns.len() {
            return Err(Some(self.query_error(format!(
                "the statement returned {} columns to the bulk read and {} when prepared",
                types.len(),
                self.columns.len()
            ))));
        }
        // From the first row, as sqlx's path: a result without rows has nothing to refuse.
        let mut kinds: Option<Vec<Kind>> = None;
        let mut batch = Vec::with_capacity(ROWS_PER_BATCH);
        let mut batch_bytes = 0;
        for row in result.by_ref() {
            let row = row.map_err(|e| Some(self.query_error(e)))?.unwrap();
            let kinds = match &kinds {
                Some(k) => k,
                None => kinds.insert(
                    types
                        .iter()
                        .zip(&self.columns)
                        .map(|(t, c)| {
                            super::mysql::kind_of(t).ok_or_else(|| unsupported(&self.source, c, t))
                        })
                        .collect::<Result<Vec<Kind>, _>>()
                        .map_err(Some)?,
                ),
            };
            let values = decode_row(&self.source, &self.columns, |column| {
                let mut values = Vec::with_capacity(kinds.len());
                for (i, (value, kind)) in row.into_iter().zip(kinds).enumerate() {
                    column.set(i);
                    values.push(
                        decode(*kind, value)
                            .map_err(|e| decode_error(&self.source, &self.columns[i], e))?,
                    );
                }
                Ok(values)
            })?;
            batch_bytes += values.iter().map(Value::size).sum::<usize>();
            batch.push(values);
            if batch.len() == ROWS_PER_BATCH || batch_bytes >= BATCH_BYTES {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(ROWS_PER_BATCH));
                batch_bytes = 0;
                tx.blocking_send(Said::Rows(full)).map_err(|_| None)?;
            }
        }
        if !batch.is_empty() {
            tx.blocking_send(Said::Rows(batch)).map_err(|_| None)?;
        }
        Ok(())
    }
}

/// The type name sqlx gives a result column, so that both reads map it to the same [`Kind`].
fn type_name(column: &mysql::Column) -> &'static str {
    let flags = column.flags();
    let binary = flags.contains(ColumnFlags::BINARY_FLAG);
    let unsigned = flags.contains(ColumnFlags::UNSIGNED_FLAG);
    use ColumnType::*;
    match column.column_type() {
        // (sqlx names an unsigned TINYINT(1) BOOLEAN too, and reads its 200 as -56.)
        MYSQL_TYPE_TINY if column.column_length() == 1 && !unsigned => "BOOLEAN",
        MYSQL_TYPE_TINY if unsigned => "TINYINT UNSIGNED",
        MYSQL_TYPE_SHORT if unsigned => "SMALLINT UNSIGNED",
        MYSQL_TYPE_LONG if unsigned => "INT UNSIGNED",
        MYSQL_TYPE_INT24 if unsigned => "MEDIUMINT UNSIGNED",
        MYSQL_TYPE_LONGLONG if unsigned => "BIGINT UNSIGNED",
        MYSQL_TYPE_TINY => "TINYINT",
        MYSQL_TYPE_SHORT => "SMALLINT",
        MYSQL_TYPE_LONG => "INT",
        MYSQL_TYPE_INT24 => "MEDIUMINT",
        MYSQL_TYPE_LONGLONG => "BIGINT",
        MYSQL_TYPE_FLOAT => "FLOAT",
        MYSQL_TYPE_DOUBLE => "DOUBLE",
        MYSQL_TYPE_NULL => "NULL",
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => "TIMESTAMP",
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => "DATE",
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => "TIME",
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => "DATETIME",
        MYSQL_TYPE_YEAR => "YEAR",
        MYSQL_TYPE_BIT => "BIT",
        MYSQL_TYPE_ENUM => "ENUM",
        MYSQL_TYPE_SET => "SET",
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => "DECIMAL",
        MYSQL_TYPE_GEOMETRY => "GEOMETRY",
        MYSQL_TYPE_JSON => "JSON",
        MYSQL_TYPE_STRING if binary => "BINARY",
        MYSQL_TYPE_STRING if flags.contains(ColumnFlags::ENUM_FLAG) => "ENUM",
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING if binary => "VARBINARY",
        MYSQL_TYPE_STRING => "CHAR",
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => "VARCHAR",
        MYSQL_TYPE_TINY_BLOB if binary => "TINYBLOB",
        MYSQL_TYPE_TINY_BLOB => "TINYTEXT",
        MYSQL_TYPE_BLOB if binary => "BLOB",
        MYSQL_TYPE_BLOB => "TEXT",
        MYSQL_TYPE_MEDIUM_BLOB if binary => "MEDIUMBLOB",
        MYSQL_TYPE_MEDIUM_BLOB => "MEDIUMTEXT",
        MYSQL_TYPE_LONG_BLOB if binary => "LONGBLOB",
        MYSQL_TYPE_LONG_BLOB => "LONGTEXT",
        _ => "UNKNOWN",
    }
}

/// One binary-protocol value of a column of `kind`, as [`super::mysql`]'s decoder reads it.
fn decode(kind: Kind, value: mysql::Value) -> DecodeResult {
    use mysql::Value as V;
    Ok(match (kind, value) {
        (_, V::NULL) => Value::Null,
        // A zero date or datetime is MySQL's stand-in for none: it reads as NULL, as sqlx
        // reads it (the server sends it as no bytes at all).
        (Kind::Date | Kind::Naive | Kind::Timestamp, V::Date(0, 0, 0, 0, 0, 0, 0)) => Value::Null,
        (Kind::I64, V::Int(i)) => Value::Int(i),
        (Kind::I64, V::UInt(u)) => Value::Int(i64::try_from(u)?),
        (Kind::U64, V::Int(i)) => Value::Int(i),
        (Kind::U64, V::UInt(u)) => i64::try_from(u)
            .map(Value::Int)
            .unwrap_or_else(|_| Value::Decimal(u.into())),
        (Kind::Decimal, V::Bytes(b)) => Value::Decimal(super::decode::exact_decimal(
            "DECIMAL",
            std::str::from_utf8(&b)?,
        )?),
        (Kind::F32, V::Float(f)) => Value::Float(f.into()),
        (Kind::F64, V::Double(f)) => Value::Float(f),
        (Kind::Text, V::Bytes(b)) => Value::Text(std::str::from_utf8(&b)?.into()),
        (Kind::Json, V::Bytes(b)) => Value::Json(Box::new(super::decode::exact_json(&b, "CHAR")?)),
        (Kind::Bytes, V::Bytes(b)) => Value::Bytes(b),
        (Kind::Date, V::Date(y, m, d, ..)) => Value::Date(date(y, m, d)?),
        (Kind::Time, V::Time(negative, days, h, m, s, us)) => Value::Time(
            super::mysql::time_of_day(negative, days * 24 + u32::from(h), m, s, us)?,
        ),
        (Kind::Naive | Kind::Timestamp, V::Date(y, mo, d, h, mi, s, us)) => Value::Timestamp(
            date(y, mo, d)?
                .and_hms_micro_opt(h.into(), mi.into(), s.into(), us)
                .ok_or("the time of day is out of range")?
                .and_utc(),
        ),
        (kind, value) => return Err(format!("a {value:?} in a column read as {kind:?}").into()),
    })
}

/// A DATE's parts as a date; a date with a zero part (`2024-00-10`) is refused.
fn date(y: u16, m: u8, d: u8) -> Result<chrono::NaiveDate, sqlx::error::BoxDynError> {
    chrono::NaiveDate::from_ymd_opt(y.into(), m.into(), d.into()).ok_or_else(|| {
        Unrepresentable::OutOfRange {
            value: format!("the date {y:04}-{m:02}-{d:02}, which is no day of the calendar"),
            text_type: "CHAR",
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_bulk_connection_rests_while_reads_go_through_sqlx_and_a_spell_of_refusals_warns_once()
     {
        let bulk = Bulk::for_url("mysql://reader@db.example/ledger", 2000).unwrap();
        let source = SourceName::parse("ledger").unwrap();
        assert!(bulk.available());
        let full = Refusal::from(mysql::Error::MySqlError(mysql::MySqlError {
            state: "42000".into(),
            message: "User has exceeded the 'max_user_connections' resource".into(),
            code: 1226,
        }));
        assert!(full.no_connection_to_spare);
        bulk.refused(&source, &full);
        assert!(!bulk.available(), "tried again at once after a refusal");
        assert!(bulk.refusal_warned.load(Ordering::Relaxed));
        // A connection opened during the rest (it started before it) ends no spell; one
        // opened after it does, and the next refusal warns again.
        bulk.opened();
        assert!(bulk.refusal_warned.load(Ordering::Relaxed));
        *bulk.resting_until.lock().unwrap() = Some(std::time::Instant::now());
        bulk.opened();
        assert!(!bulk.refusal_warned.load(Ordering::Relaxed));
        let hourly = Refusal::from(mysql::Error::MySqlError(mysql::MySqlError {
            state: "42000".into(),
            message: "User has exceeded the 'max_queries_per_hour' resource".into(),
            code: 1226,
        }));
        assert!(!hourly.no_connection_to_spare);
        let other = Refusal::from(mysql::Error::DriverError(
            mysql::DriverError::ConnectTimeout,
        ));
        assert!(!other.no_connection_to_spare);
    }

    /// A reading connection of `bulk`'s server, its reader having started on it, and a second
    /// connection to watch it with.
    fn reading_on(bulk: &Bulk) -> (mysql::Conn, Reader, mysql::Conn) {
        let mut reading = mysql::Conn::new(bulk.opts.clone()).expect(
            "MariaDB must run on 127.0.0.1:3306 (or at TRUEUP_TEST_MYSQL); .ci/run starts it",
        );
        let server: (String, u16) = reading
            .query_first("SELECT @@hostname, @@port")
            .unwrap()
            .unwrap();
        let reader = Reader::default();
        // The id the read itself kills by: the handshake's.
        assert!(reader.starting(reading.connection_id(), server));
        let watching = mysql::Conn::new(bulk.opts.clone()).unwrap();
        (reading, reader, watching)
    }

    /// Waits (at most 5 s) until the server no longer lists connection `id`.
    fn wait_until_gone(watching: &mut mysql::Conn, id: u32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let listed: Option<u64> = watching
                .query_first(format!(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id}"
                ))
                .unwrap();
            if listed == Some(0) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server kept connection {id} for 5 s after it closed"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The race between a dropped read and its thread: the thread stops on its own and
    /// closes the reading connection while the drop's `KILL` is on its way, which then finds
    /// no such connection. That is no failure to stop (which warns); a connection that went
    /// without its thread closing it still is, since the answer alone proves nothing (behind
    /// a proxy the id the read knows may not be the server's).
    #[test]
    fn a_kill_that_finds_the_reading_connection_gone_is_done_only_once_its_thread_closed_it() {
        let server = std::env::var("TRUEUP_TEST_MYSQL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
        let bulk = Bulk::for_url(&server, 5000).expect("a plain URL reads in bulk");

        let (reading, reader, mut watching) = reading_on(&bulk);
        let id = reading.connection_id();
        reader.closing();
        drop(reading);
        wait_until_gone(&mut watching, id);
        assert!(
            reader.stop(&bulk),
            "a KILL of the connection its thread had closed was taken for a failed stop"
        );
        assert!(reader.state().kill == Kill::Done);
        // Known ended: a second stop agrees without a KILL.
        assert!(reader.stop(&bulk));

        let (reading, reader, mut watching) = reading_on(&bulk);
        let id = reading.connection_id();
        watching.query_drop(format!("KILL {id}")).unwrap();
        wait_until_gone(&mut watching, id);
        assert!(
            !reader.stop(&bulk),
            "a connection gone while its thread still held it was taken for a stopped query"
        );
        assert!(reader.state().kill == Kill::Failed);
        drop(reading);
    }

    #[test]
    fn a_plain_url_connects_the_bulk_reads_where_sqlx_does_with_the_same_credentials() {
        let bulk = Bulk::for_url(
            "mysql://reader:p%40ss%2Fword@db.example:3307/ledger?ssl-mode=preferred",
            2000,
        )
        .expect("a plain URL reads in bulk");
        assert_eq!(bulk.opts.get_ip_or_hostname(), "db.example");
        assert_eq!(bulk.opts.get_tcp_port(), 3307);
        assert_eq!(bulk.opts.get_user(), Some("reader"));
        assert_eq!(bulk.opts.get_pass(), Some("p@ss/word"));
        assert_eq!(bulk.opts.get_db_name(), Some("ledger"));
        assert!(!bulk.opts.get_prefer_socket());
        assert_eq!(bulk.timeout_ms, 2000);
        let bare = Bulk::for_url("mysql://localhost", 1).expect("a bare URL reads in bulk");
        assert_eq!(bare.opts.get_tcp_port(), 3306);
        assert_eq!(bare.opts.get_user(), Some("root"), "sqlx's default user");
        assert_eq!(bare.opts.get_db_name(), None);
    }

    #[test]
    fn a_url_asking_for_tls_a_charset_or_a_time_zone_reads_through_sqlx() {
        for url in [
            "mysql://r@db/l?ssl-mode=required",
            "mysql://r@db/l?ssl-mode=VERIFY_IDENTITY",
            "mysql://r@db/l?ssl-ca=/etc/ca.pem",
            "mysql://r@db/l?charset=latin1",
            "mysql://r@db/l?collation=utf8mb4_bin",
            "mysql://r@db/l?timezone=%2B02:00",
            "not a url",
        ] {
            assert!(Bulk::for_url(url, 1).is_none(), "{url}");
        }
    }
}

//! Rows from a reading task to the evaluator: batches over a bounded channel, bounded in rows
//! and bytes, ended only by an explicit end-of-data.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{
    BATCH_BYTES, BATCH_ROWS, CHANNEL_BYTES, MAX_ROW_BYTES, Row, SourceError, decode, index_of,
};
use crate::domain::{SourceName, Value};

/// What a reading task sends, in this order: the columns once, row batches, then `End`.
/// A stream that closes without `End` did not finish: the reader failed, panicked or was
/// cancelled, and its rows must never be taken for the whole result.
pub(super) enum Chunk {
    Columns(Arc<[String]>),
    /// Rows, with their share of the channel's byte budget (released once taken out).
    Rows(Vec<Row>, Option<tokio::sync::OwnedSemaphorePermit>),
    End,
}

pub(super) type ChunkTx = mpsc::Sender<Result<Chunk, SourceError>>;

/// Rows arriving from a source, in batches.
pub struct RowStream {
    pub(super) source: SourceName,
    pub(super) columns: Arc<[String]>,
    pub(super) rx: mpsc::Receiver<Result<Chunk, SourceError>>,
    pub(super) state: StreamState,
}

pub(super) enum StreamState {
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

/// The reading task's outlet: the column names once, then row batches, then the end.
pub(crate) struct Feed {
    /// The fail point `source.decode` is set (test builds): the first row fails to decode.
    pub(super) decode_fault: bool,
    pub(super) source: SourceName,
    pub(super) endpoint: Arc<str>,
    /// The read's turn on the source's connections, taken before it started; its connection
    /// holds it (a source that is no database has no turns).
    pub(super) turn: super::turn::Turn,
    pub(super) columns: Arc<[String]>,
    /// The batch being filled, and the bytes of its values.
    pub(super) batch: Vec<Row>,
    pub(super) batch_bytes: usize,
    /// The channel's byte budget, in KiB.
    pub(super) budget: Arc<tokio::sync::Semaphore>,
    pub(super) tx: ChunkTx,
    /// A keyed read's keys and where they are in a row: rows with another key are dropped
    /// (see [`super::KeySet`]).
    pub(super) keep_only: Option<(super::KeySet, Vec<usize>)>,
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
        if let Some((set, at)) = &self.keep_only {
            let key: Vec<&Value> = at.iter().map(|&i| &row[i]).collect();
            if !set.holds(&key) {
                return Ok(());
            }
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

    /// Ends a reader's work: a failure goes to whoever waits (`Err(None)`: nobody listens any
    /// more, nothing to say); success was already said by [`Feed::finish`].
    pub(crate) async fn end(self, result: Result<(), Option<SourceError>>) {
        if let Err(Some(e)) = result {
            self.fail(e).await;
        }
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

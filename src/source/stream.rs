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
        Self::sent(columns, batches, false)
    }

    /// A stream whose reader sends exactly `batches` (empty ones too) and then `End`.
    #[cfg(test)]
    pub(crate) fn in_batches(columns: Vec<String>, batches: Vec<Vec<Row>>) -> Self {
        Self::sent(columns, batches, true)
    }

    #[cfg(test)]
    fn sent(columns: Vec<String>, batches: Vec<Vec<Row>>, end: bool) -> Self {
        let (tx, rx) = mpsc::channel(batches.len() + 1);
        for b in batches {
            let _ = tx.try_send(Ok(Chunk::Rows(b, None)));
        }
        if end {
            let _ = tx.try_send(Ok(Chunk::End));
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
        if self.add_row(row).map_err(Some)? {
            self.send_batch().await.map_err(|_| None)?;
        }
        Ok(())
    }

    /// Adds rows that arrive in batches (from MySQL's bulk reading thread) as
    /// [`Feed::push_row`] adds each. A batch that arrives while none is being filled, and that
    /// row by row would make the same batch (at most [`BATCH_ROWS`] rows, [`BATCH_BYTES`]
    /// reached by its last row at the earliest), goes on as it is: no row moved, no `await`
    /// per row.
    pub(crate) async fn push_rows(&mut self, rows: Vec<Row>) -> Result<(), Option<SourceError>> {
        let mut whole = self.batch.is_empty()
            && self.keep_only.is_none()
            && !self.decode_fault
            && rows.len() <= BATCH_ROWS;
        let mut bytes = 0;
        if whole {
            for row in &rows {
                if bytes >= BATCH_BYTES {
                    whole = false;
                    break;
                }
                bytes += self.row_bytes(row).map_err(Some)?;
            }
        }
        if !whole {
            for row in rows {
                self.push_row(row).await?;
            }
            return Ok(());
        }
        self.batch = rows;
        self.batch_bytes = bytes;
        if self.batch.len() >= BATCH_ROWS || self.batch_bytes >= BATCH_BYTES {
            self.send_batch().await.map_err(|_| None)?;
        }
        Ok(())
    }

    /// Adds a row to the batch unless the read keeps other keys only; `true` when the batch
    /// is full and must be sent ([`Feed::send_batch`]) before the next row. (A reading loop
    /// that adds its rows so awaits once a batch, not once a row.)
    pub(crate) fn add_row(&mut self, row: Row) -> Result<bool, SourceError> {
        if self.decode_fault {
            return Err(decode::decode_error(
                &self.source,
                self.columns.first().map_or("", String::as_str),
                "the value cannot be decoded (injected by the fail point source.decode)".into(),
            ));
        }
        if let Some((set, at)) = &self.keep_only {
            let key: Vec<&Value> = at.iter().map(|&i| &row[i]).collect();
            if !set.holds(&key) {
                return Ok(false);
            }
        }
        let bytes = self.row_bytes(&row)?;
        self.batch.push(row);
        self.batch_bytes += bytes;
        Ok(self.batch.len() >= BATCH_ROWS || self.batch_bytes >= BATCH_BYTES)
    }

    /// A row's bytes, refused over [`MAX_ROW_BYTES`] naming its biggest column.
    fn row_bytes(&self, row: &Row) -> Result<usize, SourceError> {
        let bytes: usize = row.iter().map(Value::size).sum();
        if bytes > MAX_ROW_BYTES {
            let (i, biggest) = row
                .iter()
                .enumerate()
                .max_by_key(|(_, v)| v.size())
                .expect("a row over the limit has a value");
            return Err(SourceError::RowTooLarge {
                source_name: self.source.clone(),
                column: self.columns.get(i).cloned().unwrap_or_default(),
                column_bytes: biggest.size(),
                bytes,
                limit: MAX_ROW_BYTES,
            });
        }
        Ok(bytes)
    }

    pub(crate) async fn send_batch(&mut self) -> Result<(), Abandoned> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A feed of columns `id, body` and the stream its rows arrive on.
    fn feed() -> (Feed, RowStream) {
        let (tx, rx) = mpsc::channel(super::super::CHANNEL_BATCHES);
        let source = SourceName::parse("ledger").unwrap();
        let columns: Arc<[String]> = Arc::from(vec!["id".to_owned(), "body".to_owned()]);
        let feed = Feed {
            decode_fault: false,
            source: source.clone(),
            endpoint: Arc::from("memory"),
            turn: Default::default(),
            columns: Arc::clone(&columns),
            batch: Vec::new(),
            batch_bytes: 0,
            budget: Arc::new(tokio::sync::Semaphore::new(CHANNEL_BYTES >> 10)),
            tx,
            keep_only: None,
        };
        let stream = RowStream {
            source,
            columns,
            rx,
            state: StreamState::Open,
        };
        (feed, stream)
    }

    fn rows(ids: std::ops::Range<i64>) -> Vec<Row> {
        ids.map(|i| vec![Value::Int(i), Value::Text("x".into())])
            .collect()
    }

    /// What the stream delivers: each batch's length and where its rows are in memory, and
    /// the ids in the order they came.
    async fn received(mut stream: RowStream) -> (Vec<(usize, usize)>, Vec<i64>) {
        let (mut batches, mut ids) = (Vec::new(), Vec::new());
        while let Some(batch) = stream.next_batch().await {
            let batch = batch.unwrap();
            batches.push((batch.len(), batch.as_ptr() as usize));
            ids.extend(batch.iter().map(|r| match r[0] {
                Value::Int(i) => i,
                _ => unreachable!(),
            }));
        }
        (batches, ids)
    }

    #[tokio::test]
    async fn rows_pushed_in_batches_arrive_in_order_a_whole_batch_as_it_came() {
        let n = BATCH_ROWS as i64;
        let (mut feed, stream) = feed();
        let reading = tokio::spawn(received(stream));
        // A batch into an empty feed goes on as it is (the same vector); one after a lone
        // row fills the batch that row started, and the rest go on row by row.
        let first = rows(0..n);
        let first_at = first.as_ptr() as usize;
        feed.push_rows(first).await.unwrap();
        feed.push_row(rows(n..n + 1).remove(0)).await.unwrap();
        feed.push_rows(rows(n + 1..3 * n + 1)).await.unwrap();
        feed.push_rows(rows(3 * n + 1..3 * n + 11)).await.unwrap();
        assert!(feed.finish().await.is_ok());
        drop(feed);
        let (batches, ids) = reading.await.unwrap();
        let lengths: Vec<usize> = batches.iter().map(|(len, _)| *len).collect();
        assert_eq!(lengths, vec![BATCH_ROWS, BATCH_ROWS, BATCH_ROWS, 11]);
        assert_eq!(batches[0].1, first_at, "the first batch was copied");
        assert_eq!(ids, (0..3 * n + 11).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_batch_of_rows_larger_than_a_streams_batch_is_cut_as_row_by_row_pushing_cuts_it() {
        // Six rows of 1 MiB: a stream's batch is full once 4 MiB are in it.
        let mut wide = rows(0..6);
        for row in &mut wide {
            row[1] = Value::Text("w".repeat(1 << 20).into());
        }
        let n = BATCH_ROWS as i64;
        // And more rows than a stream's batch holds.
        for (batch, cut) in [(wide, vec![4, 2]), (rows(0..n + 1), vec![BATCH_ROWS, 1])] {
            let (mut feed, stream) = feed();
            let reading = tokio::spawn(received(stream));
            let count = batch.len() as i64;
            feed.push_rows(batch).await.unwrap();
            assert!(feed.finish().await.is_ok());
            drop(feed);
            let (batches, ids) = reading.await.unwrap();
            let lengths: Vec<usize> = batches.iter().map(|(len, _)| *len).collect();
            assert_eq!(lengths, cut);
            assert_eq!(ids, (0..count).collect::<Vec<_>>());
        }
    }

    #[tokio::test]
    async fn a_batch_holding_a_row_over_the_limit_fails_naming_its_column_and_sends_nothing() {
        let (mut feed, mut stream) = feed();
        let mut batch = rows(0..3);
        batch[1][1] = Value::Text("z".repeat(MAX_ROW_BYTES + 1).into());
        let Err(Some(err)) = feed.push_rows(batch).await else {
            panic!("a row over the limit was taken")
        };
        let SourceError::RowTooLarge { column, bytes, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!((column.as_str(), *bytes), ("body", MAX_ROW_BYTES + 17));
        feed.end(Err(Some(err))).await;
        let failed = stream.next_batch().await.unwrap();
        assert!(
            matches!(failed, Err(SourceError::RowTooLarge { .. })),
            "rows were sent before the failure"
        );
    }
}

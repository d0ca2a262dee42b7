//! Rows from a source that is not a database (an API, a stream) on their way to the
//! evaluator: filtered in process where a database would have filtered in its query, and put
//! in key order through `sort.rs` when the read asks for an order.

use super::sort::Sorter;
use super::stream::Feed;
use super::{ReadRequest, Row, SourceError, index_of, resolve_filter, resolve_needed};
use crate::domain::{SourceName, Value};

/// One read's rows, from the source's columns to the end of the read.
pub(super) struct Rows<'a> {
    source: &'a SourceName,
    req: &'a ReadRequest,
    feed: &'a mut Feed,
    /// Where the filter's columns, a key range's column and the read's start in time are.
    filter: Vec<usize>,
    ranges: Option<usize>,
    since: Option<usize>,
    sorter: Option<Sorter>,
}

impl<'a> Rows<'a> {
    /// Checks the read's columns against `columns` (the source's), and sends them.
    pub(super) async fn start(
        source: &'a SourceName,
        columns: Vec<String>,
        req: &'a ReadRequest,
        feed: &'a mut Feed,
    ) -> Result<Self, Option<SourceError>> {
        resolve_needed(source, &columns, req)?;
        let filter = resolve_filter(source, &columns, req)?;
        let at = |column: &str, role: &'static str| {
            index_of(&columns, column).ok_or_else(|| SourceError::MissingColumn {
                source_name: source.clone(),
                column: column.to_owned(),
                role,
                available: columns.join(", "),
            })
        };
        let order: Vec<usize> = req
            .order_by
            .iter()
            .map(|c| at(c.as_str(), "a key"))
            .collect::<Result<_, _>>()?;
        let ranges = match &req.key_ranges {
            Some(r) => Some(at(r.column.as_str(), "a key")?),
            None => None,
        };
        let since = match &req.changed_since {
            Some(c) => Some(at(c.column.as_str(), "the time column")?),
            None => None,
        };
        if let Some(keys) = &req.keys {
            let positions = keys
                .columns
                .iter()
                .map(|c| at(c.as_str(), "a key"))
                .collect::<Result<Vec<_>, _>>()?;
            feed.keep_only = Some((keys.clone(), positions));
        }
        feed.send_columns(columns).await.map_err(|_| None)?;
        Ok(Self {
            source,
            req,
            feed,
            filter,
            ranges,
            since,
            sorter: (!order.is_empty()).then(|| Sorter::new(order, Sorter::BUDGET)),
        })
    }

    /// Whether the read asked for this row (what a database would have filtered).
    fn wanted(&self, row: &Row) -> bool {
        let req = self.req;
        self.filter
            .iter()
            .zip(&req.filter)
            .all(|(&i, (_, want))| &row[i].to_canonical_json() == want)
            && self
                .ranges
                .zip(req.key_ranges.as_ref())
                .is_none_or(|(i, r)| match row[i] {
                    Value::Int(k) => r.ranges.iter().any(|&(low, high)| low <= k && k <= high),
                    _ => false,
                })
            && self
                .since
                .zip(req.changed_since.as_ref())
                .is_none_or(|(i, c)| row[i].as_timestamp().is_some_and(|t| t >= c.since))
    }

    /// A row of the source: kept or not, then to the sorter or straight to the evaluator.
    pub(super) async fn take(&mut self, row: Row) -> Result<(), Option<SourceError>> {
        // A time that is no instant (text, a number of seconds the columns did not type)
        // cannot be placed in the window: left out, every such row would read as absent.
        if let Some((i, c)) = self.since.zip(self.req.changed_since.as_ref())
            && !matches!(row[i], Value::Null)
            && row[i].as_timestamp().is_none()
        {
            return Err(Some(SourceError::Decode {
                source_name: self.source.clone(),
                column: c.column.to_string(),
                message: format!(
                    "it holds `{}`, which is no instant, and the window keeps rows by their time; read the field as a timestamp or a date (`type: timestamp` or `type: date` in the source's columns)",
                    crate::domain::value_text_prefix(&row[i].to_string())
                ),
            }));
        }
        if !self.wanted(&row) {
            return Ok(());
        }
        match &mut self.sorter {
            Some(sorter) => sorter
                .push(row)
                .map_err(|e| Some(spill_error(self.source, e))),
            None => self.feed.push_row(row).await,
        }
    }

    /// Sends the sorted rows, if any wait, and ends the read as complete.
    pub(super) async fn finish(self) -> Result<(), Option<SourceError>> {
        let name = self.source;
        if let Some(sorter) = self.sorter {
            let spilled = sorter.spilled();
            let sorted = tokio::task::spawn_blocking(move || sorter.finish())
                .await
                .map_err(|e| Some(spill_error(name, std::io::Error::other(e.to_string()))))?
                .map_err(|e| Some(spill_error(name, e)))?;
            if spilled > 0 {
                tracing::debug!(source = %name, runs = spilled, "sorted the rows through temporary files");
            }
            // Reading the runs is file I/O: it runs beside the runtime, a batch at a time.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<Row>>>(2);
            let reader = tokio::task::spawn_blocking(move || {
                let mut sorted = sorted;
                loop {
                    let mut batch = Vec::with_capacity(super::BATCH_ROWS);
                    for row in sorted.by_ref().take(super::BATCH_ROWS) {
                        match row {
                            Ok(row) => batch.push(row),
                            Err(e) => {
                                let _ = tx.blocking_send(Err(e));
                                return;
                            }
                        }
                    }
                    if batch.is_empty() || tx.blocking_send(Ok(batch)).is_err() {
                        return;
                    }
                }
            });
            while let Some(batch) = rx.recv().await {
                for row in batch.map_err(|e| Some(spill_error(name, e)))? {
                    self.feed.push_row(row).await?;
                }
            }
            // The channel also closes when the reader panicked: only a reader that ended well
            // read every run.
            reader
                .await
                .map_err(|e| Some(spill_error(name, std::io::Error::other(e.to_string()))))?;
        }
        self.feed.finish().await.map_err(|_| None)
    }
}

fn spill_error(source: &SourceName, e: std::io::Error) -> SourceError {
    SourceError::Incomplete {
        source_name: source.clone(),
        cause: format!(
            "sorting its rows through temporary files failed: {e} (the system's temporary directory needs room for them; set TMPDIR to move it)"
        ),
    }
}

//! One of trueup's own event logs as a source (`source: log:NAME`): its events, in the order
//! they were captured, each mapped to a row from its JSON payload, its headers and its
//! metadata (`id` the event id, `time` its event time — or when it was captured, for a log
//! without `event_time` — and `sequence` its place in the log).
//!
//! The log lives in trueup's store, which is above this module: the store gives it through
//! [`LogReader`]. A read ends at the last event stored when it began; events captured
//! meanwhile wait for the next run.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::http::{JSON_NULL, field_value};
use super::stream::Feed;
use super::unordered::Rows;
use super::{ReadRequest, Row, SourceError};
use crate::domain::{Field, FieldFrom, MessageMeta, Read, SourceName, StreamRead, Value};

/// Events read at a time.
const PAGE: u32 = 2_000;

/// One stored event, as a source reads it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LogEventRow {
    /// Its place in the log (increasing in the order events were captured): the row's id.
    #[sqlx(rename = "id")]
    pub sequence: i64,
    pub event_id: String,
    pub event_at: Option<DateTime<Utc>>,
    pub ingested_at: DateTime<Utc>,
    #[sqlx(json)]
    pub headers: Json,
    pub payload: Vec<u8>,
}

/// Where a log's events are kept (trueup's store).
#[async_trait]
pub trait LogReader: Send + Sync {
    /// Events of `log` with a sequence after `after` and at most `until`, in order, at most
    /// `limit`.
    async fn log_page(
        &self,
        log: &str,
        after: i64,
        until: i64,
        limit: u32,
    ) -> Result<Vec<LogEventRow>, String>;

    /// The sequence of the last event of `log` (0 when it has none).
    async fn log_end(&self, log: &str) -> Result<i64, String>;

    /// The event of `log` with this id, if the log holds it.
    async fn log_event(&self, log: &str, event_id: &str) -> Result<Option<LogEventRow>, String>;
}

/// An event log, read through the store.
pub(super) struct Log {
    pub(super) name: SourceName,
    pub(super) reader: Arc<dyn LogReader>,
}

impl Log {
    fn failed(&self, message: String) -> SourceError {
        SourceError::Api {
            source_name: self.name.clone(),
            request: format!("event log {}", self.name.log().unwrap_or_default()),
            message,
        }
    }
}

/// Reads `req` from the log into `feed`, then says it is complete; a failure goes to `feed`.
pub(super) async fn read(log: Arc<Log>, req: ReadRequest, mut feed: Feed) {
    let result = read_all(&log, &req, &mut feed).await;
    feed.end(result).await;
}

async fn read_all(
    log: &Log,
    req: &ReadRequest,
    feed: &mut Feed,
) -> Result<(), Option<SourceError>> {
    let Read::Stream(read) = &req.query else {
        return Err(Some(SourceError::WrongClass {
            source_name: log.name.clone(),
            is: "an event log",
            why: "the side does not read events; write `stream: {columns: ...}` for an event log"
                .into(),
        }));
    };
    let name = log.name.log().unwrap_or_default();
    let columns: Vec<String> = read.columns.iter().map(|f| f.column.to_string()).collect();
    let until = log
        .reader
        .log_end(name)
        .await
        .map_err(|m| log.failed(format!("cannot read the log: {m}")))?;
    // A read for one event id (a violation re-checked before its action) takes that event
    // alone, by the log's index; the other filters apply as to any row.
    let by_id = req.filter.iter().find_map(|(column, value)| {
        let is_id = read
            .columns
            .iter()
            .any(|f| &f.column == column && f.from == FieldFrom::Meta(MessageMeta::Id));
        is_id.then(|| value.as_str().map(str::to_owned))
    });
    if let Some(id) = by_id {
        let mut rows = Rows::start(&log.name, columns, req, feed).await?;
        // An id that is not text matches no event (event ids are text).
        if let Some(id) = id {
            let event = log
                .reader
                .log_event(name, &id)
                .await
                .map_err(|m| log.failed(format!("cannot read the log: {m}")))?;
            if let Some(event) = event.filter(|e| e.sequence <= until) {
                let row = to_row(read, &event)
                    .map_err(|why| log.failed(format!("event `{}`: {why}", event.event_id)))?;
                rows.take(row).await?;
            }
        }
        return rows.finish().await;
    }
    let mut rows = Rows::start(&log.name, columns, req, feed).await?;
    let mut after = 0;
    while after < until {
        let page = log
            .reader
            .log_page(name, after, until, PAGE)
            .await
            .map_err(|m| log.failed(format!("cannot read the log: {m}")))?;
        let Some(last) = page.last() else { break };
        after = last.sequence;
        for event in &page {
            let row = to_row(read, event)
                .map_err(|why| log.failed(format!("event `{}`: {why}", event.event_id)))?;
            rows.take(row).await?;
        }
    }
    rows.finish().await
}

/// An event's columns, as a side reading its log (`read`) sees them.
pub fn to_row(read: &StreamRead, event: &LogEventRow) -> Result<Row, String> {
    let fields: &[Field] = &read.columns;
    let needs_payload = fields.iter().any(|f| matches!(f.from, FieldFrom::Json(_)));
    let payload: Json = if needs_payload {
        serde_json::from_slice(&event.payload)
            .map_err(|e| format!("the payload is not JSON ({e})"))?
    } else {
        Json::Null
    };
    fields
        .iter()
        .map(|f| {
            let raw = match &f.from {
                FieldFrom::Json(path) => path.find(&payload).unwrap_or(&JSON_NULL),
                FieldFrom::Header(name) => event
                    .headers
                    .as_object()
                    .and_then(|h| {
                        h.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v)
                    })
                    .unwrap_or(&JSON_NULL),
                FieldFrom::Meta(MessageMeta::Id) => {
                    return Ok(Value::Text(event.event_id.as_str().into()));
                }
                FieldFrom::Meta(MessageMeta::Time) => {
                    return Ok(Value::Timestamp(
                        event.event_at.unwrap_or(event.ingested_at),
                    ));
                }
                FieldFrom::Meta(MessageMeta::Sequence) => return Ok(Value::Int(event.sequence)),
                FieldFrom::Meta(MessageMeta::Subject) => {
                    return Err(format!(
                        "column `{}`: a logged event has no subject",
                        f.column
                    ));
                }
            };
            field_value(f, raw)
        })
        .collect()
}

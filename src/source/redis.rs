//! A Redis stream as a source: the entries at a side's key, read with `XRANGE` page after page
//! (from the first entry, or in a windowed run from the window's start) up to the entry that
//! was the last one when the read began, each mapped to a row from its fields and its id.
//!
//! A key that holds no stream fails the read: a mistyped key is never taken for an empty
//! stream. A field whose value is a JSON object or list can be walked into (`payload.id`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use redis::streams::{StreamId, StreamRangeReply};
use serde_json::Value as Json;

use super::http::{JSON_NULL, field_value};
use super::stream::Feed;
use super::unordered::Rows;
use super::{ReadRequest, Row, SourceError};
use crate::config::RedisSource;
use crate::domain::{Field, FieldFrom, MessageMeta, Read, SourceName, StreamRead, Value};

/// Entries asked for at once.
const PAGE: usize = 1_000;

/// A Redis server, connected on first use.
pub(super) struct Redis {
    cfg: RedisSource,
    /// Made on first use; dropped after a failed read, so the next read connects again (a
    /// multiplexed connection never reconnects by itself).
    connection: crate::net::Reconnecting<redis::aio::MultiplexedConnection>,
}

impl Redis {
    pub(super) fn open(cfg: &RedisSource) -> Self {
        Self {
            cfg: cfg.clone(),
            connection: crate::net::Reconnecting::default(),
        }
    }

    fn name(&self) -> &SourceName {
        &self.cfg.name
    }

    /// The server's address as shown: never a password.
    pub(super) fn endpoint(&self) -> String {
        self.cfg.url.to_string()
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, SourceError> {
        self.connection
            .get(|| async {
                let connect_error = |message: String| SourceError::Connect {
                    source_name: self.name().clone(),
                    message: format!("{}: {message}", self.endpoint()),
                };
                crate::net::redis_connect(self.cfg.url.expose(), self.cfg.timeout.as_std())
                    .await
                    .map_err(connect_error)
            })
            .await
    }

    fn failed(&self, read: &StreamRead, message: String) -> SourceError {
        SourceError::Api {
            source_name: self.name().clone(),
            request: format!("stream at key {}", read.stream),
            message,
        }
    }
}

/// Reads `req` from `redis` into `feed`, then says it is complete; a failure goes to `feed`.
pub(super) async fn read(redis: Arc<Redis>, req: ReadRequest, mut feed: Feed) {
    let result = read_all(&redis, &req, &mut feed).await;
    if result.is_err() {
        redis.connection.forget().await;
    }
    feed.end(result).await;
}

async fn read_all(
    redis: &Redis,
    req: &ReadRequest,
    feed: &mut Feed,
) -> Result<(), Option<SourceError>> {
    let Read::Stream(read) = &req.query else {
        return Err(Some(SourceError::WrongClass {
            source_name: redis.name().clone(),
            is: "a Redis server",
            why: "the side does not name a stream; write `stream: {key: ...}` for a Redis source"
                .into(),
        }));
    };
    let columns: Vec<String> = read.columns.iter().map(|f| f.column.to_string()).collect();
    let mut con = redis.connection().await?;
    let failed = |e: redis::RedisError| redis.failed(read, crate::net::error_chain(&e));
    let kind: String = redis::cmd("TYPE")
        .arg(&read.stream)
        .query_async(&mut con)
        .await
        .map_err(failed)?;
    match kind.as_str() {
        "stream" => {}
        "none" => {
            return Err(Some(redis.failed(
                read,
                "no key of that name: a stream that was never written to, or a mistyped key".into(),
            )));
        }
        other => {
            return Err(Some(
                redis.failed(read, format!("the key holds a {other}, not a stream")),
            ));
        }
    }
    // The last entry now: entries added while this read runs wait for the next run.
    let last: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&read.stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut con)
        .await
        .map_err(failed)?;
    let mut rows = Rows::start(redis.name(), columns, req, feed).await?;
    if let Some(end) = last.ids.first().map(|e| e.id.clone()) {
        // A windowed run whose time column is the entry's own time starts at the window: entry
        // ids begin with their milliseconds. A time from a field may differ, so then every
        // entry is read and filtered.
        let mut start = match &req.changed_since {
            Some(c) if read.is_stored_time(&c.column) => {
                c.since.timestamp_millis().max(0).to_string()
            }
            _ => "-".to_owned(),
        };
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&read.stream)
                .arg(&start)
                .arg(&end)
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut con)
                .await
                .map_err(failed)?;
            let full = page.ids.len() == PAGE;
            let next = page.ids.last().and_then(|e| after(&e.id));
            for entry in &page.ids {
                let row = to_row(&read.columns, entry)
                    .map_err(|why| redis.failed(read, format!("entry {}: {why}", entry.id)))?;
                rows.take(row).await?;
            }
            match next {
                Some(n) if full => start = n,
                _ => break,
            }
        }
    }
    rows.finish().await
}

/// The smallest entry id after `id` (`ms-seq` → `ms-(seq+1)`): where the next page starts,
/// on any server version (the exclusive `(id` needs Redis 6.2).
fn after(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    match seq.checked_add(1) {
        Some(next) => Some(format!("{ms}-{next}")),
        None => Some(format!("{}-0", ms.parse::<u64>().ok()?.checked_add(1)?)),
    }
}

/// An entry's fields as a JSON object: each value as text, or as the JSON object or list it
/// holds.
fn fields_of(entry: &StreamId) -> Result<Json, String> {
    let mut map = serde_json::Map::new();
    for (k, v) in &entry.map {
        let text: String =
            redis::from_redis_value_ref(v).map_err(|e| format!("field `{k}` is not text: {e}"))?;
        let value = match text.trim_start().as_bytes().first() {
            Some(b'{' | b'[') => serde_json::from_str(&text).unwrap_or(Json::String(text)),
            _ => Json::String(text),
        };
        map.insert(k.clone(), value);
    }
    Ok(Json::Object(map))
}

/// When an entry was added: the milliseconds its id starts with.
fn entry_time(id: &str) -> Option<DateTime<Utc>> {
    let ms: i64 = id.split('-').next()?.parse().ok()?;
    DateTime::from_timestamp_millis(ms)
}

/// An entry's columns.
fn to_row(fields: &[Field], entry: &StreamId) -> Result<Row, String> {
    let needs_fields = fields.iter().any(|f| matches!(f.from, FieldFrom::Json(_)));
    let object = if needs_fields {
        fields_of(entry)?
    } else {
        Json::Null
    };
    fields
        .iter()
        .map(|f| {
            let raw = match &f.from {
                FieldFrom::Json(path) => path.find(&object).unwrap_or(&JSON_NULL),
                FieldFrom::Meta(MessageMeta::Id) => {
                    return Ok(Value::Text(entry.id.as_str().into()));
                }
                FieldFrom::Meta(MessageMeta::Time) => {
                    return entry_time(&entry.id).map(Value::Timestamp).ok_or_else(|| {
                        format!("its id `{}` does not start with a time", entry.id)
                    });
                }
                FieldFrom::Header(_) | FieldFrom::Meta(_) => {
                    return Err(format!(
                        "column `{}` comes from the {}, which a Redis entry has not",
                        f.column, f.from
                    ));
                }
            };
            field_value(f, raw)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_id_starts_with_its_time_in_milliseconds() {
        assert_eq!(
            entry_time("1764842400500-3"),
            Some("2025-12-04T10:00:00.5Z".parse().unwrap())
        );
        assert_eq!(entry_time("soon-1"), None);
        assert_eq!(after("1764842400500-3").as_deref(), Some("1764842400500-4"));
        assert_eq!(after(&format!("5-{}", u64::MAX)).as_deref(), Some("6-0"));
    }
}

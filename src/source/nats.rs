//! A NATS JetStream stream as a source: the messages on a side's subject, read by an ordered
//! consumer from the stream's start (or, in a windowed run, from the window's start), each
//! mapped to a row from its JSON payload, its headers and its metadata.
//!
//! The read ends at the message that was the last one pending when it began: messages
//! published meanwhile wait for the next run. A stream that stops answering before then fails
//! the read — a stream that went quiet is never taken for one that ended.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures_util::StreamExt;
use serde_json::Value as Json;

use super::http::{JSON_NULL, field_value};
use super::stream::Feed;
use super::unordered::Rows;
use super::{ReadRequest, Row, SourceError};
use crate::config::NatsSource;
use crate::domain::{Field, FieldFrom, MessageMeta, Read, SourceName, StreamRead, Value};

/// A NATS server, connected on first use.
pub(super) struct Nats {
    cfg: NatsSource,
    /// Made on first use; dropped after a failed read, so the next read connects again (a
    /// client gives up for good after a few reconnects).
    client: crate::net::Reconnecting<async_nats::Client>,
}

impl Nats {
    pub(super) fn open(cfg: &NatsSource) -> Self {
        Self {
            cfg: cfg.clone(),
            client: crate::net::Reconnecting::default(),
        }
    }

    fn name(&self) -> &SourceName {
        &self.cfg.name
    }

    fn timeout(&self) -> Duration {
        self.cfg.timeout.as_std()
    }

    /// The server's address as shown: never a password.
    pub(super) fn endpoint(&self) -> String {
        self.cfg.url.to_string()
    }

    async fn client(&self) -> Result<async_nats::Client, SourceError> {
        self.client
            .get(|| async {
                crate::net::nats_connect(self.cfg.url.expose(), self.timeout())
                    .await
                    .map_err(|m| self.connect_error(m))
            })
            .await
    }

    fn connect_error(&self, message: String) -> SourceError {
        SourceError::Connect {
            source_name: self.name().clone(),
            message: format!("{}: {message}", self.endpoint()),
        }
    }

    fn failed(&self, read: &StreamRead, message: String) -> SourceError {
        SourceError::Api {
            source_name: self.name().clone(),
            request: read.to_string(),
            message,
        }
    }

    pub(super) async fn close(&self) {
        if let Some(client) = self.client.current().await {
            let _ = tokio::time::timeout(self.timeout(), client.drain()).await;
        }
    }
}

/// Reads `req` from `nats` into `feed`, then says it is complete; a failure goes to `feed`.
pub(super) async fn read(nats: Arc<Nats>, req: ReadRequest, mut feed: Feed) {
    let result = read_all(&nats, &req, &mut feed).await;
    if result.is_err() {
        nats.client.forget().await;
    }
    feed.end(result).await;
}

async fn read_all(
    nats: &Nats,
    req: &ReadRequest,
    feed: &mut Feed,
) -> Result<(), Option<SourceError>> {
    let Read::Stream(read) = &req.query else {
        return Err(Some(SourceError::WrongClass {
            source_name: nats.name().clone(),
            is: "a NATS JetStream server",
            why: "the side does not name a stream; write `stream:` for a NATS source".into(),
        }));
    };
    let columns: Vec<String> = read.columns.iter().map(|f| f.column.to_string()).collect();
    let client = nats.client().await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&read.stream).await.map_err(|e| {
        nats.failed(
            read,
            format!("cannot open the stream: {}", crate::net::error_chain(&e)),
        )
    })?;
    // A windowed run whose time column is the message's own time starts at the window: the
    // server skips what lies before. A time from the payload may differ from when the
    // message was stored, so then every message is read and filtered.
    let deliver_policy = match &req.changed_since {
        Some(c) if read.is_stored_time(&c.column) => DeliverPolicy::ByStartTime {
            start_time: c.since,
        },
        _ => DeliverPolicy::All,
    };
    // The read ends at the stream's last message as it begins.
    let last_at_start = stream.cached_info().state.last_sequence;
    // One key, its last message on its own subject: the re-check before an action.
    if let Some(subject) = read
        .lookup_subject(&req.filter)
        .filter(|_| !req.filter.is_empty())
    {
        let subject = subject.map_err(|why| nats.failed(read, why))?;
        let mut rows = Rows::start(nats.name(), columns, req, feed).await?;
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                let message = Message {
                    subject: m.subject.as_str(),
                    headers: Some(&m.headers),
                    payload: &m.payload,
                };
                let row = to_row(&read.columns, &message, m.sequence, m.time).map_err(|why| {
                    nats.failed(
                        read,
                        format!("message {} (subject {subject}): {why}", m.sequence),
                    )
                })?;
                rows.take(row).await?;
            }
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => {
                return Err(Some(nats.failed(
                    read,
                    format!(
                        "cannot read the last message on {subject}: {}",
                        crate::net::error_chain(&e)
                    ),
                )));
            }
        }
        return rows.finish().await;
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: read.subject.clone().unwrap_or_default(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            nats.failed(
                read,
                format!("cannot read the stream: {}", crate::net::error_chain(&e)),
            )
        })?;
    let pending = consumer.cached_info().num_pending;
    let mut rows = Rows::start(nats.name(), columns, req, feed).await?;
    if pending > 0 {
        let mut messages = consumer.messages().await.map_err(|e| {
            nats.failed(
                read,
                format!("cannot read the stream: {}", crate::net::error_chain(&e)),
            )
        })?;
        let mut seen: u64 = 0;
        loop {
            let next = tokio::time::timeout(nats.timeout(), messages.next()).await;
            let message = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    return Err(Some(nats.failed(
                        read,
                        format!(
                            "the stream broke off after {seen} messages: {}",
                            crate::net::error_chain(&e)
                        ),
                    )));
                }
                Ok(None) => {
                    return Err(Some(nats.failed(
                        read,
                        format!("the stream ended after {seen} of {pending} messages"),
                    )));
                }
                Err(_) => {
                    return Err(Some(nats.failed(
                        read,
                        format!("no message within {} after {seen} of {pending}; the stream stopped delivering", nats.cfg.timeout),
                    )));
                }
            };
            seen += 1;
            let info = message.info().map_err(|e| {
                nats.failed(read, format!("a message without its stream metadata: {e}"))
            })?;
            let (sequence, published, left) = (info.stream_sequence, info.published, info.pending);
            // Published after the read began: the next run's.
            if sequence > last_at_start {
                break;
            }
            let view = Message {
                subject: message.subject.as_str(),
                headers: message.headers.as_ref(),
                payload: &message.payload,
            };
            let row = to_row(&read.columns, &view, sequence, published).map_err(|why| {
                nats.failed(
                    read,
                    format!("message {sequence} (subject {}): {why}", message.subject),
                )
            })?;
            rows.take(row).await?;
            // `pending` counts what is left after this message, published meanwhile included.
            if left == 0 || sequence >= last_at_start {
                break;
            }
        }
    }
    rows.finish().await
}

/// What a row is made from, whether the message came from a consumer or a direct get.
struct Message<'a> {
    subject: &'a str,
    headers: Option<&'a async_nats::HeaderMap>,
    payload: &'a [u8],
}

/// A message's columns.
fn to_row(
    fields: &[Field],
    message: &Message<'_>,
    sequence: u64,
    published: chrono::DateTime<chrono::Utc>,
) -> Result<Row, String> {
    // The payload is parsed only if a column reads it.
    let needs_payload = fields.iter().any(|f| matches!(f.from, FieldFrom::Json(_)));
    let payload: Json = if needs_payload {
        serde_json::from_slice(message.payload).map_err(|e| {
            let start = String::from_utf8_lossy(&message.payload[..message.payload.len().min(80)])
                .into_owned();
            format!("the payload is not JSON ({e}); it starts: {start}")
        })?
    } else {
        Json::Null
    };
    fields
        .iter()
        .map(|f| {
            let raw = match &f.from {
                FieldFrom::Json(path) => Cow::Borrowed(path.find(&payload).unwrap_or(&JSON_NULL)),
                FieldFrom::Header(name) => message
                    .headers
                    .and_then(|h| h.get(name.as_str()))
                    .map_or(Cow::Borrowed(&JSON_NULL), |v| {
                        Cow::Owned(Json::String(v.as_str().to_owned()))
                    }),
                FieldFrom::Meta(MessageMeta::Sequence) => {
                    return Ok(Value::Int(i64::try_from(sequence).unwrap_or(i64::MAX)));
                }
                FieldFrom::Meta(MessageMeta::Time) => return Ok(Value::Timestamp(published)),
                FieldFrom::Meta(MessageMeta::Subject) => {
                    return Ok(Value::Text((&*message.subject).into()));
                }
                FieldFrom::Meta(MessageMeta::Id) => {
                    return Err(format!(
                        "column `{}`: a NATS message has no entry id",
                        f.column
                    ));
                }
            };
            field_value(f, &raw)
        })
        .collect()
}

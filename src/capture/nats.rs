//! A JetStream feed: a durable pull consumer trueup owns (created if missing, with explicit
//! acknowledgements). Each batch is fetched, stored in one transaction and only then
//! acknowledged; a message delivered again after a crash carries its stream sequence, by
//! which the store recognises it.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{CaptureMetrics, FeedError, Settle, store_batch};
use crate::config::{EventLogConfig, FeedStart, NatsFeed};
use crate::store::Store;

/// How long one fetch waits for messages before it asks again (and checks for a stop).
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// How often the consumer's lag is read.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Runs the feed until `stop` (after finishing the batch in hand) or an error.
pub(super) async fn run(
    log: &EventLogConfig,
    feed: &NatsFeed,
    store: &dyn Store,
    metrics: &CaptureMetrics,
    stop: &CancellationToken,
) -> Result<(), FeedError> {
    let server = feed.server.url.to_string();
    let failed = |what: &str, e: &dyn std::error::Error| FeedError::Server {
        server: server.clone(),
        message: format!("{what}: {}", crate::net::error_chain(e)),
    };
    let timeout = feed.server.timeout.as_std();
    let client = crate::net::nats_connect(feed.server.url.expose(), timeout)
        .await
        .map_err(|message| FeedError::Server {
            server: server.clone(),
            message,
        })?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(&feed.stream)
        .await
        .map_err(|e| failed(&format!("cannot open stream `{}`", feed.stream), &e))?;
    let mut consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &feed.durable,
            pull::Config {
                durable_name: Some(feed.durable.clone()),
                filter_subject: feed.subject.clone().unwrap_or_default(),
                deliver_policy: match feed.start {
                    FeedStart::All => DeliverPolicy::All,
                    FeedStart::New => DeliverPolicy::New,
                },
                ack_policy: AckPolicy::Explicit,
                ack_wait: feed.ack_wait.as_std(),
                max_ack_pending: i64::try_from(feed.batch * 4).unwrap_or(i64::MAX),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            failed(
                &format!(
                    "cannot open consumer `{}` on stream `{}`",
                    feed.durable, feed.stream
                ),
                &e,
            )
        })?;
    let existing = consumer.cached_info().config.clone();
    if existing.ack_wait != feed.ack_wait.as_std()
        || existing.deliver_policy
            != match feed.start {
                FeedStart::All => DeliverPolicy::All,
                FeedStart::New => DeliverPolicy::New,
            }
    {
        // A durable consumer keeps the settings it was created with.
        tracing::warn!(
            log = %log.name,
            "consumer `{}` on stream `{}` exists with ack_wait {:?} and {:?}; it keeps them (this feed says ack_wait {} and start {:?}); delete the consumer to take the new ones",
            feed.durable,
            feed.stream,
            existing.ack_wait,
            existing.deliver_policy,
            feed.ack_wait,
            feed.start
        );
    }
    let wanted = feed.subject.clone().unwrap_or_default();
    if existing.filter_subject != wanted || existing.ack_policy != AckPolicy::Explicit {
        return Err(FeedError::Server {
            server,
            message: format!(
                "consumer `{}` on stream `{}` exists with filter subject `{}` and {:?} acknowledgements; this feed needs `{wanted}` and explicit ones. Name another `durable:`, or delete that consumer if nothing else uses it",
                feed.durable, feed.stream, existing.filter_subject, existing.ack_policy
            ),
        });
    }
    let source = feed.label();
    let mut lag_read = Instant::now() - LAG_EVERY;
    while !stop.is_cancelled() {
        if lag_read.elapsed() >= LAG_EVERY {
            let info = consumer
                .info()
                .await
                .map_err(|e| failed("cannot read the consumer's state", &e))?;
            metrics.set_lag(log.name.as_str(), &source, info.num_pending);
            // Up: connected, its consumer open, the server answering.
            metrics.set_up(log.name.as_str(), &source, true);
            lag_read = Instant::now();
        }
        let mut batch = consumer
            .fetch()
            .max_messages(feed.batch)
            .expires(FETCH_WAIT)
            .messages()
            .await
            .map_err(|e| failed("cannot fetch messages", &e))?;
        let mut messages = Vec::with_capacity(feed.batch);
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|e| failed("cannot fetch messages", &*e))?);
        }
        if messages.is_empty() {
            continue;
        }
        let mut delivered = Vec::with_capacity(messages.len());
        for m in &messages {
            let info = m
                .info()
                .map_err(|e| failed("a message without its metadata", &*e))?;
            let mut headers = serde_json::Map::new();
            if let Some(h) = &m.headers {
                for (name, values) in h.iter() {
                    let v = values.first().map(|v| v.as_str()).unwrap_or_default();
                    // PostgreSQL's JSONB refuses NUL in a string.
                    headers.insert(
                        name.to_string(),
                        serde_json::Value::String(v.replace('\0', "\u{FFFD}")),
                    );
                }
            }
            headers
                .entry("Nats-Subject")
                .or_insert_with(|| serde_json::Value::String(m.subject.to_string()));
            delivered.push((
                Some(info.stream_sequence.to_string()),
                headers,
                m.payload.to_vec(),
            ));
        }
        // Stored before acknowledged: a crash in between delivers them again, recognised.
        let settles = match store_batch(log, &source, delivered, store, metrics).await {
            Ok(s) => s,
            Err(e) => {
                // Delivered again now rather than after ack_wait, ahead of later messages.
                for m in &messages {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                }
                return Err(e.into());
            }
        };
        for (m, settle) in messages.iter().zip(settles) {
            let kind = match settle {
                Settle::Ack => AckKind::Ack,
                Settle::Refuse => AckKind::Term,
            };
            m.ack_with(kind)
                .await
                .map_err(|e| failed("cannot acknowledge a stored message", &*e))?;
        }
    }
    let _ = tokio::time::timeout(timeout, client.flush()).await;
    Ok(())
}

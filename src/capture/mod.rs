//! The intake of trueup's own event logs (`event_logs:`): what each feed delivers is
//! identified by the log's [`EventShape`](crate::domain::EventShape), stored once per event id
//! ([`crate::store::EventLogStore::ingest`]) and only then acknowledged.
//!
//! - `webhook.rs`: the signature of `POST /ingest/<log>` (HMAC-SHA256 over `<t>.<body>`,
//!   within a tolerance), and [`receive_webhook`], which the HTTP route calls.
//! - `nats.rs`: a durable JetStream pull consumer per feed, a batch fetched, stored in one
//!   transaction, then acknowledged.
//! - `redis.rs`: a Redis Streams consumer group per feed: this consumer's pending entries
//!   first, then entries idle too long at other consumers, then new ones; `XACK` after commit.
//!
//! A feed that fails (server gone, stream missing, store down) logs why, waits and starts
//! again; what it had not acknowledged is delivered again and recognised by its position.

mod metrics;
mod nats;
mod redis;
pub mod retention;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::{EventLogConfig, LogFeed};
use crate::domain::{CapturedEvent, Intake};
use crate::store::{Store, StoreError};

pub use metrics::CaptureMetrics;
pub use webhook::{Received, WEBHOOK_FEED, WebhookError, receive_webhook, sign, verify};

/// The consumer name a Redis feed reads as: the same across restarts on one host, so that
/// entries this host read and did not acknowledge before a crash are read first after it.
/// (Replicas on one host share it, which the store's positions make harmless.)
pub fn stable_consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("trueup@{host}")
}

/// How often each log's next days are made ready and logs with `retain:` are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Batches of [`retention::PURGE_BATCH`] events per log and round: a backlog is worked off
/// over several rounds, never in one long burst.
const PURGE_BATCHES: u32 = 50;

/// Makes ready where each log's events of today and tomorrow will be kept (the PostgreSQL
/// store's partitions by day); `serve` calls it before the feeds start. A failure is logged:
/// events are kept all the same (in the default partition).
pub async fn prepare_days(logs: &[EventLogConfig], store: &dyn Store) {
    for log in logs {
        match store.prepare_log_days(log.name.as_str(), Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(log = %log.name, "made {n} day(s) of the log ready"),
            Err(e) => {
                tracing::warn!(log = %log.name, "cannot make the log's next days ready (its events go to the default partition meanwhile): {e}")
            }
        }
    }
}

/// Once a minute until `stop`: makes each log's next days ready ([`prepare_days`]) and purges
/// every log with `retain:`. `readers` says, at each round, which invariants read a log (the
/// loaded ones change on reload).
pub fn spawn_retention(
    logs: Vec<EventLogConfig>,
    store: Arc<dyn Store>,
    metrics: Arc<CaptureMetrics>,
    readers: impl Fn(&crate::domain::LogName) -> Vec<retention::Reader> + Send + 'static,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if logs.is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(PURGE_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            prepare_days(&logs, store.as_ref()).await;
            for log in &logs {
                let Some(retain) = log.retain else { continue };
                let readers = readers(&log.name);
                let purged = retention::purge(
                    store.as_ref(),
                    log.name.as_str(),
                    &readers,
                    retain,
                    chrono::Utc::now(),
                    PURGE_BATCHES,
                )
                .await;
                match purged {
                    Ok(retention::Purge::Purged { count, before }) => {
                        metrics.purged(log.name.as_str(), count, false);
                        if count > 0 {
                            tracing::info!(log = %log.name, "purged {count} events captured before {before}");
                        }
                    }
                    Ok(retention::Purge::Held(why)) => {
                        metrics.purged(log.name.as_str(), 0, true);
                        tracing::warn!(log = %log.name, "retention waits: {why}");
                    }
                    Err(e) => tracing::error!(log = %log.name, "cannot purge the log: {e}"),
                }
            }
        }
    }))
}

/// The longest a failed feed waits before it starts again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts one task per stream feed of every log; each runs until `stop` is cancelled, then
/// finishes the batch in hand (stored and acknowledged) and ends.
pub fn spawn_feeds(
    logs: impl IntoIterator<Item = EventLogConfig>,
    store: Arc<dyn Store>,
    metrics: Arc<CaptureMetrics>,
    consumer: Arc<str>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for log in logs {
        let log = Arc::new(log);
        for feed in log.feeds.iter().cloned() {
            let (log, store, metrics, stop, consumer) = (
                log.clone(),
                store.clone(),
                metrics.clone(),
                stop.clone(),
                consumer.clone(),
            );
            match feed {
                LogFeed::Webhook(_) => {}
                LogFeed::Nats(feed) => tasks.push(tokio::spawn(async move {
                    let label = feed.label();
                    supervise(&log, &label, &metrics, &stop, || {
                        nats::run(&log, &feed, store.as_ref(), &metrics, &stop)
                    })
                    .await
                })),
                LogFeed::Redis(feed) => tasks.push(tokio::spawn(async move {
                    let label = feed.label();
                    supervise(&log, &label, &metrics, &stop, || {
                        redis::run(&log, &feed, store.as_ref(), &metrics, &consumer, &stop)
                    })
                    .await
                })),
            }
        }
    }
    tasks
}

/// Runs a feed until `stop`, starting it again after each failure with a growing wait.
async fn supervise<F, Fut>(
    log: &EventLogConfig,
    feed: &str,
    metrics: &CaptureMetrics,
    stop: &CancellationToken,
    mut run: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), FeedError>>,
{
    let mut backoff = Duration::from_millis(500);
    loop {
        // Down until the feed has opened its consumer and heard from the server (it says
        // so itself): an outage retried every few seconds never reads as up.
        metrics.set_up(log.name.as_str(), feed, false);
        let started = std::time::Instant::now();
        // Not raced against `stop`: the feed checks it between batches, so the batch in
        // hand is stored and acknowledged before it ends.
        let result = run().await;
        if stop.is_cancelled() {
            return;
        }
        metrics.set_up(log.name.as_str(), feed, false);
        let error = match result {
            Ok(()) => "the feed ended".to_owned(),
            Err(e) => e.to_string(),
        };
        if started.elapsed() > MAX_BACKOFF {
            backoff = Duration::from_millis(500);
        }
        tracing::error!(
            log = %log.name,
            feed,
            "event log feed failed, starting it again in {backoff:?}: {error}"
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why a feed stopped.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{server}: {message}")]
    Server { server: String, message: String },
    #[error("cannot store the batch, which stays unacknowledged and comes again: {0}")]
    Store(#[from] StoreError),
}

/// One message as a feed delivered it: its position in the feed, its headers, its payload.
type Delivered = (
    Option<String>,
    serde_json::Map<String, serde_json::Value>,
    Vec<u8>,
);

/// What a feed does with one delivered message after the batch is stored.
enum Settle {
    /// Stored, or a duplicate counted, or a redelivery recognised: acknowledge.
    Ack,
    /// Refused (too large, malformed): acknowledged as terminated, so it is not delivered
    /// again; counted and logged with where it is.
    Refuse,
}

/// Identifies each message of a batch, stores those that can be kept in one transaction and
/// counts the outcomes; says what to do with each message, in the batch's order.
async fn store_batch(
    log: &EventLogConfig,
    source: &str,
    messages: Vec<Delivered>,
    store: &dyn Store,
    metrics: &CaptureMetrics,
) -> Result<Vec<Settle>, StoreError> {
    let mut settles = Vec::with_capacity(messages.len());
    let mut events = Vec::with_capacity(messages.len());
    let mut refused = Vec::new();
    for (position, headers, payload) in messages {
        match log.shape.identify(&payload) {
            Ok(identity) => {
                settles.push(None);
                events.push(CapturedEvent {
                    identity,
                    source: source.to_owned(),
                    position,
                    headers,
                    payload,
                });
            }
            Err(refusal) => {
                settles.push(Some(Settle::Refuse));
                refused.push((position, refusal));
            }
        }
    }
    let intakes = if events.is_empty() {
        Vec::new()
    } else {
        store.ingest(&log.name, &events, Utc::now()).await?
    };
    // Counted once the batch is stored: a batch that fails comes again, and its refusals
    // with it.
    for (position, refusal) in refused {
        tracing::warn!(
            log = %log.name,
            feed = source,
            position = position.as_deref().unwrap_or("-"),
            "event refused, not stored: {refusal}"
        );
        metrics.rejected(log.name.as_str(), source, refusal.reason());
    }
    for intake in &intakes {
        metrics.intake(log.name.as_str(), source, *intake);
    }
    Ok(settles
        .into_iter()
        .map(|s| s.unwrap_or(Settle::Ack))
        .collect())
}

/// `Intake` as the `outcome` of an answer or a log line.
pub fn intake_word(intake: Intake) -> &'static str {
    match intake {
        Intake::Stored => "stored",
        Intake::Duplicate { .. } => "duplicate",
        Intake::Redelivered => "redelivered",
    }
}

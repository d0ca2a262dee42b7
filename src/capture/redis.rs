//! A Redis Streams feed: a consumer group trueup owns (created if missing; the stream's key
//! must exist). Each round reads, in this order, this consumer's own pending entries (left by
//! a crash before `XACK`), entries another consumer left pending longer than `claim_after`
//! (a replica that died; `XAUTOCLAIM`), then new entries; stores them in one transaction and
//! only then acknowledges them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::{CaptureMetrics, FeedError, store_batch};
use crate::config::{EventLogConfig, FeedStart, RedisFeed};
use crate::store::Store;

/// How long one read blocks for new entries before it asks again (and checks for a stop).
const BLOCK: Duration = Duration::from_secs(1);
const LAG_EVERY: Duration = Duration::from_secs(5);

pub(super) async fn run(
    log: &EventLogConfig,
    feed: &RedisFeed,
    store: &dyn Store,
    metrics: &CaptureMetrics,
    consumer: &str,
    stop: &CancellationToken,
) -> Result<(), FeedError> {
    let server = feed.server.url.to_string();
    let failed = |what: &str, e: &redis::RedisError| FeedError::Server {
        server: server.clone(),
        message: format!("{what}: {}", crate::net::error_chain(e)),
    };
    // A blocking read holds the connection for BLOCK: the response timeout must outlast it.
    let mut conn = crate::net::redis_connect(
        feed.server.url.expose(),
        feed.server.timeout.as_std() + BLOCK,
    )
    .await
    .map_err(|message| FeedError::Server {
        server: server.clone(),
        message,
    })?;
    let from = match feed.start {
        FeedStart::All => "0",
        FeedStart::New => "$",
    };
    let created: Result<(), redis::RedisError> =
        conn.xgroup_create(&feed.stream, &feed.group, from).await;
    match created {
        Ok(()) => {}
        Err(e) if e.code() == Some("BUSYGROUP") => {}
        Err(e) => {
            return Err(failed(
                &format!(
                    "cannot create consumer group `{}` on stream `{}` (the key must exist and hold a stream)",
                    feed.group, feed.stream
                ),
                &e,
            ));
        }
    }
    let source = feed.label();
    // First this consumer's own pending entries, from the start of its list.
    let mut own_pending = Some("0".to_owned());
    let mut last_claim = Instant::now();
    let mut claim_from = "0-0".to_owned();
    let mut claiming = false;
    let mut lag_read = Instant::now() - LAG_EVERY;
    while !stop.is_cancelled() {
        if lag_read.elapsed() >= LAG_EVERY {
            if let Some(lag) = group_lag(&mut conn, feed)
                .await
                .map_err(|e| failed("cannot read the group's state", &e))?
            {
                metrics.set_lag(log.name.as_str(), &source, lag);
            }
            // Up: connected, its group open, the server answering.
            metrics.set_up(log.name.as_str(), &source, true);
            lag_read = Instant::now();
        }
        let entries: Vec<StreamId> = if let Some(after) = own_pending.clone() {
            let opts = StreamReadOptions::default()
                .group(&feed.group, consumer)
                .count(feed.batch);
            let reply: StreamReadReply = conn
                .xread_options(&[&feed.stream], &[&after], &opts)
                .await
                .map_err(|e| failed("cannot read this consumer's pending entries", &e))?;
            let entries = entries_of(reply);
            own_pending = entries.last().map(|e| e.id.clone());
            entries
        } else if claiming || last_claim.elapsed() >= feed.claim_after.as_std() / 2 {
            let idle = u64::try_from(feed.claim_after.as_std().as_millis()).unwrap_or(u64::MAX);
            let reply: redis::streams::StreamAutoClaimReply = conn
                .xautoclaim_options(
                    &feed.stream,
                    &feed.group,
                    consumer,
                    idle,
                    &claim_from,
                    StreamAutoClaimOptions::default().count(feed.batch),
                )
                .await
                .map_err(|e| failed("cannot claim entries idle at other consumers", &e))?;
            // A round goes through the whole pending list, page after page, then waits.
            claim_from = reply.next_stream_id;
            claiming = claim_from != "0-0";
            if !claiming {
                last_claim = Instant::now();
            }
            if !reply.deleted_ids.is_empty() {
                tracing::warn!(
                    log = %log.name,
                    feed = %source,
                    "{} pending entries were deleted from the stream before trueup stored them: {}",
                    reply.deleted_ids.len(),
                    reply.deleted_ids.join(", ")
                );
                for _ in &reply.deleted_ids {
                    metrics.rejected(log.name.as_str(), &source, "gone");
                }
            }
            reply.claimed
        } else {
            let opts = StreamReadOptions::default()
                .group(&feed.group, consumer)
                .count(feed.batch)
                .block(BLOCK.as_millis() as usize);
            let reply: Option<StreamReadReply> = conn
                .xread_options(&[&feed.stream], &[">"], &opts)
                .await
                .map_err(|e| failed("cannot read new entries", &e))?;
            reply.map(entries_of).unwrap_or_default()
        };
        if entries.is_empty() {
            continue;
        }
        let mut delivered = Vec::with_capacity(entries.len());
        for e in &entries {
            if e.map.is_empty() {
                // A pending entry deleted (trimmed) from the stream before it was stored.
                tracing::warn!(
                    log = %log.name,
                    feed = %source,
                    position = %e.id,
                    "a pending entry was deleted from the stream before trueup stored it"
                );
                metrics.rejected(log.name.as_str(), &source, "gone");
                continue;
            }
            delivered.push((
                Some(e.id.clone()),
                serde_json::Map::new(),
                payload(feed, &e.map),
            ));
        }
        // Refused entries are counted and logged there, and acknowledged with the rest: they
        // would never be kept.
        store_batch(log, &source, delivered, store, metrics).await?;
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let _: i64 = conn
            .xack(&feed.stream, &feed.group, &ids)
            .await
            .map_err(|e| failed("cannot acknowledge stored entries", &e))?;
    }
    Ok(())
}

fn entries_of(reply: StreamReadReply) -> Vec<StreamId> {
    reply.keys.into_iter().flat_map(|k| k.ids).collect()
}

/// The event an entry carries: its `field`'s bytes, or all its fields as a JSON object.
fn payload(feed: &RedisFeed, map: &HashMap<String, redis::Value>) -> Vec<u8> {
    let text = |v: &redis::Value| -> Option<Vec<u8>> {
        match v {
            redis::Value::BulkString(b) => Some(b.clone()),
            redis::Value::SimpleString(s) => Some(s.clone().into_bytes()),
            redis::Value::Int(i) => Some(i.to_string().into_bytes()),
            _ => None,
        }
    };
    match &feed.field {
        // A missing field leaves an empty payload, which is refused as not JSON.
        Some(field) => map.get(field).and_then(text).unwrap_or_default(),
        None => {
            let object: serde_json::Map<String, serde_json::Value> = map
                .iter()
                .filter_map(|(k, v)| {
                    let bytes = text(v)?;
                    Some((
                        k.clone(),
                        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                    ))
                })
                .collect();
            serde_json::to_vec(&object).expect("a map of strings serialises")
        }
    }
}

/// Entries not yet delivered to the group (`lag` of `XINFO GROUPS`, Redis 7).
async fn group_lag(
    conn: &mut redis::aio::MultiplexedConnection,
    feed: &RedisFeed,
) -> Result<Option<u64>, redis::RedisError> {
    let groups: redis::streams::StreamInfoGroupsReply = conn.xinfo_groups(&feed.stream).await?;
    Ok(groups
        .groups
        .into_iter()
        .find(|g| g.name == feed.group)
        .and_then(|g| g.lag)
        .map(|l| l as u64))
}

//! Delivers the outbox: claims due messages under a lease, sends each on its channel, marks it
//! delivered or schedules a retry with exponential backoff (1 s, 2 s, 4 s … capped at 5 min).

use futures_util::FutureExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::AlertState;
use crate::notify::Channel;
use crate::runtime::metrics::Metrics;
use crate::store::{NoticeGroup, Release, Store, StoreError, WaitingNotice};

const LEASE: TimeDelta = TimeDelta::seconds(60);
/// Notices claimed at once. Their attempts run one after another, so every claimed notice
/// must be done (each attempt bounded by `ATTEMPT_DEADLINE`) before the lease runs out and
/// another replica may claim it again: at most LEASE / ATTEMPT_DEADLINE - 1 of them.
const BATCH: u32 = 1;
/// The most notices one message lists.
const NOTICES_PER_MESSAGE: usize = 50;
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The longest one delivery attempt may take, whatever the channel (its own timeouts are
/// shorter; this also bounds a server that accepts the connection and never answers).
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(30);
const _: () = assert!((BATCH as u64) * ATTEMPT_DEADLINE.as_secs() < LEASE.num_seconds() as u64);

pub fn backoff(attempts: i64) -> TimeDelta {
    let secs = 1_i64 << attempts.clamp(0, 9);
    TimeDelta::seconds(secs.min(300))
}

pub struct Worker {
    pub store: Arc<dyn Store>,
    pub channels: Arc<BTreeMap<String, Channel>>,
    pub metrics: Arc<Metrics>,
    /// Notified when new messages are queued, so they go out without waiting for the poll.
    pub wake: Arc<Notify>,
}

impl Worker {
    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(e) = dispatch(self.store.as_ref(), Utc::now()).await {
                tracing::error!("cannot move due notices to the outbox: {e}");
            }
            let delivered_some = match self.store.claim_outbox(Utc::now(), LEASE, BATCH).await {
                Ok(items) => {
                    let any = !items.is_empty();
                    for item in items {
                        let attempt = async {
                            match self.channels.get(&item.message.channel) {
                                Some(channel) => {
                                    injected_refusal()?;
                                    channel
                                        .deliver(&item.message.payload)
                                        .await
                                        .map_err(DeliveryError::Channel)
                                }
                                None => {
                                    Err(DeliveryError::Unconfigured(item.message.channel.clone()))
                                }
                            }
                        };
                        // A panicking channel (a bug) fails this attempt, and so does one that
                        // stalls past the deadline (a server that accepts the connection and
                        // never answers): the worker goes on.
                        let result = tokio::time::timeout(
                            ATTEMPT_DEADLINE,
                            std::panic::AssertUnwindSafe(attempt).catch_unwind(),
                        )
                        .await
                        .unwrap_or(Ok(Err(DeliveryError::TimedOut(ATTEMPT_DEADLINE.as_secs()))))
                        .unwrap_or_else(|panic| {
                            Err(DeliveryError::Panicked(crate::source::panic_message(
                                &*panic,
                            )))
                        });
                        let now = Utc::now();
                        let recorded = match result {
                            Ok(()) => {
                                self.metrics.notification(&item.message.channel, true);
                                self.store.outbox_delivered(item.id, now).await
                            }
                            Err(e) => {
                                self.metrics.notification(&item.message.channel, false);
                                tracing::warn!(
                                    channel = %item.message.channel,
                                    attempts = item.attempts + 1,
                                    "notification not delivered: {e}"
                                );
                                self.store
                                    .outbox_failed(
                                        item.id,
                                        &e.to_string(),
                                        now + backoff(item.attempts),
                                    )
                                    .await
                            }
                        };
                        if let Err(e) = recorded {
                            tracing::error!("cannot record a delivery attempt: {e}");
                        }
                    }
                    any
                }
                Err(e) => {
                    tracing::error!("cannot read the notification outbox: {e}");
                    false
                }
            };
            if delivered_some {
                if stop.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Moves each due group of notices into the outbox as one message (up to
/// `NOTICES_PER_MESSAGE` notices each), holding the notices of alerts a silence now matches,
/// after settling what ended silences held (see `notify::settle_held`).
/// Each step is one store transaction; a replica that loses a race changes nothing.
pub async fn dispatch(store: &dyn Store, now: DateTime<Utc>) -> Result<(), StoreError> {
    let active = store.silences(now, false, 1000).await?;
    let matching = |payload: &serde_json::Value, except: Option<i64>| {
        let labels = crate::notify::labels_of(payload);
        active
            .iter()
            .find(|s| Some(s.id) != except && s.matches(&labels))
            .map(|s| s.id)
    };
    for silence in store.silences_to_release(now).await? {
        let mut release = Release::default();
        let mut by_alert: BTreeMap<(String, String), Vec<WaitingNotice>> = BTreeMap::new();
        for n in store.held_notices(silence.id).await? {
            match matching(&n.payload, Some(silence.id)) {
                Some(other) => release.rehold.push((n.id, other)),
                None => by_alert
                    .entry((n.invariant.clone(), n.group_key.clone()))
                    .or_default()
                    .push(n),
            }
        }
        for ((invariant, _), held) in by_alert {
            let ids: Vec<i64> = held.iter().map(|n| n.id).collect();
            let firing = store.alert(&invariant).await?.state == AlertState::Firing;
            match crate::notify::settle_held(&held, &silence, firing) {
                Some(summary) => release.summaries.push((ids, summary)),
                None => release.dropped.extend(ids),
            }
        }
        store.release_silence(&silence, &release, now).await?;
    }
    for mut group in store.due_notice_groups(now).await? {
        let mut held: BTreeMap<i64, Vec<WaitingNotice>> = BTreeMap::new();
        group.notices.retain(|n| match matching(&n.payload, None) {
            Some(silence) => {
                held.entry(silence).or_default().push(n.clone());
                false
            }
            None => true,
        });
        for (silence, notices) in held {
            store.hold_notices(&notices, silence, now).await?;
        }
        // A large outage goes out in several messages, each small enough to deliver within
        // one attempt's deadline (PagerDuty takes one request per notice).
        for chunk in group.notices.chunks(NOTICES_PER_MESSAGE) {
            let part = NoticeGroup {
                notices: chunk.to_vec(),
                ..group.clone()
            };
            let ids: Vec<i64> = chunk.iter().map(|n| n.id).collect();
            let message = crate::notify::message_of(&part);
            store
                .send_notice_group(&group.group_key, &ids, &message, now)
                .await?;
        }
    }
    Ok(())
}

/// Why one attempt to deliver a notice failed; the outbox records it with the notice.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error(transparent)]
    Channel(#[from] crate::notify::ChannelError),
    #[error("channel `{0}` is no longer configured")]
    Unconfigured(String),
    #[error("the channel did not answer within {0}s")]
    TimedOut(u64),
    #[error("delivering panicked (a bug in trueup; please report it): {0}")]
    Panicked(String),
    /// The fail point `notify.deliver` (test builds).
    #[error("the channel refused the notice (injected)")]
    // Built only where `fail` compiles its fail points in (the test builds' dev-dependency).
    #[allow(dead_code)]
    Injected,
}

/// The fail point `notify.deliver` (test builds): the channel refuses the notice.
fn injected_refusal() -> Result<(), DeliveryError> {
    fail::fail_point!("notify.deliver", |_| Err(DeliveryError::Injected));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_five_minutes() {
        let waits: Vec<i64> = (0..12).map(|a| backoff(a).num_seconds()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}

//! `retain:` — a log's events are purged some time after capture, in bounded batches, but
//! never one that may still be needed: by an open violation or an unfinished plan of an
//! invariant that reads the log (for its evidence, a replay's payload or a re-check), or by
//! an open incident whose scope takes such an invariant (its report and verification).
//!
//! What is needed is bounded by time: the earliest event time of those violations and plan
//! actions, and the start of those incidents' windows. Nothing is purged at or after that
//! instant; when one of them has no event time, nothing of the log is purged until it closes.
//!
//! Nor is an event purged before every reader has judged it: an event captured after the
//! start of a reader's last completed full run (less its `grace`, within which events are not
//! judged yet, and a commit margin) may never have been read, and purged it would never show
//! as missing. A reader with no such run (its runs failing through a downstream outage, only
//! incremental or truncated runs) holds the log.

use chrono::{DateTime, Utc};

use crate::domain::{HumanDuration, InvariantName};
use crate::store::{Store, StoreError};

/// Events deleted per transaction.
pub const PURGE_BATCH: u32 = 1_000;

/// What one purge of a log did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// Events captured (and, when known, happened) before `before` were deleted.
    Purged { count: u64, before: DateTime<Utc> },
    /// Nothing could be deleted: the reason.
    Held(String),
}

/// An invariant that reads a log, as retention needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub invariant: InvariantName,
    /// Events within it of a run's start are not judged by that run.
    pub grace: Option<HumanDuration>,
}

/// Purges `log` of events older than `retain` that nothing of `readers` (the invariants
/// reading the log) may still need, `PURGE_BATCH` at a time, at most `max_batches` batches.
pub async fn purge(
    store: &dyn Store,
    log: &str,
    readers: &[Reader],
    retain: HumanDuration,
    now: DateTime<Utc>,
    max_batches: u32,
) -> Result<Purge, StoreError> {
    let names: Vec<String> = readers.iter().map(|r| r.invariant.to_string()).collect();
    let needs = store.retention_needs(&names).await?;
    if needs.untimed > 0 {
        return Ok(Purge::Held(format!(
            "{} open violation(s) or unfinished plan action(s) of an invariant reading the log have no event time, so any event may be needed",
            needs.untimed
        )));
    }
    // (The configuration bounds `retain`; a cut before any representable time purges nothing.)
    let Some(mut before) = now.checked_sub_signed(retain.as_chrono()) else {
        return Ok(Purge::Held(format!(
            "retain {retain} reaches before the earliest time trueup can hold"
        )));
    };
    if let Some(earliest) = needs.earliest {
        before = before.min(earliest);
    }
    for reader in readers {
        let Some(run) = store.latest_full_run(reader.invariant.as_str()).await? else {
            return Ok(Purge::Held(format!(
                "`{}` reads the log and has no completed full run yet (its runs fail, or are incremental or over their violation budget): its events are kept until one has judged them",
                reader.invariant
            )));
        };
        let grace = reader
            .grace
            .map_or(chrono::TimeDelta::zero(), |g| g.as_chrono());
        before = before.min(run.started_at - grace - crate::runner::COMMIT_MARGIN);
    }
    if !names.is_empty() {
        for incident in store.incidents(u32::MAX).await? {
            let open = matches!(incident.state, crate::domain::IncidentState::Open);
            // An incident that names no invariant takes every one.
            let scoped = incident.invariants.is_empty()
                || incident.invariants.iter().any(|i| names.contains(i));
            if open && scoped {
                before = before.min(incident.window_from);
            }
        }
    }
    // Whole days first (the PostgreSQL store's partitions), then row by row.
    let mut count = store.drop_log_days(log, before).await?;
    for _ in 0..max_batches {
        let n = store.purge_log(log, before, PURGE_BATCH).await?;
        count += n;
        if n < u64::from(PURGE_BATCH) {
            break;
        }
    }
    Ok(Purge::Purged { count, before })
}

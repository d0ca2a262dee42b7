//! What became of each event of a log that an invariant reads on its left, written back to
//! the log when a full run of the invariant completes: `processed` (found downstream),
//! `missing` or `mismatched` (found violated), each with when and by which run. Replays mark
//! their events `replayed` as they apply (`plan::apply`).
//!
//! A run judges the events up to the last one stored when it began, as its merge saw them.
//! An event's first outcome is written once; after that only its key's violation changes it:
//! violated again (missing, mismatched), or judged through since (`processed`, or `replayed`
//! again when a replay delivered it). A run does not judge an event still inside the grace
//! period, one outside a windowed invariant's window, nor — on PostgreSQL, whose event
//! sequence may commit out of order — one captured in the minute before it began; a later
//! run does. A run that kept fewer violations than it found (its budget) writes nothing: it
//! cannot tell the rest from processed ones.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::{
    EventOutcome, Invariant, InvariantSpec, Read, ReconcileSpec, RunId, StreamRead, Value,
};
use crate::source::{LogEventRow, index_of};
use crate::store::{DecidedOutcome, HealedOutcome, OutcomeCounts, OutcomeWrite, Store, StoreError};

/// Events judged per transaction.
const BATCH: usize = 5_000;
/// Events read at a time.
const PAGE: u32 = 2_000;

/// An invariant whose left side is one of trueup's event logs.
#[derive(Debug, Clone, Copy)]
pub(super) struct LogSide<'a> {
    pub(super) log: &'a str,
    read: &'a StreamRead,
    spec: &'a ReconcileSpec,
}

impl<'a> LogSide<'a> {
    /// The log `invariant` reads on its left, if it does and a missing right row would be a
    /// violation (else nothing tells a processed event from one that never arrived).
    pub(super) fn of(invariant: &'a Invariant) -> Option<Self> {
        let InvariantSpec::Reconcile(spec) = &invariant.spec else {
            return None;
        };
        let log = spec.left.source.log()?;
        let Read::Stream(read) = &spec.left.query else {
            return None;
        };
        (!spec.expect.right_may_be_absent()).then_some(LogSide { log, read, spec })
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum OutcomeError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("reading the log: {0}")]
    Read(String),
    #[error("event `{event_id}`: {why}")]
    Event { event_id: String, why: String },
    #[error("stopped: {0}")]
    Stopped(String),
}

/// One completed full run, as the write-back needs it.
pub(super) struct Judged<'a> {
    pub(super) invariant: &'a Invariant,
    pub(super) run: RunId,
    pub(super) started_at: DateTime<Utc>,
    pub(super) finished_at: DateTime<Utc>,
    /// The last event stored when the run began.
    pub(super) through: i64,
    /// Every key the run found missing or mismatched (as violations hold it).
    pub(super) violated: &'a [(String, EventOutcome)],
}

/// How long before a run began an event must have been captured for the run to judge it, on
/// a store whose event sequence may commit out of order (PostgreSQL: two ingests at once): an
/// event captured just before may not have been visible yet when the run read the log.
pub const COMMIT_MARGIN: TimeDelta = TimeDelta::seconds(60);
/// Events fetched at a time to judge again (their payloads come along).
const HEAL_CHUNK: usize = 100;

/// [`write_back`] within the run's limits: as long again as its timeout, and stopped by its
/// cancellation (what was written stays; the next run goes on from there).
pub(super) async fn write_back_within(
    side: LogSide<'_>,
    store: &dyn Store,
    run: &Judged<'_>,
    limits: &super::RunLimits,
) -> Result<OutcomeCounts, OutcomeError> {
    let bounded = async {
        match limits.timeout {
            Some(t) => tokio::time::timeout(t, write_back(side, store, run))
                .await
                .unwrap_or_else(|_| {
                    Err(OutcomeError::Stopped(format!(
                        "timed out after {}",
                        humantime::format_duration(t)
                    )))
                }),
            None => write_back(side, store, run).await,
        }
    };
    match &limits.cancel {
        Some(token) => tokio::select! {
            r = bounded => r,
            () = token.cancelled() => Err(OutcomeError::Stopped("trueup was shutting down".into())),
        },
        None => bounded.await,
    }
}

/// Writes back what `run` found of `side`'s events.
pub(super) async fn write_back(
    side: LogSide<'_>,
    store: &dyn Store,
    run: &Judged<'_>,
) -> Result<OutcomeCounts, OutcomeError> {
    let invariant = run.invariant.name.as_str();
    let columns: Vec<String> = side
        .read
        .columns
        .iter()
        .map(|f| f.column.to_string())
        .collect();
    let key_idx: Vec<usize> = side
        .spec
        .key
        .iter()
        .map(|k| index_of(&columns, k.as_str()))
        .collect::<Option<_>>()
        .ok_or_else(|| OutcomeError::Read("the log side returns no key column".into()))?;
    let judge = Judge {
        read: side.read,
        key_idx,
        time_idx: run
            .invariant
            .time_column
            .as_ref()
            .and_then(|t| index_of(&columns, t.as_str())),
        violated: run.violated.iter().map(|(k, o)| (k.as_str(), *o)).collect(),
        due_before: run.invariant.grace.map(|g| run.started_at - g.as_chrono()),
        window_from: side.spec.window.map(|w| run.started_at - w.as_chrono()),
        captured_before: (store.backend() == "postgres").then(|| run.started_at - COMMIT_MARGIN),
    };

    let mut counts = OutcomeCounts::default();
    let mut after = store.outcome_mark(side.log, invariant).await?;
    // Every event up to here has its first outcome, or never will from this invariant.
    let mut settled = after;
    let mut waiting = false;
    let mut decided: Vec<DecidedOutcome> = Vec::new();
    while after < run.through {
        let page = store
            .log_page(side.log, after, run.through, PAGE)
            .await
            .map_err(OutcomeError::Read)?;
        let Some(last) = page.last() else { break };
        after = last.sequence;
        for event in &page {
            match judge.judge(event)? {
                Judgement::Decided(d) => decided.push(d),
                Judgement::Never => {}
                Judgement::NotYet => waiting = true,
            }
            if !waiting {
                settled = event.sequence;
            }
        }
        if decided.len() >= BATCH {
            counts.first += first_outcomes(store, side, run, &decided, settled).await?;
            decided.clear();
        }
    }
    if !waiting {
        settled = settled.max(run.through);
    }
    // Events once missing or mismatched whose key the run no longer found violated: judged
    // again (the grace period and the window say whether the run could see them).
    let unsettled = store.unsettled_outcomes(side.log, invariant).await?;
    let candidates: Vec<String> = unsettled
        .into_iter()
        .filter(|(_, key)| !judge.violated.contains_key(key.as_str()))
        .map(|(event_id, _)| event_id)
        .collect();
    let mut healed = Vec::new();
    for chunk in candidates.chunks(HEAL_CHUNK) {
        for event in store.log_events_by_ids(side.log, chunk).await? {
            if event.sequence > run.through {
                continue;
            }
            if let Judgement::Decided(DecidedOutcome {
                event_id,
                outcome: EventOutcome::Processed,
                target_record_id: Some(target_record_id),
                ..
            }) = judge.judge(&event)?
            {
                healed.push(HealedOutcome {
                    event_id,
                    target_record_id,
                });
            }
        }
    }
    let changed = store
        .write_outcomes(&OutcomeWrite {
            log: side.log,
            invariant,
            run: run.run,
            started_at: run.started_at,
            at: run.finished_at,
            decided: &decided,
            violated: run.violated,
            healed: &healed,
            through: settled,
        })
        .await?;
    counts.first += changed.first;
    counts.changed += changed.changed;
    Ok(counts)
}

async fn first_outcomes(
    store: &dyn Store,
    side: LogSide<'_>,
    run: &Judged<'_>,
    decided: &[DecidedOutcome],
    through: i64,
) -> Result<u64, StoreError> {
    let written = store
        .write_outcomes(&OutcomeWrite {
            log: side.log,
            invariant: run.invariant.name.as_str(),
            run: run.run,
            started_at: run.started_at,
            at: run.finished_at,
            decided,
            violated: &[],
            healed: &[],
            through,
        })
        .await?;
    Ok(written.first)
}

enum Judgement {
    Decided(DecidedOutcome),
    /// This invariant never judges it (no key, outside the window).
    Never,
    /// A later run will (inside the grace period, or captured just before this run).
    NotYet,
}

/// What a run could tell of an event, as its merge saw it.
struct Judge<'a> {
    read: &'a StreamRead,
    key_idx: Vec<usize>,
    time_idx: Option<usize>,
    violated: HashMap<&'a str, EventOutcome>,
    due_before: Option<DateTime<Utc>>,
    window_from: Option<DateTime<Utc>>,
    /// Only events captured before this were surely visible to the run.
    captured_before: Option<DateTime<Utc>>,
}

impl Judge<'_> {
    fn judge(&self, event: &LogEventRow) -> Result<Judgement, OutcomeError> {
        if self
            .captured_before
            .is_some_and(|before| event.ingested_at >= before)
        {
            return Ok(Judgement::NotYet);
        }
        let row =
            crate::source::event_row(self.read, event).map_err(|why| OutcomeError::Event {
                event_id: event.event_id.clone(),
                why,
            })?;
        let key: Vec<&Value> = self.key_idx.iter().map(|&i| &row[i]).collect();
        if key.iter().any(|v| v.is_null()) {
            return Ok(Judgement::Never);
        }
        let time = self.time_idx.map(|i| &row[i]);
        // A windowed run reads only rows with a time at or after its start.
        if let Some(from) = self.window_from
            && time.and_then(Value::as_timestamp).is_none_or(|t| t < from)
        {
            return Ok(Judgement::Never);
        }
        let key_json =
            serde_json::Value::Array(key.iter().map(|v| v.to_canonical_json()).collect());
        let key_text = key_json.to_string();
        let outcome = match self.violated.get(key_text.as_str()) {
            Some(o) => *o,
            None if crate::engine::not_yet_due(time, self.due_before) => {
                return Ok(Judgement::NotYet);
            }
            None => EventOutcome::Processed,
        };
        // The downstream record is the right row with the event's key.
        let target_record_id =
            (outcome != EventOutcome::Missing).then(|| crate::domain::record_id_of_key(&key_json));
        Ok(Judgement::Decided(DecidedOutcome {
            event_id: event.event_id.clone(),
            key: key_text,
            outcome,
            target_record_id,
        }))
    }
}

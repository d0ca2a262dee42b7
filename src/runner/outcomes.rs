//! What became of each event of a log that an invariant reads on its left, written back to
//! the log when a full run of the invariant completes: `processed` (found downstream),
//! `missing` or `mismatched` (found violated), each with when and by which run. Replays mark
//! their events `replayed` as they apply (`plan::apply`).
//!
//! A run judges the events up to the last one stored when it began. An event's first outcome
//! is written once; after that only a change of its key's violation changes it: violated
//! again (missing, mismatched), or no longer (`processed`, unless a replay delivered it).
//! An event still inside the grace period, or outside a windowed invariant's window, is not
//! judged by that run. A run that kept fewer violations than it found (its budget) writes
//! nothing: it cannot tell the rest from processed ones.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{
    EventOutcome, Invariant, InvariantSpec, Read, ReconcileSpec, RunId, StreamRead, Value,
};
use crate::source::{LogEventRow, index_of};
use crate::store::{DecidedOutcome, OutcomeCounts, OutcomeWrite, Store, StoreError};

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

/// Writes back what `run` found of `side`'s events.
pub(super) async fn write_back(
    side: LogSide<'_>,
    store: &dyn Store,
    run: &Judged<'_>,
) -> Result<OutcomeCounts, OutcomeError> {
    let invariant = run.invariant.name.as_str();
    let violated: HashMap<&str, EventOutcome> =
        run.violated.iter().map(|(k, o)| (k.as_str(), *o)).collect();
    let due_before = run.invariant.grace.map(|g| run.started_at - g.as_chrono());
    let window_from = side.spec.window.map(|w| run.started_at - w.as_chrono());
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
    let time_idx = run
        .invariant
        .time_column
        .as_ref()
        .and_then(|t| index_of(&columns, t.as_str()));

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
            match judge(
                side.read,
                &key_idx,
                time_idx,
                event,
                &violated,
                due_before,
                window_from,
            )? {
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
    let changed = store
        .write_outcomes(&OutcomeWrite {
            log: side.log,
            invariant,
            run: run.run,
            at: run.finished_at,
            decided: &decided,
            violated: Some(run.violated),
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
            at: run.finished_at,
            decided,
            violated: None,
            through,
        })
        .await?;
    Ok(written.first)
}

enum Judgement {
    Decided(DecidedOutcome),
    /// This invariant never judges it (no key, outside the window).
    Never,
    /// A later run will (inside the grace period).
    NotYet,
}

fn judge(
    read: &StreamRead,
    key_idx: &[usize],
    time_idx: Option<usize>,
    event: &LogEventRow,
    violated: &HashMap<&str, EventOutcome>,
    due_before: Option<DateTime<Utc>>,
    window_from: Option<DateTime<Utc>>,
) -> Result<Judgement, OutcomeError> {
    let row = crate::source::event_row(read, event).map_err(|why| OutcomeError::Event {
        event_id: event.event_id.clone(),
        why,
    })?;
    let key: Vec<&Value> = key_idx.iter().map(|&i| &row[i]).collect();
    if key.iter().any(|v| v.is_null()) {
        return Ok(Judgement::Never);
    }
    let time = time_idx.map(|i| &row[i]);
    // A windowed run reads only rows with a time at or after its start.
    if let Some(from) = window_from
        && time.and_then(Value::as_timestamp).is_none_or(|t| t < from)
    {
        return Ok(Judgement::Never);
    }
    let key_json = serde_json::Value::Array(key.iter().map(|v| v.to_canonical_json()).collect());
    let key_text = key_json.to_string();
    let outcome = match violated.get(key_text.as_str()) {
        Some(o) => *o,
        None if crate::engine::not_yet_due(time, due_before) => return Ok(Judgement::NotYet),
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

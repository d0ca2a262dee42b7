//! Evaluation: reads sources, finds violations, hands them to a sink. No ledger logic here:
//! the engine only says what it saw.
//!
//! Memory is bounded: rows stream in batches from the sources and the reconcile merge keeps
//! one key group per side; only violations leave the engine, and the sink decides how many of
//! those to keep.

mod check;
mod cursor;
mod reconcile;
mod transitions;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{Invariant, InvariantSpec, RunStats, Value, Violation};
use crate::source::{SourceError, Sources};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(
        "the {side} query returned keys out of order at row {row}: {current} came after {previous}. trueup sorts keys itself (ORDER BY with a byte-wise collation); if the query's key is an expression whose order differs, alias it to a plain column of one type"
    )]
    OutOfOrder {
        side: &'static str,
        row: u64,
        previous: String,
        current: String,
    },
    #[error(
        "key column `{column}` is {left} on the left and {right} on the right; both sides must return the same type ({remedy})"
    )]
    KeyTypeMismatch {
        column: String,
        left: String,
        right: String,
        /// What to write in a query.
        remedy: String,
    },
    #[error(
        "column `{column}` to compare is not returned by the {side} query (it returns: {available}); alias it in that query or list other columns under `compare`"
    )]
    MissingCompareColumn {
        column: String,
        side: &'static str,
        available: String,
    },
    #[error(
        "this invariant says `reconcile.mode: checksum`, but it cannot be checksummed: {why}. Set `mode: auto` to checksum where it can and stream otherwise, or `mode: stream`"
    )]
    NoChecksum { why: String },
    #[error(
        "this invariant says `reconcile.segments`, but its key range cannot be split: {why}. Leave `segments` out to run it whole"
    )]
    Unsplittable { why: String },
    #[error("the segment of keys {low} to {high} failed on {worker}: {error}")]
    SegmentFailed {
        low: i64,
        high: i64,
        worker: String,
        error: String,
    },
    /// The store could not share a split run's segments among the workers.
    #[error("could not share the run's segments through the store: {0}")]
    Segments(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The sink could not take a violation (the store failed, say).
    #[error("could not record violations: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A fault a test injected through a fail point (test builds only).
    #[error("{0} (injected)")]
    Injected(String),
}

/// Where the engine puts what it finds.
#[async_trait]
pub trait ViolationSink: Send {
    async fn accept(&mut self, violation: Violation) -> Result<(), EngineError>;

    /// Keys an incremental run covered (as [`Violation::key_json`] writes them): violations on
    /// them that the run did not see may resolve, no others.
    async fn cover(&mut self, _keys: &[serde_json::Value]) -> Result<(), EngineError> {
        Ok(())
    }

    /// Keys of the invariant's violations that are open (as [`Violation::key_json`] writes
    /// them), at most `limit`: a checksummed run whose whole-range totals differ totals them
    /// apart first (see `reconcile/checksum.rs`). A hint, never a verdict: the run finds the same violations
    /// without it, only at more cost.
    async fn open_keys(&mut self, _limit: u32) -> Result<Vec<serde_json::Value>, EngineError> {
        Ok(Vec::new())
    }
}

/// Which rows a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pass {
    /// Every row.
    #[default]
    Full,
    /// An incremental reconcile's: the keys of the rows changed on each side (see
    /// [`crate::domain::Incremental`]); other invariants read every row.
    Changed { left: Changes, right: Changes },
}

/// Which rows of one side count as changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changes {
    /// None: the side has no change column, its own changes wait for a full pass.
    Unwatched,
    /// Every row (the side had none at the last watermark).
    All,
    /// Those whose change column is at or after this instant.
    Since(DateTime<Utc>),
}

/// Collects violations in memory; for tests and small checks.
#[derive(Default)]
pub struct Collect(pub Vec<Violation>);

#[async_trait]
impl ViolationSink for Collect {
    async fn accept(&mut self, violation: Violation) -> Result<(), EngineError> {
        self.0.push(violation);
        Ok(())
    }
}

/// A key column and the value to keep (canonical JSON).
pub type KeyFilter = (crate::domain::ColumnName, serde_json::Value);

/// Evaluates one invariant as of `now` (the reference for grace periods).
pub async fn evaluate(
    invariant: &Invariant,
    sources: &Sources,
    now: DateTime<Utc>,
    sink: &mut dyn ViolationSink,
) -> Result<RunStats, EngineError> {
    evaluate_pass(invariant, sources, now, Pass::Full, sink).await
}

/// Evaluates one invariant over the rows `pass` says (an incremental reconcile's changes, or
/// every row).
pub async fn evaluate_pass(
    invariant: &Invariant,
    sources: &Sources,
    now: DateTime<Utc>,
    pass: Pass,
    sink: &mut dyn ViolationSink,
) -> Result<RunStats, EngineError> {
    evaluate_within(invariant, sources, now, pass, &[], sink).await
}

/// Evaluates one invariant over only the rows whose key columns equal `filter` (every
/// column when empty): how a single violation is re-checked.
pub async fn evaluate_keys(
    invariant: &Invariant,
    sources: &Sources,
    now: DateTime<Utc>,
    filter: &[KeyFilter],
    sink: &mut dyn ViolationSink,
) -> Result<RunStats, EngineError> {
    evaluate_within(invariant, sources, now, Pass::Full, filter, sink).await
}

/// How a split run divides its keys: the segments' key ranges, and (an incremental
/// reconcile's) each side's change mark as the run began.
#[derive(Debug, Clone)]
pub struct SplitPlan {
    pub ranges: Vec<(i64, i64)>,
    pub marks: Option<crate::domain::Marks>,
}

/// Splits a full pass of a reconcile that declares `segments`; `None` for any other
/// invariant (it runs whole).
pub async fn split(
    invariant: &Invariant,
    sources: &Sources,
) -> Result<Option<SplitPlan>, EngineError> {
    let InvariantSpec::Reconcile(spec) = &invariant.spec else {
        return Ok(None);
    };
    let Some(segments) = spec.segments else {
        return Ok(None);
    };
    let marks = match &spec.incremental {
        Some(inc) => Some(reconcile::marks(invariant, spec, inc, sources).await?),
        None => None,
    };
    let ranges = reconcile::split(spec, sources, segments).await?;
    Ok(Some(SplitPlan { ranges, marks }))
}

/// Evaluates the keys from `low` to `high` of a split reconcile as of `now` (the run's
/// start, the reference for grace periods).
pub async fn evaluate_segment(
    invariant: &Invariant,
    sources: &Sources,
    now: DateTime<Utc>,
    range: (i64, i64),
    sink: &mut dyn ViolationSink,
) -> Result<RunStats, EngineError> {
    let InvariantSpec::Reconcile(spec) = &invariant.spec else {
        return Err(EngineError::Unsplittable {
            why: "only a reconcile is split into segments".into(),
        });
    };
    let due_before = invariant.grace.map(|g| now - g.as_chrono());
    let mut stats = RunStats::default();
    let mut tally = Tally {
        stats: &mut stats,
        sink,
        window_from: None,
    };
    reconcile::run_segment(invariant, spec, sources, due_before, range, &mut tally).await?;
    Ok(stats)
}

async fn evaluate_within(
    invariant: &Invariant,
    sources: &Sources,
    now: DateTime<Utc>,
    pass: Pass,
    filter: &[KeyFilter],
    sink: &mut dyn ViolationSink,
) -> Result<RunStats, EngineError> {
    let due_before = invariant.grace.map(|g| now - g.as_chrono());
    let mut stats = RunStats::default();
    // A re-check of given keys reads them whatever their time: a violation that slid out of
    // the window is still open, and must not look repaired because nothing was read.
    let window_from = match &invariant.spec {
        InvariantSpec::Reconcile(spec) if filter.is_empty() => {
            spec.window.map(|w| now - w.as_chrono())
        }
        _ => None,
    };
    if let Some(from) = window_from
        && filter.is_empty()
    {
        stats.coverage = crate::domain::Coverage::Window { from };
    }
    let mut tally = Tally {
        stats: &mut stats,
        sink,
        window_from,
    };
    match &invariant.spec {
        InvariantSpec::Check(spec) => {
            check::run(invariant, spec, sources, due_before, filter, &mut tally).await?
        }
        InvariantSpec::Reconcile(spec) => {
            reconcile::run(
                invariant, spec, sources, due_before, pass, filter, &mut tally,
            )
            .await?
        }
        InvariantSpec::Transitions(spec) => {
            transitions::run(spec, sources, filter, &mut tally).await?
        }
    }
    Ok(stats)
}

/// Counts what passes to the sink.
struct Tally<'a> {
    stats: &'a mut RunStats,
    sink: &'a mut dyn ViolationSink,
    /// A windowed reconcile's start: both sides read only rows whose time column is at or
    /// after it.
    window_from: Option<DateTime<Utc>>,
}

impl Tally<'_> {
    async fn report(&mut self, v: Violation) -> Result<(), EngineError> {
        self.stats.observed += 1;
        *self.stats.counts.entry(v.kind).or_default() += 1;
        self.sink.accept(v).await
    }
}

/// Whether a row is still inside its grace period.
pub fn not_yet_due(time: Option<&Value>, due_before: Option<DateTime<Utc>>) -> bool {
    match (due_before, time.and_then(Value::as_timestamp)) {
        (Some(cutoff), Some(t)) => t > cutoff,
        _ => false,
    }
}

/// A row as a JSON object, for evidence: each value capped, but for the columns marked
/// `whole` (a template reads them; see [`Invariant::template_reads`]).
fn row_json(columns: &[String], row: &[Value], whole: &[bool]) -> serde_json::Value {
    serde_json::Value::Object(
        columns
            .iter()
            .zip(row)
            .enumerate()
            .map(|(i, (c, v))| {
                let json = if whole.get(i).copied().unwrap_or(false) {
                    v.to_canonical_json()
                } else {
                    v.to_evidence_json()
                };
                (c.clone(), json)
            })
            .collect(),
    )
}

/// For each column of a side, whether evidence keeps it whole.
fn whole_columns(inv: &Invariant, scope: crate::domain::Scope, columns: &[String]) -> Vec<bool> {
    columns
        .iter()
        .map(|c| inv.template_reads(scope, c))
        .collect()
}

fn key_text(key: &[Value]) -> String {
    let parts: Vec<String> = key.iter().map(ToString::to_string).collect();
    format!("({})", parts.join(", "))
}

//! One run of one invariant: evaluate it against the sources and record the result in the
//! ledger, all or nothing.

use futures_util::FutureExt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::domain::{Invariant, InvariantName, Violation};
use crate::domain::{LedgerChange, RunId, RunStats, RunStatus};
use crate::engine::{self, Changes, EngineError, Pass, ViolationSink};
use crate::source::Sources;
use crate::store::{StatusFilter, Store, StoreError, ViolationFilter, ViolationRecord};

mod outcomes;
mod split;

pub use outcomes::COMMIT_MARGIN;
pub use split::{SegmentWorker, work_segment};

/// Violations are staged in the store in batches of this size.
const FLUSH_EVERY: usize = 500;
/// ... or once their evidence holds this much (columns a template reads are kept whole, and
/// may be large).
const FLUSH_BYTES: usize = 8 << 20;

/// Bounds on one run: a deadline, a token that cancels it (shutdown), and the scheduled tick
/// it answers (committed with the result).
#[derive(Debug, Clone, Default)]
pub struct RunLimits {
    pub timeout: Option<Duration>,
    pub cancel: Option<CancellationToken>,
    pub tick: Option<crate::store::TickRef>,
    /// The run, when the caller recorded its start already (the scheduler begins it in the
    /// transaction that claims its tick).
    pub begun: Option<Begun>,
    /// Read every row, even of an incremental reconcile (a person checking by hand, an
    /// incident's verification).
    pub full_pass: bool,
    /// Who this process is among the workers of split runs (a `serve` replica); `None`: a
    /// name made from the host and process.
    pub worker: Option<SegmentWorker>,
}

/// A run recorded as running by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begun {
    pub id: RunId,
    pub at: DateTime<Utc>,
}

/// What one run did.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct RunOutcome {
    pub run_id: RunId,
    pub status: RunStatus,
    pub invariant: String,
    pub severity: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub stats: RunStats,
    /// `None` when the run failed: then nothing in the ledger changed.
    pub change: Option<LedgerChange>,
    /// Violations open after the run (new, reopened and still open).
    pub open_after: u64,
    pub error: Option<String>,
    /// The first new or reopened violations, else the first open ones.
    pub samples: Vec<ViolationRecord>,
}

impl RunOutcome {
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    pub fn holds(&self) -> bool {
        !self.failed() && self.open_after == 0
    }
}

/// Evaluates `invariant` now and records the run. A store that cannot record the start is an
/// error; everything after that ends up in the run's record.
pub async fn run_invariant(
    invariant: &Invariant,
    sources: &Sources,
    store: &dyn Store,
) -> Result<RunOutcome, StoreError> {
    run_invariant_limited(invariant, sources, store, &RunLimits::default()).await
}

/// Why an evaluation stopped early.
enum Stopped {
    Failed(EngineError),
    /// The evaluation panicked (a bug): the run fails with the panic's message.
    Panicked(String),
    TimedOut(Duration),
    Cancelled,
}

/// [`run_invariant`] within limits: a run over its timeout is recorded as failed, a cancelled
/// one as cancelled; either way nothing in the ledger changes.
pub async fn run_invariant_limited(
    invariant: &Invariant,
    sources: &Sources,
    store: &dyn Store,
    limits: &RunLimits,
) -> Result<RunOutcome, StoreError> {
    let started_at = limits.begun.map_or_else(Utc::now, |b| b.at);
    let pass = if limits.full_pass {
        Pass::Full
    } else {
        choose_pass(invariant, store, started_at).await?
    };
    let run_id = match (&limits.begun, &limits.tick) {
        (Some(begun), _) => begun.id,
        (None, Some(tick)) => {
            store
                .begin_tick_run(&invariant.name, started_at, tick)
                .await?
        }
        (None, None) => store.begin_run(&invariant.name, started_at).await?,
    };
    let mut recorder = Recorder::new(store, run_id, invariant, None);
    // A full run of an invariant reading an event log on its left writes back what became
    // of the log's events: it notes the violated keys, and where the log ended as it began.
    let log_side = outcomes::LogSide::of(invariant).filter(|_| pass == Pass::Full);
    let log_through = match log_side {
        Some(side) => match store.log_end(side.log).await {
            Ok(end) => Some(end),
            Err(e) => {
                tracing::warn!(invariant = %invariant.name, log = side.log, "the events' outcomes will not be written back: {e}");
                None
            }
        },
        None => None,
    };
    if log_through.is_some() {
        recorder.keys = Some(Vec::new());
    }
    let split_run = std::sync::atomic::AtomicBool::new(false);
    let worker = limits
        .worker
        .clone()
        .unwrap_or_else(SegmentWorker::this_process);
    let evaluated = {
        let evaluation = async {
            // A full pass of a reconcile that declares segments is split among the workers.
            if pass == Pass::Full
                && let Some(plan) = engine::split(invariant, sources).await?
            {
                split_run.store(true, std::sync::atomic::Ordering::Relaxed);
                return split::coordinate(invariant, plan, sources, store, run_id, &worker).await;
            }
            let mut stats =
                engine::evaluate_pass(invariant, sources, started_at, pass, &mut recorder).await?;
            recorder.flush().await?;
            stats.truncated = recorder.truncated;
            Ok::<_, EngineError>(stats)
        };
        // A panic anywhere in the evaluation is a failed run, never an unrecorded one.
        let evaluation = async {
            match std::panic::AssertUnwindSafe(evaluation)
                .catch_unwind()
                .await
            {
                Ok(r) => r.map_err(Stopped::Failed),
                Err(panic) => Err(Stopped::Panicked(crate::source::panic_message(&*panic))),
            }
        };
        let bounded = async {
            match limits.timeout {
                Some(t) => match tokio::time::timeout(t, evaluation).await {
                    Ok(r) => r,
                    Err(_) => Err(Stopped::TimedOut(t)),
                },
                None => evaluation.await,
            }
        };
        match &limits.cancel {
            Some(token) => tokio::select! {
                r = bounded => r,
                () = token.cancelled() => Err(Stopped::Cancelled),
            },
            None => bounded.await,
        }
    };
    let finished_at = Utc::now();
    let mut outcome = RunOutcome {
        run_id,
        status: RunStatus::Succeeded,
        invariant: invariant.name.to_string(),
        severity: invariant.severity.to_string(),
        started_at,
        finished_at,
        stats: RunStats::default(),
        change: None,
        open_after: 0,
        error: None,
        samples: Vec::new(),
    };
    match evaluated {
        Ok(stats) => {
            let completed = std::panic::AssertUnwindSafe(store.complete_run(
                run_id,
                &invariant.name,
                &stats,
                finished_at,
                limits.tick.as_ref(),
            ))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(StoreError::Panicked(crate::source::panic_message(&*panic)))
            });
            let change = match completed {
                Ok(change) => change,
                Err(e) => {
                    // Leave no run "running": record why it could not complete, if the store
                    // lets us, and report the original error either way.
                    let message = format!("could not record the result: {e}");
                    let _ = store
                        .abandon_run(run_id, RunStatus::Failed, &message, Utc::now())
                        .await;
                    return Err(e);
                }
            };
            outcome.open_after = change.open_after();
            if let (Some(side), Some(through), Some(violated)) =
                (log_side, log_through, recorder.keys.as_deref())
                && !stats.truncated
                && !split_run.load(std::sync::atomic::Ordering::Relaxed)
            {
                let judged = outcomes::Judged {
                    invariant,
                    run: run_id,
                    started_at,
                    finished_at,
                    through,
                    violated,
                };
                // The ledger holds the run's result already; outcomes that could not be
                // written are written by the next run, which judges every key again.
                match outcomes::write_back_within(side, store, &judged, limits).await {
                    Ok(c) => {
                        tracing::debug!(invariant = %invariant.name, log = side.log, first = c.first, changed = c.changed, "events' outcomes written back")
                    }
                    Err(e) => {
                        tracing::warn!(invariant = %invariant.name, log = side.log, "could not write back the events' outcomes: {e}")
                    }
                }
            }
            outcome.stats = stats;
            outcome.change = Some(change);
            // Nothing open: no samples to read (the common case, and a round trip per run).
            if outcome.open_after > 0 {
                outcome.samples = samples(store, invariant, run_id).await?;
            }
        }
        Err(stopped) => {
            let (status, message) = match stopped {
                Stopped::Failed(e) => (RunStatus::Failed, e.to_string()),
                Stopped::Panicked(message) => (
                    RunStatus::Failed,
                    format!(
                        "the evaluation panicked (a bug in trueup; please report it): {message}"
                    ),
                ),
                Stopped::TimedOut(t) => (
                    RunStatus::Failed,
                    format!(
                        "timed out after {}; raise the run timeout or make the queries cheaper",
                        humantime::format_duration(t)
                    ),
                ),
                Stopped::Cancelled => (
                    RunStatus::Cancelled,
                    "cancelled: trueup was shutting down".to_owned(),
                ),
            };
            tracing::warn!(invariant = %invariant.name, run = run_id, "run {}: {message}", status.as_str());
            store
                .abandon_run(run_id, status, &message, finished_at)
                .await?;
            outcome.status = status;
            outcome.error = Some(message);
        }
    }
    Ok(outcome)
}

/// An incremental reconcile reads what changed since its watermark, less the lookback and
/// the grace period (a row still inside its grace period at the last run is due now, though
/// it did not change again); a full pass when it has no watermark, its definition changed
/// since, or the last full pass is `full_every` old. Every other invariant reads every row.
async fn choose_pass(
    invariant: &Invariant,
    store: &dyn Store,
    now: DateTime<Utc>,
) -> Result<Pass, StoreError> {
    let crate::domain::InvariantSpec::Reconcile(spec) = &invariant.spec else {
        return Ok(Pass::Full);
    };
    let Some(inc) = &spec.incremental else {
        return Ok(Pass::Full);
    };
    let Some(mark) = store.watermark(&invariant.name).await? else {
        return Ok(Pass::Full);
    };
    if mark.marks.definition != invariant.definition_hash()
        || now - mark.full_at >= inc.full_every.as_chrono()
    {
        return Ok(Pass::Full);
    }
    let back =
        inc.lookback.as_chrono() + invariant.grace.map_or(TimeDelta::zero(), |g| g.as_chrono());
    let side = |column: Option<&crate::domain::ColumnName>, mark: Option<DateTime<Utc>>| match (
        column, mark,
    ) {
        (None, _) => Changes::Unwatched,
        (Some(_), None) => Changes::All,
        (Some(_), Some(m)) => Changes::Since(m - back),
    };
    Ok(Pass::Changed {
        left: side(inc.left.as_ref(), mark.marks.left),
        right: side(inc.right.as_ref(), mark.marks.right),
    })
}

async fn samples(
    store: &dyn Store,
    invariant: &Invariant,
    run: RunId,
) -> Result<Vec<ViolationRecord>, StoreError> {
    let limit = u32::try_from(invariant.sample_limit).unwrap_or(u32::MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut filter = ViolationFilter {
        invariants: vec![invariant.name.to_string()],
        status: StatusFilter::Active,
        new_in_run: Some(run),
        limit,
        ..Default::default()
    };
    let fresh = store.violations(&filter).await?;
    if !fresh.is_empty() {
        return Ok(fresh);
    }
    filter.new_in_run = None;
    store.violations(&filter).await
}

/// Stages violations in the store, up to the invariant's budget: a run's, or one segment's
/// of a split run.
struct Recorder<'a> {
    store: &'a dyn Store,
    run: RunId,
    segment: Option<&'a crate::store::SegmentClaim>,
    invariant: &'a InvariantName,
    budget: u64,
    stored: u64,
    truncated: bool,
    buffer: Vec<Violation>,
    /// Roughly the bytes of the buffered violations' evidence.
    buffered: usize,
    /// `Some`: every key found missing or mismatched (as violations hold it), for the
    /// write-back of an event log's outcomes.
    keys: Option<Vec<(String, crate::domain::EventOutcome)>>,
}

impl<'a> Recorder<'a> {
    fn new(
        store: &'a dyn Store,
        run: RunId,
        invariant: &'a Invariant,
        segment: Option<&'a crate::store::SegmentClaim>,
    ) -> Self {
        Recorder {
            store,
            run,
            segment,
            invariant: &invariant.name,
            budget: invariant.violation_budget,
            stored: 0,
            truncated: false,
            buffer: Vec::new(),
            buffered: 0,
            keys: None,
        }
    }

    async fn flush(&mut self) -> Result<(), EngineError> {
        fail::fail_point!("runner.stage", |_| Err(EngineError::Injected(
            "staging the violations failed".into()
        )));
        if !self.buffer.is_empty() {
            let first_seq = self.stored - self.buffer.len() as u64;
            match self.segment {
                Some(claim) => {
                    self.store
                        .observe_segment(claim, first_seq, &self.buffer)
                        .await
                }
                None => {
                    self.store
                        .observe(self.run, self.invariant, first_seq, &self.buffer)
                        .await
                }
            }
            .map_err(|e| EngineError::Sink(Box::new(e)))?;
            self.buffer.clear();
            self.buffered = 0;
        }
        Ok(())
    }
}

#[async_trait]
impl ViolationSink for Recorder<'_> {
    async fn accept(&mut self, violation: Violation) -> Result<(), EngineError> {
        if self.stored >= self.budget {
            self.truncated = true;
            return Ok(());
        }
        self.stored += 1;
        if let Some(keys) = self.keys.as_mut()
            && let Some(outcome) = crate::domain::EventOutcome::of_violation(violation.kind)
        {
            keys.push((violation.key_json().to_string(), outcome));
        }
        self.buffered += crate::domain::json_size(&violation.evidence);
        self.buffer.push(violation);
        if self.buffer.len() >= FLUSH_EVERY || self.buffered >= FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn cover(&mut self, keys: &[serde_json::Value]) -> Result<(), EngineError> {
        self.store
            .cover(self.run, keys)
            .await
            .map_err(|e| EngineError::Sink(Box::new(e)))
    }

    async fn open_keys(&mut self, limit: u32) -> Result<Vec<serde_json::Value>, EngineError> {
        self.store
            .open_keys(self.invariant.as_str(), limit)
            .await
            .map_err(|e| EngineError::Sink(Box::new(e)))
    }
}

//! The running service's context and what every surface of it does the same way: run an
//! invariant now and publish the outcome, request an apply, verify an incident. The
//! scheduler (`serve`), the API and the console (`http`) all go through here, so a run
//! requested from a browser is recorded, measured and alerted on exactly as a scheduled one.

pub mod board;
pub mod catalog;
pub mod metrics;
mod requests;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::domain::{Actor, Invariant, Observation, RunStatus, alert_step};
use crate::plan::Evaluation;
use crate::runner::{self, RunLimits, RunOutcome};
use crate::source::Sources;
use crate::store::{Store, StoreError, TickRef};

use board::Board;
use metrics::Metrics;

pub use requests::{VerificationRun, VerifyError, request_apply, run_verification};

/// What a running trueup shares between its scheduler, its API and its console: the
/// sources and store, the live state (metrics, board), and the settings of a run.
#[derive(Clone)]
pub struct Runtime {
    pub sources: Sources,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub board: Arc<Board>,
    pub run_timeout: Duration,
    /// Cancelled when runs in flight must stop (end of the shutdown grace period).
    pub cancel_runs: CancellationToken,
    /// Where notices go (`notifications.route`, or every channel).
    pub route: Arc<crate::domain::Route>,
    /// Wakes the outbox worker when notices are queued.
    pub wake_outbox: Arc<tokio::sync::Notify>,
    /// This process's name among the replicas sharing the store.
    pub replica: Arc<str>,
    /// How long a claimed tick stays ours without renewal; a replica that dies loses its
    /// ticks to the others after this.
    pub lease: Duration,
    /// For proposing compensation plans after runs.
    pub config: Arc<crate::config::Config>,
    /// The invariants loaded now (replaced as a whole on reload).
    pub catalog: Arc<catalog::Catalog>,
    /// What applied plans change.
    pub targets: Arc<crate::plan::targets::Targets>,
}

impl Runtime {
    /// What happened to one event or key, over the invariants loaded now and every event log.
    pub async fn trace(
        &self,
        key: &str,
        invariant: Option<&str>,
    ) -> Result<crate::trace::Trace, crate::trace::TraceError> {
        let names: Vec<_> = self
            .catalog
            .snapshot()
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let logs: Vec<_> = self.config.event_logs.keys().cloned().collect();
        crate::trace::trace(self.store.as_ref(), &names, &logs, key, invariant).await
    }

    /// This replica as a worker of split runs (its segments held under the tick lease).
    pub fn segment_worker(&self) -> crate::runner::SegmentWorker {
        crate::runner::SegmentWorker {
            owner: self.replica.to_string(),
            lease: self.lease,
        }
    }
}

/// Which rows a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPass {
    /// What the invariant declares: an incremental reconcile's changes, else every row.
    Declared,
    /// Every row (an incident's verification).
    Full,
}

/// How an attempt to run an invariant went.
pub enum Attempt {
    Ran(Box<Evaluation>),
    /// A run of the same invariant was already going; nothing started.
    Busy,
    /// The store could not record the run.
    StoreFailed(String),
}

/// Evaluates an invariant now and publishes the outcome (metrics, board). A plan the run
/// proposes is `requested_by`'s: the scheduler for a tick, the caller for a requested run
/// (so whoever triggered it cannot also be the approver of its manual steps).
pub async fn run_once(
    invariant: &Invariant,
    runtime: &Runtime,
    tick: Option<TickRef>,
    requested_by: &Actor,
    pass: RunPass,
) -> Attempt {
    let Ok(running) = runtime
        .board
        .run_lock(invariant.name.as_str())
        .try_lock_owned()
    else {
        return Attempt::Busy;
    };
    let limits = RunLimits {
        tick,
        full_pass: pass == RunPass::Full,
        ..runtime.limits()
    };
    run_holding(invariant, runtime, limits, requested_by, running).await
}

/// The scheduled run of a tick this replica claimed, begun in the claim's transaction, while
/// `running` (the invariant's run lock, taken before the claim) is held.
pub async fn run_claimed_tick(
    invariant: &Invariant,
    runtime: &Runtime,
    tick: TickRef,
    begun: runner::Begun,
    running: RunLock,
) -> Attempt {
    let limits = RunLimits {
        tick: Some(tick),
        begun: Some(begun),
        ..runtime.limits()
    };
    run_holding(invariant, runtime, limits, &Actor::scheduler(), running).await
}

/// Held for the whole of a run of one invariant (see [`Board::run_lock`]).
pub type RunLock = tokio::sync::OwnedMutexGuard<()>;

impl Runtime {
    /// A run's limits in this service: its timeout, shutdown, and this replica as a worker.
    fn limits(&self) -> RunLimits {
        RunLimits {
            timeout: Some(self.run_timeout),
            cancel: Some(self.cancel_runs.clone()),
            worker: Some(self.segment_worker()),
            ..RunLimits::default()
        }
    }
}

async fn run_holding(
    invariant: &Invariant,
    runtime: &Runtime,
    limits: RunLimits,
    requested_by: &Actor,
    _running: RunLock,
) -> Attempt {
    runtime.board.started(invariant.name.as_str());
    match runner::run_invariant_limited(
        invariant,
        &runtime.sources,
        runtime.store.as_ref(),
        &limits,
    )
    .await
    {
        Ok(outcome) => {
            let evaluation = crate::plan::propose_after_run(
                runtime.store.as_ref(),
                &runtime.config,
                invariant,
                outcome,
                requested_by,
            )
            .await;
            let outcome = &evaluation.run;
            runtime.metrics.record(invariant, outcome);
            runtime.board.finished(invariant.name.as_str(), outcome);
            // The alert keeps its state when this step fails or panics: it is stepped again
            // after the next run.
            match std::panic::AssertUnwindSafe(advance_alert(invariant, outcome, runtime))
                .catch_unwind()
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(invariant = %invariant.name, "cannot record the alert state: {e}");
                }
                Err(panic) => tracing::error!(
                    invariant = %invariant.name,
                    "recording the alert state panicked (a bug in trueup; please report it): {}",
                    crate::source::panic_message(&*panic)
                ),
            }
            Attempt::Ran(Box::new(evaluation))
        }
        Err(e) => {
            // The store itself failed; the run may not even be recorded. Say so loudly.
            tracing::error!(invariant = %invariant.name, "cannot record the run: {e}");
            // No run record says it failed, and no notice goes out: the metrics must (health
            // 0, a failure counted), or Prometheus goes on reading the last good run.
            runtime.metrics.failed(invariant.name.as_str());
            runtime
                .board
                .store_failed(invariant.name.as_str(), &e.to_string());
            Attempt::StoreFailed(e.to_string())
        }
    }
}

/// Moves the invariant's alert after a run, and queues the notices in the same transaction.
async fn advance_alert(
    invariant: &Invariant,
    outcome: &RunOutcome,
    runtime: &Runtime,
) -> Result<(), StoreError> {
    let name = invariant.name.as_str();
    let current = runtime.store.alert(name).await?;
    let observation = match (outcome.status, outcome.change) {
        (RunStatus::Succeeded, Some(change)) if outcome.open_after > 0 => Observation::Violating {
            open: outcome.open_after,
            changed: change.new + change.reopened > 0,
        },
        (RunStatus::Succeeded, _) => Observation::Holding,
        _ => Observation::Failed,
    };
    let now = outcome.finished_at;
    let (next, notice) = alert_step(&current, observation, now, &invariant.alert);
    runtime.board.alert(name, next.state);
    if next == current && notice.is_none() {
        return Ok(());
    }
    let notices = match notice {
        Some(n) => {
            let links = notice_links(invariant, runtime).await?;
            let silences = runtime.store.silences(now, false, 1000).await?;
            crate::notify::queued(
                invariant,
                n,
                &next,
                outcome,
                &runtime.route,
                &silences,
                links.as_ref(),
            )
        }
        None => Vec::new(),
    };
    fail::fail_point!("serve.alert", |_| Err(StoreError::Database(
        sqlx::Error::Protocol("recording the alert failed (injected)".into())
    )));
    runtime
        .store
        .record_alert(name, &next, &notices, now)
        .await?;
    if let Some(n) = notice {
        let held = notices.iter().filter(|q| q.held_by.is_some()).count();
        tracing::info!(invariant = %name, notice = n.as_str(), channels = notices.len(), held, "alert notice queued");
    }
    if !notices.is_empty() {
        runtime.wake_outbox.notify_one();
    }
    Ok(())
}

/// The console links of a notice (none without `serve.external_url`): the timeline and the
/// replay dry run span the event times of the violations open now.
async fn notice_links(
    invariant: &Invariant,
    runtime: &Runtime,
) -> Result<Option<crate::notify::NoticeLinks>, StoreError> {
    let Some(base) = &runtime.config.serve.external_url else {
        return Ok(None);
    };
    let open = crate::store::ViolationFilter {
        invariants: vec![invariant.name.to_string()],
        status: crate::store::StatusFilter::Active,
        ..Default::default()
    };
    let span = runtime.store.event_span(&open).await?;
    Ok(Some(crate::notify::NoticeLinks::new(base, invariant, span)))
}

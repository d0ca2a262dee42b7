//! A reconcile split into segments of its key range. The process that began the run writes
//! the segments to the store and works on them like any other worker; every `trueup serve`
//! replica on the store claims segments too (see `serve::segments`). A segment is claimed
//! under a lease renewed while it runs; a worker that stops answering loses it to the next
//! claim, and what it staged is dropped. When every segment is done the run completes as one,
//! with the sum of their figures and one ledger change; a failed segment fails the run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::Recorder;
use crate::domain::{Coverage, Invariant, RunId, RunStats, Split};
use crate::engine::{self, EngineError, SplitPlan};
use crate::source::Sources;
use crate::store::{SegmentClaim, SegmentStatus, Store, StoreError};

/// How often the process that began a split run looks at its segments while other workers
/// hold the rest.
const POLL: Duration = Duration::from_millis(200);

/// Who works on segments, and for how long a claim holds without renewal.
#[derive(Debug, Clone)]
pub struct SegmentWorker {
    pub owner: String,
    pub lease: Duration,
}

impl SegmentWorker {
    /// The default lease: a worker that stops answering loses its segment after this.
    pub const LEASE: Duration = Duration::from_secs(30);

    /// A worker named after this host and process (a `trueup check`).
    pub fn this_process() -> Self {
        SegmentWorker {
            owner: format!(
                "check-{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "trueup".into()),
                std::process::id()
            ),
            lease: Self::LEASE,
        }
    }

    fn lease_from(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::TimeDelta::from_std(self.lease).unwrap_or(chrono::TimeDelta::seconds(30))
    }
}

/// Splits the run into `plan`'s segments, works on them until none is left to claim, waits
/// for those other workers hold (taking over any whose worker stops answering), and sums
/// what they measured.
pub(super) async fn coordinate(
    invariant: &Invariant,
    plan: SplitPlan,
    sources: &Sources,
    store: &dyn Store,
    run: RunId,
    worker: &SegmentWorker,
) -> Result<RunStats, EngineError> {
    let shared = |e: StoreError| EngineError::Segments(Box::new(e));
    let definition = invariant.definition_hash();
    store
        .split_run(run, &invariant.name, &definition, &plan.ranges)
        .await
        .map_err(shared)?;
    let definitions = [definition];
    let segments = loop {
        let now = Utc::now();
        let claimed = store
            .claim_segment(
                &worker.owner,
                Some(run),
                &definitions,
                now,
                worker.lease_from(now),
            )
            .await
            .map_err(shared)?;
        if let Some(claim) = claimed {
            work_segment(claim, invariant, sources, store, worker, None)
                .await
                .map_err(shared)?;
            continue;
        }
        let segments = store.segments(run).await.map_err(shared)?;
        if let Some(failed) = segments.iter().find(|s| s.status == SegmentStatus::Failed) {
            return Err(EngineError::SegmentFailed {
                low: failed.low,
                high: failed.high,
                worker: failed.owner.clone().unwrap_or_default(),
                error: failed.error.clone().unwrap_or_default(),
            });
        }
        if segments.iter().all(|s| s.status == SegmentStatus::Done) {
            break segments;
        }
        tokio::time::sleep(POLL).await;
    };
    let mut stats = RunStats {
        coverage: Coverage::Full,
        marks: plan.marks,
        ..RunStats::default()
    };
    let mut workers = Vec::new();
    let mut taken_over = 0;
    for segment in &segments {
        if let Some(measured) = &segment.stats {
            stats.absorb(measured);
        }
        workers.extend(segment.owner.clone());
        taken_over += u32::from(segment.attempt > 1);
    }
    workers.sort();
    workers.dedup();
    stats.split = Some(Split {
        segments: segments.len() as u32,
        workers,
        taken_over,
    });
    Ok(stats)
}

/// Evaluates a claimed segment of `invariant` while renewing its lease, stages what it finds
/// and records its end: done with its figures, or failed with why (which fails the run).
/// Nothing is recorded when the lease is lost (another worker has the segment) or `stop`
/// fires (the lease runs out and another worker takes it over).
pub async fn work_segment(
    claim: SegmentClaim,
    invariant: &Invariant,
    sources: &Sources,
    store: &dyn Store,
    worker: &SegmentWorker,
    stop: Option<&CancellationToken>,
) -> Result<(), StoreError> {
    let mut recorder = Recorder::new(store, claim.run, invariant, Some(&claim));
    let evaluation = async {
        let evaluated = async {
            let mut stats = engine::evaluate_segment(
                invariant,
                sources,
                claim.run_started_at,
                (claim.low, claim.high),
                &mut recorder,
            )
            .await?;
            recorder.flush().await?;
            stats.truncated = recorder.truncated;
            Ok::<_, EngineError>(stats)
        };
        match std::panic::AssertUnwindSafe(evaluated).catch_unwind().await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(panic) => Err(format!(
                "the evaluation panicked (a bug in trueup; please report it): {}",
                crate::source::panic_message(&*panic)
            )),
        }
    };
    let renewals = async {
        loop {
            tokio::time::sleep(worker.lease / 3).await;
            match store
                .renew_segment(&claim, worker.lease_from(Utc::now()))
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                // A store that does not answer: keep trying until the lease is gone.
                Err(e) => tracing::warn!(
                    run = claim.run,
                    segment = claim.seq,
                    "cannot renew the segment's lease: {e}"
                ),
            }
        }
    };
    let stopped = async {
        match stop {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        outcome = evaluation => outcome,
        () = renewals => {
            tracing::warn!(run = claim.run, segment = claim.seq, "lost the segment's lease; another worker evaluates it");
            return Ok(());
        }
        () = stopped => return Ok(()),
    };
    if let Err(why) = &outcome {
        tracing::warn!(
            run = claim.run,
            segment = claim.seq,
            "segment failed: {why}"
        );
    }
    let recorded = store
        .finish_segment(&claim, outcome.as_ref().map_err(String::as_str))
        .await?;
    if !recorded {
        tracing::warn!(
            run = claim.run,
            segment = claim.seq,
            "the segment was taken over before it finished; its result is dropped"
        );
    }
    Ok(())
}

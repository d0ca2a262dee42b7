//! Replay plans: each worker leases a partition and delivers its events in order.

use chrono::Utc;

use super::act::{Recheck, check_then_act};
use super::pace::{HaltWatch, nothing_claimable, ticker};
use super::{ApplyReport, Live};
use crate::domain::{ActionStatus, PlanState, ReplaySpec};
use crate::plan::PlanError;

/// Replay plans: each worker leases a partition and delivers its events in order; up to
/// `opts.concurrency` partitions at once; every delivery waits for the shared rate.
pub(super) async fn run_partitions(
    live: &Live<'_>,
    spec: &ReplaySpec,
    report: &mut ApplyReport,
) -> Result<Option<PlanState>, PlanError> {
    let (env, opts, cancel, reporter) = (live.env, live.opts, live.cancel, &live.reporter);
    let (invariant, lease, id) = (live.invariant, live.lease, live.plan.id);
    let shared_ticker = tokio::sync::Mutex::new(ticker(opts.rate));
    let shared_report =
        std::sync::Mutex::new(std::mem::replace(report, ApplyReport::new(id, false)));
    let halted = std::sync::Mutex::new(None::<PlanState>);
    let worker = |n: usize| {
        let me = format!("{}#{n}", env.worker);
        let shared_ticker = &shared_ticker;
        let shared_report = &shared_report;
        let halted = &halted;
        async move {
            let mut halt = HaltWatch::new();
            'partitions: loop {
                if cancel.is_cancelled() {
                    return Ok::<_, PlanError>(());
                }
                if let Some(state) = halt.check(env, id).await? {
                    *halted.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
                    return Ok(());
                }
                let now = Utc::now();
                let Some(partition) = env.store.claim_partition(id, &me, now, now + lease).await?
                else {
                    if nothing_claimable(env, id, reporter, cancel).await? {
                        return Ok(());
                    }
                    continue;
                };
                loop {
                    let stop =
                        cancel.is_cancelled() || halted.lock().map(|h| h.is_some()).unwrap_or(true);
                    if stop {
                        env.store.release_partition(id, &partition, &me).await?;
                        continue 'partitions;
                    }
                    if let Some(state) = halt.check(env, id).await? {
                        *halted.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
                        env.store.release_partition(id, &partition, &me).await?;
                        return Ok(());
                    }
                    if let Some(t) = shared_ticker.lock().await.as_mut() {
                        tokio::select! {
                            _ = t.tick() => {}
                            () = cancel.cancelled() => continue,
                        }
                    }
                    let until = Utc::now() + lease;
                    if !env
                        .store
                        .renew_partition(id, &partition, &me, until)
                        .await?
                    {
                        // Our lease ran out (we were too slow); another worker has it now.
                        continue 'partitions;
                    }
                    let Some(action) = env
                        .store
                        .claim_in_partition(id, &partition, &me, until)
                        .await?
                    else {
                        env.store.release_partition(id, &partition, &me).await?;
                        continue 'partitions;
                    };
                    // A retry's wait may outlast the lease: it renews the partition as it goes.
                    let renew =
                        || -> futures_util::future::BoxFuture<'_, Result<bool, PlanError>> {
                            Box::pin(async {
                                let until = Utc::now() + lease;
                                Ok(env
                                    .store
                                    .renew_partition(id, &partition, &me, until)
                                    .await?)
                            })
                        };
                    let keep = super::act::Keep {
                        renew: &renew,
                        every: (lease / 3)
                            .to_std()
                            .unwrap_or(std::time::Duration::from_secs(10)),
                    };
                    let done = check_then_act(
                        env,
                        &action,
                        Recheck::Processed(invariant, spec),
                        spec.attempts,
                        Some(shared_ticker),
                        Some(&keep),
                        cancel,
                    )
                    .await?;
                    if done.abandoned {
                        // Nothing to record: the action goes back to pending, the partition
                        // to whoever claims it next (both only if still ours), and the loop's
                        // top sees a cancel.
                        env.store.release_action(id, action.seq, &me).await?;
                        env.store.release_partition(id, &partition, &me).await?;
                        continue 'partitions;
                    }
                    let held = done.finish(env, &action, &me).await?;
                    if held && done.status == ActionStatus::Applied {
                        super::act::note_replayed(env, invariant, &action).await;
                    }
                    if held {
                        reporter.finished_one();
                        shared_report
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .record(done.outcome, &action, done.detail, opts.samples);
                    }
                    reporter.report(false).await?;
                }
            }
        }
    };
    let workers: Vec<_> = (0..opts.concurrency.max(1)).map(worker).collect();
    futures_util::future::try_join_all(workers).await?;
    *report = shared_report
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let halted = halted.into_inner().unwrap_or_else(|e| e.into_inner());
    // The workers stop at a cancel with events still to deliver: this apply was interrupted,
    // as the sequential loop says (the plan is stopped, never applied).
    if halted.is_none() && cancel.is_cancelled() {
        report.stopped = Some("interrupted".into());
    }
    Ok(halted)
}

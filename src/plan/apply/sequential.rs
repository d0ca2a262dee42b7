//! Compensation plans: any action, in `seq` order, one at a time.

use chrono::Utc;

use super::act::{Done, Recheck, check_then_act};
use super::pace::{HaltWatch, nothing_claimable, ticker};
use super::{ApplyReport, Live, Outcome};
use crate::domain::{ActionSpec, ActionStatus, PlanState};
use crate::plan::PlanError;

/// Compensation plans: any action, in `seq` order, one at a time.
pub(super) async fn run_sequential(
    live: &Live<'_>,
    report: &mut ApplyReport,
) -> Result<Option<PlanState>, PlanError> {
    let (env, opts, cancel, reporter) = (live.env, live.opts, live.cancel, &live.reporter);
    let (invariant, lease, id) = (live.invariant, live.lease, live.plan.id);
    let mut halt = HaltWatch::new();
    let mut halted = None;
    let mut ticker = ticker(opts.rate);
    let mut failures = 0u64;
    loop {
        if cancel.is_cancelled() {
            report.stopped = Some("interrupted".into());
            break;
        }
        if let Some(state) = halt.check(env, id).await? {
            halted = Some(state);
            break;
        }
        if let Some(t) = ticker.as_mut() {
            tokio::select! {
                _ = t.tick() => {}
                () = cancel.cancelled() => continue,
            }
        }
        let now = Utc::now();
        let claimed = env
            .store
            .claim_action(id, &env.worker, now, now + lease)
            .await?;
        let Some(action) = claimed else {
            // Nothing claimable: done, or other workers hold the rest (taken over when their
            // lease runs out, if they died).
            if nothing_claimable(env, id, reporter, cancel).await? {
                break;
            }
            continue;
        };
        let done = match &action.spec {
            ActionSpec::Manual { instructions } => Done::new(
                ActionStatus::Manual,
                Outcome::Manual,
                Some(instructions.clone()),
            ),
            // One attempt: no retry to pace.
            _ => {
                check_then_act(
                    env,
                    &action,
                    Recheck::Violation(invariant),
                    1,
                    None,
                    None,
                    cancel,
                )
                .await?
            }
        };
        let held = done.finish(env, &action, &env.worker).await?;
        if !held {
            // Our lease ran out and another worker took the action over; its record stands.
            tracing::warn!(
                plan = id,
                seq = action.seq,
                "lost the claim on an action before recording it"
            );
            continue;
        }
        reporter.finished_one();
        report.record(done.outcome, &action, done.detail, opts.samples);
        if done.outcome == Outcome::Failed {
            failures += 1;
            if failures >= opts.max_failures {
                report.stopped = Some(format!(
                    "{failures} action(s) failed, this apply's limit (max failures {})",
                    opts.max_failures
                ));
                break;
            }
        }
        reporter.report(false).await?;
    }
    Ok(halted)
}

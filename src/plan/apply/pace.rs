//! Pacing an apply: the rate, the operator's pause or cancel, progress reports, and waiting
//! for actions other workers hold.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{ApplyEnv, Progress, Rate};
use crate::domain::{ActionStatus, PlanId, PlanState};
use crate::plan::{PlanError, load};
use crate::store::{PlanRecord, Store};

/// Whether an operator paused, cancelled or rejected the plan (checked at most once a
/// second; `PlanState::halts_apply`). The store hands out no action of such a plan from the
/// moment it is recorded; this is how a worker, getting nothing, learns to stop rather than
/// wait for more.
pub(super) struct HaltWatch {
    last: Instant,
}

impl HaltWatch {
    pub(super) fn new() -> Self {
        Self {
            last: Instant::now(),
        }
    }

    pub(super) async fn check(
        &mut self,
        env: &ApplyEnv<'_>,
        id: PlanId,
    ) -> Result<Option<PlanState>, PlanError> {
        if self.last.elapsed() < Duration::from_secs(1) {
            return Ok(None);
        }
        self.last = Instant::now();
        let state = load(env.store, id).await?.state;
        Ok(state.halts_apply().then_some(state))
    }
}

pub(super) fn ticker(rate: Rate) -> Option<tokio::time::Interval> {
    rate.period().map(|p| {
        // The first action waits one period too: N actions take at least N periods.
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

/// Hands the store's progress counts to the caller's callback, at most four times a second
/// (and once more at the end), from however many workers.
pub(super) struct Reporter<'a> {
    store: &'a dyn Store,
    plan: &'a PlanRecord,
    callback: &'a (dyn Fn(&Progress) + Sync),
    started: Instant,
    last: std::sync::Mutex<Option<Instant>>,
    done_here: std::sync::atomic::AtomicU64,
}

impl<'a> Reporter<'a> {
    pub(super) fn new(
        store: &'a dyn Store,
        plan: &'a PlanRecord,
        callback: &'a (dyn Fn(&Progress) + Sync),
        started: Instant,
    ) -> Self {
        Self {
            store,
            plan,
            callback,
            started,
            last: std::sync::Mutex::new(None),
            done_here: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(super) fn finished_one(&self) {
        self.done_here
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) async fn report(&self, force: bool) -> Result<(), PlanError> {
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if !force && last.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let by_status = self.store.action_progress(self.plan.id).await?;
        (self.callback)(&Progress {
            total: self.plan.action_count,
            by_status,
            done_here: self.done_here.load(std::sync::atomic::Ordering::Relaxed),
            elapsed_secs: self.started.elapsed().as_secs_f64(),
        });
        Ok(())
    }
}

/// Actions nobody has finished yet (pending, or claimed by a worker).
pub(super) async fn open_actions(store: &dyn Store, plan: PlanId) -> Result<u64, PlanError> {
    let left = store.action_progress(plan).await?;
    Ok(left.get(&ActionStatus::Pending).copied().unwrap_or(0)
        + left.get(&ActionStatus::InProgress).copied().unwrap_or(0))
}

/// When nothing is claimable: done if no action is left open, else reports progress and
/// waits a little (other workers hold the rest; a dead one's lease runs out). `true`: done.
pub(super) async fn nothing_claimable(
    env: &ApplyEnv<'_>,
    id: PlanId,
    reporter: &Reporter<'_>,
    cancel: &CancellationToken,
) -> Result<bool, PlanError> {
    if open_actions(env.store, id).await? == 0 {
        return Ok(true);
    }
    reporter.report(false).await?;
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(200)) => {}
        () = cancel.cancelled() => {}
    }
    Ok(false)
}

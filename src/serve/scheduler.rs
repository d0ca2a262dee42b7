//! Runs each scheduled invariant on its cron schedule, one run at a time per invariant.
//!
//! Semantics borrowed from Prometheus rule groups: a run that outlasts its interval is never
//! overlapped by the next one; the ticks that came due meanwhile are skipped and counted
//! (`trueup_invariant_missed_ticks_total`). Each run has a timeout. On shutdown no new run
//! starts; runs in flight get a grace period, then are cancelled and recorded as cancelled.
//! A reload stops the loops of removed and changed invariants and waits until they ended.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::{Actor, Invariant, Schedule};

use crate::runner::Begun;
use crate::runtime::catalog::fingerprint;
use crate::runtime::{Attempt, RunLock, Runtime, run_claimed_tick, run_once};

/// The schedule loops of the current invariants, one task each.
pub struct Scheduler {
    runtime: Runtime,
    stop: CancellationToken,
    loops: BTreeMap<String, Loop>,
    /// Loops told to stop and not yet ended (a run in flight finishes first). Kept here, so
    /// that [`Scheduler::drain`] waits for them even if an `apply` waiting on them was dropped.
    stopping: Vec<JoinHandle<()>>,
}

/// One invariant's schedule loop.
struct Loop {
    /// The definition it runs (see [`crate::runtime::catalog::fingerprint`]).
    fingerprint: String,
    stop: CancellationToken,
    /// `None` for an invariant without a schedule (it runs on request only).
    task: Option<JoinHandle<()>>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

impl Scheduler {
    pub fn new(runtime: Runtime, stop: CancellationToken) -> Self {
        Self {
            runtime,
            stop,
            loops: BTreeMap::new(),
            stopping: Vec::new(),
        }
    }

    /// Makes the running schedule loops match `invariants`: loops of removed or changed
    /// invariants stop, and this waits until they have ended (a run in flight finishes
    /// first), as Prometheus waits for a rule group to stop; then new and changed ones start.
    /// Unchanged ones go on untouched. When it returns, nothing of a removed invariant runs.
    pub async fn apply(&mut self, invariants: &[Arc<Invariant>]) -> Changes {
        let mut changes = Changes::default();
        let wanted: BTreeMap<&str, &Arc<Invariant>> =
            invariants.iter().map(|i| (i.name.as_str(), i)).collect();
        let mut to_start = Vec::new();
        let names: Vec<String> = self.loops.keys().cloned().collect();
        for name in names {
            match wanted.get(name.as_str()) {
                None => {
                    self.stop_loop(&name);
                    changes.removed.push(name);
                }
                Some(inv) if self.loops[&name].fingerprint != fingerprint(inv) => {
                    self.stop_loop(&name);
                    changes.changed.push(name);
                    to_start.push(Arc::clone(inv));
                }
                Some(_) => changes.unchanged.push(name),
            }
        }
        for inv in invariants {
            if !self.loops.contains_key(inv.name.as_str())
                && !changes.changed.iter().any(|c| c == inv.name.as_str())
            {
                changes.added.push(inv.name.to_string());
                to_start.push(Arc::clone(inv));
            }
        }
        self.wait_stopped().await;
        for inv in to_start {
            self.start_loop(inv);
        }
        changes
    }

    fn stop_loop(&mut self, name: &str) {
        if let Some(old) = self.loops.remove(name) {
            old.stop.cancel();
            self.stopping.extend(old.task);
        }
    }

    fn start_loop(&mut self, inv: Arc<Invariant>) {
        self.runtime.metrics.declare(&inv);
        self.runtime.board.declare(&inv);
        let stop = self.stop.child_token();
        let task = inv.schedule.clone().map(|schedule| {
            tokio::spawn(run_on_schedule(
                Arc::clone(&inv),
                schedule,
                self.runtime.clone(),
                stop.clone(),
            ))
        });
        self.loops.insert(
            inv.name.to_string(),
            Loop {
                fingerprint: fingerprint(&inv),
                stop,
                task,
            },
        );
    }

    /// Waits for the loops told to stop. A handle leaves the list only once its task ended.
    async fn wait_stopped(&mut self) {
        while let Some(task) = self.stopping.last_mut() {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!("a schedule loop panicked (a bug in trueup; please report it)");
            }
            self.stopping.pop();
        }
    }

    /// How many invariants have a running schedule loop.
    pub fn scheduled(&self) -> usize {
        self.loops.values().filter(|l| l.task.is_some()).count()
    }

    /// Waits for every loop to end (after `stop` is cancelled).
    pub async fn drain(&mut self) {
        let names: Vec<String> = self.loops.keys().cloned().collect();
        for name in names {
            self.stop_loop(&name);
        }
        self.wait_stopped().await;
    }
}

async fn run_on_schedule(
    invariant: Arc<Invariant>,
    schedule: Schedule,
    runtime: Runtime,
    stop: CancellationToken,
) {
    let mut next = schedule.next_after(Utc::now());
    while let Some(fire_at) = next {
        let wait = (fire_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        // A panic in one tick (a bug) is logged and counted; the schedule goes on.
        let tick = std::panic::AssertUnwindSafe(run_tick(&invariant, fire_at, &runtime))
            .catch_unwind()
            .await;
        let busy = match tick {
            Ok(Ok(Some(attempt))) => matches!(attempt, Attempt::Busy),
            // Another replica claimed this tick, or still runs this invariant.
            Ok(Ok(None)) => false,
            Ok(Err(e)) => {
                tracing::error!(invariant = %invariant.name, "cannot claim the tick: {e}");
                false
            }
            Err(panic) => {
                tracing::error!(
                    invariant = %invariant.name,
                    "a tick panicked (a bug in trueup; please report it): {}",
                    crate::source::panic_message(&*panic)
                );
                runtime.metrics.failed(invariant.name.as_str());
                false
            }
        };
        let (following, skipped) = after_run(&schedule, fire_at, Utc::now());
        // Fire times that passed while the run went on get their outcome in the store: missed.
        if !skipped.is_empty()
            && let Err(e) = runtime
                .store
                .record_missed_ticks(
                    invariant.name.as_str(),
                    &skipped,
                    &runtime.replica,
                    Utc::now(),
                )
                .await
        {
            tracing::error!(invariant = %invariant.name, "cannot record the missed ticks: {e}");
        }
        let mut missed = skipped.len() as u64;
        if busy {
            // A run requested through the API was going: this tick is skipped too.
            missed += 1;
        }
        if missed > 0 {
            tracing::warn!(invariant = %invariant.name, missed, "runs took longer than the schedule allows; skipped ticks");
            runtime.metrics.missed(invariant.name.as_str(), missed);
        }
        next = following;
    }
    tracing::warn!(invariant = %invariant.name, "the schedule has no more fire times; no longer scheduled");
}

/// Claims the tick due at `fire_at` in the store (so that one replica evaluates it), begins
/// its run in the same transaction, runs it while renewing the lease, and marks it finished.
/// `None` when the tick is not ours. The invariant's run lock is taken first: while a run
/// requested through the API goes on, this fire time is recorded as missed, not claimed.
pub async fn run_tick(
    invariant: &Invariant,
    fire_at: DateTime<Utc>,
    runtime: &Runtime,
) -> Result<Option<Attempt>, crate::store::StoreError> {
    let name = invariant.name.as_str();
    let Ok(running) = runtime.board.run_lock(name).try_lock_owned() else {
        runtime
            .store
            .record_missed_ticks(name, &[fire_at], &runtime.replica, Utc::now())
            .await?;
        return Ok(Some(Attempt::Busy));
    };
    let at = Utc::now();
    let Some(run) = runtime
        .store
        .claim_tick_run(
            &invariant.name,
            fire_at,
            &runtime.replica,
            at + lease(runtime),
            at,
        )
        .await?
    else {
        return Ok(None);
    };
    let begun = Begun { id: run, at };
    Ok(Some(
        run_claimed(invariant, fire_at, runtime, Some((begun, running))).await,
    ))
}

fn lease(runtime: &Runtime) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(runtime.lease).unwrap_or(chrono::TimeDelta::seconds(30))
}

/// Runs a tick this replica holds, renewing its lease until the run ends: the run `begun`
/// with the claim, or (a tick taken over) one begun here.
async fn run_claimed(
    invariant: &Invariant,
    fire_at: DateTime<Utc>,
    runtime: &Runtime,
    begun: Option<(Begun, RunLock)>,
) -> Attempt {
    let name = invariant.name.as_str();
    // Ends only when the tick is no longer ours (another replica took it over after our lease
    // ran out: this process stalled): the run stops then, as its result would be refused.
    let renew = async {
        let mut every = tokio::time::interval(runtime.lease / 3);
        every.tick().await;
        loop {
            every.tick().await;
            let until = Utc::now() + lease(runtime);
            match runtime
                .store
                .renew_tick(name, fire_at, &runtime.replica, until)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(invariant = %name, "lost the lease on a tick; stopping its run");
                    return;
                }
                Err(e) => tracing::warn!(invariant = %name, "cannot renew the lease: {e}"),
            }
        }
    };
    let scheduler = Actor::scheduler();
    let tick = crate::store::TickRef {
        fire_at,
        owner: runtime.replica.to_string(),
    };
    // A panic after the run (proposing a plan, publishing it) still finishes the tick below:
    // its result, if any, is committed already.
    let run = async {
        match begun {
            Some((begun, running)) => {
                run_claimed_tick(invariant, runtime, tick, begun, running).await
            }
            None => {
                run_once(
                    invariant,
                    runtime,
                    Some(tick),
                    &scheduler,
                    crate::runtime::RunPass::Declared,
                )
                .await
            }
        }
    };
    let run = std::panic::AssertUnwindSafe(run).catch_unwind();
    let attempt = tokio::select! {
        a = run => a.unwrap_or_else(|panic| {
            let message = format!(
                "the tick panicked (a bug in trueup; please report it): {}",
                crate::source::panic_message(&*panic)
            );
            tracing::error!(invariant = %name, "{message}");
            runtime.metrics.failed(name);
            runtime.board.store_failed(name, &message);
            Attempt::StoreFailed(message)
        }),
        () = renew => {
            runtime.metrics.failed(name);
            return Attempt::StoreFailed(
                "another replica took the tick over: this one had stopped renewing its lease".into(),
            );
        }
    };
    let run_id = match &attempt {
        // A completed run marked its tick finished in the transaction that recorded it.
        Attempt::Ran(o) if o.run.status == crate::domain::RunStatus::Succeeded => return attempt,
        Attempt::Ran(o) => Some(o.run.run_id),
        _ => None,
    };
    if let Err(e) = runtime
        .store
        .finish_tick(name, fire_at, &runtime.replica, run_id)
        .await
    {
        tracing::error!(invariant = %name, "cannot mark the tick finished: {e}");
    }
    attempt
}

/// How often a replica looks for ticks whose lease ran out.
const TAKE_OVER_EVERY: Duration = Duration::from_secs(1);

/// Looks for ticks whose replica stopped renewing its lease, and runs them here (each in
/// turn: the invariant's later fire times are recorded as missed until it ends).
pub async fn take_over_abandoned_ticks(
    catalog: Arc<crate::runtime::catalog::Catalog>,
    runtime: Runtime,
    stop: CancellationToken,
) {
    // Within a second of a lease running out: the invariant's later ticks wait for it.
    let mut every = tokio::time::interval(TAKE_OVER_EVERY.min(runtime.lease / 2));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        loop {
            let now = Utc::now();
            let tick = match runtime
                .store
                .take_over_tick(&runtime.replica, now, now + lease(&runtime))
                .await
            {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("cannot look for abandoned ticks: {e}");
                    break;
                }
            };
            let Some(inv) = catalog.find(&tick.invariant) else {
                // An invariant this replica does not have (configs differ): give it back done.
                let _ = runtime
                    .store
                    .finish_tick(&tick.invariant, tick.fire_at, &runtime.replica, None)
                    .await;
                continue;
            };
            tracing::warn!(invariant = %tick.invariant, fire_at = %tick.fire_at, "taking over a tick from a replica that stopped");
            run_claimed(&inv, tick.fire_at, &runtime, None).await;
        }
    }
}

/// The next fire time after a run that was due at `fired` and ended at `now`, and the fire
/// times that passed while it ran (skipped, never run late).
fn after_run(
    schedule: &Schedule,
    fired: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Vec<DateTime<Utc>>) {
    let mut skipped = Vec::new();
    let mut t = fired;
    loop {
        match schedule.next_after(t) {
            Some(n) if n <= now => {
                skipped.push(n);
                t = n;
            }
            other => return (other, skipped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_run_longer_than_its_interval_skips_and_counts_the_ticks_it_overlapped() {
        let every_10s = Schedule::parse("*/10 * * * * *").unwrap();
        let fired = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let ended = fired + chrono::TimeDelta::seconds(35);
        let (next, skipped) = after_run(&every_10s, fired, ended);
        assert_eq!(
            skipped,
            [10, 20, 30].map(|s| fired + chrono::TimeDelta::seconds(s))
        );
        assert_eq!(next, Some(fired + chrono::TimeDelta::seconds(40)));
    }

    #[test]
    fn a_quick_run_misses_nothing() {
        let every_10s = Schedule::parse("*/10 * * * * *").unwrap();
        let fired = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let (next, skipped) = after_run(&every_10s, fired, fired + chrono::TimeDelta::seconds(2));
        assert_eq!(next, Some(fired + chrono::TimeDelta::seconds(10)));
        assert!(skipped.is_empty());
    }
}

//! Runs each scheduled invariant on its cron schedule, one run at a time per invariant.
//!
//! Semantics borrowed from Prometheus rule groups: a run that outlasts its interval is never
//! overlapped by the next one; the ticks that came due meanwhile are skipped and counted
//! (`trueup_invariant_missed_ticks_total`). Each run has a timeout. On shutdown no new run
//! starts; runs in flight get a grace period, then are cancelled and recorded as cancelled.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::{Invariant, Observation, Schedule, alert_step};
use crate::runner::{self, RunLimits, RunOutcome};
use crate::source::Sources;
use crate::store::RunStatus;
use crate::store::Store;

use super::metrics::Metrics;
use super::state::Board;

/// What every invariant task shares.
#[derive(Clone)]
pub struct Shared {
    pub sources: Sources,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub board: Arc<Board>,
    pub run_timeout: Duration,
    /// Cancelled when runs in flight must stop (end of the shutdown grace period).
    pub cancel_runs: CancellationToken,
    /// Every configured notification channel.
    pub channels: Arc<Vec<String>>,
    /// Wakes the outbox worker when notices are queued.
    pub wake_outbox: Arc<tokio::sync::Notify>,
    /// This process's name among the replicas sharing the store.
    pub replica: Arc<str>,
    /// How long a claimed tick stays ours without renewal; a replica that dies loses its
    /// ticks to the others after this.
    pub lease: Duration,
    /// For proposing compensation plans after runs.
    pub config: Arc<crate::config::Config>,
    /// What applied plans change.
    pub targets: Arc<crate::plan::targets::Targets>,
}

/// The schedule loops of the current invariants, one task each.
pub struct Scheduler {
    shared: Shared,
    stop: CancellationToken,
    running: std::collections::BTreeMap<String, (String, CancellationToken)>,
    tasks: JoinSet<()>,
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
    pub fn new(shared: Shared, stop: CancellationToken) -> Self {
        Self {
            shared,
            stop,
            running: std::collections::BTreeMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Makes the running schedule loops match `invariants`: loops of removed or changed
    /// invariants stop (a run in flight finishes first), new and changed ones start, and
    /// unchanged ones go on untouched.
    pub fn apply(&mut self, invariants: &[Arc<Invariant>]) -> Changes {
        let mut changes = Changes::default();
        let wanted: std::collections::BTreeMap<&str, &Arc<Invariant>> =
            invariants.iter().map(|i| (i.name.as_str(), i)).collect();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            if !wanted.contains_key(name.as_str()) {
                if let Some((_, token)) = self.running.remove(&name) {
                    token.cancel();
                }
                changes.removed.push(name);
            }
        }
        for inv in invariants {
            let name = inv.name.to_string();
            let fp = super::catalog::fingerprint(inv);
            match self.running.get(&name) {
                Some((old, _)) if *old == fp => {
                    changes.unchanged.push(name);
                    continue;
                }
                Some(_) => {
                    if let Some((_, token)) = self.running.remove(&name) {
                        token.cancel();
                    }
                    changes.changed.push(name.clone());
                }
                None => changes.added.push(name.clone()),
            }
            self.shared.metrics.declare(inv);
            self.shared.board.declare(inv);
            let token = self.stop.child_token();
            if let Some(schedule) = inv.schedule.clone() {
                self.tasks.spawn(run_on_schedule(
                    Arc::clone(inv),
                    schedule,
                    self.shared.clone(),
                    token.clone(),
                ));
            }
            self.running.insert(name, (fp, token));
        }
        changes
    }

    pub fn scheduled(&self) -> usize {
        self.tasks.len()
    }

    /// Waits for every loop to end (after `stop` is cancelled).
    pub async fn drain(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn run_on_schedule(
    invariant: Arc<Invariant>,
    schedule: Schedule,
    shared: Shared,
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
        let tick = std::panic::AssertUnwindSafe(run_tick(&invariant, fire_at, &shared))
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
                shared.metrics.failed(invariant.name.as_str());
                false
            }
        };
        let (following, mut missed) = after_run(&schedule, fire_at, Utc::now());
        if busy {
            // A run requested through the API was going: this tick is skipped too.
            missed += 1;
        }
        if missed > 0 {
            tracing::warn!(invariant = %invariant.name, missed, "runs took longer than the schedule allows; skipped ticks");
            shared.metrics.missed(invariant.name.as_str(), missed);
        }
        next = following;
    }
    tracing::warn!(invariant = %invariant.name, "the schedule has no more fire times; no longer scheduled");
}

/// Claims the tick due at `fire_at` in the store (so that one replica evaluates it), runs it
/// while renewing the lease, and marks it finished. `None` when the tick is not ours.
pub async fn run_tick(
    invariant: &Invariant,
    fire_at: DateTime<Utc>,
    shared: &Shared,
) -> Result<Option<Attempt>, crate::store::StoreError> {
    let name = invariant.name.as_str();
    let now = Utc::now();
    let claimed = shared
        .store
        .claim_tick(name, fire_at, &shared.replica, now, now + lease(shared))
        .await?;
    if !claimed {
        return Ok(None);
    }
    Ok(Some(run_claimed(invariant, fire_at, shared).await))
}

fn lease(shared: &Shared) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(shared.lease).unwrap_or(chrono::TimeDelta::seconds(30))
}

/// Runs a tick this replica holds, renewing its lease until the run ends.
async fn run_claimed(invariant: &Invariant, fire_at: DateTime<Utc>, shared: &Shared) -> Attempt {
    let name = invariant.name.as_str();
    let renew = async {
        let mut every = tokio::time::interval(shared.lease / 3);
        every.tick().await;
        loop {
            every.tick().await;
            let until = Utc::now() + lease(shared);
            match shared
                .store
                .renew_tick(name, fire_at, &shared.replica, until)
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::warn!(invariant = %name, "lost the lease on a tick"),
                Err(e) => tracing::warn!(invariant = %name, "cannot renew the lease: {e}"),
            }
        }
    };
    let scheduler = crate::plan::Actor::scheduler();
    let tick = Some(crate::store::TickRef {
        fire_at,
        owner: shared.replica.to_string(),
    });
    // A panic after the run (proposing a plan, publishing it) still finishes the tick below:
    // its result, if any, is committed already.
    let run =
        std::panic::AssertUnwindSafe(run_once(invariant, shared, tick, &scheduler)).catch_unwind();
    let attempt = tokio::select! {
        a = run => a.unwrap_or_else(|panic| {
            let message = format!(
                "the tick panicked (a bug in trueup; please report it): {}",
                crate::source::panic_message(&*panic)
            );
            tracing::error!(invariant = %name, "{message}");
            shared.metrics.failed(name);
            shared.board.store_failed(name, &message);
            Attempt::StoreFailed(message)
        }),
        () = renew => unreachable!("the renewal loop never ends"),
    };
    let run_id = match &attempt {
        Attempt::Ran(o) => Some(o.run_id),
        _ => None,
    };
    if let Err(e) = shared
        .store
        .finish_tick(name, fire_at, &shared.replica, run_id)
        .await
    {
        tracing::error!(invariant = %name, "cannot mark the tick finished: {e}");
    }
    attempt
}

/// Looks for ticks whose replica stopped renewing its lease, and runs them here.
pub async fn take_over_abandoned_ticks(
    catalog: Arc<super::catalog::Catalog>,
    shared: Shared,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(shared.lease / 2);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        loop {
            let now = Utc::now();
            let tick = match shared
                .store
                .take_over_tick(&shared.replica, now, now + lease(&shared))
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
                let _ = shared
                    .store
                    .finish_tick(&tick.invariant, tick.fire_at, &shared.replica, None)
                    .await;
                continue;
            };
            tracing::warn!(invariant = %tick.invariant, fire_at = %tick.fire_at, "taking over a tick from a replica that stopped");
            run_claimed(&inv, tick.fire_at, &shared).await;
        }
    }
}

/// How an attempt to run an invariant went.
pub enum Attempt {
    Ran(Box<RunOutcome>),
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
    shared: &Shared,
    tick: Option<crate::store::TickRef>,
    requested_by: &crate::plan::Actor,
) -> Attempt {
    let lock = shared.board.run_lock(invariant.name.as_str());
    let Ok(_running) = lock.try_lock() else {
        return Attempt::Busy;
    };
    let limits = RunLimits {
        timeout: Some(shared.run_timeout),
        cancel: Some(shared.cancel_runs.clone()),
        tick,
    };
    shared.board.started(invariant.name.as_str());
    match runner::run_invariant_limited(invariant, &shared.sources, shared.store.as_ref(), &limits)
        .await
    {
        Ok(mut outcome) => {
            outcome.proposal = crate::plan::propose_after_run(
                shared.store.as_ref(),
                &shared.config,
                invariant,
                &outcome,
                requested_by,
            )
            .await;
            shared.metrics.record(invariant, &outcome);
            shared.board.finished(invariant.name.as_str(), &outcome);
            // The alert keeps its state when this step fails or panics: it is stepped again
            // after the next run.
            match std::panic::AssertUnwindSafe(advance_alert(invariant, &outcome, shared))
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
            Attempt::Ran(Box::new(outcome))
        }
        Err(e) => {
            // The store itself failed; the run may not even be recorded. Say so loudly.
            tracing::error!(invariant = %invariant.name, "cannot record the run: {e}");
            shared
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
    shared: &Shared,
) -> Result<(), crate::store::StoreError> {
    let name = invariant.name.as_str();
    let current = shared.store.alert(name).await?;
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
    shared.board.alert(name, next.state);
    if next == current && notice.is_none() {
        return Ok(());
    }
    let messages = notice
        .map(|n| crate::notify::messages(invariant, n, &next, outcome, &shared.channels))
        .unwrap_or_default();
    fail::fail_point!("serve.alert", |_| Err(crate::store::StoreError::Database(
        sqlx::Error::Protocol("recording the alert failed (injected)".into())
    )));
    shared
        .store
        .record_alert(name, &next, &messages, now)
        .await?;
    if let Some(n) = notice {
        tracing::info!(invariant = %name, notice = n.as_str(), channels = messages.len(), "alert notice queued");
    }
    if !messages.is_empty() {
        shared.wake_outbox.notify_one();
    }
    Ok(())
}

/// The next fire time after a run that was due at `fired` and ended at `now`, and how many
/// fire times passed while it ran (skipped, never run late).
fn after_run(
    schedule: &Schedule,
    fired: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, u64) {
    let mut missed = 0;
    let mut t = fired;
    loop {
        match schedule.next_after(t) {
            Some(n) if n <= now => {
                missed += 1;
                t = n;
            }
            other => return (other, missed),
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
        let (next, missed) = after_run(&every_10s, fired, ended);
        assert_eq!(missed, 3);
        assert_eq!(next, Some(fired + chrono::TimeDelta::seconds(40)));
    }

    #[test]
    fn a_quick_run_misses_nothing() {
        let every_10s = Schedule::parse("*/10 * * * * *").unwrap();
        let fired = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let (next, missed) = after_run(&every_10s, fired, fired + chrono::TimeDelta::seconds(2));
        assert_eq!(
            (next, missed),
            (Some(fired + chrono::TimeDelta::seconds(10)), 0)
        );
    }
}

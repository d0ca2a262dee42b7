//! Applying an approved plan: one action at a time, at a bounded rate, checkpointed in the
//! store so that a crash (even `kill -9`) loses nothing and repeats nothing.
//!
//! For each action, an apply process
//! 1. claims it in the store under a lease (a dead worker's claim is taken over after it);
//! 2. skips it if it was already applied (same idempotency key applied by another plan, or the
//!    target's marker says so);
//! 3. re-checks the violation against the sources for that key alone, and skips it if it no
//!    longer holds: a manual correction made since the plan was proposed is never clobbered;
//! 4. executes it with its idempotency key (see `targets`) and records the outcome, with its
//!    audit entry, in one store transaction.
//!
//! Several applies of one plan may run at once: each claims different actions. The last one
//! to find nothing left marks the plan applied and verifies it: every applied action's
//! violation is re-checked and the plan records how many the apply closed.

mod act;
mod pace;
mod partitions;
mod report;
mod sequential;
mod verify;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::targets::Targets;
use super::{PlanError, check_applicable, load, staleness, verify_content};
use crate::domain::{
    ActionSpec, ActionStatus, Actor, Invariant, NextStep, PlanId, PlanKind, PlanState,
};
use crate::plan::recheck::still_holds;
use crate::source::Sources;
use crate::store::{PlanRecord, Store, Transition};
use pace::Reporter;
use partitions::run_partitions;
use sequential::run_sequential;
use verify::{remaining_in_window, verify};

pub(crate) use act::applied_before;
pub use report::{ApplyReport, Outcome, Progress, Sample, Verification, finished, summary};

/// How fast actions are executed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Unlimited,
}

impl Rate {
    /// A conservative default: a target is never hit harder unless an operator asks.
    pub const DEFAULT: Rate = Rate::PerSecond(5.0);
    /// 0.05/h (about one action a day), in actions a second.
    const SLOWEST: f64 = 0.05 / 3_600.0;
    const FASTEST: f64 = 1_000_000.0;
    /// Replays re-deliver events a consumer already expects, a little faster by default.
    pub const DEFAULT_REPLAY: Rate = Rate::PerSecond(10.0);

    /// The rate a plan of this kind is applied at unless the operator says otherwise.
    pub fn default_for(kind: PlanKind) -> Rate {
        match kind {
            PlanKind::Compensation => Rate::DEFAULT,
            PlanKind::Replay => Rate::DEFAULT_REPLAY,
        }
    }

    /// `5/s`, `300/m`, `2/h` or `unlimited`.
    pub fn parse(raw: &str) -> Result<Self, RateError> {
        let raw = raw.trim();
        if raw == "unlimited" {
            return Ok(Rate::Unlimited);
        }
        let err = || RateError::Form {
            raw: raw.to_owned(),
        };
        let (n, unit) = raw.split_once('/').ok_or_else(err)?;
        let n: f64 = n.trim().parse().map_err(|_| err())?;
        let per = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        if !(n > 0.0 && n.is_finite()) {
            return Err(err());
        }
        // A period the timer can keep: `1e10/s` would be no period at all (a zero interval
        // panics) and `1e-20/s` one past what a duration holds.
        let r = n / per;
        if !(Self::SLOWEST..=Self::FASTEST).contains(&r) {
            return Err(RateError::OutOfRange {
                raw: raw.to_owned(),
            });
        }
        Ok(Rate::PerSecond(r))
    }

    fn period(self) -> Option<Duration> {
        match self {
            Rate::PerSecond(r) => Some(Duration::from_secs_f64(1.0 / r)),
            Rate::Unlimited => None,
        }
    }
}

/// A rate that is not one: what was given, and the forms (or the range) that are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("rate `{raw}`: write N/s, N/m or N/h (e.g. 5/s), or `unlimited`")]
    Form { raw: String },
    #[error(
        "rate `{raw}`: at least 0.05/h (about one action a day) and at most 1000000/s; for no limit write `unlimited`"
    )]
    OutOfRange { raw: String },
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::PerSecond(r) => write!(f, "{r}/s"),
            Rate::Unlimited => f.write_str("unlimited"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub dry_run: bool,
    pub rate: Rate,
    /// Stop (plan `stopped`) after this many actions failed in this apply.
    pub max_failures: u64,
    /// How long a claimed action stays claimed: a worker that dies holds it this long.
    pub lease: Duration,
    /// Make failed actions pending again first.
    pub retry_failed: bool,
    /// Examples kept per outcome.
    pub samples: usize,
    /// Replays: partitions delivered at once by this apply.
    pub concurrency: usize,
}

pub const DEFAULT_MAX_FAILURES: u64 = 10;
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
pub const DEFAULT_CONCURRENCY: usize = 4;

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            rate: Rate::DEFAULT,
            max_failures: DEFAULT_MAX_FAILURES,
            lease: DEFAULT_LEASE,
            retry_failed: false,
            samples: 5,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// What an apply works with.
pub struct ApplyEnv<'a> {
    pub store: &'a dyn Store,
    pub sources: &'a Sources,
    pub targets: &'a Targets,
    /// The plan's invariant as currently defined (`None`: no longer defined).
    pub invariant: Option<&'a Invariant>,
    pub actor: &'a Actor,
    /// Identifies this apply process's claims.
    pub worker: String,
}

/// Dry run or live apply of plan `id`. `progress` is called as actions finish.
pub async fn apply(
    env: &ApplyEnv<'_>,
    id: PlanId,
    opts: &ApplyOptions,
    cancel: &CancellationToken,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<ApplyReport, PlanError> {
    let started = Instant::now();
    let plan = load(env.store, id).await?;
    let mut report = if opts.dry_run {
        dry_run(env, &plan, opts).await?
    } else {
        live(env, &plan, opts, cancel, progress, started).await?
    };
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn dry_run(
    env: &ApplyEnv<'_>,
    plan: &PlanRecord,
    opts: &ApplyOptions,
) -> Result<ApplyReport, PlanError> {
    // A dry run changes nothing, so reviewers may run it before approving.
    let now = Utc::now();
    if let Some(stale) = staleness(plan, env.invariant, now) {
        return Err(PlanError::stale(plan.id, stale));
    }
    let invariant = env
        .invariant
        .ok_or_else(|| PlanError::refused(plan.id, "its invariant is no longer defined"))?;
    let actions = verify_content(env.store, plan).await?;
    let mut report = ApplyReport::new(plan.id, true);
    report.state = plan.state;
    for action in &actions {
        let (outcome, detail) = if action.status.is_final() {
            (
                Outcome::AlreadyDone,
                Some(action.status.as_str().to_owned()),
            )
        } else if matches!(action.spec, ActionSpec::Manual { .. }) {
            (Outcome::Manual, None)
        } else if let Some(why) =
            applied_before(env, action.plan_id, &action.spec, &action.idempotency_key).await?
        {
            (Outcome::WouldSkipAlreadyApplied, Some(why))
        } else {
            match still_holds(invariant, env.sources, &action.key, &action.fingerprint).await {
                Ok(true) => (Outcome::WouldApply, None),
                Ok(false) => (
                    Outcome::WouldSkipResolved,
                    Some("the violation no longer holds".into()),
                ),
                Err(e) => (Outcome::Failed, Some(e.to_string())),
            }
        };
        report.record(outcome, action, detail, opts.samples);
    }
    // Recorded, so the plan's page shows it after a reload and offers the live apply.
    crate::plan::dry_runs::record_plan(env.store, env.actor, plan, &report, Utc::now()).await?;
    Ok(report)
}

async fn live(
    env: &ApplyEnv<'_>,
    plan: &PlanRecord,
    opts: &ApplyOptions,
    cancel: &CancellationToken,
    progress: &(dyn Fn(&Progress) + Sync),
    started: Instant,
) -> Result<ApplyReport, PlanError> {
    let id = plan.id;
    check_applicable(env.store, plan, env.invariant, Utc::now()).await?;
    let invariant = env
        .invariant
        .ok_or_else(|| PlanError::refused(id, "its invariant is no longer defined"))?;
    if opts.retry_failed {
        env.store.retry_failed_actions(id).await?;
    }
    let started_here = env
        .store
        .transition_plan(
            id,
            &Transition {
                from: &[PlanState::Proposed, PlanState::Stopped, PlanState::Applying],
                to: PlanState::Applying,
                by: &env.actor.name,
                reason: None,
                at: Utc::now(),
                audit_action: "plan.apply.start",
                details: serde_json::json!({
                    "worker": env.worker,
                    "rate": opts.rate.to_string(),
                    "max_failures": opts.max_failures,
                }),
            },
        )
        .await?;
    if !started_here {
        // Another apply finished (or ended) the plan in the meantime.
        let now = load(env.store, id).await?;
        return Err(match staleness(&now, env.invariant, Utc::now()) {
            Some(stale) => PlanError::stale(id, stale),
            None => PlanError::refused(id, format!("it is {}", now.state.as_str())),
        });
    }
    let mut report = ApplyReport::new(id, false);
    let live = Live {
        env,
        invariant,
        plan,
        opts,
        cancel,
        reporter: Reporter::new(env.store, plan, progress, started),
        lease: chrono::TimeDelta::from_std(opts.lease).unwrap_or(chrono::TimeDelta::seconds(60)),
    };
    let worked = if plan.kind == PlanKind::Replay {
        match invariant.replay.as_ref() {
            Some(spec) => run_partitions(&live, spec, &mut report).await,
            None => Err(PlanError::refused(
                id,
                "its invariant no longer has a `replay:` block",
            )),
        }
    } else {
        run_sequential(&live, &mut report).await
    };
    let halted = match worked {
        Ok(halted) => halted,
        Err(e) => {
            // Nobody applies it any more: it must not read `applying` until a lease runs out
            // (best effort: the store may be what failed).
            let why = format!("the apply failed: {e}");
            if let Err(also) = end_applying(env, id, PlanState::Stopped, Some(&why)).await {
                tracing::warn!(plan = id, "cannot mark the plan stopped: {also}");
            }
            return Err(e);
        }
    };
    live.reporter.report(true).await?;
    report.actions_secs = started.elapsed().as_secs_f64();
    if let Some(state) = halted {
        // An operator paused or cancelled it: the state says so already.
        report.stopped = Some(format!("the plan was {}", state.as_str()));
        if state == PlanState::Paused {
            report.next = Some(NextStep::ResumePlan(id));
        }
    } else if let Some(why) = report.stopped.clone() {
        end_applying(env, id, PlanState::Stopped, Some(&why)).await?;
        report.next = Some(after_stop(&env.store.action_progress(id).await?, id));
    } else if let Some((why, next)) = unfinished(&env.store.action_progress(id).await?, id) {
        end_applying(env, id, PlanState::Stopped, Some(&why)).await?;
        report.stopped = Some(why);
        report.next = Some(next);
    } else {
        // Of several applies of one plan, the one that moves it to applied verifies it.
        if end_applying(env, id, PlanState::Applied, None).await? {
            let mut verification = Verification::none();
            let rechecked = async {
                verification = verify(env, invariant, id).await?;
                if plan.kind == PlanKind::Replay {
                    verification.remaining_in_window =
                        Some(remaining_in_window(env, invariant, plan).await?);
                }
                Ok::<_, PlanError>(())
            }
            .await;
            if let Err(e) = rechecked {
                // The plan is applied; a re-check that failed is recorded as failed (with what
                // it re-checked before), so that no surface reads "re-checking" for good, and
                // the apply fails saying why.
                verification.failed = Some(match &e {
                    // (On the plan's own record: without "plan N:".)
                    PlanError::Refused { reason, .. } => reason.clone(),
                    other => other.to_string(),
                });
                verification.at = chrono::Utc::now();
                if let Err(also) = record_verification(env, id, &verification).await {
                    tracing::warn!(plan = id, "cannot record the failed re-check: {also}");
                }
                return Err(e);
            }
            record_verification(env, id, &verification).await?;
            report.verification = Some(verification);
        }
    }
    report.state = load(env.store, id).await?.state;
    Ok(report)
}

/// Records the re-check of an applied plan on it.
async fn record_verification(
    env: &ApplyEnv<'_>,
    id: PlanId,
    verification: &Verification,
) -> Result<(), PlanError> {
    env.store
        .record_verification(
            id,
            &serde_json::to_value(verification).unwrap_or_default(),
            &env.actor.name,
            verification.at,
        )
        .await?;
    Ok(())
}

/// One live apply of a plan: what its loops (sequential or by partition) work with.
struct Live<'a> {
    env: &'a ApplyEnv<'a>,
    invariant: &'a Invariant,
    plan: &'a PlanRecord,
    opts: &'a ApplyOptions,
    cancel: &'a CancellationToken,
    reporter: Reporter<'a>,
    /// How long a claim holds without renewal.
    lease: chrono::TimeDelta,
}

/// Moves a plan this apply worked on from applying to `to` (stopped, saying why, or applied),
/// with its audit entry; `false` if another apply moved it first.
async fn end_applying(
    env: &ApplyEnv<'_>,
    id: PlanId,
    to: PlanState,
    why: Option<&str>,
) -> Result<bool, PlanError> {
    // Applied also from stopped: another apply of the plan stopped (interrupted) while this
    // one finished every action; nothing failed, parked or open is left (`unfinished`).
    let from: &[PlanState] = if to == PlanState::Applied {
        &[PlanState::Applying, PlanState::Stopped]
    } else {
        &[PlanState::Applying]
    };
    let moved = env
        .store
        .transition_plan(
            id,
            &Transition {
                from,
                to,
                by: &env.actor.name,
                reason: why,
                at: Utc::now(),
                audit_action: if to == PlanState::Applied {
                    "plan.apply.finish"
                } else {
                    "plan.apply.stop"
                },
                details: serde_json::json!({ "worker": env.worker }),
            },
        )
        .await?;
    Ok(moved)
}

/// Actions failed, parked or still open: why the plan stops short of applied (the stored
/// reason, read on every surface, so it names no command), and what to do about it. Only a
/// plan with every action final is applied: one whose apply ended with actions pending (a
/// worker that gave up without saying why) is stopped, never taken for done.
fn unfinished(progress: &BTreeMap<ActionStatus, u64>, id: PlanId) -> Option<(String, NextStep)> {
    let count = |s: ActionStatus| progress.get(&s).copied().unwrap_or(0);
    let (failed, parked) = (count(ActionStatus::Failed), count(ActionStatus::Parked));
    let open = count(ActionStatus::Pending) + count(ActionStatus::InProgress);
    let mut parts = Vec::new();
    if parked > 0 {
        parts.push(format!("{parked} event(s) parked"));
    }
    if failed > 0 {
        parts.push(format!("{failed} action(s) failed"));
    }
    if open > 0 {
        parts.push(format!("{open} action(s) not applied yet"));
    }
    (!parts.is_empty()).then(|| (parts.join(" and "), after_stop(progress, id)))
}

/// What to do about a plan an apply left stopped: retry what failed or parked, or, when
/// nothing did (it was interrupted), apply it again.
pub fn after_stop(progress: &BTreeMap<ActionStatus, u64>, id: PlanId) -> NextStep {
    let stuck = [ActionStatus::Failed, ActionStatus::Parked]
        .iter()
        .any(|s| progress.get(s).is_some_and(|n| *n > 0));
    if stuck {
        NextStep::RetryFailed(id)
    } else {
        NextStep::ContinueApply(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_per_second_minute_and_hour() {
        assert_eq!(Rate::parse("5/s"), Ok(Rate::PerSecond(5.0)));
        assert_eq!(Rate::parse("300/m"), Ok(Rate::PerSecond(5.0)));
        assert_eq!(Rate::parse("unlimited"), Ok(Rate::Unlimited));
        assert!(Rate::parse("5").is_err());
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("-1/s").is_err());
        // Rates a timer cannot keep are refused, not a panic when the apply starts.
        for extreme in ["1e10/s", "1e-20/s", "0.01/h"] {
            assert!(
                matches!(Rate::parse(extreme), Err(RateError::OutOfRange { .. })),
                "{extreme}"
            );
        }
        assert_eq!(Rate::parse("1000000/s"), Ok(Rate::PerSecond(1_000_000.0)));
        assert!(Rate::parse("0.05/h").is_ok());
        assert_eq!(
            Rate::parse("50/s").unwrap().period(),
            Some(Duration::from_millis(20))
        );
    }
}

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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::targets::{Executed, Targets};
use super::{PlanError, check_applicable, load, staleness, verify_content};
use crate::domain::Actor;
use crate::domain::{ActionSpec, Invariant};
use crate::domain::{ActionStatus, PlanId, PlanKind, PlanState};
use crate::engine::{Collect, KeyFilter, evaluate_keys};
use crate::source::Sources;
use crate::store::{ActionRecord, Store, Transition};

/// How fast actions are executed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Unlimited,
}

impl Rate {
    /// A conservative default: a target is never hit harder unless an operator asks.
    pub const DEFAULT: Rate = Rate::PerSecond(5.0);
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
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw == "unlimited" {
            return Ok(Rate::Unlimited);
        }
        let err = || format!("rate `{raw}`: write N/s, N/m or N/h (e.g. 5/s), or `unlimited`");
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
        Ok(Rate::PerSecond(n / per))
    }

    fn period(self) -> Option<Duration> {
        match self {
            Rate::PerSecond(r) => Some(Duration::from_secs_f64(1.0 / r)),
            Rate::Unlimited => None,
        }
    }
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

/// What happened (or, in a dry run, would happen) to an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    /// The violation no longer holds.
    SkippedResolved,
    /// Applied before (another plan, or an earlier attempt).
    SkippedAlreadyApplied,
    Failed,
    /// A step for a person.
    Manual,
    /// A replayed event the downstream had processed already.
    SkippedProcessed,
    /// A replayed event that failed every attempt; the replay went on.
    Parked,
    WouldApply,
    WouldSkipResolved,
    WouldSkipAlreadyApplied,
    /// Finished by an earlier apply of this plan.
    AlreadyDone,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::SkippedResolved => "skipped_resolved",
            Outcome::SkippedAlreadyApplied => "skipped_already_applied",
            Outcome::Failed => "failed",
            Outcome::Manual => "manual",
            Outcome::SkippedProcessed => "skipped_processed",
            Outcome::Parked => "parked",
            Outcome::WouldApply => "would_apply",
            Outcome::WouldSkipResolved => "would_skip_resolved",
            Outcome::WouldSkipAlreadyApplied => "would_skip_already_applied",
            Outcome::AlreadyDone => "already_done",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub seq: i64,
    pub key: serde_json::Value,
    pub action: String,
    pub detail: Option<String>,
}

/// Progress of a plan's actions, as the store counts them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Progress {
    pub total: u64,
    pub by_status: BTreeMap<ActionStatus, u64>,
    /// Actions this process finished.
    pub done_here: u64,
    pub elapsed_secs: f64,
}

impl Progress {
    pub fn finished(&self) -> u64 {
        finished(&self.by_status)
    }
}

/// How many actions are worked to an end, from a plan's actions by status.
pub fn finished(by_status: &BTreeMap<ActionStatus, u64>) -> u64 {
    by_status
        .iter()
        .filter(|(s, _)| s.is_final())
        .map(|(_, n)| n)
        .sum()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    /// Applied actions whose violation was re-checked.
    pub checked: u64,
    /// Of those, violations that no longer hold.
    pub closed: u64,
    pub still_open: u64,
    pub errors: u64,
    /// Replays: `missing` violations still open in the window after a fresh run (0 when the
    /// gap is closed).
    pub remaining_in_window: Option<u64>,
    pub at: chrono::DateTime<Utc>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub plan: PlanId,
    pub dry_run: bool,
    pub counts: BTreeMap<Outcome, u64>,
    pub samples: BTreeMap<Outcome, Vec<Sample>>,
    /// Why this apply stopped before the plan was done, if it did.
    pub stopped: Option<String>,
    /// The plan's state afterwards.
    pub state: PlanState,
    pub verification: Option<Verification>,
    /// Until this apply's last action was recorded (before any verification).
    pub actions_secs: f64,
    pub elapsed_secs: f64,
}

impl ApplyReport {
    fn new(plan: PlanId, dry_run: bool) -> Self {
        Self {
            plan,
            dry_run,
            counts: BTreeMap::new(),
            samples: BTreeMap::new(),
            stopped: None,
            state: PlanState::Proposed,
            verification: None,
            actions_secs: 0.0,
            elapsed_secs: 0.0,
        }
    }

    fn record(
        &mut self,
        outcome: Outcome,
        action: &ActionRecord,
        detail: Option<String>,
        keep: usize,
    ) {
        *self.counts.entry(outcome).or_default() += 1;
        let samples = self.samples.entry(outcome).or_default();
        if samples.len() < keep {
            samples.push(Sample {
                seq: action.seq,
                key: action.key.clone(),
                action: summary(&action.spec),
                detail,
            });
        }
    }
}

/// One line describing an action.
pub fn summary(spec: &ActionSpec) -> String {
    match spec {
        ActionSpec::Sql {
            target,
            statement,
            params,
        } => {
            let values: Vec<String> = params.iter().map(ToString::to_string).collect();
            let one_line = statement.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("sql {target}: {one_line} -- [{}]", values.join(", "))
        }
        ActionSpec::Http {
            target,
            method,
            url,
            ..
        } => format!("http {target}: {method} {url}"),
        ActionSpec::Manual { instructions } => format!("manual: {instructions}"),
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

/// Whether the violation with this `fingerprint` still holds, evaluated now for its `key`
/// only.
pub async fn still_holds(
    invariant: &Invariant,
    sources: &Sources,
    key: &serde_json::Value,
    fingerprint: &str,
) -> Result<bool, String> {
    let filter: Vec<KeyFilter> = invariant
        .key()
        .iter()
        .cloned()
        .zip(super::key_values(key))
        .collect();
    let mut found = Collect::default();
    evaluate_keys(invariant, sources, Utc::now(), &filter, &mut found)
        .await
        .map_err(|e| format!("re-check failed: {e}"))?;
    Ok(found
        .0
        .iter()
        .any(|v| v.fingerprint(&invariant.name).as_str() == fingerprint))
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
    plan: &crate::store::PlanRecord,
    opts: &ApplyOptions,
) -> Result<ApplyReport, PlanError> {
    // A dry run changes nothing, so reviewers may run it before approving.
    let now = Utc::now();
    if let Some(why) = staleness(plan, env.invariant, now) {
        return Err(PlanError::refused(plan.id, why));
    }
    let invariant = env.invariant.ok_or(PlanError::NotFound(plan.id))?;
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
                Err(e) => (Outcome::Failed, Some(e)),
            }
        };
        report.record(outcome, action, detail, opts.samples);
    }
    Ok(report)
}

/// Whether an action with this idempotency key was applied before, and by what (another
/// plan, or the target's marker table); `plan` is the action's own plan.
pub(crate) async fn applied_before(
    env: &ApplyEnv<'_>,
    plan: PlanId,
    spec: &ActionSpec,
    idempotency_key: &str,
) -> Result<Option<String>, PlanError> {
    if env.store.applied_elsewhere(idempotency_key, plan).await? {
        return Ok(Some(
            "applied by another plan (same idempotency key)".into(),
        ));
    }
    match env.targets.already_applied(spec, idempotency_key).await {
        Ok(true) => Ok(Some(
            "the target's marker table records it as applied".into(),
        )),
        Ok(false) => Ok(None),
        Err(e) => Err(PlanError::Target {
            target: spec.target().unwrap_or("?").to_owned(),
            message: e,
        }),
    }
}

async fn live(
    env: &ApplyEnv<'_>,
    plan: &crate::store::PlanRecord,
    opts: &ApplyOptions,
    cancel: &CancellationToken,
    progress: &(dyn Fn(&Progress) + Sync),
    started: Instant,
) -> Result<ApplyReport, PlanError> {
    let id = plan.id;
    check_applicable(env.store, plan, env.invariant, Utc::now()).await?;
    let invariant = env.invariant.ok_or(PlanError::NotFound(id))?;
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
        return Err(PlanError::refused(
            id,
            staleness(&now, env.invariant, Utc::now())
                .unwrap_or_else(|| format!("it is {}", now.state.as_str())),
        ));
    }
    let mut report = ApplyReport::new(id, false);
    let halted = if plan.kind == PlanKind::Replay {
        let spec = invariant.replay.as_ref().ok_or_else(|| {
            PlanError::refused(id, "its invariant no longer has a `replay:` block")
        })?;
        run_partitions(
            env,
            invariant,
            spec,
            plan,
            opts,
            cancel,
            progress,
            started,
            &mut report,
        )
        .await?
    } else {
        run_sequential(
            env,
            invariant,
            plan,
            opts,
            cancel,
            progress,
            started,
            &mut report,
        )
        .await?
    };
    report.actions_secs = started.elapsed().as_secs_f64();
    if let Some(state) = halted {
        // An operator paused or cancelled it: the state says so already.
        report.stopped = Some(format!("the plan was {}", state.as_str()));
    } else if let Some(why) = &report.stopped {
        env.store
            .transition_plan(
                id,
                &Transition {
                    from: &[PlanState::Applying],
                    to: PlanState::Stopped,
                    by: &env.actor.name,
                    reason: Some(why),
                    at: Utc::now(),
                    audit_action: "plan.apply.stop",
                    details: serde_json::json!({ "worker": env.worker }),
                },
            )
            .await?;
    } else if let Some(why) = unfinished(&env.store.action_progress(id).await?, id) {
        env.store
            .transition_plan(
                id,
                &Transition {
                    from: &[PlanState::Applying],
                    to: PlanState::Stopped,
                    by: &env.actor.name,
                    reason: Some(&why),
                    at: Utc::now(),
                    audit_action: "plan.apply.stop",
                    details: serde_json::json!({ "worker": env.worker }),
                },
            )
            .await?;
        report.stopped = Some(why);
    } else {
        let finished_it = env
            .store
            .transition_plan(
                id,
                &Transition {
                    from: &[PlanState::Applying],
                    to: PlanState::Applied,
                    by: &env.actor.name,
                    reason: None,
                    at: Utc::now(),
                    audit_action: "plan.apply.finish",
                    details: serde_json::json!({ "worker": env.worker }),
                },
            )
            .await?;
        if finished_it {
            let mut verification = verify(env, invariant, id).await?;
            if plan.kind == PlanKind::Replay {
                verification.remaining_in_window =
                    Some(remaining_in_window(env, invariant, plan).await?);
            }
            env.store
                .record_verification(
                    id,
                    &serde_json::to_value(&verification).unwrap_or_default(),
                    &env.actor.name,
                    verification.at,
                )
                .await?;
            report.verification = Some(verification);
        }
    }
    report.state = load(env.store, id).await?.state;
    Ok(report)
}

/// Actions failed or parked: why the plan stops short of applied.
fn unfinished(progress: &BTreeMap<ActionStatus, u64>, id: PlanId) -> Option<String> {
    let failed = progress.get(&ActionStatus::Failed).copied().unwrap_or(0);
    let parked = progress.get(&ActionStatus::Parked).copied().unwrap_or(0);
    match (failed, parked) {
        (0, 0) => None,
        (f, 0) => Some(format!(
            "{f} action(s) failed; fix the cause and run `trueup apply {id} --retry-failed`"
        )),
        (f, p) => Some(format!(
            "{p} event(s) parked and {f} action(s) failed; see `trueup plan show {id}`, fix the cause and run `trueup apply {id} --retry-failed`"
        )),
    }
}

/// Whether an operator paused or cancelled the plan (checked at most once a second).
struct HaltWatch {
    last: Instant,
}

impl HaltWatch {
    fn new() -> Self {
        Self {
            last: Instant::now(),
        }
    }

    async fn check(
        &mut self,
        env: &ApplyEnv<'_>,
        id: PlanId,
    ) -> Result<Option<PlanState>, PlanError> {
        if self.last.elapsed() < Duration::from_secs(1) {
            return Ok(None);
        }
        self.last = Instant::now();
        let state = load(env.store, id).await?.state;
        Ok(matches!(state, PlanState::Paused | PlanState::Cancelled).then_some(state))
    }
}

fn ticker(rate: Rate) -> Option<tokio::time::Interval> {
    rate.period().map(|p| {
        // The first action waits one period too: N actions take at least N periods.
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

/// Hands the store's progress counts to the caller's callback, at most four times a second
/// (and once more at the end), from however many workers.
struct Reporter<'a> {
    store: &'a dyn Store,
    plan: &'a crate::store::PlanRecord,
    callback: &'a (dyn Fn(&Progress) + Sync),
    started: Instant,
    last: std::sync::Mutex<Option<Instant>>,
    done_here: std::sync::atomic::AtomicU64,
}

impl<'a> Reporter<'a> {
    fn new(
        store: &'a dyn Store,
        plan: &'a crate::store::PlanRecord,
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

    fn finished_one(&self) {
        self.done_here
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn report(&self, force: bool) -> Result<(), PlanError> {
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
async fn open_actions(store: &dyn Store, plan: PlanId) -> Result<u64, PlanError> {
    let left = store.action_progress(plan).await?;
    Ok(left.get(&ActionStatus::Pending).copied().unwrap_or(0)
        + left.get(&ActionStatus::InProgress).copied().unwrap_or(0))
}

/// Compensation plans: any action, in `seq` order, one at a time.
#[allow(clippy::too_many_arguments)]
async fn run_sequential(
    env: &ApplyEnv<'_>,
    invariant: &Invariant,
    plan: &crate::store::PlanRecord,
    opts: &ApplyOptions,
    cancel: &CancellationToken,
    progress: &(dyn Fn(&Progress) + Sync),
    started: Instant,
    report: &mut ApplyReport,
) -> Result<Option<PlanState>, PlanError> {
    let id = plan.id;
    let mut halt = HaltWatch::new();
    let mut halted = None;
    let mut ticker = ticker(opts.rate);
    let lease = chrono::TimeDelta::from_std(opts.lease).unwrap_or(chrono::TimeDelta::seconds(60));
    let mut failures = 0u64;
    let reporter = Reporter::new(env.store, plan, progress, started);
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
            if open_actions(env.store, id).await? == 0 {
                break;
            }
            reporter.report(false).await?;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = cancel.cancelled() => {}
            }
            continue;
        };
        let done = match &action.spec {
            ActionSpec::Manual { instructions } => Done::new(
                ActionStatus::Manual,
                Outcome::Manual,
                Some(instructions.clone()),
            ),
            _ => check_then_act(env, &action, Recheck::Violation(invariant), 1, cancel).await?,
        };
        let held = env
            .store
            .finish_action(
                id,
                action.seq,
                &env.worker,
                &env.actor.name,
                done.status,
                &done.record(&action, &env.worker),
                Utc::now(),
            )
            .await?;
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
                    "{failures} action(s) failed (--max-failures {})",
                    opts.max_failures
                ));
                break;
            }
        }
        reporter.report(false).await?;
    }
    reporter.report(true).await?;
    Ok(halted)
}

/// What became of one action in a live apply.
struct Done {
    status: ActionStatus,
    outcome: Outcome,
    detail: Option<String>,
    /// What the target reported (rows affected, HTTP status).
    target_said: Option<serde_json::Value>,
}

impl Done {
    fn new(status: ActionStatus, outcome: Outcome, detail: Option<String>) -> Self {
        Self {
            status,
            outcome,
            detail,
            target_said: None,
        }
    }

    fn failed(why: String) -> Self {
        Self::new(ActionStatus::Failed, Outcome::Failed, Some(why))
    }

    /// The outcome as recorded with the action and in the audit log.
    fn record(&self, action: &ActionRecord, worker: &str) -> serde_json::Value {
        let mut record = serde_json::json!({
            "result": self.outcome.as_str(),
            "detail": self.detail,
            "attempt": action.attempts,
            "worker": worker,
        });
        if let (Some(obj), Some(serde_json::Value::Object(said))) =
            (record.as_object_mut(), &self.target_said)
        {
            obj.extend(said.clone());
        }
        record
    }
}

/// How an action finds that its work is done already downstream.
enum Recheck<'a> {
    /// The violation no longer holds (compensations).
    Violation(&'a Invariant),
    /// The downstream processed the event (replays): the processed lookup, then the violation.
    Processed(&'a Invariant, &'a crate::domain::ReplaySpec),
}

impl Recheck<'_> {
    async fn done_already(
        &self,
        sources: &Sources,
        action: &ActionRecord,
    ) -> Result<Option<Done>, String> {
        Ok(match self {
            Recheck::Violation(invariant) => {
                (!still_holds(invariant, sources, &action.key, &action.fingerprint).await?).then(|| {
                    Done::new(
                        ActionStatus::Skipped,
                        Outcome::SkippedResolved,
                        Some("the violation no longer holds (corrected since the plan was proposed); not applied".into()),
                    )
                })
            }
            Recheck::Processed(invariant, spec) => super::replay::already_processed(
                invariant,
                spec,
                sources,
                &action.key,
                &action.fingerprint,
            )
            .await?
            .map(|why| Done::new(ActionStatus::Skipped, Outcome::SkippedProcessed, Some(why))),
        })
    }
}

/// Check, then act: skip the action if it was applied before or its work is done already,
/// else execute it. Up to `attempts` tries with a growing pause; after the last failure the
/// action is failed (one attempt) or parked (replays, which go on without it).
async fn check_then_act(
    env: &ApplyEnv<'_>,
    action: &ActionRecord,
    recheck: Recheck<'_>,
    attempts: u32,
    cancel: &CancellationToken,
) -> Result<Done, PlanError> {
    let mut last_error = String::new();
    for attempt in 1..=attempts.max(1) {
        if attempt > 1 {
            // Back off: 200 ms, 400 ms, ... at most 5 s between attempts.
            let wait = Duration::from_millis(200 * (1 << (attempt - 2).min(5)))
                .min(Duration::from_secs(5));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => {}
            }
        }
        match applied_before(env, action.plan_id, &action.spec, &action.idempotency_key).await {
            Ok(Some(why)) => {
                return Ok(Done::new(
                    ActionStatus::Skipped,
                    Outcome::SkippedAlreadyApplied,
                    Some(why),
                ));
            }
            Ok(None) => {}
            Err(PlanError::Target { target, message }) => {
                last_error = format!("target `{target}`: {message}");
                continue;
            }
            Err(e) => return Err(e),
        }
        match recheck.done_already(env.sources, action).await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            Err(e) => {
                last_error = e;
                continue;
            }
        }
        match env
            .targets
            .execute(
                &action.spec,
                &action.idempotency_key,
                action.plan_id,
                action.seq,
            )
            .await
        {
            Executed::Failed(e) => last_error = e,
            done => return Ok(Done::from(done)),
        }
    }
    Ok(if attempts <= 1 {
        Done::failed(last_error)
    } else {
        Done::new(
            ActionStatus::Parked,
            Outcome::Parked,
            Some(format!("failed {attempts} time(s); last: {last_error}")),
        )
    })
}

impl From<Executed> for Done {
    fn from(executed: Executed) -> Self {
        match executed {
            Executed::Applied(said) => Done {
                target_said: Some(said),
                ..Done::new(ActionStatus::Applied, Outcome::Applied, None)
            },
            Executed::AlreadyApplied => Done::new(
                ActionStatus::Skipped,
                Outcome::SkippedAlreadyApplied,
                Some("the target's marker table records it as applied".into()),
            ),
            Executed::Failed(e) => Done::failed(e),
        }
    }
}

/// Re-checks the violation of every applied action and records how many the apply closed.
async fn verify(
    env: &ApplyEnv<'_>,
    invariant: &Invariant,
    id: PlanId,
) -> Result<Verification, PlanError> {
    let mut v = Verification {
        checked: 0,
        closed: 0,
        still_open: 0,
        errors: 0,
        remaining_in_window: None,
        at: Utc::now(),
    };
    let actions = super::all_actions(env.store, id).await?;
    for action in actions.iter().filter(|a| a.status == ActionStatus::Applied) {
        v.checked += 1;
        match still_holds(invariant, env.sources, &action.key, &action.fingerprint).await {
            Ok(false) => v.closed += 1,
            Ok(true) => v.still_open += 1,
            Err(_) => v.errors += 1,
        }
    }
    v.at = Utc::now();
    Ok(v)
}

/// After a replay: evaluates the invariant again (a normal run, recorded in the ledger) and
/// counts the `missing` violations still open in the replay's window.
async fn remaining_in_window(
    env: &ApplyEnv<'_>,
    invariant: &Invariant,
    plan: &crate::store::PlanRecord,
) -> Result<u64, PlanError> {
    let outcome = crate::runner::run_invariant(invariant, env.sources, env.store).await?;
    if let Some(e) = outcome.error {
        return Err(PlanError::refused(
            plan.id,
            format!("the replay finished but re-checking its window failed: {e}"),
        ));
    }
    let bound = |k: &str| {
        plan.meta
            .get(k)
            .and_then(|v| serde_json::from_value::<chrono::DateTime<Utc>>(v.clone()).ok())
    };
    let times = env
        .store
        .event_times(&crate::store::ViolationFilter {
            invariants: vec![invariant.name.to_string()],
            status: crate::store::StatusFilter::Active,
            kind: Some(crate::domain::ViolationKind::Missing),
            event_from: bound("from"),
            event_until: bound("to"),
            ..crate::store::ViolationFilter::default()
        })
        .await?;
    Ok(times.len() as u64)
}

/// Replay plans: each worker leases a partition and delivers its events in order; up to
/// `opts.concurrency` partitions at once; every delivery waits for the shared rate.
#[allow(clippy::too_many_arguments)]
async fn run_partitions(
    env: &ApplyEnv<'_>,
    invariant: &Invariant,
    spec: &crate::domain::ReplaySpec,
    plan: &crate::store::PlanRecord,
    opts: &ApplyOptions,
    cancel: &CancellationToken,
    progress: &(dyn Fn(&Progress) + Sync),
    started: Instant,
    report: &mut ApplyReport,
) -> Result<Option<PlanState>, PlanError> {
    let id = plan.id;
    let shared_ticker = tokio::sync::Mutex::new(ticker(opts.rate));
    let shared_report =
        std::sync::Mutex::new(std::mem::replace(report, ApplyReport::new(id, false)));
    let halted = std::sync::Mutex::new(None::<PlanState>);
    let reporter = Reporter::new(env.store, plan, progress, started);
    let lease = chrono::TimeDelta::from_std(opts.lease).unwrap_or(chrono::TimeDelta::seconds(60));
    let worker = |n: usize| {
        let me = format!("{}#{n}", env.worker);
        let shared_ticker = &shared_ticker;
        let shared_report = &shared_report;
        let halted = &halted;
        let reporter = &reporter;
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
                    if open_actions(env.store, id).await? == 0 {
                        return Ok(());
                    }
                    reporter.report(false).await?;
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = cancel.cancelled() => {}
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
                    let done = check_then_act(
                        env,
                        &action,
                        Recheck::Processed(invariant, spec),
                        spec.attempts,
                        cancel,
                    )
                    .await?;
                    let held = env
                        .store
                        .finish_action(
                            id,
                            action.seq,
                            &me,
                            &env.actor.name,
                            done.status,
                            &done.record(&action, &me),
                            Utc::now(),
                        )
                        .await?;
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
    reporter.report(true).await?;
    *report = shared_report
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let halted = halted.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(halted)
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
        assert_eq!(
            Rate::parse("50/s").unwrap().period(),
            Some(Duration::from_millis(20))
        );
    }
}

//! One action, checked then acted on: skipped if it was applied before or its work is done
//! already, else executed with its idempotency key; retried and parked as its plan says.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ApplyEnv, Outcome};
use crate::domain::{ActionSpec, ActionStatus, Invariant, PlanId, ReplaySpec};
use crate::plan::PlanError;
use crate::plan::recheck::{RecheckError, already_processed, still_holds};
use crate::plan::targets::{AppliedMark, Executed};
use crate::source::Sources;
use crate::store::ActionRecord;

/// Whether an action with this idempotency key was applied before, and by what (another
/// plan, or the target's marker table); `plan` is the action's own plan.
pub(crate) async fn applied_before(
    env: &ApplyEnv<'_>,
    plan: PlanId,
    spec: &ActionSpec,
    idempotency_key: &str,
) -> Result<Option<String>, PlanError> {
    Ok(applied_mark(env, plan, spec, idempotency_key)
        .await?
        .map(|m| m.why))
}

/// [`applied_before`], with the target's word on which action applied it where it keeps one.
async fn applied_mark(
    env: &ApplyEnv<'_>,
    plan: PlanId,
    spec: &ActionSpec,
    idempotency_key: &str,
) -> Result<Option<AppliedMark>, PlanError> {
    if env.store.applied_elsewhere(idempotency_key, plan).await? {
        return Ok(Some(AppliedMark {
            why: "applied by another plan (same idempotency key)".into(),
            by: None,
        }));
    }
    env.targets
        .already_applied(spec, idempotency_key)
        .await
        .map_err(|e| PlanError::Target {
            target: spec.target().unwrap_or("?").to_owned(),
            message: e.to_string(),
        })
}

/// What became of one action in a live apply.
pub(super) struct Done {
    pub(super) status: ActionStatus,
    pub(super) outcome: Outcome,
    pub(super) detail: Option<String>,
    /// What the target reported (rows affected, HTTP status).
    target_said: Option<serde_json::Value>,
    /// Set when no attempt may be made or recorded any more: the claim was taken over while a
    /// retry waited, or the apply was interrupted then. The caller records nothing (the action
    /// stays open for whoever holds it, or the next apply).
    pub(super) abandoned: bool,
}

impl Done {
    pub(super) fn new(status: ActionStatus, outcome: Outcome, detail: Option<String>) -> Self {
        Self {
            status,
            outcome,
            detail,
            target_said: None,
            abandoned: false,
        }
    }

    fn abandoned(why: &str) -> Self {
        Self {
            abandoned: true,
            ..Self::failed(why.to_owned())
        }
    }

    fn failed(why: String) -> Self {
        Self::new(ActionStatus::Failed, Outcome::Failed, Some(why))
    }

    /// Records the outcome of `action`, which `worker` claimed, with its audit entry.
    /// `false`: the claim's lease ran out and another worker took the action over; its
    /// record stands.
    pub(super) async fn finish(
        &self,
        env: &ApplyEnv<'_>,
        action: &ActionRecord,
        worker: &str,
    ) -> Result<bool, PlanError> {
        let held = env
            .store
            .finish_action(
                action.plan_id,
                action.seq,
                worker,
                &env.actor.name,
                self.status,
                &self.record(action, worker),
                chrono::Utc::now(),
            )
            .await?;
        Ok(held)
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

/// A replay action applied: when its invariant reads one of trueup's event logs on the left,
/// the events with its key are `replayed`. The action's record stands whatever happens
/// here; an outcome that cannot be written is left to the next run (which finds the event
/// processed).
pub(super) async fn note_replayed(
    env: &ApplyEnv<'_>,
    invariant: &Invariant,
    action: &ActionRecord,
) {
    let crate::domain::InvariantSpec::Reconcile(spec) = &invariant.spec else {
        return;
    };
    let Some(log) = spec.left.source.log() else {
        return;
    };
    // The replayed record carries the event's key downstream.
    let target = crate::domain::record_id_of_key(&action.key);
    let marked = env
        .store
        .mark_replayed(
            log,
            invariant.name.as_str(),
            &action.key.to_string(),
            (action.plan_id, action.seq),
            Some(&target),
            chrono::Utc::now(),
        )
        .await;
    if let Err(e) = marked {
        tracing::warn!(invariant = %invariant.name, log, plan = action.plan_id, action = action.seq, "could not mark the replayed event: {e}");
    }
}

/// How an action finds that its work is done already downstream.
pub(super) enum Recheck<'a> {
    /// The violation no longer holds (compensations).
    Violation(&'a Invariant),
    /// The downstream processed the event (replays): the processed lookup, then the violation.
    Processed(&'a Invariant, &'a ReplaySpec),
}

impl Recheck<'_> {
    async fn done_already(
        &self,
        sources: &Sources,
        action: &ActionRecord,
    ) -> Result<Option<Done>, RecheckError> {
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
            Recheck::Processed(invariant, spec) => already_processed(
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

/// The rate an apply keeps (no ticker: unlimited), shared by its workers.
pub(super) type Pace = tokio::sync::Mutex<Option<tokio::time::Interval>>;

/// The longest a target's `Retry-After` holds a retry back.
const MAX_ASKED_WAIT: Duration = Duration::from_secs(60);

/// How a worker keeps its claim while a retry waits: `renew` extends it (`false`: another
/// worker holds it now), every `every` (well within the lease).
pub(super) struct Keep<'a> {
    pub(super) renew:
        &'a (dyn Fn() -> futures_util::future::BoxFuture<'a, Result<bool, PlanError>> + Sync),
    pub(super) every: Duration,
}

/// How a retry's wait ended.
enum Waited {
    /// Its time came, with the claim renewed: try.
    Go,
    /// Another worker holds the claim now.
    Lost,
    /// The apply was interrupted.
    Stopped,
}

/// Waits `wait`, then (when the apply keeps a rate) for the rate's next tick: a retry is one
/// more request the approved rate counts, so it waits its turn too and a struggling target
/// never gets more than the rate. Every wait that may outlast the claim's lease (a
/// `Retry-After`, the rate's lock another worker holds, a slow rate's tick) renews the claim
/// as it goes, and once more before the attempt.
async fn wait_holding(
    wait: Duration,
    pace: Option<&Pace>,
    keep: Option<&Keep<'_>>,
    cancel: &CancellationToken,
) -> Result<Waited, PlanError> {
    let every = keep.map_or(Duration::from_secs(3600), |k| k.every);
    let renewed = async || match keep {
        Some(k) => (k.renew)().await,
        None => Ok(true),
    };
    let until = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < until {
        let chunk = (until - tokio::time::Instant::now()).min(every);
        tokio::select! {
            () = tokio::time::sleep(chunk) => {}
            () = cancel.cancelled() => return Ok(Waited::Stopped),
        }
        if !renewed().await? {
            return Ok(Waited::Lost);
        }
    }
    if let Some(pace) = pace {
        let mut held = loop {
            tokio::select! {
                held = pace.lock() => break held,
                () = tokio::time::sleep(every) => {
                    if !renewed().await? {
                        return Ok(Waited::Lost);
                    }
                }
                () = cancel.cancelled() => return Ok(Waited::Stopped),
            }
        };
        if let Some(t) = held.as_mut() {
            loop {
                tokio::select! {
                    _ = t.tick() => break,
                    () = tokio::time::sleep(every) => {
                        if !renewed().await? {
                            return Ok(Waited::Lost);
                        }
                    }
                    () = cancel.cancelled() => return Ok(Waited::Stopped),
                }
            }
        }
    }
    Ok(if renewed().await? {
        Waited::Go
    } else {
        Waited::Lost
    })
}

/// Check, then act: skip the action if it was applied before or its work is done already,
/// else execute it. Up to `attempts` tries with a growing pause; after the last failure the
/// action is failed (one attempt) or parked (replays, which go on without it).
pub(super) async fn check_then_act(
    env: &ApplyEnv<'_>,
    action: &ActionRecord,
    recheck: Recheck<'_>,
    attempts: u32,
    pace: Option<&Pace>,
    keep: Option<&Keep<'_>>,
    cancel: &CancellationToken,
) -> Result<Done, PlanError> {
    let mut last_error = String::new();
    let mut asked: Option<Duration> = None;
    for attempt in 1..=attempts.max(1) {
        if attempt > 1 {
            // Back off: 200 ms, 400 ms, ... at most 5 s between attempts, or as long as the
            // target asked (`Retry-After`), at most a minute.
            let wait = Duration::from_millis(200 * (1 << (attempt - 2).min(5)))
                .min(Duration::from_secs(5))
                .max(asked.take().unwrap_or_default().min(MAX_ASKED_WAIT));
            match wait_holding(wait, pace, keep, cancel).await? {
                Waited::Go => {}
                // Another worker took the claim over while this one waited: it delivers the
                // action; this worker neither tries nor records it.
                Waited::Lost => {
                    return Ok(Done::abandoned(
                        "the claim was taken over while a retry waited",
                    ));
                }
                // Interrupted: no retry goes out unpaced; the action stays open.
                Waited::Stopped => {
                    return Ok(Done::abandoned("interrupted while a retry waited"));
                }
            }
        }
        match applied_mark(env, action.plan_id, &action.spec, &action.idempotency_key).await {
            // This very action's commit wrote the marker (an earlier attempt whose answer was
            // lost, or a worker killed before recording it): applied, as a NATS delivery an
            // earlier attempt made is.
            Ok(Some(mark)) if mark.by == Some((action.plan_id, action.seq)) => {
                return Ok(Done::new(
                    ActionStatus::Applied,
                    Outcome::SkippedAlreadyApplied,
                    Some(format!("{}, by this action's earlier attempt", mark.why)),
                ));
            }
            Ok(Some(mark)) => {
                return Ok(Done::new(
                    ActionStatus::Skipped,
                    Outcome::SkippedAlreadyApplied,
                    Some(mark.why),
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
                last_error = e.to_string();
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
            Executed::Failed(e) => {
                asked = e.retry_after();
                last_error = e.to_string();
            }
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
            Executed::AlreadyApplied(why) => Done::new(
                ActionStatus::Skipped,
                Outcome::SkippedAlreadyApplied,
                Some(why),
            ),
            // Applied by an earlier attempt: stored as applied, so that a later plan with the
            // same idempotency key finds it here after the target has forgotten it.
            Executed::Delivered(why) => Done::new(
                ActionStatus::Applied,
                Outcome::SkippedAlreadyApplied,
                Some(why),
            ),
            Executed::Failed(e) => Done::failed(e.to_string()),
        }
    }
}

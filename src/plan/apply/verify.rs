//! After the last action: how many violations the apply closed, and for a replay how many
//! events are still missing in its window.

use chrono::Utc;

use super::{ApplyEnv, Verification};
use crate::domain::{ActionStatus, Invariant, PlanId};
use crate::plan::PlanError;
use crate::plan::recheck::still_holds;
use crate::store::PlanRecord;

/// Re-checks the violation of every applied action and records how many the apply closed.
pub(super) async fn verify(
    env: &ApplyEnv<'_>,
    invariant: &Invariant,
    id: PlanId,
) -> Result<Verification, PlanError> {
    let mut v = Verification::none();
    let actions = crate::plan::all_actions(env.store, id).await?;
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
pub(super) async fn remaining_in_window(
    env: &ApplyEnv<'_>,
    invariant: &Invariant,
    plan: &PlanRecord,
) -> Result<u64, PlanError> {
    // Every row: a replayed key whose downstream row has no change column is still covered.
    let limits = crate::runner::RunLimits {
        full_pass: true,
        ..crate::runner::RunLimits::default()
    };
    let outcome =
        crate::runner::run_invariant_limited(invariant, env.sources, env.store, &limits).await?;
    if let Some(e) = outcome.error {
        return Err(PlanError::refused(
            plan.id,
            format!("the replay finished, but its window could not be re-checked: {e}"),
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

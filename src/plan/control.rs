//! Pausing, resuming and cancelling a plan: the same state moves, audited, from every surface
//! (CLI, API, console).

use chrono::{DateTime, Utc};

use super::PlanError;
use crate::domain::{Actor, PlanId, PlanState};
use crate::store::{Store, Transition};

/// What a person does to a plan's course.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Once recorded, no action starts (the store hands out none); the actions under way
    /// finish; resuming goes on.
    Pause,
    /// A paused plan may be applied again (the caller starts the apply).
    Resume,
    /// Nothing more is applied, ever.
    Cancel,
}

impl Control {
    pub fn verb(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Cancel => "cancel",
        }
    }

    /// The states it applies to, and the one it leads to.
    fn moves(self) -> (&'static [PlanState], PlanState) {
        use PlanState::*;
        match self {
            Control::Pause => (&[Proposed, Applying, Stopped], Paused),
            Control::Resume => (&[Paused], Stopped),
            Control::Cancel => (&[Proposed, Applying, Stopped, Paused], Cancelled),
        }
    }

    /// Whether it applies to a plan in `state` (for the controls a surface offers).
    pub fn applies_to(self, state: PlanState) -> bool {
        self.moves().0.contains(&state)
    }

    fn audit_action(self) -> &'static str {
        match self {
            Control::Pause => "plan.pause",
            Control::Resume => "plan.resume",
            Control::Cancel => "plan.cancel",
        }
    }
}

/// Moves plan `id` as `control` says, audited as `by`. `Refused` (saying which states it
/// applies to) when the plan is in none of them.
pub async fn control(
    store: &dyn Store,
    id: PlanId,
    control: Control,
    by: &Actor,
    at: DateTime<Utc>,
) -> Result<PlanState, PlanError> {
    let current = super::load(store, id).await?;
    let (from, to) = control.moves();
    let moved = store
        .transition_plan(
            id,
            &Transition {
                from,
                to,
                by: &by.name,
                reason: None,
                at,
                audit_action: control.audit_action(),
                details: serde_json::json!({}),
            },
        )
        .await?;
    if !moved {
        // (Read again: another person may have moved it meanwhile.)
        let now = super::load(store, id)
            .await
            .map_or(current.state, |p| p.state);
        return Err(PlanError::Refused {
            plan: id,
            reason: format!(
                "it is {}; {} applies to a plan that is {}",
                now.as_str(),
                control.verb(),
                from.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            next: (now == PlanState::Paused).then_some(crate::domain::NextStep::ResumePlan(id)),
        });
    }
    Ok(to)
}

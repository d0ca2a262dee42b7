//! Human-readable rendering shared by the commands.

use crate::store::ViolationRecord;

pub(super) use crate::domain::evidence::{evidence_of, key, truncate};

/// One line saying what the evidence shows.
pub(super) fn evidence(v: &ViolationRecord) -> String {
    evidence_of(&v.kind, &v.evidence)
}

pub(super) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A next step as a person at the terminal takes it: a command.
pub(crate) fn next_step(step: &crate::domain::NextStep) -> String {
    use crate::domain::NextStep;
    match step {
        NextStep::ListPlans => "`trueup plans` lists the plans".into(),
        NextStep::ListIncidents => "`trueup incident list` shows them".into(),
        NextStep::ChooseAnotherIncidentName(name) => {
            format!("choose another name or `trueup incident show {name}`")
        }
        NextStep::ProposeFreshPlan(invariant) => {
            format!("run `trueup plan create --invariant {invariant}` for a fresh one")
        }
        NextStep::ReviewPlanAgain(id) => format!("`trueup plan show {id}` shows it"),
        NextStep::ResumePlan(id) => format!("resume it (`trueup replay resume {id}`)"),
        NextStep::ApprovePlan(id) => format!("approve it with `trueup plan approve {id}`"),
        NextStep::RetryFailed(id) => {
            format!("fix the cause and run `trueup apply {id} --retry-failed`")
        }
        NextStep::ContinueApply(id) => format!("run `trueup apply {id}` again to continue"),
        NextStep::ResolveBlockersOrOverride(name) => format!(
            "resolve them, or close anyway with `trueup incident close {name} --override --reason \"...\"` (the report records who and why)"
        ),
    }
}

/// An error and, where it has one, its next step worded for the terminal.
pub(crate) fn with_next_step(
    error: &dyn std::fmt::Display,
    step: Option<crate::domain::NextStep>,
) -> String {
    match step {
        Some(step) => format!("{error}; {}", next_step(&step)),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{next_step, with_next_step};

    #[test]
    fn every_next_step_is_a_command_in_the_terminal_and_never_a_route() {
        for step in crate::domain::NextStep::one_of_each() {
            let said = next_step(&step);
            assert!(said.contains("`trueup "), "{step:?}: {said}");
            assert!(
                !said.contains("/api/") && !said.contains("/ui/"),
                "{step:?}: {said}"
            );
        }
    }

    #[test]
    fn the_terminal_is_told_the_next_step_as_a_command() {
        let missing = crate::plan::PlanError::NotFound(7);
        assert_eq!(
            with_next_step(&missing, missing.next_step()),
            "plan 7 does not exist; `trueup plans` lists the plans"
        );
        let taken = crate::incident::IncidentError::Exists("outage".into());
        assert_eq!(
            with_next_step(&taken, taken.next_step()),
            "an incident named `outage` exists already; choose another name or `trueup incident show outage`"
        );
        let unapproved = crate::plan::PlanError::Refused {
            plan: 3,
            reason: "it is not approved: 1 of 2 distinct approvers (ada); nothing was applied"
                .into(),
            next: Some(crate::domain::NextStep::ApprovePlan(3)),
        };
        assert_eq!(
            with_next_step(&unapproved, unapproved.next_step()),
            "plan 3: it is not approved: 1 of 2 distinct approvers (ada); nothing was applied; approve it with `trueup plan approve 3`"
        );
        let unknown = crate::incident::IncidentError::NotFound("x".into());
        assert_eq!(
            with_next_step(&unknown, unknown.next_step()),
            "no incident named `x`; `trueup incident list` shows them"
        );
    }
}

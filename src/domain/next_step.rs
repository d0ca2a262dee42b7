//! What a person can do next, as data. An error below the surfaces names the step; the CLI,
//! the API and the console each word it for their own user (a command, a route, a page), so
//! an API caller is never told to run a command. (Plan ids are `domain::PlanId`.)

/// A next step an error points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// See which plans exist.
    ListPlans,
    /// See which incidents exist.
    ListIncidents,
    /// The incident of this name exists: choose another name, or look at it.
    ChooseAnotherIncidentName(String),
    /// Propose a fresh plan for this invariant (the one at hand went stale).
    ProposeFreshPlan(String),
    /// Look at this plan (what was reviewed is not what it is now).
    ReviewPlanAgain(i64),
    /// Resume this paused plan.
    ResumePlan(i64),
    /// Approve this plan (it lacks approvals).
    ApprovePlan(i64),
    /// Fix what made this plan's actions fail (or events park), then apply it again retrying
    /// them.
    RetryFailed(i64),
    /// Apply this plan again: it stopped short with nothing failed (interrupted).
    ContinueApply(i64),
    /// This incident has blockers: resolve them, or close it anyway with a reason (approvers).
    ResolveBlockersOrOverride(String),
}

impl NextStep {
    /// One step of every kind, for tests that check each surface words them all.
    #[cfg(test)]
    pub(crate) fn one_of_each() -> Vec<NextStep> {
        let all = vec![
            NextStep::ListPlans,
            NextStep::ListIncidents,
            NextStep::ChooseAnotherIncidentName("outage".into()),
            NextStep::ProposeFreshPlan("ledger".into()),
            NextStep::ReviewPlanAgain(3),
            NextStep::ResumePlan(3),
            NextStep::ApprovePlan(3),
            NextStep::RetryFailed(3),
            NextStep::ContinueApply(3),
            NextStep::ResolveBlockersOrOverride("outage".into()),
        ];
        // A new kind does not compile here until it is listed above.
        for step in &all {
            match step {
                NextStep::ListPlans
                | NextStep::ListIncidents
                | NextStep::ChooseAnotherIncidentName(_)
                | NextStep::ProposeFreshPlan(_)
                | NextStep::ReviewPlanAgain(_)
                | NextStep::ResumePlan(_)
                | NextStep::ApprovePlan(_)
                | NextStep::RetryFailed(_)
                | NextStep::ContinueApply(_)
                | NextStep::ResolveBlockersOrOverride(_) => {}
            }
        }
        all
    }
}

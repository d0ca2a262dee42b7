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
}

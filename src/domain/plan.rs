//! Plans: what a plan does and where it and its actions are in their lives.

pub type PlanId = i64;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PlanState {
    /// Waiting for approvals (or approved and not yet applied).
    Proposed,
    Rejected,
    /// A newer plan for the same invariant replaced it before it was applied.
    Superseded,
    Applying,
    Applied,
    /// Apply stopped after too many failed actions, or was interrupted; apply again to go on.
    Stopped,
    /// An operator paused it: no action starts; resume to go on.
    Paused,
    /// An operator cancelled it: nothing more is applied.
    Cancelled,
}

impl PlanState {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanState::Proposed => "proposed",
            PlanState::Rejected => "rejected",
            PlanState::Superseded => "superseded",
            PlanState::Applying => "applying",
            PlanState::Applied => "applied",
            PlanState::Stopped => "stopped",
            PlanState::Paused => "paused",
            PlanState::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Self {
        match raw {
            "rejected" => PlanState::Rejected,
            "superseded" => PlanState::Superseded,
            "applying" => PlanState::Applying,
            "applied" => PlanState::Applied,
            "stopped" => PlanState::Stopped,
            "paused" => PlanState::Paused,
            "cancelled" => PlanState::Cancelled,
            _ => PlanState::Proposed,
        }
    }

    /// Whether an apply under way stops here: a plan hands out actions only while applying,
    /// or stopped by one of several applies (the others go on); one an operator paused,
    /// cancelled or rejected (never written to again), or that is no longer live, starts none.
    pub fn halts_apply(self) -> bool {
        !matches!(self, PlanState::Applying | PlanState::Stopped)
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Pending,
    InProgress,
    Applied,
    /// Not executed: the violation no longer held, or the action had already been applied.
    Skipped,
    Failed,
    /// A step for a person; recorded, not executed.
    Manual,
    /// A replayed event that failed its every attempt: set aside so the replay goes on;
    /// `--retry-failed` tries it again.
    Parked,
}

impl ActionStatus {
    pub const ALL: [ActionStatus; 7] = [
        ActionStatus::Pending,
        ActionStatus::InProgress,
        ActionStatus::Applied,
        ActionStatus::Skipped,
        ActionStatus::Failed,
        ActionStatus::Manual,
        ActionStatus::Parked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Pending => "pending",
            ActionStatus::InProgress => "in_progress",
            ActionStatus::Applied => "applied",
            ActionStatus::Skipped => "skipped",
            ActionStatus::Failed => "failed",
            ActionStatus::Manual => "manual",
            ActionStatus::Parked => "parked",
        }
    }

    pub fn parse(raw: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .unwrap_or(ActionStatus::Failed)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, ActionStatus::Pending | ActionStatus::InProgress)
    }
}

/// What a plan does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PlanKind {
    /// Compensating actions for violations.
    Compensation,
    /// Re-deliveries of lost upstream events over a time window, in event order.
    Replay,
}

impl PlanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanKind::Compensation => "compensation",
            PlanKind::Replay => "replay",
        }
    }

    pub fn parse(raw: &str) -> Self {
        if raw == "replay" {
            PlanKind::Replay
        } else {
            PlanKind::Compensation
        }
    }
}

//! What an apply reports: each action's outcome, samples, progress and the verification.

use std::collections::BTreeMap;

use chrono::Utc;

use crate::domain::{ActionSpec, ActionStatus, PlanId, PlanState};
use crate::store::ActionRecord;

/// What happened (or, in a dry run, would happen) to an action.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema,
)]
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

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
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

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Verification {
    /// Why the re-check could not be completed (the store failed, or a replay's window run),
    /// if it could not: the counts below are what was re-checked before; the plan is applied
    /// all the same. First, so that `trueup audit`'s shortened details show it (with a SQLite
    /// store; PostgreSQL's JSONB keeps keys in its own order).
    pub failed: Option<String>,
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

impl Verification {
    /// Nothing re-checked yet.
    pub(super) fn none() -> Self {
        Self {
            failed: None,
            checked: 0,
            closed: 0,
            still_open: 0,
            errors: 0,
            remaining_in_window: None,
            at: Utc::now(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ApplyReport {
    pub plan: PlanId,
    pub dry_run: bool,
    pub counts: BTreeMap<Outcome, u64>,
    pub samples: BTreeMap<Outcome, Vec<Sample>>,
    /// Why this apply stopped before the plan was done, if it did.
    pub stopped: Option<String>,
    /// What to do about it, when it stopped short.
    #[serde(skip)]
    pub next: Option<crate::domain::NextStep>,
    /// The plan's state afterwards.
    pub state: PlanState,
    pub verification: Option<Verification>,
    /// Until this apply's last action was recorded (before any verification).
    pub actions_secs: f64,
    pub elapsed_secs: f64,
}

impl ApplyReport {
    pub(super) fn new(plan: PlanId, dry_run: bool) -> Self {
        Self {
            plan,
            dry_run,
            counts: BTreeMap::new(),
            samples: BTreeMap::new(),
            stopped: None,
            next: None,
            state: PlanState::Proposed,
            verification: None,
            actions_secs: 0.0,
            elapsed_secs: 0.0,
        }
    }

    pub(super) fn record(
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
        ActionSpec::Nats {
            target, subject, ..
        } => format!("nats {target}: publish {subject}"),
        ActionSpec::Redis { target, stream, .. } => format!("redis {target}: XADD {stream}"),
        ActionSpec::Manual { instructions } => format!("manual: {instructions}"),
    }
}

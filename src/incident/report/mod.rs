//! The closure report: what happened in an incident's window, what was repaired, what was
//! verified, and whether it is ready to close.
//!
//! [`gather`] reads the store; [`assemble`] turns what it read into a [`Report`] without
//! looking at the clock, so the same store content always gives the same report. The report
//! is one serde type: the JSON format is that type (its schema is
//! `docs/incident-report.schema.json`), and the Markdown and HTML formats render it
//! (`render.rs`). A closed incident's report is stored as JSON with its SHA-256 and read back
//! from there, never rebuilt.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::Phase;
use crate::domain::{ActionStatus, IncidentState, PlanKind, PlanState, RunStatus, ViolationStatus};
use crate::store::{
    AuditEntry, IncidentEvent, IncidentRecord, PlanRecord, RunDigest, ViolationGroup,
    ViolationRecord,
};

mod assemble;
mod gather;
#[cfg(test)]
mod tests;
mod timeline;
mod verdict;

pub use assemble::assemble;
pub use gather::gather;
/// What the `$schema` field of every report says.
pub const SCHEMA_ID: &str = "https://trueup.dev/schemas/incident-report/v1.json";

/// The most entries a timeline shows; beyond it the middle is left out and counted.
pub const TIMELINE_LIMIT: usize = 400;
/// Samples per kind of violation.
pub const SAMPLES_PER_KIND: u32 = 5;
/// Notable runs read per invariant.
const RUNS_LIMIT: u32 = 200;
/// Audit entries read for the timeline.
const AUDIT_LIMIT: u32 = 5_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    #[serde(rename = "$schema")]
    pub schema: String,
    /// SHA-256 of the frozen report (set once the incident is closed).
    pub content_hash: Option<String>,
    /// The latest moment the report's evidence covers.
    pub as_of: Option<DateTime<Utc>>,
    pub incident: IncidentPart,
    pub phases: Vec<PhasePart>,
    pub timeline: Timeline,
    pub invariants: Vec<InvariantPart>,
    pub verdict: Verdict,
    pub closure: Option<Closure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentPart {
    pub name: String,
    pub summary: Option<String>,
    pub state: IncidentState,
    pub window_from: DateTime<Utc>,
    pub window_to: Option<DateTime<Utc>>,
    /// `named` (the invariants given when it was opened) or `violations_in_window`.
    pub scope_rule: String,
    pub scope: Vec<String>,
    pub opened_by: String,
    pub opened_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhasePart {
    pub phase: Phase,
    pub at: DateTime<Utc>,
    pub by: String,
    /// When the next phase was marked (or the incident closed); `None`: still going on.
    pub until: Option<DateTime<Utc>>,
    pub duration_secs: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    pub entries: Vec<TimelineEntry>,
    /// Entries left out of the middle of a long timeline.
    pub omitted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Incident,
    Phase,
    Note,
    Alert,
    Run,
    Plan,
    Replay,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    pub kind: EntryKind,
    pub actor: String,
    pub invariant: Option<String>,
    pub plan: Option<i64>,
    pub run: Option<i64>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvariantPart {
    pub name: String,
    /// Whether the invariant is defined in the files trueup loaded.
    pub loaded: bool,
    pub severity: Option<String>,
    pub owner: Option<String>,
    /// check, reconcile or transitions.
    pub rule: Option<String>,
    pub violations: ViolationsPart,
    pub runs: RunsPart,
    pub plans: Vec<PlanPart>,
    pub compensation: CompensationPart,
    pub replays: Vec<ReplayPart>,
    pub consistency: Option<ConsistencyPart>,
    /// Its consistency objective and the error budget the incident consumed (`None`: it
    /// declares none, or the report was frozen before SLOs existed).
    #[serde(default)]
    pub slo: Option<SloPart>,
    pub verification: VerificationPart,
}

/// An invariant's consistency objective over the incident: from the window's start to the
/// close (or to when the report was built, while it is open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloPart {
    /// "no violation open longer than 1h, 99.9% of the time over 30 days".
    pub objective: String,
    pub objective_pct: f64,
    pub max_open_secs: i64,
    pub window_secs: i64,
    /// The breach time the objective allows over its window: the error budget.
    pub budget_secs: i64,
    /// The span measured for the incident.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Time in the span during which a violation had been open longer than max_open.
    pub breach_secs: i64,
    /// Time in the span after failed runs, when nothing confirmed the state.
    pub unverified_secs: i64,
    /// The share of the error budget the incident consumed, in percent (above 100: more than
    /// the whole budget).
    pub budget_used_pct: f64,
    /// The budget left over the objective's window ending at `to`, in percent.
    pub budget_left_pct: f64,
    /// The two facts in words: what the incident consumed, what is left.
    pub statement: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViolationsPart {
    /// Violations inside the window, whatever their status now.
    pub total: u64,
    /// Of those, still open (or reopened).
    pub open: u64,
    pub resolved: u64,
    /// Open violations outside the window (not the incident's; they do not block closing).
    pub open_outside_window: u64,
    pub by_kind: Vec<KindPart>,
    pub samples: Vec<SamplePart>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindPart {
    pub kind: String,
    pub count: u64,
    pub open: u64,
    pub resolved: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub event_from: Option<DateTime<Utc>>,
    pub event_to: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplePart {
    pub kind: String,
    pub status: ViolationStatus,
    pub key: serde_json::Value,
    pub event_at: Option<DateTime<Utc>>,
    pub first_seen: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsPart {
    /// Runs started since the window opened.
    pub total: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionTally {
    pub pending: u64,
    pub in_progress: u64,
    pub applied: u64,
    pub skipped: u64,
    pub failed: u64,
    pub manual: u64,
    pub parked: u64,
}

impl ActionTally {
    fn from_progress(progress: &BTreeMap<ActionStatus, u64>) -> Self {
        let n = |s| progress.get(&s).copied().unwrap_or(0);
        Self {
            pending: n(ActionStatus::Pending),
            in_progress: n(ActionStatus::InProgress),
            applied: n(ActionStatus::Applied),
            skipped: n(ActionStatus::Skipped),
            failed: n(ActionStatus::Failed),
            manual: n(ActionStatus::Manual),
            parked: n(ActionStatus::Parked),
        }
    }

    /// Actions not yet worked to an end.
    pub fn unfinished(&self) -> u64 {
        self.pending + self.in_progress
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanPart {
    pub id: i64,
    pub kind: PlanKind,
    pub state: PlanState,
    /// Proposed with enough approvals of its current content.
    pub approved: bool,
    pub approvers: Vec<String>,
    pub approvals_required: u32,
    pub proposed_by: String,
    pub proposed_at: DateTime<Utc>,
    pub content_hash: String,
    pub actions: u64,
    pub tally: ActionTally,
    pub last_applied_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompensationPart {
    /// Compensation plans in the window (superseded ones left out).
    pub plans: u64,
    /// Their actions.
    pub proposed: u64,
    /// Actions in plans that were approved.
    pub approved: u64,
    pub applied: u64,
    pub skipped: u64,
    pub failed: u64,
    pub pending: u64,
    pub manual: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayPart {
    pub plan: i64,
    pub state: PlanState,
    pub window_from: Option<DateTime<Utc>>,
    pub window_to: Option<DateTime<Utc>>,
    pub events: u64,
    pub delivered: u64,
    /// Not delivered: the downstream had processed them already.
    pub skipped_processed: u64,
    pub parked: u64,
    pub failed: u64,
    pub pending: u64,
    /// `missing` violations still open in its window when it finished.
    pub remaining_in_window: Option<u64>,
    /// Applied, nothing left pending, parked or failed.
    pub complete: bool,
}

/// What the verification run measured, for a reconcile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyPart {
    pub run: i64,
    pub rows_left: u64,
    pub rows_right: u64,
    /// Rows inside the grace period (the lag window): neither compared nor counted against.
    pub in_lag_window: u64,
    pub missing: u64,
    pub extra: u64,
    pub mismatch: u64,
    pub duplicate: u64,
    /// Percentage of left rows outside the lag window that have a matching right row.
    pub parity_pct: Option<f64>,
    /// Duplicates per hundred right rows.
    pub duplicate_rate_pct: Option<f64>,
    /// Every replay complete and no `missing` violation left in the window (`None`: no replay).
    pub replays_complete_and_clean: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationResult {
    /// A run after the last repair found nothing.
    Holds,
    /// A run after the last repair found violations, none of them in the window.
    HoldsInWindow,
    /// A run after the last repair left violations open in the window.
    Violations,
    /// The latest run failed.
    Failed,
    /// The latest run read only part of the rows (an incremental run, or one over its
    /// violation budget): it cannot say the window holds.
    Partial,
    /// No run started after the last repair.
    Stale,
    /// Not evaluated since the window opened.
    Missing,
    /// The invariant is not loaded: it cannot be evaluated.
    NotLoaded,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationPart {
    pub result: VerificationResult,
    pub passed: bool,
    /// A verification run must start after this: the last repair, or the window's start.
    pub required_after: DateTime<Utc>,
    pub last_repair_at: Option<DateTime<Utc>>,
    pub run: Option<RunRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRef {
    pub id: i64,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Violations it observed (all of them, in the window or not).
    pub observed: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlockerKind {
    NotLoaded,
    OpenViolations,
    EvaluationError,
    StaleVerification,
    UnapprovedPlan,
    PendingActions,
    FailedActions,
    UnfinishedReplay,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Blocker {
    pub kind: BlockerKind,
    pub invariant: Option<String>,
    pub plan: Option<i64>,
    /// What blocks, and what to do about it.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub ready: bool,
    /// "ready to close" or "not ready to close: N blocker(s)".
    pub summary: String,
    pub blockers: Vec<Blocker>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Closure {
    pub closed_by: String,
    pub closed_at: DateTime<Utc>,
    /// Closed despite the verdict's blockers, and why.
    pub overridden: bool,
    pub override_reason: Option<String>,
}

/// What the store holds about one invariant in scope.
#[derive(Debug, Clone)]
pub struct InvariantEvidence {
    pub name: String,
    pub groups: Vec<ViolationGroup>,
    pub open_anywhere: u64,
    pub samples: Vec<ViolationRecord>,
    pub runs: RunDigest,
    /// Plans proposed since the window opened, oldest first.
    pub plans: Vec<PlanEvidence>,
    /// Its consistency objective measured over the incident and over its own window.
    pub slo: Option<SloEvidence>,
}

#[derive(Debug, Clone)]
pub struct SloEvidence {
    pub objective: crate::domain::Objective,
    /// From the incident window's start to the close (or now).
    pub incident: crate::domain::SloMeasure,
    /// The objective's own window ending at the same moment.
    pub rolling: crate::domain::SloMeasure,
}

#[derive(Debug, Clone)]
pub struct PlanEvidence {
    pub plan: PlanRecord,
    pub progress: BTreeMap<ActionStatus, u64>,
    pub last_applied_at: Option<DateTime<Utc>>,
}

/// Everything the report is made of, as read from the store.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub incident: IncidentRecord,
    pub events: Vec<IncidentEvent>,
    pub invariants: Vec<InvariantEvidence>,
    pub audit: Vec<AuditEntry>,
}

//! The closure report: what happened in an incident's window, what was repaired, what was
//! verified, and whether it is ready to close.
//!
//! [`gather`] reads the store; [`assemble`] turns what it read into a [`Report`] without
//! looking at the clock, so the same store content always gives the same report. The report
//! is one serde type: the JSON format is that type (its schema is
//! `docs/incident-report.schema.json`), and the Markdown and HTML formats render it
//! (`render.rs`). A closed incident's report is stored as JSON with its SHA-256 and read back
//! from there, never rebuilt.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{ActionStatus, IncidentState, PlanKind, PlanState, RunStatus, ViolationStatus};
use crate::domain::{Invariant, Phase, ViolationKind};
use crate::store::{
    AuditEntry, IncidentEvent, IncidentRecord, IncidentWindow, PlanRecord, RunDigest, RunRecord,
    StatusFilter, Store, StoreError, ViolationFilter, ViolationGroup, ViolationRecord,
};

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
    pub verification: VerificationPart,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blocker {
    pub kind: BlockerKind,
    pub invariant: Option<String>,
    pub plan: Option<i64>,
    /// What blocks, and what to do about it.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Reads what the report needs from the store.
pub async fn gather(store: &dyn Store, incident: IncidentRecord) -> Result<Evidence, StoreError> {
    let window = incident.window();
    let scope = if incident.invariants.is_empty() {
        let mut names: Vec<String> = store
            .violation_groups(&ViolationFilter {
                status: StatusFilter::All,
                window: Some(window),
                ..ViolationFilter::default()
            })
            .await?
            .into_iter()
            .map(|g| g.invariant)
            .collect();
        names.dedup();
        names
    } else {
        let mut names = incident.invariants.clone();
        names.sort();
        names.dedup();
        names
    };
    let events = store.incident_events(incident.id).await?;
    let mut invariants = Vec::with_capacity(scope.len());
    let mut targets = vec![format!("incident:{}", incident.name)];
    for name in scope {
        let in_window = ViolationFilter {
            invariants: vec![name.clone()],
            status: StatusFilter::All,
            window: Some(window),
            ..ViolationFilter::default()
        };
        let groups = store.violation_groups(&in_window).await?;
        let open_anywhere = store
            .violation_groups(&ViolationFilter {
                invariants: vec![name.clone()],
                status: StatusFilter::Active,
                ..ViolationFilter::default()
            })
            .await?
            .iter()
            .map(|g| g.count)
            .sum();
        let mut kinds: Vec<&str> = groups.iter().map(|g| g.kind.as_str()).collect();
        kinds.dedup();
        let mut samples = Vec::new();
        for kind in kinds {
            let Some(kind) = ViolationKind::parse(kind) else {
                continue;
            };
            samples.extend(
                store
                    .violations(&ViolationFilter {
                        kind: Some(kind),
                        limit: SAMPLES_PER_KIND,
                        ..in_window.clone()
                    })
                    .await?,
            );
        }
        let runs = store.run_digest(&name, window.from, RUNS_LIMIT).await?;
        let mut plans = Vec::new();
        for plan in store.plans(Some(&name), 10_000).await? {
            if plan.proposed_at < window.from {
                continue;
            }
            targets.push(format!("plan:{}", plan.id));
            plans.push(PlanEvidence {
                progress: store.action_progress(plan.id).await?,
                last_applied_at: store.last_applied_at(plan.id).await?,
                plan,
            });
        }
        plans.sort_by_key(|p| p.plan.id);
        targets.push(format!("invariant:{name}"));
        invariants.push(InvariantEvidence {
            name,
            groups,
            open_anywhere,
            samples,
            runs,
            plans,
        });
    }
    let audit = store
        .audit_trail(&targets, window.from.min(incident.opened_at), AUDIT_LIMIT)
        .await?;
    Ok(Evidence {
        incident,
        events,
        invariants,
        audit,
    })
}

/// Builds the report from what [`gather`] read. `closing` is set when the report is being
/// frozen by closing the incident.
pub fn assemble(
    evidence: &Evidence,
    loaded: &[impl Borrow<Invariant>],
    closing: Option<&Closure>,
) -> Report {
    let incident = &evidence.incident;
    let window = incident.window();
    let closed_at = closing.map(|c| c.closed_at).or(incident.closed_at);
    let mut blockers = Vec::new();
    let mut parts = Vec::new();
    let mut timeline = Vec::new();
    for ev in &evidence.invariants {
        let definition = loaded
            .iter()
            .map(Borrow::borrow)
            .find(|i: &&Invariant| i.name.as_str() == ev.name);
        let part = invariant_part(ev, definition, window);
        blockers.extend(invariant_blockers(&part));
        for run in &ev.runs.notable {
            timeline.push(run_entry(run));
        }
        parts.push(part);
    }
    let plan_kinds: BTreeMap<i64, (PlanKind, String)> = evidence
        .invariants
        .iter()
        .flat_map(|ev| {
            ev.plans
                .iter()
                .map(|p| (p.plan.id, (p.plan.kind, p.plan.invariant.clone())))
        })
        .collect();
    for entry in &evidence.audit {
        if let Some(e) = audit_entry(entry, &plan_kinds) {
            timeline.push(e);
        }
    }
    if let Some(c) = closing {
        timeline.push(TimelineEntry {
            at: c.closed_at,
            kind: EntryKind::Incident,
            actor: c.closed_by.clone(),
            invariant: None,
            plan: None,
            run: None,
            text: closing_text(c),
        });
    }
    // Stable: equal times keep the order they were added in (runs, then the audit log).
    timeline.sort_by_key(|e| e.at);
    let as_of = timeline
        .iter()
        .map(|e| e.at)
        .chain(
            parts
                .iter()
                .filter_map(|p| p.verification.run.as_ref()?.finished_at),
        )
        .chain(
            evidence
                .invariants
                .iter()
                .flat_map(|ev| ev.groups.iter().map(|g| g.last_seen)),
        )
        .max();
    let omitted = timeline.len().saturating_sub(TIMELINE_LIMIT) as u64;
    if omitted > 0 {
        let head = TIMELINE_LIMIT / 2;
        let tail = TIMELINE_LIMIT - head;
        let rest = timeline.split_off(head);
        timeline.extend(rest[rest.len() - tail..].iter().cloned());
    }
    let ready = blockers.is_empty();
    let summary = if ready {
        "ready to close".to_owned()
    } else {
        format!("not ready to close: {} blocker(s)", blockers.len())
    };
    Report {
        schema: SCHEMA_ID.to_owned(),
        content_hash: None,
        as_of,
        incident: IncidentPart {
            name: incident.name.clone(),
            summary: incident.summary.clone(),
            state: if closing.is_some() {
                IncidentState::Closed
            } else {
                incident.state
            },
            window_from: incident.window_from,
            window_to: incident.window_to,
            scope_rule: if incident.invariants.is_empty() {
                "violations_in_window".into()
            } else {
                "named".into()
            },
            scope: evidence.invariants.iter().map(|i| i.name.clone()).collect(),
            opened_by: incident.opened_by.clone(),
            opened_at: incident.opened_at,
        },
        phases: phases(&evidence.events, closed_at),
        timeline: Timeline {
            entries: timeline,
            omitted,
        },
        invariants: parts,
        verdict: Verdict {
            ready,
            summary,
            blockers,
        },
        closure: closing.cloned(),
    }
}

/// Each phase's latest mark, in time order, lasting until the next one (or the close).
fn phases(events: &[IncidentEvent], closed_at: Option<DateTime<Utc>>) -> Vec<PhasePart> {
    let mut marks = super::latest_phase_marks(events);
    marks.sort_by_key(|m| (m.at, m.phase));
    let ends: Vec<Option<DateTime<Utc>>> = (0..marks.len())
        .map(|i| marks.get(i + 1).map(|m| m.at).or(closed_at))
        .collect();
    marks
        .into_iter()
        .zip(ends)
        .map(|(m, until)| PhasePart {
            phase: m.phase,
            at: m.at,
            by: m.by,
            until,
            duration_secs: until.map(|u| (u - m.at).num_seconds().max(0)),
        })
        .collect()
}

fn invariant_part(
    ev: &InvariantEvidence,
    definition: Option<&Invariant>,
    window: IncidentWindow,
) -> InvariantPart {
    let mut by_kind: Vec<KindPart> = Vec::new();
    for g in &ev.groups {
        let open = if g.status == ViolationStatus::Resolved {
            0
        } else {
            g.count
        };
        match by_kind.iter_mut().find(|k| k.kind == g.kind) {
            Some(k) => {
                k.count += g.count;
                k.open += open;
                k.resolved += g.count - open;
                k.first_seen = k.first_seen.min(g.first_seen);
                k.last_seen = k.last_seen.max(g.last_seen);
                k.event_from = min_opt(k.event_from, g.event_from);
                k.event_to = k.event_to.max(g.event_to);
            }
            None => by_kind.push(KindPart {
                kind: g.kind.clone(),
                count: g.count,
                open,
                resolved: g.count - open,
                first_seen: g.first_seen,
                last_seen: g.last_seen,
                event_from: g.event_from,
                event_to: g.event_to,
            }),
        }
    }
    let total = by_kind.iter().map(|k| k.count).sum();
    let open: u64 = by_kind.iter().map(|k| k.open).sum();
    let violations = ViolationsPart {
        total,
        open,
        resolved: total - open,
        open_outside_window: ev.open_anywhere.saturating_sub(open),
        by_kind,
        samples: ev
            .samples
            .iter()
            .map(|v| SamplePart {
                kind: v.kind.clone(),
                status: v.status,
                key: v.key.clone(),
                event_at: v.event_at,
                first_seen: v.first_seen,
                resolved_at: v.resolved_at,
            })
            .collect(),
    };

    let mut plans = Vec::new();
    let mut compensation = CompensationPart::default();
    let mut replays = Vec::new();
    for PlanEvidence {
        plan,
        progress,
        last_applied_at,
    } in &ev.plans
    {
        let approvers = crate::plan::valid_approvers(plan);
        let approved =
            plan.state == PlanState::Proposed && approvers.len() as u32 >= plan.approvals_required;
        let tally = ActionTally::from_progress(progress);
        match plan.kind {
            PlanKind::Compensation if plan.state != PlanState::Superseded => {
                compensation.plans += 1;
                compensation.proposed += plan.action_count;
                let went_ahead = approved
                    || matches!(
                        plan.state,
                        PlanState::Applying
                            | PlanState::Applied
                            | PlanState::Stopped
                            | PlanState::Paused
                    );
                if went_ahead {
                    compensation.approved += plan.action_count;
                }
                compensation.applied += tally.applied;
                compensation.skipped += tally.skipped;
                compensation.failed += tally.failed + tally.parked;
                compensation.manual += tally.manual;
                if !matches!(plan.state, PlanState::Rejected | PlanState::Cancelled) {
                    compensation.pending += tally.unfinished();
                }
            }
            PlanKind::Compensation => {}
            PlanKind::Replay => {
                let bound = |k: &str| {
                    plan.meta
                        .get(k)
                        .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v.clone()).ok())
                };
                replays.push(ReplayPart {
                    plan: plan.id,
                    state: plan.state,
                    window_from: bound("from"),
                    window_to: bound("to"),
                    events: plan.action_count,
                    delivered: tally.applied,
                    skipped_processed: tally.skipped,
                    parked: tally.parked,
                    failed: tally.failed,
                    pending: tally.unfinished(),
                    remaining_in_window: plan
                        .verification
                        .as_ref()
                        .and_then(|v| v.get("remaining_in_window"))
                        .and_then(serde_json::Value::as_u64),
                    complete: plan.state == PlanState::Applied
                        && tally.unfinished() + tally.parked + tally.failed == 0,
                });
            }
        }
        plans.push(PlanPart {
            id: plan.id,
            kind: plan.kind,
            state: plan.state,
            approved,
            approvers,
            approvals_required: plan.approvals_required,
            proposed_by: plan.proposed_by.clone(),
            proposed_at: plan.proposed_at,
            content_hash: plan.content_hash.clone(),
            actions: plan.action_count,
            tally,
            last_applied_at: *last_applied_at,
        });
    }

    let last_repair_at = plans.iter().filter_map(|p| p.last_applied_at).max();
    let required_after = last_repair_at.map_or(window.from, |r| r.max(window.from));
    let latest = ev.runs.latest.as_ref();
    let result = match latest {
        _ if definition.is_none() => VerificationResult::NotLoaded,
        None => VerificationResult::Missing,
        Some(r) if r.started_at < window.from => VerificationResult::Missing,
        Some(r) if r.started_at <= required_after => VerificationResult::Stale,
        Some(r) if r.status != RunStatus::Succeeded => VerificationResult::Failed,
        Some(_) if open > 0 => VerificationResult::Violations,
        Some(r) if r.stats.observed > 0 => VerificationResult::HoldsInWindow,
        Some(_) => VerificationResult::Holds,
    };
    let verification = VerificationPart {
        result,
        passed: matches!(
            result,
            VerificationResult::Holds | VerificationResult::HoldsInWindow
        ),
        required_after,
        last_repair_at,
        run: latest.map(|r| RunRef {
            id: r.id,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
            observed: r.stats.observed,
            error: r.error.clone(),
        }),
    };
    let consistency = match (definition, latest) {
        (Some(d), Some(r))
            if d.kind_name() == "reconcile"
                && r.status == RunStatus::Succeeded
                && r.started_at >= window.from =>
        {
            Some(consistency(r, &replays, &violations))
        }
        _ => None,
    };
    InvariantPart {
        name: ev.name.clone(),
        loaded: definition.is_some(),
        severity: definition.map(|d| d.severity.to_string()),
        owner: definition.and_then(|d| d.owner.clone()),
        rule: definition.map(|d| d.kind_name().to_owned()),
        violations,
        runs: RunsPart {
            total: ev.runs.total,
            failed: ev.runs.failed,
        },
        plans,
        compensation,
        replays,
        consistency,
        verification,
    }
}

fn consistency(run: &RunRecord, replays: &[ReplayPart], v: &ViolationsPart) -> ConsistencyPart {
    let count = |k: ViolationKind| run.stats.counts.get(&k).copied().unwrap_or(0);
    let (missing, mismatch) = (
        count(ViolationKind::Missing),
        count(ViolationKind::Mismatch),
    );
    let due = run.stats.rows_left.saturating_sub(run.stats.not_yet_due);
    let duplicate = count(ViolationKind::Duplicate);
    let open_missing: u64 = v
        .by_kind
        .iter()
        .filter(|k| k.kind == "missing")
        .map(|k| k.open)
        .sum();
    ConsistencyPart {
        run: run.id,
        rows_left: run.stats.rows_left,
        rows_right: run.stats.rows_right,
        in_lag_window: run.stats.not_yet_due,
        missing,
        extra: count(ViolationKind::Extra),
        mismatch,
        duplicate,
        parity_pct: (due > 0)
            .then(|| percent(due.saturating_sub(missing + mismatch) as f64, due as f64)),
        duplicate_rate_pct: (run.stats.rows_right > 0)
            .then(|| percent(duplicate as f64, run.stats.rows_right as f64)),
        replays_complete_and_clean: (!replays.is_empty())
            .then(|| replays.iter().all(|r| r.complete) && open_missing == 0),
    }
}

/// `part / whole` in percent, to four decimals (so the JSON is the same on every machine).
fn percent(part: f64, whole: f64) -> f64 {
    (part / whole * 100.0 * 10_000.0).round() / 10_000.0
}

fn min_opt(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn invariant_blockers(part: &InvariantPart) -> Vec<Blocker> {
    let name = &part.name;
    let mut out = Vec::new();
    let mut block = |kind, plan: Option<i64>, detail: String| {
        out.push(Blocker {
            kind,
            invariant: Some(name.clone()),
            plan,
            detail,
        })
    };
    if !part.loaded {
        block(
            BlockerKind::NotLoaded,
            None,
            format!(
                "`{name}` is not defined in the loaded invariant files, so it cannot be re-checked; restore its definition or close with --override"
            ),
        );
    }
    if part.violations.open > 0 {
        let kinds: Vec<String> = part
            .violations
            .by_kind
            .iter()
            .filter(|k| k.open > 0)
            .map(|k| format!("{} {}", k.kind, k.open))
            .collect();
        block(
            BlockerKind::OpenViolations,
            None,
            format!(
                "{} violation(s) in the window are still open ({}); repair them (plans, replay) and re-check",
                part.violations.open,
                kinds.join(", ")
            ),
        );
    }
    let v = &part.verification;
    match (v.result, &v.run) {
        (VerificationResult::Failed, Some(run)) => block(
            BlockerKind::EvaluationError,
            None,
            format!(
                "the latest evaluation (run {}) {}: {}; fix it and re-check",
                run.id,
                run.status.as_str(),
                run.error.as_deref().unwrap_or("no error recorded")
            ),
        ),
        (VerificationResult::Stale, Some(run)) => block(
            BlockerKind::StaleVerification,
            None,
            format!(
                "the latest evaluation (run {}, started {}) is not after the last repair ({}); evaluate it again",
                run.id,
                run.started_at.to_rfc3339(),
                v.required_after.to_rfc3339()
            ),
        ),
        (VerificationResult::Missing, _) => block(
            BlockerKind::StaleVerification,
            None,
            format!(
                "not evaluated since the window opened ({}); evaluate it (`trueup check -i {name}`)",
                v.required_after.to_rfc3339()
            ),
        ),
        _ => {}
    }
    for p in &part.plans {
        let t = &p.tally;
        let live = matches!(
            p.state,
            PlanState::Proposed | PlanState::Applying | PlanState::Stopped | PlanState::Paused
        );
        if p.state == PlanState::Proposed && !p.approved {
            block(
                BlockerKind::UnapprovedPlan,
                Some(p.id),
                format!(
                    "{} plan {} awaits approval ({} of {}); approve or reject it",
                    p.kind.as_str(),
                    p.id,
                    p.approvers.len(),
                    p.approvals_required
                ),
            );
        } else if p.kind == PlanKind::Replay && live {
            block(
                BlockerKind::UnfinishedReplay,
                Some(p.id),
                format!(
                    "replay plan {} is {}: {} delivered, {} pending, {} parked; finish it (`trueup apply {}`) or cancel it",
                    p.id,
                    if p.approved {
                        "approved, not applied"
                    } else {
                        p.state.as_str()
                    },
                    t.applied,
                    t.unfinished(),
                    t.parked,
                    p.id
                ),
            );
        } else if p.kind == PlanKind::Replay && p.state == PlanState::Applied && t.parked > 0 {
            block(
                BlockerKind::UnfinishedReplay,
                Some(p.id),
                format!(
                    "replay plan {} parked {} event(s); deliver them (`trueup apply {} --retry-failed`)",
                    p.id, t.parked, p.id
                ),
            );
        } else if live && t.unfinished() > 0 {
            block(
                BlockerKind::PendingActions,
                Some(p.id),
                format!(
                    "plan {} ({}) has {} action(s) not applied; apply it (`trueup apply {}`) or reject it",
                    p.id,
                    if p.approved {
                        "approved"
                    } else {
                        p.state.as_str()
                    },
                    t.unfinished(),
                    p.id
                ),
            );
        }
        if p.kind == PlanKind::Compensation
            && t.failed + t.parked > 0
            && p.state != PlanState::Cancelled
        {
            block(
                BlockerKind::FailedActions,
                Some(p.id),
                format!(
                    "plan {} has {} failed action(s); retry them (`trueup apply {} --retry-failed`)",
                    p.id,
                    t.failed + t.parked,
                    p.id
                ),
            );
        }
    }
    out
}

fn run_entry(run: &RunRecord) -> TimelineEntry {
    let text = match run.status {
        RunStatus::Succeeded => format!(
            "run {}: {} new, {} reopened, {} resolved, {} still open",
            run.id, run.change.new, run.change.reopened, run.change.resolved, run.change.still_open
        ),
        s => format!(
            "run {} {}: {}",
            run.id,
            s.as_str(),
            run.error.as_deref().unwrap_or("no error recorded")
        ),
    };
    TimelineEntry {
        at: run.started_at,
        kind: EntryKind::Run,
        actor: "trueup".into(),
        invariant: Some(run.invariant.clone()),
        plan: None,
        run: Some(run.id),
        text,
    }
}

/// An audit entry as a timeline entry; `None` for entries a reader does not need.
fn audit_entry(e: &AuditEntry, plans: &BTreeMap<i64, (PlanKind, String)>) -> Option<TimelineEntry> {
    let d = &e.details;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let mut entry = TimelineEntry {
        at: e.at,
        kind: EntryKind::Incident,
        actor: e.actor.clone(),
        invariant: None,
        plan: None,
        run: None,
        text: String::new(),
    };
    if let Some(name) = e.target.strip_prefix("invariant:") {
        let to = e.action.strip_prefix("alert.")?;
        entry.kind = EntryKind::Alert;
        entry.invariant = Some(name.to_owned());
        entry.text = format!("alert {} → {}", s("from").unwrap_or_else(|| "?".into()), to);
        return Some(entry);
    }
    if let Some(id) = e.target.strip_prefix("plan:") {
        let id: i64 = id.parse().ok()?;
        let (kind, invariant) = plans.get(&id)?;
        entry.kind = if *kind == PlanKind::Replay {
            EntryKind::Replay
        } else {
            EntryKind::Plan
        };
        entry.plan = Some(id);
        entry.invariant = Some(invariant.clone());
        let what = format!("{} plan {id}", kind.as_str());
        entry.text = match e.action.as_str() {
            "plan.propose" => format!(
                "{what} proposed: {} action(s)",
                d.get("actions").and_then(|v| v.as_u64()).unwrap_or(0)
            ),
            "plan.approve" => format!("{what} approved"),
            "plan.reject" => format!("{what} rejected"),
            "plan.supersede" => format!(
                "{what} superseded by plan {}",
                d.get("superseded_by").and_then(|v| v.as_i64()).unwrap_or(0)
            ),
            "plan.apply.requested" => {
                if d.get("dry_run").and_then(|v| v.as_bool()) == Some(true) {
                    format!("{what}: dry run")
                } else {
                    format!(
                        "{what}: apply requested at {}",
                        s("rate").unwrap_or_else(|| "the default rate".into())
                    )
                }
            }
            "plan.apply.start" => format!("{what}: apply started"),
            "plan.apply.finish" => format!("{what} applied"),
            "plan.apply.stop" => format!("{what}: apply stopped"),
            "plan.pause" => format!("{what} paused"),
            "plan.resume" => format!("{what} resumed"),
            "plan.cancel" => format!("{what} cancelled"),
            "plan.verify" => {
                let n = |k: &str| d.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                let mut text = format!(
                    "{what} verified: {} re-checked, {} closed, {} still open",
                    n("checked"),
                    n("closed"),
                    n("still_open")
                );
                if let Some(r) = d.get("remaining_in_window").and_then(|v| v.as_u64()) {
                    text.push_str(&format!(", {r} missing left in its window"));
                }
                text
            }
            other => format!("{what}: {other}"),
        };
        return Some(entry);
    }
    entry.text = match e.action.as_str() {
        "incident.open" => "incident opened".to_owned(),
        "incident.phase" => {
            entry.kind = EntryKind::Phase;
            let phase = s("phase").unwrap_or_default();
            match s("text") {
                Some(t) => format!("phase {phase}: {t}"),
                None => format!("phase {phase}"),
            }
        }
        "incident.note" => {
            entry.kind = EntryKind::Note;
            format!("note: {}", s("text").unwrap_or_default())
        }
        // The close is added from the closure itself (the report is frozen before the close
        // is written).
        _ => return None,
    };
    Some(entry)
}

fn closing_text(c: &Closure) -> String {
    match &c.override_reason {
        Some(reason) => format!("incident closed with blockers overridden: {reason}"),
        None => "incident closed".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LedgerChange, RunStats};
    use crate::store::Approval;

    fn t(raw: &str) -> DateTime<Utc> {
        format!("2026-11-20T{raw}:00Z").parse().unwrap()
    }

    fn loaded() -> Vec<Invariant> {
        let known = crate::rules::Known {
            sources: ["up", "down"]
                .into_iter()
                .map(|s| {
                    (
                        crate::domain::SourceName::parse(s).unwrap(),
                        crate::config::SourceKind::Sqlite,
                    )
                })
                .collect(),
            channels: Default::default(),
            targets: Default::default(),
        };
        let (invariants, errors) = crate::rules::parse_file(
            r#"invariants:
  - name: events-processed
    time_column: created_at
    reconcile:
      left: {source: up, query: "SELECT id AS event_id, created_at FROM events"}
      right: {source: down, query: "SELECT event_id FROM processed"}
      key: event_id
"#,
            std::path::Path::new("invariants/x.yaml"),
            &known,
        );
        assert!(errors.is_empty(), "{errors:?}");
        invariants
    }

    fn incident() -> IncidentRecord {
        IncidentRecord {
            id: 1,
            name: "outage".into(),
            summary: None,
            window_from: t("02:00"),
            window_to: Some(t("03:00")),
            invariants: vec!["events-processed".into()],
            state: IncidentState::Open,
            opened_by: "olga".into(),
            opened_at: t("04:00"),
            closed_by: None,
            closed_at: None,
            override_reason: None,
            report_hash: None,
        }
    }

    fn run(id: i64, started: &str, status: RunStatus, observed: u64) -> RunRecord {
        RunRecord {
            id,
            invariant: "events-processed".into(),
            started_at: t(started),
            finished_at: Some(t(started)),
            status,
            stats: RunStats {
                rows_left: 100,
                rows_right: 100 - observed,
                observed,
                counts: [(ViolationKind::Missing, observed)].into(),
                ..RunStats::default()
            },
            change: LedgerChange::default(),
            error: (status == RunStatus::Failed).then(|| "connection refused".into()),
        }
    }

    fn plan(id: i64, kind: PlanKind, state: PlanState, approvals: &[&str]) -> PlanRecord {
        PlanRecord {
            id,
            kind,
            meta: serde_json::json!({"from": t("02:00"), "to": t("03:00")}),
            invariant: "events-processed".into(),
            definition_hash: "d".into(),
            content_hash: "h".into(),
            severity: "high".into(),
            approvals_required: 1,
            has_manual: false,
            proposed_by: "olga".into(),
            proposed_at: t("04:10"),
            expires_at: t("23:00"),
            source_run_id: None,
            state,
            state_by: None,
            state_reason: None,
            state_at: None,
            action_count: 10,
            counts: serde_json::json!({}),
            verification: None,
            approvals: approvals
                .iter()
                .map(|a| Approval {
                    approver: (*a).into(),
                    content_hash: "h".into(),
                    at: t("04:20"),
                })
                .collect(),
        }
    }

    /// A plan, its actions by status, and when its last action was applied.
    type PlanFixture<'a> = (PlanRecord, &'a [(ActionStatus, u64)], Option<&'a str>);

    fn evidence(open: u64, latest: Option<RunRecord>, plans: Vec<PlanFixture<'_>>) -> Evidence {
        let groups = [
            (ViolationStatus::Open, open),
            (ViolationStatus::Resolved, 10 - open),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(status, count)| ViolationGroup {
            invariant: "events-processed".into(),
            kind: "missing".into(),
            status,
            count,
            first_seen: t("04:00"),
            last_seen: t("04:05"),
            event_from: Some(t("02:00")),
            event_to: Some(t("02:09")),
        })
        .collect();
        Evidence {
            incident: incident(),
            events: vec![
                IncidentEvent {
                    id: 1,
                    at: t("04:30"),
                    actor: "olga".into(),
                    kind: "phase".into(),
                    phase: Some("contain".into()),
                    text: None,
                },
                IncidentEvent {
                    id: 2,
                    at: t("05:00"),
                    actor: "ravi".into(),
                    kind: "phase".into(),
                    phase: Some("reconcile".into()),
                    text: None,
                },
            ],
            invariants: vec![InvariantEvidence {
                name: "events-processed".into(),
                groups,
                open_anywhere: open + 2,
                samples: Vec::new(),
                runs: RunDigest {
                    total: 3,
                    failed: 0,
                    notable: Vec::new(),
                    latest,
                },
                plans: plans
                    .into_iter()
                    .map(|(plan, progress, last)| PlanEvidence {
                        plan,
                        progress: progress.iter().copied().collect(),
                        last_applied_at: last.map(t),
                    })
                    .collect(),
            }],
            audit: Vec::new(),
        }
    }

    fn kinds(report: &Report) -> Vec<BlockerKind> {
        report.verdict.blockers.iter().map(|b| b.kind).collect()
    }

    #[test]
    fn a_repaired_window_with_a_later_clean_run_is_ready_to_close() {
        let ev = evidence(
            0,
            Some(run(9, "06:00", RunStatus::Succeeded, 0)),
            vec![(
                plan(1, PlanKind::Compensation, PlanState::Applied, &["ana"]),
                &[(ActionStatus::Applied, 10)],
                Some("05:30"),
            )],
        );
        let report = assemble(&ev, &loaded(), None);
        assert_eq!(
            report.verdict.summary, "ready to close",
            "{:?}",
            report.verdict
        );
        let inv = &report.invariants[0];
        assert_eq!(inv.verification.result, VerificationResult::Holds);
        assert_eq!(inv.verification.required_after, t("05:30"));
        assert_eq!(inv.violations.open_outside_window, 2);
        assert_eq!(inv.compensation.applied, 10);
        assert_eq!(inv.compensation.approved, 10);
        assert_eq!(inv.consistency.as_ref().unwrap().parity_pct, Some(100.0));
        // Phases last until the next mark; the last one is still going on.
        let durations: Vec<Option<i64>> = report.phases.iter().map(|p| p.duration_secs).collect();
        assert_eq!(durations, [Some(1800), None]);
        assert_eq!(report, assemble(&ev, &loaded(), None), "no clock inside");
    }

    #[test]
    fn a_run_before_the_last_repair_does_not_verify_it() {
        let ev = evidence(
            0,
            Some(run(9, "05:00", RunStatus::Succeeded, 0)),
            vec![(
                plan(1, PlanKind::Compensation, PlanState::Applied, &["ana"]),
                &[(ActionStatus::Applied, 10)],
                Some("05:30"),
            )],
        );
        let report = assemble(&ev, &loaded(), None);
        assert_eq!(kinds(&report), [BlockerKind::StaleVerification]);
        assert!(report.verdict.blockers[0].detail.contains("run 9"));
    }

    #[test]
    fn every_kind_of_unfinished_work_is_a_blocker_of_its_own() {
        let ev = evidence(
            3,
            Some(run(9, "06:00", RunStatus::Failed, 0)),
            vec![
                (
                    plan(1, PlanKind::Compensation, PlanState::Proposed, &[]),
                    &[(ActionStatus::Pending, 10)],
                    None,
                ),
                (
                    plan(2, PlanKind::Compensation, PlanState::Stopped, &["ana"]),
                    &[
                        (ActionStatus::Applied, 5),
                        (ActionStatus::Failed, 2),
                        (ActionStatus::Pending, 3),
                    ],
                    Some("05:00"),
                ),
                (
                    plan(3, PlanKind::Replay, PlanState::Paused, &["ana"]),
                    &[(ActionStatus::Applied, 4), (ActionStatus::Pending, 6)],
                    Some("05:10"),
                ),
                (
                    plan(4, PlanKind::Replay, PlanState::Applied, &["ana"]),
                    &[(ActionStatus::Applied, 9), (ActionStatus::Parked, 1)],
                    Some("05:20"),
                ),
                (
                    plan(5, PlanKind::Compensation, PlanState::Rejected, &[]),
                    &[(ActionStatus::Pending, 10)],
                    None,
                ),
            ],
        );
        let report = assemble(&ev, &loaded(), None);
        assert_eq!(
            kinds(&report),
            [
                BlockerKind::OpenViolations,
                BlockerKind::EvaluationError,
                BlockerKind::UnapprovedPlan,
                BlockerKind::PendingActions,
                BlockerKind::FailedActions,
                BlockerKind::UnfinishedReplay,
                BlockerKind::UnfinishedReplay,
            ],
            "{:#?}",
            report.verdict
        );
        let plans: Vec<Option<i64>> = report.verdict.blockers.iter().map(|b| b.plan).collect();
        assert_eq!(
            plans,
            [None, None, Some(1), Some(2), Some(2), Some(3), Some(4)]
        );
        assert!(
            report.verdict.blockers[1]
                .detail
                .contains("connection refused")
        );
        let replays = &report.invariants[0].replays;
        assert_eq!(
            (
                replays[0].delivered,
                replays[0].pending,
                replays[0].complete
            ),
            (4, 6, false)
        );
        assert_eq!((replays[1].parked, replays[1].complete), (1, false));
        assert_eq!(
            report.invariants[0].consistency, None,
            "no consistency figures from a failed run"
        );
    }

    #[test]
    fn an_invariant_that_is_no_longer_defined_cannot_be_verified() {
        let ev = evidence(
            0,
            Some(run(9, "06:00", RunStatus::Succeeded, 0)),
            Vec::new(),
        );
        let report = assemble(&ev, &[] as &[Invariant], None);
        assert_eq!(kinds(&report), [BlockerKind::NotLoaded]);
        assert_eq!(
            report.invariants[0].verification.result,
            VerificationResult::NotLoaded
        );
    }

    #[test]
    fn a_long_timeline_keeps_its_start_and_end_and_counts_what_it_left_out() {
        let mut ev = evidence(
            0,
            Some(run(9, "06:00", RunStatus::Succeeded, 0)),
            Vec::new(),
        );
        ev.invariants[0].runs.notable = (0..TIMELINE_LIMIT as i64 + 50)
            .map(|i| RunRecord {
                started_at: t("06:00") + chrono::TimeDelta::seconds(i),
                ..run(i, "06:00", RunStatus::Failed, 0)
            })
            .collect();
        let report = assemble(&ev, &loaded(), None);
        let entries = &report.timeline.entries;
        assert_eq!(entries.len(), TIMELINE_LIMIT);
        assert_eq!(report.timeline.omitted, 50);
        assert_eq!(entries[0].run, Some(0));
        assert_eq!(
            entries[TIMELINE_LIMIT - 1].run,
            Some(TIMELINE_LIMIT as i64 + 49)
        );
    }

    #[test]
    fn closing_sets_the_state_the_closure_and_the_end_of_the_last_phase() {
        let ev = evidence(
            1,
            Some(run(9, "06:00", RunStatus::Succeeded, 1)),
            Vec::new(),
        );
        let closure = Closure {
            closed_by: "april".into(),
            closed_at: t("07:00"),
            overridden: true,
            override_reason: Some("tracked in BILL-1".into()),
        };
        let report = assemble(&ev, &loaded(), Some(&closure));
        assert_eq!(report.incident.state, IncidentState::Closed);
        assert_eq!(report.phases[1].duration_secs, Some(7200));
        assert_eq!(report.closure.as_ref(), Some(&closure));
        let last = report.timeline.entries.last().unwrap();
        assert_eq!(
            last.text,
            "incident closed with blockers overridden: tracked in BILL-1"
        );
        let md = crate::incident::render(&report, crate::incident::ReportFormat::Md).unwrap();
        assert!(
            md.contains("**with blockers overridden**: tracked in BILL-1"),
            "{md}"
        );
        let html = crate::incident::render(&report, crate::incident::ReportFormat::Html).unwrap();
        assert!(
            html.contains("<strong>with blockers overridden</strong>"),
            "{html}"
        );
    }

    #[test]
    fn the_timeline_says_what_the_audit_log_recorded_in_words() {
        let mut ev = evidence(
            0,
            Some(run(9, "06:00", RunStatus::Succeeded, 0)),
            vec![(
                plan(1, PlanKind::Replay, PlanState::Applied, &["ana"]),
                &[(ActionStatus::Applied, 10)],
                Some("05:30"),
            )],
        );
        let entry = |id: i64, action: &str, target: &str, details: serde_json::Value| AuditEntry {
            id,
            at: t("05:00") + chrono::TimeDelta::seconds(id),
            actor: "ana".into(),
            action: action.into(),
            target: target.into(),
            details,
        };
        ev.audit = vec![
            entry(
                1,
                "alert.firing",
                "invariant:events-processed",
                serde_json::json!({"from": "pending"}),
            ),
            entry(
                2,
                "plan.apply.requested",
                "plan:1",
                serde_json::json!({"dry_run": true}),
            ),
            entry(
                3,
                "plan.apply.requested",
                "plan:1",
                serde_json::json!({"dry_run": false, "rate": "5/s"}),
            ),
            entry(
                4,
                "plan.verify",
                "plan:1",
                serde_json::json!({"checked": 10, "closed": 10, "still_open": 0, "remaining_in_window": 0}),
            ),
            entry(
                5,
                "incident.note",
                "incident:outage",
                serde_json::json!({"text": "consumer back"}),
            ),
            entry(6, "plan.approve", "plan:99", serde_json::json!({})),
        ];
        let report = assemble(&ev, &loaded(), None);
        let texts: Vec<&str> = report
            .timeline
            .entries
            .iter()
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(
            texts,
            [
                "alert pending → firing",
                "replay plan 1: dry run",
                "replay plan 1: apply requested at 5/s",
                "replay plan 1 verified: 10 re-checked, 10 closed, 0 still open, 0 missing left in its window",
                "note: consumer back",
            ],
            "a plan outside the incident is left out"
        );
    }

    #[test]
    fn html_from_the_ledger_is_escaped() {
        let mut ev = evidence(
            0,
            Some(run(9, "06:00", RunStatus::Succeeded, 0)),
            Vec::new(),
        );
        ev.incident.summary = Some("<script>alert(1)</script>".into());
        let report = assemble(&ev, &loaded(), None);
        let html = crate::incident::render(&report, crate::incident::ReportFormat::Html).unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }
}

//! Evidence → report, without the clock: the same store content gives the same report.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::{IncidentState, PlanKind, PlanState, RunStatus, ViolationStatus};
use crate::domain::{Invariant, ViolationKind};
use crate::store::{IncidentEvent, IncidentWindow, RunRecord};

use super::timeline::{audit_entry, closing_text, run_entry};
use super::verdict::invariant_blockers;
use super::*;

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
            timeline.push(run_entry(run, closed_at.is_some()));
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
pub(super) fn phases(events: &[IncidentEvent], closed_at: Option<DateTime<Utc>>) -> Vec<PhasePart> {
    let mut marks = crate::incident::latest_phase_marks(events);
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

pub(super) fn invariant_part(
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
    // A later incremental tick does not undo the evidence of a run that read every row after
    // the repair: that one is the evidence. A later run over its violation budget does (it
    // read every row and found more than it could store: the window may hold some).
    let partial = |r: &RunRecord| r.stats.truncated || !reads_every_row(&r.stats.coverage);
    let latest = match ev.runs.latest.as_ref() {
        Some(r)
            if r.status == RunStatus::Succeeded
                && !r.stats.truncated
                && !reads_every_row(&r.stats.coverage) =>
        {
            ev.runs
                .latest_full
                .as_ref()
                .filter(|full| full.started_at > required_after && full.started_at >= window.from)
                .or(Some(r))
        }
        other => other,
    };
    let result = match latest {
        _ if definition.is_none() => VerificationResult::NotLoaded,
        None => VerificationResult::Missing,
        Some(r) if r.started_at < window.from => VerificationResult::Missing,
        Some(r) if r.started_at <= required_after => VerificationResult::Stale,
        Some(r) if r.status != RunStatus::Succeeded => VerificationResult::Failed,
        Some(_) if open > 0 => VerificationResult::Violations,
        // An incremental run left every key it did not read as it was, and a truncated one
        // stored only the first violations in key order (those in the window may be past
        // them): neither is evidence that the window holds.
        Some(r) if partial(r) => VerificationResult::Partial,
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
        slo: ev.slo.as_ref().map(slo_part),
        verification,
    }
}

fn slo_part(e: &SloEvidence) -> SloPart {
    use crate::slo::{budget_left_words, percent as pct, span_words};
    let o = &e.objective;
    let used = e.incident.budget_used(o);
    let rolling_used = e.rolling.budget_used(o);
    let unverified = if e.incident.unverified > chrono::TimeDelta::zero() {
        format!(
            " {} of it followed failed runs: nothing confirmed the state then.",
            span_words(e.incident.unverified)
        )
    } else {
        String::new()
    };
    SloPart {
        objective: o.describe(),
        objective_pct: percent(o.target.ratio(), 1.0),
        max_open_secs: o.max_open.as_chrono().num_seconds(),
        window_secs: o.window.as_chrono().num_seconds(),
        budget_secs: o.allowed_breach().num_seconds(),
        from: e.incident.from,
        to: e.incident.to,
        breach_secs: e.incident.breach.num_seconds(),
        unverified_secs: e.incident.unverified.num_seconds(),
        budget_used_pct: percent(used, 1.0),
        budget_left_pct: percent(1.0 - rolling_used, 1.0),
        statement: format!(
            "This incident consumed {} of the error budget: {} in breach of the {} the objective allows over {}.{unverified} Over the last {}: {}.",
            pct(used),
            span_words(e.incident.breach),
            span_words(o.allowed_breach()),
            o.window_words(),
            o.window_words(),
            budget_left_words(rolling_used),
        ),
    }
}

pub(super) fn consistency(
    run: &RunRecord,
    replays: &[ReplayPart],
    v: &ViolationsPart,
) -> ConsistencyPart {
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
pub(super) fn percent(part: f64, whole: f64) -> f64 {
    (part / whole * 100.0 * 10_000.0).round() / 10_000.0
}

pub(super) fn min_opt(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a run of this coverage read every row its invariant reads: a full pass, or a
/// windowed invariant's run over its window (which every run of it is).
fn reads_every_row(coverage: &crate::domain::Coverage) -> bool {
    !matches!(coverage, crate::domain::Coverage::Changed { .. })
}

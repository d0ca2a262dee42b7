//! What blocks an incident's closure, invariant by invariant.

use crate::domain::{PlanKind, PlanState};

use super::*;

pub(super) fn invariant_blockers(part: &InvariantPart) -> Vec<Blocker> {
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
                "`{name}` is not defined in the loaded invariant files, so it cannot be re-checked; restore its definition, or close the incident overriding this blocker with a reason"
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
        (VerificationResult::Partial, Some(run)) => block(
            BlockerKind::StaleVerification,
            None,
            format!(
                "the latest evaluation (run {}) read only part of the rows (an incremental run: evaluate `{name}` in full; or one over its violation budget: raise `violation_budget`), and no run since the repair read them all; re-check after one has",
                run.id
            ),
        ),
        (VerificationResult::Missing, _) => block(
            BlockerKind::StaleVerification,
            None,
            format!(
                "not evaluated since the window opened ({}); evaluate `{name}` and re-check",
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
                    "replay plan {} is {}: {} delivered, {} pending, {} parked; finish applying it or cancel it",
                    p.id,
                    if p.approved {
                        "approved, not applied"
                    } else {
                        p.state.as_str()
                    },
                    t.applied,
                    t.unfinished(),
                    t.parked,
                ),
            );
        } else if p.kind == PlanKind::Replay && p.state == PlanState::Applied && t.parked > 0 {
            block(
                BlockerKind::UnfinishedReplay,
                Some(p.id),
                format!(
                    "replay plan {} parked {} event(s); deliver them (apply it again, retrying its failed actions)",
                    p.id, t.parked
                ),
            );
        } else if live && t.unfinished() > 0 {
            block(
                BlockerKind::PendingActions,
                Some(p.id),
                format!(
                    "plan {} ({}) has {} action(s) not applied; apply it or reject it",
                    p.id,
                    if p.approved {
                        "approved"
                    } else {
                        p.state.as_str()
                    },
                    t.unfinished(),
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
                    "plan {} has {} failed action(s); retry them (apply it again, retrying its failed actions)",
                    p.id,
                    t.failed + t.parked,
                ),
            );
        }
    }
    out
}

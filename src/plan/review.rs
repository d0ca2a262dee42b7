//! Reviewing a plan: its view, who may approve it, approve and reject, staleness, and whether
//! it may be applied now.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::{Actor, Invariant, Role};
use crate::domain::{PlanId, PlanState};
use crate::store::{ActionRecord, PlanRecord, Store, Transition};

use super::*;
use crate::domain::NextStep;

/// Where a plan stands for approval.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct ApprovalStatus {
    pub plan: PlanId,
    pub content_hash: String,
    /// Distinct identities that approved this content hash.
    pub approvers: Vec<String>,
    pub required: u32,
    pub approved: bool,
    /// Whether this call added an approval (false: this identity had already approved).
    pub counted: bool,
}

/// A plan as reviewers see it: its record, where it stands and its progress.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct PlanView {
    #[serde(flatten)]
    pub plan: PlanRecord,
    /// proposed, approved, stale, rejected, superseded, applying, applied or stopped.
    pub status: &'static str,
    /// Identities whose approval counts (they approved the current content hash).
    pub approvers: Vec<String>,
    pub approved: bool,
    /// Why it can no longer be approved or applied, if so.
    pub stale: Option<String>,
    /// What to do about a stale plan, for each surface to word (not part of the JSON).
    #[serde(skip)]
    pub stale_next: Option<NextStep>,
    pub progress: BTreeMap<crate::domain::ActionStatus, u64>,
}

pub async fn view(
    store: &dyn Store,
    plan: PlanRecord,
    invariant: Option<&Invariant>,
    now: DateTime<Utc>,
) -> Result<PlanView, PlanError> {
    let approvers = valid_approvers(&plan);
    let approved = approvers.len() as u32 >= plan.approvals_required;
    let stale = match plan.state {
        PlanState::Proposed | PlanState::Applying | PlanState::Stopped | PlanState::Paused => {
            staleness(&plan, invariant, now)
        }
        _ => None,
    };
    let (stale, stale_next) = match stale {
        Some(s) => (Some(s.why), s.next),
        None => (None, None),
    };
    let status = match plan.state {
        _ if stale.is_some() => "stale",
        PlanState::Proposed if approved => "approved",
        s => s.as_str(),
    };
    let progress = store.action_progress(plan.id).await?;
    Ok(PlanView {
        plan,
        status,
        approvers,
        approved,
        stale,
        stale_next,
        progress,
    })
}

/// Approvers whose approval counts: those who approved the plan's current content hash.
pub fn valid_approvers(plan: &PlanRecord) -> Vec<String> {
    plan.approvals
        .iter()
        .filter(|a| a.content_hash == plan.content_hash)
        .map(|a| a.approver.clone())
        .collect()
}

/// Why a plan can no longer be approved or applied, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub why: String,
    pub next: Option<NextStep>,
}

impl Stale {
    fn because(why: String) -> Self {
        Self { why, next: None }
    }
}

/// Why the plan may not be approved or applied any more (`None`: it still may be).
pub fn staleness(
    plan: &PlanRecord,
    invariant: Option<&Invariant>,
    now: DateTime<Utc>,
) -> Option<Stale> {
    match plan.state {
        PlanState::Rejected => {
            return Some(Stale::because(format!(
                "it was rejected by {} ({}); propose a new plan",
                plan.state_by.as_deref().unwrap_or("?"),
                plan.state_reason.as_deref().unwrap_or("no reason given")
            )));
        }
        PlanState::Superseded => {
            return Some(Stale {
                why: "a newer plan for the same invariant replaced it; review that one".into(),
                next: Some(NextStep::ListPlans),
            });
        }
        PlanState::Applied => return Some(Stale::because("it has already been applied".into())),
        PlanState::Cancelled => {
            return Some(Stale::because(format!(
                "it was cancelled by {}",
                plan.state_by.as_deref().unwrap_or("?")
            )));
        }
        PlanState::Paused => {}
        PlanState::Proposed | PlanState::Applying | PlanState::Stopped => {}
    }
    let fresh = || Some(NextStep::ProposeFreshPlan(plan.invariant.clone()));
    if now >= plan.expires_at {
        return Some(Stale {
            why: format!(
                "it is stale: it expired at {} (plans.ttl)",
                plan.expires_at.to_rfc3339()
            ),
            next: fresh(),
        });
    }
    match invariant {
        None => Some(Stale::because(format!(
            "it is stale: invariant `{}` is no longer defined",
            plan.invariant
        ))),
        Some(inv) if inv.definition_hash() != plan.definition_hash => Some(Stale {
            why: format!(
                "it is stale: invariant `{}` changed since the plan was proposed",
                plan.invariant
            ),
            next: fresh(),
        }),
        Some(_) => None,
    }
}

/// Recomputes the content hash from the stored actions; refuses a plan whose actions are
/// not what was proposed and approved.
pub async fn verify_content(
    store: &dyn Store,
    plan: &PlanRecord,
) -> Result<Vec<ActionRecord>, PlanError> {
    let actions = all_actions(store, plan.id).await?;
    let recomputed = stored_content_hash(plan, &actions);
    if recomputed != plan.content_hash || actions.len() as u64 != plan.action_count {
        return Err(PlanError::refused(
            plan.id,
            format!(
                "its actions changed after it was proposed (content hash {} recomputes to {}); it is refused. Propose a new plan and review it",
                short(&plan.content_hash),
                short(&recomputed)
            ),
        ));
    }
    Ok(actions)
}

/// Approving and rejecting need the approver role or above.
pub(super) fn require_approver(actor: &Actor, plan: PlanId, verb: &str) -> Result<(), PlanError> {
    if actor.role < Role::Approver {
        return Err(PlanError::Forbidden {
            plan,
            reason: format!(
                "`{}` has the {} role; {verb} needs approver or admin",
                actor.name, actor.role
            ),
        });
    }
    Ok(())
}

/// An action's marker in a plan shown as a diff: `+` adds what is missing, `-` removes what
/// is extra, `~` changes what differs.
pub fn diff_marker(violation_kind: &str) -> &'static str {
    match violation_kind {
        "missing" => "+",
        "extra" | "duplicate" => "-",
        _ => "~",
    }
}

/// Records `actor`'s approval of the plan. `seen_hash` is the content hash the approver
/// reviewed (required through the API and the console); it must be the plan's.
pub async fn approve(
    store: &dyn Store,
    id: PlanId,
    invariant: Option<&Invariant>,
    actor: &Actor,
    seen_hash: Option<&ReviewedHash>,
    now: DateTime<Utc>,
) -> Result<ApprovalStatus, PlanError> {
    require_approver(actor, id, "approving")?;
    let plan = load(store, id).await?;
    if plan.state != PlanState::Proposed {
        return Err(match staleness(&plan, invariant, now) {
            Some(stale) => PlanError::stale(id, stale),
            None => PlanError::refused(
                id,
                format!(
                    "it is {}; only a proposed plan is approved",
                    plan.state.as_str()
                ),
            ),
        });
    }
    if let Some(stale) = staleness(&plan, invariant, now) {
        return Err(PlanError::stale(id, stale));
    }
    if let Some(seen) = seen_hash
        && !seen.matches(&plan.content_hash)
    {
        return Err(PlanError::Refused {
            plan: id,
            reason: format!(
                "you reviewed content {} but the plan is {}; review it again",
                short(seen.as_str()),
                short(&plan.content_hash)
            ),
            next: Some(NextStep::ReviewPlanAgain(id)),
        });
    }
    if plan.has_manual && plan.proposed_by == actor.name {
        return Err(PlanError::Forbidden {
            plan: id,
            reason: format!(
                "`{}` proposed this plan and it has manual steps; someone else must approve it",
                actor.name
            ),
        });
    }
    verify_content(store, &plan).await?;
    let counted = store
        .approve_plan(id, &actor.name, &plan.content_hash, now)
        .await?;
    let plan = load(store, id).await?;
    let approvers = valid_approvers(&plan);
    Ok(ApprovalStatus {
        plan: id,
        content_hash: plan.content_hash.clone(),
        approved: approvers.len() as u32 >= plan.approvals_required,
        required: plan.approvals_required,
        approvers,
        counted,
    })
}

pub async fn reject(
    store: &dyn Store,
    id: PlanId,
    actor: &Actor,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), PlanError> {
    require_approver(actor, id, "rejecting")?;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(PlanError::refused(
            id,
            "a rejection needs a reason, which the audit log keeps",
        ));
    }
    load(store, id).await?;
    let moved = store
        .transition_plan(
            id,
            &Transition {
                from: &[PlanState::Proposed, PlanState::Stopped],
                to: PlanState::Rejected,
                by: &actor.name,
                reason: Some(reason),
                at: now,
                audit_action: "plan.reject",
                details: serde_json::json!({}),
            },
        )
        .await?;
    if !moved {
        let plan = load(store, id).await?;
        return Err(PlanError::refused(
            id,
            format!(
                "it is {}; only a proposed or stopped plan can be rejected",
                plan.state.as_str()
            ),
        ));
    }
    Ok(())
}

/// Everything `apply` needs to know before it may start: the plan is live, its actions are
/// what was approved, and enough distinct identities approved that content.
pub async fn check_applicable(
    store: &dyn Store,
    plan: &PlanRecord,
    invariant: Option<&Invariant>,
    now: DateTime<Utc>,
) -> Result<Vec<ActionRecord>, PlanError> {
    if let Some(stale) = staleness(plan, invariant, now) {
        return Err(PlanError::stale(
            plan.id,
            Stale {
                why: format!("{}; nothing was applied", stale.why),
                ..stale
            },
        ));
    }
    if plan.state == PlanState::Paused {
        return Err(PlanError::Refused {
            plan: plan.id,
            reason: "it is paused; nothing was applied".into(),
            next: Some(NextStep::ResumePlan(plan.id)),
        });
    }
    let actions = verify_content(store, plan).await?;
    let approvers = valid_approvers(plan);
    if (approvers.len() as u32) < plan.approvals_required {
        return Err(PlanError::Refused {
            plan: plan.id,
            reason: format!(
                "it is not approved: {} of {} distinct approvers ({}); nothing was applied",
                approvers.len(),
                plan.approvals_required,
                if approvers.is_empty() {
                    "none yet".to_owned()
                } else {
                    approvers.join(", ")
                },
            ),
            next: Some(NextStep::ApprovePlan(plan.id)),
        });
    }
    Ok(actions)
}

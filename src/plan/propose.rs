//! Proposing: open violations with a compensation → a plan of actions, after a run or on request.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::config::{Config, TargetConfig};
use crate::domain::{ActionSpec, Actor, Invariant, ViolationContext, ViolationKind};
use crate::domain::{PlanId, PlanKind, PlanState};
use crate::runner::RunOutcome;
use crate::store::{NewAction, NewPlan, StatusFilter, Store, StoreError, ViolationFilter};

use super::*;

/// A run, and what proposing a plan after it did.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Evaluation {
    #[serde(flatten)]
    pub run: RunOutcome,
    /// `None` when the run did not get as far as proposing (it failed, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposal: Option<Proposal>,
}

/// What proposing did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Proposal {
    Created {
        plan: PlanId,
        actions: u64,
    },
    /// The open plan already holds exactly these actions.
    Unchanged {
        plan: PlanId,
    },
    /// No open violation has a compensation.
    Nothing,
    /// After a run: no plan, because the compensations could not be built (a template names
    /// a column the query does not return, say).
    Failed {
        error: String,
    },
}

/// Every violation the filter matches (its `after_id` and `limit` are used for paging).
pub(crate) async fn all_violations(
    store: &dyn Store,
    filter: ViolationFilter,
) -> Result<Vec<crate::store::ViolationRecord>, StoreError> {
    let mut out = Vec::new();
    let mut page_filter = ViolationFilter {
        after_id: None,
        limit: 1000,
        ..filter
    };
    loop {
        let page = store.violations(&page_filter).await?;
        let Some(last) = page.last() else { break };
        page_filter.after_id = Some(last.id);
        out.extend(page);
    }
    Ok(out)
}

/// Base URLs of the HTTP targets, for rendering action URLs.
pub(crate) fn base_url_of(
    config: &Config,
) -> impl Fn(&crate::domain::TargetName) -> Option<String> + '_ {
    |name| match config.targets.get(name) {
        Some(TargetConfig::Http(h)) => Some(h.base_url.clone()),
        _ => None,
    }
}

/// Turns the invariant's open violations that have a compensation into a plan. When the
/// latest proposed plan already holds exactly these actions, nothing new is stored.
pub async fn propose(
    store: &dyn Store,
    config: &Config,
    invariant: &Invariant,
    actor: &Actor,
    source_run: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Proposal, PlanError> {
    if invariant.compensate.is_empty() {
        return Err(PlanError::NoCompensation(invariant.name.to_string()));
    }
    let name = invariant.name.as_str();
    let key_columns: Vec<&str> = invariant.key().iter().map(|c| c.as_str()).collect();
    let base_url = base_url_of(config);
    let mut actions = Vec::new();
    let mut failures = Vec::new();
    let open = all_violations(
        store,
        ViolationFilter {
            invariants: vec![name.to_owned()],
            status: StatusFilter::Active,
            ..ViolationFilter::default()
        },
    )
    .await?;
    for v in &open {
        let Some(kind) = ViolationKind::parse(&v.kind) else {
            continue;
        };
        let Some(compensation) = invariant.compensate.get(&kind) else {
            continue;
        };
        let key_values = key_values(&v.key);
        let ctx = ViolationContext {
            invariant: name,
            kind,
            fingerprint: &v.fingerprint,
            key: key_columns.iter().copied().zip(key_values.iter()).collect(),
            evidence: &v.evidence,
        };
        match compensation.render(&ctx, &base_url) {
            Ok(spec) => actions.push(NewAction {
                // One key per occurrence: a violation that was resolved and came back is
                // a new occurrence, compensated anew.
                idempotency_key: idempotency_key(
                    name,
                    &format!("{}#{}", v.fingerprint, v.times_reopened),
                    &spec,
                ),
                partition: String::new(),
                event_at: v.event_at,
                fingerprint: v.fingerprint.clone(),
                violation_kind: kind,
                key: v.key.clone(),
                evidence: v.evidence.clone(),
                spec,
            }),
            Err(e) => failures.push(format!("violation {} (key {}): {e}", v.id, v.key)),
        }
    }
    if let Some(first) = failures.first() {
        return Err(PlanError::Render {
            invariant: name.to_owned(),
            count: failures.len(),
            first: first.clone(),
        });
    }
    if actions.is_empty() {
        return Ok(Proposal::Nothing);
    }
    let definition_hash = invariant.definition_hash();
    let hash = content_hash(
        name,
        &definition_hash,
        PlanKind::Compensation,
        &serde_json::json!({}),
        actions.iter().map(HashedAction::from),
    );
    if let Some(open) = store
        .plans(Some(name), 1)
        .await?
        .into_iter()
        .find(|p| p.state == PlanState::Proposed && p.expires_at > now)
        && open.content_hash == hash
        && verify_content(store, &open).await.is_ok()
    {
        return Ok(Proposal::Unchanged { plan: open.id });
    }
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for a in &actions {
        *counts
            .entry(a.spec.type_name().to_owned())
            .or_default()
            .entry(a.violation_kind.as_str().to_owned())
            .or_default() += 1;
    }
    let plan = NewPlan {
        kind: PlanKind::Compensation,
        meta: serde_json::json!({}),
        invariant: name.to_owned(),
        definition_hash,
        content_hash: hash,
        severity: invariant.severity.to_string(),
        approvals_required: config.plans.approvals_for(invariant.severity),
        has_manual: actions
            .iter()
            .any(|a| matches!(a.spec, ActionSpec::Manual { .. })),
        proposed_by: actor.name.clone(),
        proposed_at: now,
        expires_at: now + config.plans.ttl.as_chrono(),
        source_run_id: source_run,
        counts: serde_json::to_value(&counts).unwrap_or_default(),
    };
    let id = store.create_plan(&plan, &actions).await?;
    Ok(Proposal::Created {
        plan: id,
        actions: actions.len() as u64,
    })
}

/// Proposes a plan after a run that found new or reopened violations of a compensated
/// invariant. A failure to propose is logged and reported; it never fails the run.
pub async fn propose_after_run(
    store: &dyn Store,
    config: &Config,
    invariant: &Invariant,
    run: RunOutcome,
    actor: &Actor,
) -> Evaluation {
    let proposal = match run.change {
        Some(change) if !invariant.compensate.is_empty() && change.new + change.reopened > 0 => {
            match propose(
                store,
                config,
                invariant,
                actor,
                Some(run.run_id),
                Utc::now(),
            )
            .await
            {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(invariant = %invariant.name, "no plan proposed: {e}");
                    Some(Proposal::Failed {
                        error: e.to_string(),
                    })
                }
            }
        }
        _ => None,
    };
    Evaluation { run, proposal }
}

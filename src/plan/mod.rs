//! Compensation plans: propose (violations → actions), review, approve, reject, and decide
//! whether a plan may be applied. Applying is in [`apply`]; the systems it changes in
//! [`targets`].
//!
//! A plan is immutable once stored. Its content hash covers every action (what it does, to
//! which key, with which idempotency key) and the invariant's definition; approvals record the
//! hash they approved, and apply recomputes the hash from the stored actions. Anything that
//! changes the actions is a new plan, with no approvals.

pub mod apply;
mod control;
pub mod dry_runs;
mod hash;
mod propose;
pub mod recheck;
pub mod replay;
mod review;
pub mod targets;

use crate::domain::PlanId;
use crate::store::{ActionRecord, PlanRecord, Store, StoreError};

pub use control::{Control, control};
use hash::stored_content_hash;
pub use hash::{
    HashError, HashedAction, MIN_HASH_PREFIX, ReviewedHash, content_hash, idempotency_key, short,
};
pub use propose::{Evaluation, Proposal, propose, propose_after_run};
pub(crate) use propose::{all_violations, base_url_of};
pub use review::{
    ApprovalStatus, PlanView, Stale, approve, check_applicable, diff_marker, reject, staleness,
    valid_approvers, verify_content, view,
};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("plan {0} does not exist")]
    NotFound(PlanId),
    #[error(
        "invariant `{0}` has no `compensate:` block, so trueup cannot propose actions for it; add one (see README, \"Compensating actions\")"
    )]
    NoCompensation(String),
    #[error(
        "cannot build {count} action(s) of invariant `{invariant}`; nothing was proposed. First: {first}"
    )]
    Render {
        invariant: String,
        count: usize,
        first: String,
    },
    #[error("plan {plan}: {reason}")]
    Refused {
        plan: PlanId,
        reason: String,
        /// What to do about it, for each surface to word.
        next: Option<crate::domain::NextStep>,
    },
    #[error("plan {plan}: {reason}")]
    Forbidden { plan: PlanId, reason: String },
    #[error("target `{target}`: {message}")]
    Target { target: String, message: String },
    /// A source could not be read to re-check whether an action's work is done.
    #[error(transparent)]
    Recheck(#[from] recheck::RecheckError),
}

impl PlanError {
    /// What the person can do about it, for each surface to word.
    pub fn next_step(&self) -> Option<crate::domain::NextStep> {
        match self {
            PlanError::NotFound(_) => Some(crate::domain::NextStep::ListPlans),
            PlanError::Refused { next, .. } => next.clone(),
            _ => None,
        }
    }

    fn refused(plan: PlanId, reason: impl Into<String>) -> Self {
        PlanError::Refused {
            plan,
            reason: reason.into(),
            next: None,
        }
    }

    /// A refusal because the plan is stale.
    fn stale(plan: PlanId, stale: Stale) -> Self {
        PlanError::Refused {
            plan,
            reason: stale.why,
            next: stale.next,
        }
    }
}

/// A violation's key as its list of values (the store keeps a list; one value stands alone).
pub(crate) fn key_values(key: &serde_json::Value) -> Vec<serde_json::Value> {
    match key {
        serde_json::Value::Array(values) => values.clone(),
        other => vec![other.clone()],
    }
}

/// Every action of a plan, in order.
pub(crate) async fn all_actions(
    store: &dyn Store,
    plan: PlanId,
) -> Result<Vec<ActionRecord>, StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.plan_actions(plan, after, 5000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        out.extend(page);
    }
    Ok(out)
}

pub async fn load(store: &dyn Store, id: PlanId) -> Result<PlanRecord, PlanError> {
    store.plan(id).await?.ok_or(PlanError::NotFound(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ActionSpec, PlanKind};

    fn hash_one(spec: &ActionSpec, definition: &str, key: &serde_json::Value) -> String {
        content_hash(
            "inv",
            definition,
            PlanKind::Compensation,
            &serde_json::json!({}),
            [HashedAction {
                fingerprint: "fp",
                violation_kind: "extra",
                key,
                spec,
                idempotency_key: "k",
                partition: "",
                event_at: None,
            }]
            .into_iter(),
        )
    }

    #[test]
    fn the_same_action_for_the_same_violation_has_one_idempotency_key() {
        let spec = ActionSpec::Manual {
            instructions: "x".into(),
        };
        let a = idempotency_key("inv", "fp1", &spec);
        assert_eq!(a, idempotency_key("inv", "fp1", &spec));
        assert_ne!(a, idempotency_key("inv", "fp2", &spec));
        let other = ActionSpec::Manual {
            instructions: "y".into(),
        };
        assert_ne!(a, idempotency_key("inv", "fp1", &other));
    }

    #[test]
    fn the_content_hash_does_not_depend_on_the_order_a_store_keeps_json_keys_in() {
        let spec = |body: serde_json::Value| ActionSpec::Http {
            target: "t".into(),
            method: "POST".into(),
            url: "https://x/".into(),
            headers: Default::default(),
            body: Some(body),
        };
        let a: serde_json::Value = serde_json::from_str(r#"{"event_id": 1, "amount": 2}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"amount": 2, "event_id": 1}"#).unwrap();
        let key = serde_json::json!([1]);
        let hash = |s: &ActionSpec| hash_one(s, "d", &key);
        assert_eq!(hash(&spec(a.clone())), hash(&spec(b.clone())));
        assert_eq!(
            idempotency_key("i", "f", &spec(a)),
            idempotency_key("i", "f", &spec(b))
        );
    }

    #[test]
    fn any_change_to_an_action_changes_the_content_hash() {
        let spec = ActionSpec::Sql {
            target: "t".into(),
            statement: "DELETE FROM x WHERE id = $1".into(),
            params: vec![serde_json::json!(1)],
        };
        let key = serde_json::json!([1]);
        let hash = |spec: &ActionSpec, def: &str| hash_one(spec, def, &key);
        let base = hash(&spec, "d1");
        assert_eq!(base, hash(&spec, "d1"));
        assert_ne!(base, hash(&spec, "d2"));
        let changed = ActionSpec::Sql {
            target: "t".into(),
            statement: "DELETE FROM x WHERE id = $1".into(),
            params: vec![serde_json::json!(2)],
        };
        assert_ne!(base, hash(&changed, "d1"));
    }
}

//! Compensation plans: propose (violations → actions), review, approve, reject, and decide
//! whether a plan may be applied. Applying is in [`apply`]; the systems it changes in
//! [`targets`].
//!
//! A plan is immutable once stored. Its content hash covers every action (what it does, to
//! which key, with which idempotency key) and the invariant's definition; approvals record the
//! hash they approved, and apply recomputes the hash from the stored actions. Anything that
//! changes the actions is a new plan, with no approvals.

pub mod apply;
pub mod netguard;
pub mod recheck;
pub mod replay;
pub mod targets;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::{Config, TargetConfig};
use crate::domain::{ActionSpec, Actor, Invariant, Role, ViolationContext, ViolationKind};
use crate::domain::{PlanId, PlanKind, PlanState};
use crate::runner::RunOutcome;
use crate::store::{
    ActionRecord, NewAction, NewPlan, PlanRecord, StatusFilter, Store, StoreError, Transition,
    ViolationFilter,
};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("plan {0} does not exist; `trueup plans` lists the plans")]
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
    Refused { plan: PlanId, reason: String },
    #[error("plan {plan}: {reason}")]
    Forbidden { plan: PlanId, reason: String },
    #[error("target `{target}`: {message}")]
    Target { target: String, message: String },
    /// A source could not be read to re-check whether an action's work is done.
    #[error(transparent)]
    Recheck(#[from] recheck::RecheckError),
}

impl PlanError {
    fn refused(plan: PlanId, reason: impl Into<String>) -> Self {
        PlanError::Refused {
            plan,
            reason: reason.into(),
        }
    }
}

/// A run, and what proposing a plan after it did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluation {
    #[serde(flatten)]
    pub run: RunOutcome,
    /// `None` when the run did not get as far as proposing (it failed, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposal: Option<Proposal>,
}

/// What proposing did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

/// The stable idempotency key of compensating one violation with one concrete action: the same
/// action for the same violation has the same key in every plan, so it is applied once.
pub fn idempotency_key(invariant: &str, fingerprint: &str, spec: &ActionSpec) -> String {
    let mut h = Sha256::new();
    h.update(invariant);
    h.update([0]);
    h.update(fingerprint);
    h.update([0]);
    h.update(canonical(&serde_json::to_value(spec).unwrap_or_default()));
    format!("trueup-{}", hex::encode(&h.finalize()[..16]))
}

/// JSON text with object keys sorted at every level: the same value gives the same text
/// whichever store kept it (PostgreSQL's JSONB reorders keys).
fn canonical(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                serde_json::Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sorted).collect())
            }
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// What the content hash of a plan covers for one action.
pub struct HashedAction<'a> {
    pub fingerprint: &'a str,
    pub violation_kind: &'a str,
    pub key: &'a serde_json::Value,
    pub spec: &'a ActionSpec,
    pub idempotency_key: &'a str,
    pub partition: &'a str,
    pub event_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a NewAction> for HashedAction<'a> {
    fn from(a: &'a NewAction) -> Self {
        Self {
            fingerprint: &a.fingerprint,
            violation_kind: a.violation_kind.as_str(),
            key: &a.key,
            spec: &a.spec,
            idempotency_key: &a.idempotency_key,
            partition: &a.partition,
            event_at: a.event_at,
        }
    }
}

impl<'a> From<&'a ActionRecord> for HashedAction<'a> {
    fn from(a: &'a ActionRecord) -> Self {
        Self {
            fingerprint: &a.fingerprint,
            violation_kind: &a.violation_kind,
            key: &a.key,
            spec: &a.spec,
            idempotency_key: &a.idempotency_key,
            partition: &a.partition,
            event_at: a.event_at,
        }
    }
}

/// The content hash of a plan: its invariant, definition, kind and purpose (`meta`: a
/// replay's window), and its actions in order.
pub fn content_hash<'a>(
    invariant: &str,
    definition_hash: &str,
    kind: PlanKind,
    meta: &serde_json::Value,
    actions: impl Iterator<Item = HashedAction<'a>>,
) -> String {
    let mut h = Sha256::new();
    h.update(invariant);
    h.update([0]);
    h.update(definition_hash);
    h.update([0]);
    h.update(canonical(&serde_json::json!([kind.as_str(), meta])));
    for (seq, a) in actions.enumerate() {
        let spec = serde_json::to_value(a.spec).unwrap_or_default();
        let at = a
            .event_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let line = serde_json::json!([
            seq + 1,
            a.fingerprint,
            a.violation_kind,
            a.key,
            spec,
            a.idempotency_key,
            a.partition,
            at
        ]);
        h.update([0]);
        h.update(canonical(&line));
    }
    hex::encode(h.finalize())
}

fn stored_content_hash(plan: &PlanRecord, actions: &[ActionRecord]) -> String {
    content_hash(
        &plan.invariant,
        &plan.definition_hash,
        plan.kind,
        &plan.meta,
        actions.iter().map(HashedAction::from),
    )
}

/// A violation's key as its list of values (the store keeps a list; one value stands alone).
pub(crate) fn key_values(key: &serde_json::Value) -> Vec<serde_json::Value> {
    match key {
        serde_json::Value::Array(values) => values.clone(),
        other => vec![other.clone()],
    }
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

/// Where a plan stands for approval.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
#[derive(Debug, Clone, serde::Serialize)]
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
        progress,
    })
}

pub async fn load(store: &dyn Store, id: PlanId) -> Result<PlanRecord, PlanError> {
    store.plan(id).await?.ok_or(PlanError::NotFound(id))
}

/// Approvers whose approval counts: those who approved the plan's current content hash.
pub fn valid_approvers(plan: &PlanRecord) -> Vec<String> {
    plan.approvals
        .iter()
        .filter(|a| a.content_hash == plan.content_hash)
        .map(|a| a.approver.clone())
        .collect()
}

/// Why a plan cannot be approved or applied now, if it cannot. `invariant` is the loaded
/// definition of the plan's invariant (`None` when it no longer exists).
pub fn staleness(
    plan: &PlanRecord,
    invariant: Option<&Invariant>,
    now: DateTime<Utc>,
) -> Option<String> {
    match plan.state {
        PlanState::Rejected => {
            return Some(format!(
                "it was rejected by {} ({}); propose a new plan",
                plan.state_by.as_deref().unwrap_or("?"),
                plan.state_reason.as_deref().unwrap_or("no reason given")
            ));
        }
        PlanState::Superseded => {
            return Some(
                "a newer plan for the same invariant replaced it; review that one (`trueup plans`)"
                    .into(),
            );
        }
        PlanState::Applied => return Some("it has already been applied".into()),
        PlanState::Cancelled => {
            return Some(format!(
                "it was cancelled by {}",
                plan.state_by.as_deref().unwrap_or("?")
            ));
        }
        PlanState::Paused => {}
        PlanState::Proposed | PlanState::Applying | PlanState::Stopped => {}
    }
    if now >= plan.expires_at {
        return Some(format!(
            "it is stale: it expired at {} (plans.ttl); run `trueup plan create --invariant {}` for a fresh one",
            plan.expires_at.to_rfc3339(),
            plan.invariant
        ));
    }
    match invariant {
        None => Some(format!(
            "it is stale: invariant `{}` is no longer defined",
            plan.invariant
        )),
        Some(inv) if inv.definition_hash() != plan.definition_hash => Some(format!(
            "it is stale: invariant `{}` changed since the plan was proposed; run `trueup plan create --invariant {}` for a fresh one",
            plan.invariant, plan.invariant
        )),
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
fn require_approver(actor: &Actor, plan: PlanId, verb: &str) -> Result<(), PlanError> {
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

pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Characters of a content hash a person must type at least, when a prefix is accepted.
pub const MIN_HASH_PREFIX: usize = 12;
const HASH_LEN: usize = 64;

/// The content hash an approver says they reviewed. An approval is bound to it, so it is
/// parsed once, strictly: the whole SHA-256 in hex from the API and the console, where it is
/// copied by a program or a form; a prefix of at least [`MIN_HASH_PREFIX`] characters from
/// the CLI, where a person types it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedHash(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("the content hash is empty")]
    Empty,
    #[error("the content hash has `{bad}`, which is not a hexadecimal digit")]
    NotHex { bad: char },
    #[error("the content hash has {len} characters; the whole hash has {HASH_LEN}")]
    NotWhole { len: usize },
    #[error(
        "the content hash has {len} characters; give at least {MIN_HASH_PREFIX} (the whole hash has {HASH_LEN})"
    )]
    TooShort { len: usize },
}

impl ReviewedHash {
    fn digits(raw: &str) -> Result<String, HashError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(HashError::Empty);
        }
        if let Some(bad) = raw.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(HashError::NotHex { bad });
        }
        Ok(raw.to_ascii_lowercase())
    }

    /// The whole hash, exactly.
    pub fn exact(raw: &str) -> Result<Self, HashError> {
        let digits = Self::digits(raw)?;
        if digits.len() != HASH_LEN {
            return Err(HashError::NotWhole { len: digits.len() });
        }
        Ok(Self(digits))
    }

    /// The whole hash or a prefix long enough to be unique among plans in practice.
    pub fn prefix(raw: &str) -> Result<Self, HashError> {
        let digits = Self::digits(raw)?;
        if digits.len() < MIN_HASH_PREFIX || digits.len() > HASH_LEN {
            return Err(HashError::TooShort { len: digits.len() });
        }
        Ok(Self(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn matches(&self, content_hash: &str) -> bool {
        content_hash.starts_with(&self.0)
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
        return Err(PlanError::refused(
            id,
            staleness(&plan, invariant, now).unwrap_or_else(|| {
                format!(
                    "it is {}; only a proposed plan is approved",
                    plan.state.as_str()
                )
            }),
        ));
    }
    if let Some(why) = staleness(&plan, invariant, now) {
        return Err(PlanError::refused(id, why));
    }
    if let Some(seen) = seen_hash
        && !seen.matches(&plan.content_hash)
    {
        return Err(PlanError::refused(
            id,
            format!(
                "you reviewed content {} but the plan is {}; review it again (`trueup plan show {id}`)",
                short(seen.as_str()),
                short(&plan.content_hash)
            ),
        ));
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
        return Err(PlanError::refused(id, "give a reason (`--reason ...`)"));
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
    if let Some(why) = staleness(plan, invariant, now) {
        return Err(PlanError::refused(
            plan.id,
            format!("{why}; nothing was applied"),
        ));
    }
    if plan.state == PlanState::Paused {
        return Err(PlanError::refused(
            plan.id,
            format!(
                "it is paused; resume it (`trueup replay resume {id}` or POST /api/v1/plans/{id}/resume). Nothing was applied",
                id = plan.id
            ),
        ));
    }
    let actions = verify_content(store, plan).await?;
    let approvers = valid_approvers(plan);
    if (approvers.len() as u32) < plan.approvals_required {
        return Err(PlanError::refused(
            plan.id,
            format!(
                "it is not approved: {} of {} distinct approvers ({}); nothing was applied. Approve with `trueup plan approve {}`",
                approvers.len(),
                plan.approvals_required,
                if approvers.is_empty() {
                    "none yet".to_owned()
                } else {
                    approvers.join(", ")
                },
                plan.id
            ),
        ));
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! Compensation plans in the store: plans, their actions' records and approvals (claiming and
//! finishing actions is `actions.rs`). The SQL is written once, as a macro instantiated for both backends
//! like `ledger.rs`. Every change a plan goes through writes its audit entry in the same
//! transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{ActionSpec, ActionStatus, PlanId, PlanKind, PlanState, ViolationKind};

/// A plan about to be stored.
#[derive(Debug, Clone)]
pub struct NewPlan {
    pub kind: PlanKind,
    /// What the plan was made for (a replay's window, partition column, reason).
    pub meta: serde_json::Value,
    pub invariant: String,
    pub definition_hash: String,
    pub content_hash: String,
    pub severity: String,
    pub approvals_required: u32,
    pub has_manual: bool,
    pub proposed_by: String,
    pub proposed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub source_run_id: Option<i64>,
    pub counts: serde_json::Value,
}

/// One action of a plan about to be stored; `seq` is its position.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction {
    pub fingerprint: String,
    pub violation_kind: ViolationKind,
    pub key: serde_json::Value,
    pub evidence: serde_json::Value,
    pub spec: ActionSpec,
    pub idempotency_key: String,
    /// Actions of one partition are applied in `seq` order by one worker at a time (`""`:
    /// no partition).
    pub partition: String,
    /// When the violation's business event happened.
    pub event_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Approval {
    pub approver: String,
    /// The content hash the approver saw.
    pub content_hash: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct PlanRecord {
    pub id: PlanId,
    pub kind: PlanKind,
    pub meta: serde_json::Value,
    pub invariant: String,
    pub definition_hash: String,
    pub content_hash: String,
    pub severity: String,
    pub approvals_required: u32,
    pub has_manual: bool,
    pub proposed_by: String,
    pub proposed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub source_run_id: Option<i64>,
    pub state: PlanState,
    pub state_by: Option<String>,
    pub state_reason: Option<String>,
    pub state_at: Option<DateTime<Utc>>,
    pub action_count: u64,
    pub counts: serde_json::Value,
    pub verification: Option<serde_json::Value>,
    pub approvals: Vec<Approval>,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ActionRecord {
    pub plan_id: PlanId,
    pub seq: i64,
    pub fingerprint: String,
    pub violation_kind: String,
    pub key: serde_json::Value,
    pub evidence: serde_json::Value,
    pub spec: ActionSpec,
    pub idempotency_key: String,
    pub partition: String,
    pub event_at: Option<DateTime<Utc>>,
    pub status: ActionStatus,
    pub attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub outcome: Option<serde_json::Value>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A plan's state change, with who made it and why (for the audit log).
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub from: &'a [PlanState],
    pub to: PlanState,
    pub by: &'a str,
    pub reason: Option<&'a str>,
    pub at: DateTime<Utc>,
    /// The audit action, e.g. `plan.reject`.
    pub audit_action: &'a str,
    pub details: serde_json::Value,
}

#[async_trait]
pub trait PlanStore: Send + Sync {
    /// Stores a plan and its actions in one transaction. Proposed plans of the same invariant
    /// that are not applying become `superseded`: their approvals do not carry over.
    async fn create_plan(
        &self,
        plan: &NewPlan,
        actions: &[NewAction],
    ) -> Result<PlanId, StoreError>;

    async fn plan(&self, id: PlanId) -> Result<Option<PlanRecord>, StoreError>;

    /// Plans, newest first.
    async fn plans(
        &self,
        invariant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PlanRecord>, StoreError>;

    /// Actions in order, after `after_seq`.
    async fn plan_actions(
        &self,
        plan: PlanId,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ActionRecord>, StoreError>;

    /// Records an approval of the plan's content hash; `false` when this approver had already
    /// approved it (an identity counts once).
    async fn approve_plan(
        &self,
        plan: PlanId,
        approver: &str,
        content_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Moves the plan to `to` if it is in one of `from`; `false` otherwise.
    async fn transition_plan(
        &self,
        plan: PlanId,
        change: &Transition<'_>,
    ) -> Result<bool, StoreError>;

    /// Whether an action with this idempotency key was applied by another plan.
    async fn applied_elsewhere(
        &self,
        idempotency_key: &str,
        plan: PlanId,
    ) -> Result<bool, StoreError>;

    async fn record_verification(
        &self,
        plan: PlanId,
        verification: &serde_json::Value,
        actor: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

macro_rules! impl_plan_store {
    // `$for_update` locks the plan row while its state changes (PostgreSQL); SQLite's
    // `BEGIN IMMEDIATE` already admits one writer.
    ($store:ty, $db:ty, $begin:literal, $skip_locked:literal, $for_update:literal) => {
        impl $store {
            fn plan_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<$crate::store::PlanRecord, sqlx::Error> {
                use sqlx::Row;
                let counts: sqlx::types::Json<serde_json::Value> = row.try_get("counts")?;
                let verification: Option<sqlx::types::Json<serde_json::Value>> =
                    row.try_get("verification")?;
                let state: String = row.try_get("state")?;
                let required: i32 = row.try_get("approvals_required")?;
                let count: i32 = row.try_get("action_count")?;
                let kind: String = row.try_get("kind")?;
                let meta: sqlx::types::Json<serde_json::Value> = row.try_get("meta")?;
                Ok($crate::store::PlanRecord {
                    id: row.try_get("id")?,
                    kind: $crate::domain::PlanKind::parse(&kind),
                    meta: meta.0,
                    invariant: row.try_get("invariant")?,
                    definition_hash: row.try_get("definition_hash")?,
                    content_hash: row.try_get("content_hash")?,
                    severity: row.try_get("severity")?,
                    approvals_required: required.max(0) as u32,
                    has_manual: row.try_get("has_manual")?,
                    proposed_by: row.try_get("proposed_by")?,
                    proposed_at: row.try_get("proposed_at")?,
                    expires_at: row.try_get("expires_at")?,
                    source_run_id: row.try_get("source_run_id")?,
                    state: $crate::domain::PlanState::parse(&state),
                    state_by: row.try_get("state_by")?,
                    state_reason: row.try_get("state_reason")?,
                    state_at: row.try_get("state_at")?,
                    action_count: count.max(0) as u64,
                    counts: counts.0,
                    verification: verification.map(|v| v.0),
                    approvals: Vec::new(),
                })
            }

            fn action_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<$crate::store::ActionRecord, sqlx::Error> {
                use sqlx::Row;
                let key: sqlx::types::Json<serde_json::Value> = row.try_get("key")?;
                let evidence: sqlx::types::Json<serde_json::Value> = row.try_get("evidence")?;
                let spec: sqlx::types::Json<$crate::domain::ActionSpec> = row.try_get("spec")?;
                let outcome: Option<sqlx::types::Json<serde_json::Value>> =
                    row.try_get("outcome")?;
                let status: String = row.try_get("status")?;
                let seq: i32 = row.try_get("seq")?;
                let attempts: i32 = row.try_get("attempts")?;
                Ok($crate::store::ActionRecord {
                    plan_id: row.try_get("plan_id")?,
                    seq: seq.into(),
                    fingerprint: row.try_get("fingerprint")?,
                    violation_kind: row.try_get("violation_kind")?,
                    key: key.0,
                    evidence: evidence.0,
                    spec: spec.0,
                    idempotency_key: row.try_get("idempotency_key")?,
                    partition: row.try_get("partition_key")?,
                    event_at: row.try_get("event_at")?,
                    status: $crate::domain::ActionStatus::parse(&status),
                    attempts: attempts.into(),
                    lease_owner: row.try_get("lease_owner")?,
                    lease_until: row.try_get("lease_until")?,
                    outcome: outcome.map(|o| o.0),
                    finished_at: row.try_get("finished_at")?,
                })
            }

            /// Fills in the approvals of `plans` with one query.
            async fn approvals_of(
                &self,
                plans: &mut [$crate::store::PlanRecord],
            ) -> Result<(), sqlx::Error> {
                use sqlx::Row;
                if plans.is_empty() {
                    return Ok(());
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT plan_id, approver, content_hash, at FROM plan_approvals WHERE plan_id IN (",
                );
                let mut ids = qb.separated(", ");
                for plan in plans.iter() {
                    ids.push_bind(plan.id);
                }
                qb.push(") ORDER BY at, approver");
                for row in qb.build().fetch_all(&self.pool).await? {
                    let plan_id: i64 = row.try_get("plan_id")?;
                    let approval = $crate::store::Approval {
                        approver: row.try_get("approver")?,
                        content_hash: row.try_get("content_hash")?,
                        at: row.try_get("at")?,
                    };
                    if let Some(plan) = plans.iter_mut().find(|p| p.id == plan_id) {
                        plan.approvals.push(approval);
                    }
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::PlanStore for $store {
            async fn create_plan(
                &self,
                plan: &$crate::store::NewPlan,
                actions: &[$crate::store::NewAction],
            ) -> Result<$crate::domain::PlanId, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let superseded: Vec<i64> = sqlx::query_scalar(
                    "UPDATE plans SET state = 'superseded', state_by = $2, state_at = $3, \
                       state_reason = 'a newer plan replaced it' \
                     WHERE invariant = $1 AND state = 'proposed' AND kind = $4 RETURNING id",
                )
                .bind(&plan.invariant)
                .bind(&plan.proposed_by)
                .bind(plan.proposed_at)
                .bind(plan.kind.as_str())
                .fetch_all(&mut *tx)
                .await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO plans (invariant, definition_hash, content_hash, severity, approvals_required, \
                       has_manual, proposed_by, proposed_at, expires_at, source_run_id, state, action_count, counts, kind, meta) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'proposed', $11, $12, $13, $14) RETURNING id",
                )
                .bind(&plan.invariant)
                .bind(&plan.definition_hash)
                .bind(&plan.content_hash)
                .bind(&plan.severity)
                .bind(plan.approvals_required as i32)
                .bind(plan.has_manual)
                .bind(&plan.proposed_by)
                .bind(plan.proposed_at)
                .bind(plan.expires_at)
                .bind(plan.source_run_id)
                .bind(actions.len() as i32)
                .bind(sqlx::types::Json(&plan.counts))
                .bind(plan.kind.as_str())
                .bind(sqlx::types::Json(&plan.meta))
                .fetch_one(&mut *tx)
                .await?;
                // 10 parameters a row; chunks stay below both engines' parameter limits.
                for (c, chunk) in actions.chunks(1000).enumerate() {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO plan_actions (plan_id, seq, fingerprint, violation_kind, key, evidence, spec, idempotency_key, partition_key, event_at) ",
                    );
                    let base = (c * 1000) as i32;
                    qb.push_values(chunk.iter().enumerate(), |mut b, (i, a)| {
                        b.push_bind(id)
                            .push_bind(base + i as i32 + 1)
                            .push_bind(a.fingerprint.clone())
                            .push_bind(a.violation_kind.as_str())
                            .push_bind(sqlx::types::Json(a.key.clone()))
                            .push_bind(sqlx::types::Json(a.evidence.clone()))
                            .push_bind(sqlx::types::Json(a.spec.clone()))
                            .push_bind(a.idempotency_key.clone())
                            .push_bind(a.partition.clone())
                            .push_bind(a.event_at);
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                if plan.kind == $crate::domain::PlanKind::Replay {
                    let partitions: std::collections::BTreeSet<&str> =
                        actions.iter().map(|a| a.partition.as_str()).collect();
                    let partitions: Vec<&str> = partitions.into_iter().collect();
                    for chunk in partitions.chunks(1000) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO plan_partitions (plan_id, partition_key) ",
                        );
                        qb.push_values(chunk.iter(), |mut b, key| {
                            b.push_bind(id).push_bind(key.to_string());
                        });
                        qb.build().execute(&mut *tx).await?;
                    }
                }
                let target = format!("plan:{id}");
                for old in &superseded {
                    Self::write_audit(
                        &mut tx,
                        plan.proposed_at,
                        &plan.proposed_by,
                        "plan.supersede",
                        &format!("plan:{old}"),
                        &serde_json::json!({"superseded_by": id}),
                    )
                    .await?;
                }
                Self::write_audit(
                    &mut tx,
                    plan.proposed_at,
                    &plan.proposed_by,
                    "plan.propose",
                    &target,
                    &serde_json::json!({
                    "invariant": plan.invariant,
                    "content_hash": plan.content_hash,
                    "actions": actions.len(),
                    "counts": plan.counts,
                    "supersedes": superseded,
                }),
                )
                .await?;
                tx.commit().await?;
                Ok(id)
            }

            async fn plan(
                &self,
                id: $crate::domain::PlanId,
            ) -> Result<Option<$crate::store::PlanRecord>, $crate::store::StoreError> {
                let row = sqlx::query("SELECT * FROM plans WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let mut plans = vec![Self::plan_row(&row)?];
                self.approvals_of(&mut plans).await?;
                Ok(plans.pop())
            }

            async fn plans(
                &self,
                invariant: Option<&str>,
                limit: u32,
            ) -> Result<Vec<$crate::store::PlanRecord>, $crate::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM plans WHERE ($1 IS NULL OR invariant = $1) ORDER BY id DESC LIMIT $2",
                )
                .bind(invariant)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                let mut plans = rows
                    .iter()
                    .map(Self::plan_row)
                    .collect::<Result<Vec<_>, _>>()?;
                self.approvals_of(&mut plans).await?;
                Ok(plans)
            }

            async fn plan_actions(
                &self,
                plan: $crate::domain::PlanId,
                after_seq: Option<i64>,
                limit: u32,
            ) -> Result<Vec<$crate::store::ActionRecord>, $crate::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM plan_actions WHERE plan_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(plan)
                .bind(after_seq.unwrap_or(0) as i32)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(Self::action_row)
                    .collect::<Result<Vec<_>, _>>()?)
            }

            async fn approve_plan(
                &self,
                plan: $crate::domain::PlanId,
                approver: &str,
                content_hash: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let added = sqlx::query(
                    "INSERT INTO plan_approvals (plan_id, approver, content_hash, at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (plan_id, approver) DO NOTHING",
                )
                .bind(plan)
                .bind(approver)
                .bind(content_hash)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                Self::write_audit(
                    &mut tx,
                    at,
                    approver,
                    "plan.approve",
                    &format!("plan:{plan}"),
                    &serde_json::json!({
                    "content_hash": content_hash,
                    "counted": added == 1,
                }),
                )
                .await?;
                tx.commit().await?;
                Ok(added == 1)
            }

            async fn transition_plan(
                &self,
                plan: $crate::domain::PlanId,
                change: &$crate::store::Transition<'_>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let current: Option<String> =
                    sqlx::query_scalar(concat!("SELECT state FROM plans WHERE id = $1 ", $for_update))
                        .bind(plan)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(current) = current else {
                    return Ok(false);
                };
                if !change
                    .from
                    .contains(&$crate::domain::PlanState::parse(&current))
                {
                    return Ok(false);
                }
                sqlx::query(
                    "UPDATE plans SET state = $2, state_by = $3, state_reason = $4, state_at = $5 WHERE id = $1",
                )
                .bind(plan)
                .bind(change.to.as_str())
                .bind(change.by)
                .bind(change.reason)
                .bind(change.at)
                .execute(&mut *tx)
                .await?;
                let mut details = change.details.clone();
                if let Some(obj) = details.as_object_mut() {
                    obj.insert("from".into(), current.into());
                    obj.insert("to".into(), change.to.as_str().into());
                    if let Some(r) = change.reason {
                        obj.insert("reason".into(), r.into());
                    }
                }
                Self::write_audit(
                    &mut tx,
                    change.at,
                    change.by,
                    change.audit_action,
                    &format!("plan:{plan}"),
                    &details,
                )
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn applied_elsewhere(
                &self,
                idempotency_key: &str,
                plan: $crate::domain::PlanId,
            ) -> Result<bool, $crate::store::StoreError> {
                let found: Option<i64> = sqlx::query_scalar(
                    "SELECT plan_id FROM plan_actions WHERE idempotency_key = $1 AND status = 'applied' AND plan_id <> $2 LIMIT 1",
                )
                .bind(idempotency_key)
                .bind(plan)
                .fetch_optional(&self.pool)
                .await?;
                Ok(found.is_some())
            }

            async fn record_verification(
                &self,
                plan: $crate::domain::PlanId,
                verification: &serde_json::Value,
                actor: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                sqlx::query("UPDATE plans SET verification = $2 WHERE id = $1")
                    .bind(plan)
                    .bind(sqlx::types::Json(verification))
                    .execute(&mut *tx)
                    .await?;
                Self::write_audit(
                    &mut tx,
                    at,
                    actor,
                    "plan.verify",
                    &format!("plan:{plan}"),
                    verification,
                )
                .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(super) use impl_plan_store;

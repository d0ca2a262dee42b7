//! An apply's checkpoints in the store: claiming an action or a partition under a lease,
//! finishing it with its audit entry, taking over a dead worker's claim, progress. Like
//! `plans.rs`, the SQL is written once, as a macro instantiated for both backends.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ActionRecord, StoreError};
use crate::domain::{ActionStatus, PlanId};

#[async_trait]
pub trait ActionStore: Send + Sync {
    /// Claims the next action to work on: a pending one, or one whose worker's lease ran out
    /// (a worker that died). Counts an attempt. A paused or cancelled plan hands out none:
    /// once `transition_plan` has recorded the pause, no action starts (one claimed before
    /// it finishes).
    async fn claim_action(
        &self,
        plan: PlanId,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<ActionRecord>, StoreError>;

    /// Records a claimed action's outcome (and its audit entry); `false` if the lease was lost.
    #[allow(clippy::too_many_arguments)]
    async fn finish_action(
        &self,
        plan: PlanId,
        seq: i64,
        owner: &str,
        actor: &str,
        status: ActionStatus,
        outcome: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Leases one partition of a replay plan that has work left and no live lease; none of a
    /// paused or cancelled plan.
    async fn claim_partition(
        &self,
        plan: PlanId,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError>;

    /// Extends a held partition lease; `false` if it is no longer ours.
    async fn renew_partition(
        &self,
        plan: PlanId,
        partition: &str,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    async fn release_partition(
        &self,
        plan: PlanId,
        partition: &str,
        owner: &str,
    ) -> Result<(), StoreError>;

    /// Claims the first unfinished action of a partition whose lease the caller holds (an
    /// action a dead worker left in progress included): the next event in order. None from a
    /// paused or cancelled plan, as [`ActionStore::claim_action`].
    async fn claim_in_partition(
        &self,
        plan: PlanId,
        partition: &str,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<ActionRecord>, StoreError>;

    /// Gives a claimed action back (apply stopping): pending again.
    async fn release_action(&self, plan: PlanId, seq: i64, owner: &str) -> Result<(), StoreError>;

    /// Makes failed actions pending again (apply `--retry-failed`).
    async fn retry_failed_actions(&self, plan: PlanId) -> Result<u64, StoreError>;

    /// How many actions are in each status.
    async fn action_progress(
        &self,
        plan: PlanId,
    ) -> Result<BTreeMap<ActionStatus, u64>, StoreError>;

    /// When the plan's last applied action finished (`None`: none applied yet).
    async fn last_applied_at(&self, plan: PlanId) -> Result<Option<DateTime<Utc>>, StoreError>;
}

macro_rules! impl_action_store {
    // The same arguments as `impl_plan_store!` (which defines the row readers used here),
    // and the lock a claim holds on its plan's row so that a pause or cancel (which locks it
    // for update) waits for claims under way and every later claim sees it.
    ($store:ty, $db:ty, $begin:literal, $skip_locked:literal, $for_update:literal, $for_key_share:literal) => {
        impl $store {
            /// Whether `plan` hands out actions: only while it is applying (or stopped by one of several
            /// applies), never once paused, cancelled, rejected or done.
            async fn hands_out_actions(
                tx: &mut sqlx::Transaction<'_, $db>,
                plan: $crate::domain::PlanId,
            ) -> Result<bool, $crate::store::StoreError> {
                let state: Option<String> = sqlx::query_scalar(concat!(
                    "SELECT state FROM plans WHERE id = $1 ",
                    $for_key_share
                ))
                .bind(plan)
                .fetch_optional(&mut **tx)
                .await?;
                Ok(state.is_some_and(|s| !$crate::domain::PlanState::parse(&s).halts_apply()))
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::ActionStore for $store {
            async fn claim_action(
                &self,
                plan: $crate::domain::PlanId,
                owner: &str,
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<$crate::store::ActionRecord>, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                if !Self::hands_out_actions(&mut tx, plan).await? {
                    return Ok(None);
                }
                // Rescue first (an action a dead worker held), then the next pending one. Each
                // lookup is one range of the (plan_id, status, seq) index, so a claim costs the
                // same at the first action and the ten-thousandth.
                let mut row = None;
                for status in ["in_progress", "pending"] {
                    row = sqlx::query(concat!(
                        "UPDATE plan_actions SET status = 'in_progress', lease_owner = $2, lease_until = $3, ",
                        "attempts = attempts + 1 WHERE plan_id = $1 AND seq = (",
                        "SELECT seq FROM plan_actions WHERE plan_id = $1 AND status = $5 ",
                        "AND ($5 = 'pending' OR lease_until < $4) ORDER BY seq LIMIT 1 ",
                        $skip_locked,
                        ") RETURNING *"
                    ))
                    .bind(plan)
                    .bind(owner)
                    .bind(lease_until)
                    .bind(now)
                    .bind(status)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if row.is_some() {
                        break;
                    }
                }
                tx.commit().await?;
                Ok(row.as_ref().map(Self::action_row).transpose()?)
            }

            async fn finish_action(
                &self,
                plan: $crate::domain::PlanId,
                seq: i64,
                owner: &str,
                actor: &str,
                status: $crate::domain::ActionStatus,
                outcome: &serde_json::Value,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let held = sqlx::query(
                    "UPDATE plan_actions SET status = $4, outcome = $5, finished_at = $6, lease_owner = NULL, lease_until = NULL \
                     WHERE plan_id = $1 AND seq = $2 AND lease_owner = $3 AND status = 'in_progress'",
                )
                .bind(plan)
                .bind(seq as i32)
                .bind(owner)
                .bind(status.as_str())
                .bind(sqlx::types::Json(outcome))
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if held != 1 {
                    return Ok(false);
                }
                let mut details = outcome.clone();
                if let Some(obj) = details.as_object_mut() {
                    obj.insert("seq".into(), seq.into());
                }
                Self::write_audit(
                    &mut tx,
                    at,
                    actor,
                    &format!("action.{}", status.as_str()),
                    &format!("plan:{plan}"),
                    &details,
                )
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn claim_partition(
                &self,
                plan: $crate::domain::PlanId,
                owner: &str,
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                if !Self::hands_out_actions(&mut tx, plan).await? {
                    return Ok(None);
                }
                let key: Option<String> = sqlx::query_scalar(concat!(
                    "UPDATE plan_partitions SET lease_owner = $2, lease_until = $3 ",
                    "WHERE plan_id = $1 AND partition_key = (",
                    "SELECT p.partition_key FROM plan_partitions p WHERE p.plan_id = $1 ",
                    "AND (p.lease_owner IS NULL OR p.lease_until < $4) ",
                    "AND EXISTS (SELECT 1 FROM plan_actions a WHERE a.plan_id = p.plan_id ",
                    "AND a.partition_key = p.partition_key AND a.status IN ('pending', 'in_progress')) ",
                    "ORDER BY p.partition_key LIMIT 1 ",
                    $skip_locked,
                    ") RETURNING partition_key"
                ))
                .bind(plan)
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(key)
            }

            async fn renew_partition(
                &self,
                plan: $crate::domain::PlanId,
                partition: &str,
                owner: &str,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query(
                    "UPDATE plan_partitions SET lease_until = $4 WHERE plan_id = $1 AND partition_key = $2 AND lease_owner = $3",
                )
                .bind(plan)
                .bind(partition)
                .bind(owner)
                .bind(lease_until)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn release_partition(
                &self,
                plan: $crate::domain::PlanId,
                partition: &str,
                owner: &str,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "UPDATE plan_partitions SET lease_owner = NULL, lease_until = NULL WHERE plan_id = $1 AND partition_key = $2 AND lease_owner = $3",
                )
                .bind(plan)
                .bind(partition)
                .bind(owner)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn claim_in_partition(
                &self,
                plan: $crate::domain::PlanId,
                partition: &str,
                owner: &str,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<$crate::store::ActionRecord>, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let held: Option<String> = sqlx::query_scalar(concat!(
                    "SELECT lease_owner FROM plan_partitions WHERE plan_id = $1 AND partition_key = $2 ",
                    $for_update
                ))
                .bind(plan)
                .bind(partition)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
                if held.as_deref() != Some(owner) || !Self::hands_out_actions(&mut tx, plan).await? {
                    return Ok(None);
                }
                let row = sqlx::query(
                    "UPDATE plan_actions SET status = 'in_progress', lease_owner = $3, lease_until = $4, \
                       attempts = attempts + 1 \
                     WHERE plan_id = $1 AND seq = (SELECT seq FROM plan_actions WHERE plan_id = $1 \
                       AND partition_key = $2 AND status IN ('pending', 'in_progress') ORDER BY seq LIMIT 1) \
                     RETURNING *",
                )
                .bind(plan)
                .bind(partition)
                .bind(owner)
                .bind(lease_until)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(row.as_ref().map(Self::action_row).transpose()?)
            }

            async fn release_action(
                &self,
                plan: $crate::domain::PlanId,
                seq: i64,
                owner: &str,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "UPDATE plan_actions SET status = 'pending', lease_owner = NULL, lease_until = NULL \
                     WHERE plan_id = $1 AND seq = $2 AND lease_owner = $3 AND status = 'in_progress'",
                )
                .bind(plan)
                .bind(seq as i32)
                .bind(owner)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn retry_failed_actions(
                &self,
                plan: $crate::domain::PlanId,
            ) -> Result<u64, $crate::store::StoreError> {
                Ok(sqlx::query(
                    "UPDATE plan_actions SET status = 'pending', outcome = NULL, finished_at = NULL \
                     WHERE plan_id = $1 AND status IN ('failed', 'parked')",
                )
                .bind(plan)
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn last_applied_at(
                &self,
                plan: $crate::domain::PlanId,
            ) -> Result<Option<chrono::DateTime<chrono::Utc>>, $crate::store::StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT finished_at FROM plan_actions WHERE plan_id = $1 AND status = 'applied' \
                     AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1",
                )
                .bind(plan)
                .fetch_optional(&self.pool)
                .await?
                .flatten())
            }

            async fn action_progress(
                &self,
                plan: $crate::domain::PlanId,
            ) -> Result<
                std::collections::BTreeMap<$crate::domain::ActionStatus, u64>,
                $crate::store::StoreError,
            > {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT status, COUNT(*) FROM plan_actions WHERE plan_id = $1 GROUP BY status",
                )
                .bind(plan)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(s, n)| ($crate::domain::ActionStatus::parse(&s), n.max(0) as u64))
                    .collect())
            }
        }
    };
}

pub(super) use impl_action_store;

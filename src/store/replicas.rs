//! Several `trueup serve` processes on one store: heartbeats, and each scheduled tick claimed
//! by one replica under a lease, renewed while it runs, taken over when its replica stops.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{StoreError, Tick, TickRef};
use crate::domain::{InvariantName, RunId};

#[async_trait]
pub trait ReplicaStore: Send + Sync {
    /// Whether several `trueup serve` processes can share this store.
    fn supports_replicas(&self) -> bool;

    /// Registers or refreshes a replica's heartbeat. Returns the other replicas whose
    /// heartbeat is newer than `alive_after`.
    async fn heartbeat(
        &self,
        replica: &str,
        now: DateTime<Utc>,
        alive_after: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError>;

    /// Removes a replica (clean shutdown).
    async fn retire(&self, replica: &str) -> Result<(), StoreError>;

    /// Claims the tick of `invariant` due at `fire_at` for `owner` until `lease_until`.
    /// `false` when another replica has this fire time, or when an earlier tick of the
    /// invariant is not finished (running, or abandoned and not yet taken over): then this
    /// fire time is recorded as missed, once — an invariant never runs twice at once, and
    /// its ticks run in order.
    async fn claim_tick(
        &self,
        invariant: &str,
        fire_at: DateTime<Utc>,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// [`ReplicaStore::claim_tick`] and [`ReplicaStore::begin_tick_run`] in one transaction:
    /// the id of the run that answers the tick, begun at `at` and linked to it, or `None`
    /// where `claim_tick` says `false` (then no run is recorded). The scheduler's path: one
    /// commit per claimed tick instead of two.
    async fn claim_tick_run(
        &self,
        invariant: &InvariantName,
        fire_at: DateTime<Utc>,
        owner: &str,
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Option<RunId>, StoreError>;

    /// Records fire times of `invariant` that `owner` let pass while its previous run was
    /// still going, each as missed — unless another replica has that fire time already (its
    /// outcome stands). With this every fire time has an outcome in the store.
    async fn record_missed_ticks(
        &self,
        invariant: &str,
        fire_times: &[DateTime<Utc>],
        owner: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Extends a held tick's lease (finished or not); `false` if it is no longer ours.
    async fn renew_tick(
        &self,
        invariant: &str,
        fire_at: DateTime<Utc>,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Marks a tick `owner` holds finished, with the run that answered it, or as missed when
    /// none did (its invariant was already running here, as when a takeover finds it so, or
    /// the run could not be recorded).
    async fn finish_tick(
        &self,
        invariant: &str,
        fire_at: DateTime<Utc>,
        owner: &str,
        run_id: Option<i64>,
    ) -> Result<(), StoreError>;

    /// Begins the run that answers a tick `owner` holds, and links it to the tick in the same
    /// transaction (so that a takeover fails exactly this run). `LostTick` when the tick is no
    /// longer `owner`'s.
    async fn begin_tick_run(
        &self,
        invariant: &InvariantName,
        at: DateTime<Utc>,
        tick: &TickRef,
    ) -> Result<RunId, StoreError>;

    /// Takes over the oldest unfinished tick whose lease has run out (its replica died), and
    /// marks the run linked to it — that one only — as failed.
    async fn take_over_tick(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Tick>, StoreError>;

    /// Ticks of an invariant in time order (for operators and tests).
    async fn ticks(&self, invariant: &str, limit: u32) -> Result<Vec<Tick>, StoreError>;
}

macro_rules! impl_replica_store {
    // (The arguments of `ledger::impl_store!`, which defines the row readers used here.)
    ($store:ty, $db:ty, $backend:literal, $begin:literal, $skip_locked:literal, $replicas:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::ReplicaStore for $store {
            fn supports_replicas(&self) -> bool {
                $replicas
            }

            async fn heartbeat(
                &self,
                replica: &str,
                now: chrono::DateTime<chrono::Utc>,
                alive_after: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<String>, $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO replicas (id, started_at, heartbeat_at) VALUES ($1, $2, $2) \
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                )
                .bind(replica)
                .bind(now)
                .execute(&self.pool)
                .await?;
                let others: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM replicas WHERE id <> $1 AND heartbeat_at > $2 ORDER BY id",
                )
                .bind(replica)
                .bind(alive_after)
                .fetch_all(&self.pool)
                .await?;
                Ok(others)
            }

            async fn retire(&self, replica: &str) -> Result<(), $crate::store::StoreError> {
                sqlx::query("DELETE FROM replicas WHERE id = $1")
                    .bind(replica)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn claim_tick(
                &self,
                invariant: &str,
                fire_at: chrono::DateTime<chrono::Utc>,
                owner: &str,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                // One statement: the primary key gives each fire time one row, and an earlier
                // unfinished tick of the invariant turns this one into a recorded miss. (`WHERE
                // true` lets SQLite tell the upsert clause from a join condition.)
                let missed: Option<bool> = sqlx::query_scalar(
                    "INSERT INTO ticks (invariant, fire_at, owner, lease_until, finished, missed) \
                     SELECT $1, $2, $3, $4, busy, busy FROM ( \
                       SELECT EXISTS (SELECT 1 FROM ticks WHERE invariant = $1 AND finished = $5) AS busy \
                     ) AS b WHERE true \
                     ON CONFLICT (invariant, fire_at) DO NOTHING RETURNING missed",
                )
                .bind(invariant)
                .bind(fire_at)
                .bind(owner)
                .bind(lease_until)
                .bind(false)
                .fetch_optional(&self.pool)
                .await?;
                Ok(missed == Some(false))
            }

            async fn claim_tick_run(
                &self,
                invariant: &$crate::domain::InvariantName,
                fire_at: chrono::DateTime<chrono::Utc>,
                owner: &str,
                lease_until: chrono::DateTime<chrono::Utc>,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<$crate::domain::RunId>, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let run: i64 = sqlx::query_scalar(
                    "INSERT INTO runs (invariant, started_at, status) VALUES ($1, $2, 'running') RETURNING id",
                )
                .bind(invariant.as_str())
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
                // As claim_tick, with the run linked to a tick that is ours.
                let missed: Option<bool> = sqlx::query_scalar(
                    "INSERT INTO ticks (invariant, fire_at, owner, lease_until, finished, missed, run_id) \
                     SELECT $1, $2, $3, $4, busy, busy, CASE WHEN busy THEN NULL ELSE $6 END FROM ( \
                       SELECT EXISTS (SELECT 1 FROM ticks WHERE invariant = $1 AND finished = $5) AS busy \
                     ) AS b WHERE true \
                     ON CONFLICT (invariant, fire_at) DO NOTHING RETURNING missed",
                )
                .bind(invariant.as_str())
                .bind(fire_at)
                .bind(owner)
                .bind(lease_until)
                .bind(false)
                .bind(run)
                .fetch_optional(&mut *tx)
                .await?;
                match missed {
                    Some(false) => {
                        tx.commit().await?;
                        Ok(Some(run))
                    }
                    Some(true) => {
                        // The miss is recorded; the run never started.
                        sqlx::query("DELETE FROM runs WHERE id = $1")
                            .bind(run)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        Ok(None)
                    }
                    // Another replica's fire time: nothing of ours stays.
                    None => {
                        tx.rollback().await?;
                        Ok(None)
                    }
                }
            }

            async fn begin_tick_run(
                &self,
                invariant: &$crate::domain::InvariantName,
                at: chrono::DateTime<chrono::Utc>,
                tick: &$crate::store::TickRef,
            ) -> Result<$crate::domain::RunId, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO runs (invariant, started_at, status) VALUES ($1, $2, 'running') RETURNING id",
                )
                .bind(invariant.as_str())
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
                Self::record_on_held_tick(&mut tx, invariant, tick, id, false).await?;
                tx.commit().await?;
                Ok(id)
            }

            async fn record_missed_ticks(
                &self,
                invariant: &str,
                fire_times: &[chrono::DateTime<chrono::Utc>],
                owner: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                // Bounded statements: a long stall can skip many fire times.
                for chunk in fire_times.chunks(500) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO ticks (invariant, fire_at, owner, lease_until, finished, missed) ",
                    );
                    qb.push_values(chunk, |mut row, fire_at| {
                        row.push_bind(invariant)
                            .push_bind(*fire_at)
                            .push_bind(owner)
                            .push_bind(at)
                            .push_bind(true)
                            .push_bind(true);
                    });
                    qb.push(" ON CONFLICT (invariant, fire_at) DO NOTHING");
                    qb.build().execute(&self.pool).await?;
                }
                Ok(())
            }

            async fn renew_tick(
                &self,
                invariant: &str,
                fire_at: chrono::DateTime<chrono::Utc>,
                owner: &str,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                // A finished tick is still its owner's (nobody takes a finished one over): the
                // run committed, and what follows it (its plan, its alert) must not be taken
                // for a lost lease and dropped.
                let n = sqlx::query(
                    "UPDATE ticks SET lease_until = $4 WHERE invariant = $1 AND fire_at = $2 AND owner = $3",
                )
                .bind(invariant)
                .bind(fire_at)
                .bind(owner)
                .bind(lease_until)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn finish_tick(
                &self,
                invariant: &str,
                fire_at: chrono::DateTime<chrono::Utc>,
                owner: &str,
                run_id: Option<i64>,
            ) -> Result<(), $crate::store::StoreError> {
                // A fire time with no run is a missed one: every tick ends with one outcome, and
                // keeps the first (a completed run finished its tick as it committed; a failure
                // after that must not rewrite it as missed).
                sqlx::query(
                    "UPDATE ticks SET finished = $5, run_id = $4, missed = ($4 IS NULL) \
                     WHERE invariant = $1 AND fire_at = $2 AND owner = $3 AND finished = $6",
                )
                .bind(invariant)
                .bind(fire_at)
                .bind(owner)
                .bind(run_id)
                .bind(true)
                .bind(false)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn take_over_tick(
                &self,
                owner: &str,
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<$crate::store::Tick>, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let row = sqlx::query(concat!(
                    "UPDATE ticks SET owner = $1, lease_until = $2, taken_over = $4 WHERE (invariant, fire_at) IN (",
                    "SELECT invariant, fire_at FROM ticks WHERE finished = $5 AND lease_until < $3 ",
                    "ORDER BY fire_at LIMIT 1 ",
                    $skip_locked,
                    ") RETURNING invariant, fire_at, owner, finished, run_id, taken_over, missed"
                ))
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .bind(true)
                .bind(false)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    tx.commit().await?;
                    return Ok(None);
                };
                let tick = Self::tick(&row)?;
                // The dead replica's run can never finish: say so, and drop what it staged.
                // Only that run: another tick's run is never touched.
                if let Some(dead) = tick.run_id {
                    for table in ["run_observations", "run_coverage", "run_segments"] {
                        sqlx::query(&format!(
                            "DELETE FROM {table} WHERE run_id = $1 \
                               AND run_id IN (SELECT id FROM runs WHERE status = 'running')"
                        ))
                        .bind(dead)
                        .execute(&mut *tx)
                        .await?;
                    }
                    sqlx::query(
                        "UPDATE runs SET status = 'failed', finished_at = $2, \
                           error = 'the replica running it stopped answering; another replica took the tick over' \
                         WHERE id = $1 AND status = 'running'",
                    )
                    .bind(dead)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Some(tick))
            }

            async fn ticks(
                &self,
                invariant: &str,
                limit: u32,
            ) -> Result<Vec<$crate::store::Tick>, $crate::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT invariant, fire_at, owner, finished, run_id, taken_over, missed FROM ticks \
                     WHERE invariant = $1 ORDER BY fire_at LIMIT $2",
                )
                .bind(invariant)
                .bind(i64::from(limit.max(1)))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(Self::tick)
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(Into::into)
            }
        }
    };
}

pub(super) use impl_replica_store;

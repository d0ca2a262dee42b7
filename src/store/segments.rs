//! A reconcile split into segments of its key range: the run's coordinator writes the
//! segments, any worker on the store (every `trueup serve` replica, and the process that began
//! the run) claims one under a lease, evaluates it and records its figures; a segment whose
//! lease runs out is claimed again, and what its earlier attempt staged never reaches the
//! ledger. The run completes once, with one ledger change, when every segment is done.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{InvariantName, RunId, RunStats, Violation};

/// A segment held by one worker: which run, which key range, and which attempt at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentClaim {
    pub run: RunId,
    pub seq: u32,
    /// 1 for the first claim; more when earlier workers stopped answering.
    pub attempt: u32,
    pub owner: String,
    pub invariant: InvariantName,
    /// The definition hash the run was split under; a worker evaluates only that definition.
    pub definition: String,
    /// The keys of the segment, both bounds included.
    pub low: i64,
    pub high: i64,
    /// When the run began: every segment measures grace periods from it.
    pub run_started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentStatus {
    Pending,
    Claimed,
    Done,
    Failed,
}

impl SegmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Claimed => "claimed",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// The status as the store wrote it (an unknown one reads as failed).
    pub fn parse(raw: &str) -> Self {
        match raw {
            "pending" => Self::Pending,
            "claimed" => Self::Claimed,
            "done" => Self::Done,
            _ => Self::Failed,
        }
    }
}

/// One segment of a split run as the store holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SegmentRecord {
    pub seq: u32,
    pub low: i64,
    pub high: i64,
    pub status: SegmentStatus,
    /// The worker that holds it, or the last one that did.
    pub owner: Option<String>,
    pub attempt: u32,
    /// A done segment's figures.
    pub stats: Option<RunStats>,
    /// A failed segment's error.
    pub error: Option<String>,
}

#[async_trait]
pub trait SegmentStore: Send + Sync {
    /// Splits the running `run` into segments with these key ranges (in key order).
    async fn split_run(
        &self,
        run: RunId,
        invariant: &InvariantName,
        definition: &str,
        ranges: &[(i64, i64)],
    ) -> Result<(), StoreError>;

    /// Claims one segment for `owner` until `lease_until`: a pending one, or one whose lease
    /// ran out (its worker stopped answering; what that attempt staged is dropped). Only
    /// segments of running runs, of `run` when given, split under one of `definitions`.
    async fn claim_segment(
        &self,
        owner: &str,
        run: Option<RunId>,
        definitions: &[String],
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<SegmentClaim>, StoreError>;

    /// Extends a held segment's lease; `false` when it is no longer this claim's.
    async fn renew_segment(
        &self,
        claim: &SegmentClaim,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Stages violations a segment found (numbered from `first_seq` within the segment),
    /// like [`super::Store::observe`]: they reach the ledger only if this attempt completes
    /// the segment. `LostSegment` when the claim no longer holds.
    async fn observe_segment(
        &self,
        claim: &SegmentClaim,
        first_seq: u64,
        batch: &[Violation],
    ) -> Result<(), StoreError>;

    /// Records a held segment's end: done with its figures, or failed with why. `false`
    /// when the claim no longer holds (another worker has the segment; nothing recorded).
    async fn finish_segment(
        &self,
        claim: &SegmentClaim,
        outcome: Result<&RunStats, &str>,
    ) -> Result<bool, StoreError>;

    /// The segments of a split run, in key order (none once the run has ended).
    async fn segments(&self, run: RunId) -> Result<Vec<SegmentRecord>, StoreError>;
}

/// Observations of a segment are numbered after those of the segments before it, so a split
/// run's staged violations keep key order: a segment has room for 2^40 of them.
pub(super) fn staged_seq(segment: u32, seq: u64) -> i64 {
    ((i64::from(segment)) << 40) + seq as i64
}

macro_rules! impl_segment_store {
    // (The arguments of `ledger::impl_store!`, which defines `stage`, used here.)
    ($store:ty, $db:ty, $backend:literal, $begin:literal, $skip_locked:literal, $replicas:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::SegmentStore for $store {
            async fn split_run(
                &self,
                run: $crate::domain::RunId,
                invariant: &$crate::domain::InvariantName,
                definition: &str,
                ranges: &[(i64, i64)],
            ) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                for (c, chunk) in ranges.chunks(500).enumerate() {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO run_segments (run_id, seq, invariant, definition, low, high) ",
                    );
                    qb.push_values(chunk.iter().enumerate(), |mut b, (i, (low, high))| {
                        b.push_bind(run)
                            .push_bind((c * 500 + i) as i32)
                            .push_bind(invariant.as_str())
                            .push_bind(definition)
                            .push_bind(*low)
                            .push_bind(*high);
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn claim_segment(
                &self,
                owner: &str,
                run: Option<$crate::domain::RunId>,
                definitions: &[String],
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<$crate::store::SegmentClaim>, $crate::store::StoreError> {
                use sqlx::Row;
                if definitions.is_empty() {
                    return Ok(None);
                }
                let mut tx = self.pool.begin_with($begin).await?;
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "UPDATE run_segments SET status = 'claimed', owner = ",
                );
                qb.push_bind(owner)
                    .push(", lease_until = ")
                    .push_bind(lease_until)
                    .push(
                        ", attempt = attempt + 1 WHERE (run_id, seq) IN (\
                         SELECT run_id, seq FROM run_segments \
                         WHERE run_id IN (SELECT id FROM runs WHERE status = 'running') \
                           AND (status = 'pending' OR (status = 'claimed' AND lease_until < ",
                    )
                    .push_bind(now)
                    .push("))");
                if let Some(run) = run {
                    qb.push(" AND run_id = ").push_bind(run);
                }
                qb.push(" AND definition IN (");
                let mut sep = qb.separated(", ");
                for d in definitions {
                    sep.push_bind(d.as_str());
                }
                qb.push(") ORDER BY run_id, seq LIMIT 1 ")
                    .push($skip_locked)
                    .push(") RETURNING run_id, seq, attempt, invariant, definition, low, high");
                let row = qb.build().fetch_optional(&mut *tx).await?;
                let Some(row) = row else {
                    tx.commit().await?;
                    return Ok(None);
                };
                let run: i64 = row.try_get("run_id")?;
                let seq: i32 = row.try_get("seq")?;
                let attempt: i32 = row.try_get("attempt")?;
                // An earlier attempt's staged violations never reach the ledger (completing
                // drops any it still writes); dropped here too, so they take no room.
                if attempt > 1 {
                    sqlx::query(
                        "DELETE FROM run_observations WHERE run_id = $1 AND segment = $2 AND attempt < $3",
                    )
                    .bind(run)
                    .bind(seq)
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await?;
                }
                let run_started_at: chrono::DateTime<chrono::Utc> =
                    sqlx::query_scalar("SELECT started_at FROM runs WHERE id = $1")
                        .bind(run)
                        .fetch_one(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(Some($crate::store::SegmentClaim {
                    run,
                    seq: seq as u32,
                    attempt: attempt as u32,
                    owner: owner.to_owned(),
                    invariant: $crate::domain::InvariantName::parse(&row.try_get::<String, _>("invariant")?)
                        .map_err(|e| sqlx::Error::Decode(e.into()))?,
                    definition: row.try_get("definition")?,
                    low: row.try_get("low")?,
                    high: row.try_get("high")?,
                    run_started_at,
                }))
            }

            async fn renew_segment(
                &self,
                claim: &$crate::store::SegmentClaim,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let n = sqlx::query(
                    "UPDATE run_segments SET lease_until = $4 \
                     WHERE run_id = $1 AND seq = $2 AND attempt = $3 AND status = 'claimed'",
                )
                .bind(claim.run)
                .bind(claim.seq as i32)
                .bind(claim.attempt as i32)
                .bind(lease_until)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn observe_segment(
                &self,
                claim: &$crate::store::SegmentClaim,
                first_seq: u64,
                batch: &[$crate::domain::Violation],
            ) -> Result<(), $crate::store::StoreError> {
                let held: Option<i32> = sqlx::query_scalar(
                    "SELECT attempt FROM run_segments \
                     WHERE run_id = $1 AND seq = $2 AND attempt = $3 AND status = 'claimed'",
                )
                .bind(claim.run)
                .bind(claim.seq as i32)
                .bind(claim.attempt as i32)
                .fetch_optional(&self.pool)
                .await?;
                if held.is_none() {
                    return Err($crate::store::StoreError::LostSegment {
                        run: claim.run,
                        segment: claim.seq,
                    });
                }
                Self::stage(
                    &self.pool,
                    claim.run,
                    &claim.invariant,
                    $crate::store::segments::staged_seq(claim.seq, first_seq),
                    batch,
                    Some((claim.seq as i32, claim.attempt as i32)),
                )
                .await?;
                Ok(())
            }

            async fn finish_segment(
                &self,
                claim: &$crate::store::SegmentClaim,
                outcome: Result<&$crate::domain::RunStats, &str>,
            ) -> Result<bool, $crate::store::StoreError> {
                let (status, stats, error) = match outcome {
                    Ok(stats) => ("done", Some(sqlx::types::Json(stats)), None),
                    Err(why) => ("failed", None, Some(why)),
                };
                let n = sqlx::query(
                    "UPDATE run_segments SET status = $4, stats = $5, error = $6, lease_until = NULL \
                     WHERE run_id = $1 AND seq = $2 AND attempt = $3 AND status = 'claimed'",
                )
                .bind(claim.run)
                .bind(claim.seq as i32)
                .bind(claim.attempt as i32)
                .bind(status)
                .bind(stats)
                .bind(error)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn segments(
                &self,
                run: $crate::domain::RunId,
            ) -> Result<Vec<$crate::store::SegmentRecord>, $crate::store::StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT seq, low, high, status, owner, attempt, stats, error FROM run_segments \
                     WHERE run_id = $1 ORDER BY seq",
                )
                .bind(run)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let status: String = row.try_get("status")?;
                        let stats: Option<sqlx::types::Json<$crate::domain::RunStats>> =
                            row.try_get("stats")?;
                        Ok($crate::store::SegmentRecord {
                            seq: row.try_get::<i32, _>("seq")? as u32,
                            low: row.try_get("low")?,
                            high: row.try_get("high")?,
                            status: $crate::store::SegmentStatus::parse(&status),
                            owner: row.try_get("owner")?,
                            attempt: row.try_get::<i32, _>("attempt")? as u32,
                            stats: stats.map(|s| s.0),
                            error: row.try_get("error")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(Into::into)
            }
        }
    };
}

pub(super) use impl_segment_store;

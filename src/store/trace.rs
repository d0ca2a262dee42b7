//! What a trace (`trueup trace`) reads: violations and plan actions by fingerprint, and the
//! deliveries of a logged event.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ActionRecord, StoreError, ViolationRecord};

/// One delivery of an event after its first (a duplicate), as a trace shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Redelivery {
    pub source: String,
    pub position: Option<String>,
    pub delivered_at: DateTime<Utc>,
}

#[async_trait]
pub trait TraceStore: Send + Sync {
    /// The violations of these invariants whose key is one of `keys` (as stored: a JSON
    /// array of the key's values), oldest first.
    async fn violations_by_key(
        &self,
        invariants: &[String],
        keys: &[serde_json::Value],
    ) -> Result<Vec<ViolationRecord>, StoreError>;

    /// Every plan action for a violation with one of these fingerprints, in plan order.
    async fn actions_by_fingerprint(
        &self,
        fingerprints: &[String],
    ) -> Result<Vec<ActionRecord>, StoreError>;

    /// The duplicate deliveries of an event of `log`, in order.
    async fn log_redeliveries(
        &self,
        log: &str,
        event_id: &str,
    ) -> Result<Vec<Redelivery>, StoreError>;
}

/// `$first, $first+1, …` for `n` values: the placeholders of an `IN (…)` list.
pub(super) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many fingerprints go into one statement.
pub(super) const CHUNK: usize = 500;

macro_rules! impl_trace_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::TraceStore for $store {
            async fn violations_by_key(
                &self,
                invariants: &[String],
                keys: &[serde_json::Value],
            ) -> Result<Vec<$crate::store::ViolationRecord>, $crate::store::StoreError> {
                if invariants.is_empty() || keys.is_empty() {
                    return Ok(Vec::new());
                }
                // One statement: the index on (invariant, key) serves each pair.
                let sql = format!(
                    "{} AND invariant IN ({}) AND key IN ({})",
                    Self::VIOLATIONS,
                    $crate::store::trace::placeholders(1, invariants.len()),
                    $crate::store::trace::placeholders(1 + invariants.len(), keys.len())
                );
                let mut q = sqlx::query(&sql);
                for invariant in invariants {
                    q = q.bind(invariant);
                }
                for key in keys {
                    q = q.bind(sqlx::types::Json(key));
                }
                let mut out = q
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(Self::violation_row)
                    .collect::<Result<Vec<_>, _>>()?;
                out.sort_by_key(|v| v.id);
                Ok(out)
            }

            async fn actions_by_fingerprint(
                &self,
                fingerprints: &[String],
            ) -> Result<Vec<$crate::store::ActionRecord>, $crate::store::StoreError> {
                let mut out = Vec::new();
                for chunk in fingerprints.chunks($crate::store::trace::CHUNK) {
                    let sql = format!(
                        "SELECT * FROM plan_actions WHERE fingerprint IN ({}) ORDER BY plan_id, seq",
                        $crate::store::trace::placeholders(1, chunk.len())
                    );
                    let mut q = sqlx::query(&sql);
                    for f in chunk {
                        q = q.bind(f);
                    }
                    for row in q.fetch_all(&self.pool).await? {
                        out.push(Self::action_row(&row)?);
                    }
                }
                out.sort_by_key(|a| (a.plan_id, a.seq));
                Ok(out)
            }

            async fn log_redeliveries(
                &self,
                log: &str,
                event_id: &str,
            ) -> Result<Vec<$crate::store::Redelivery>, $crate::store::StoreError> {
                let rows: Vec<(String, Option<String>, chrono::DateTime<chrono::Utc>)> =
                    sqlx::query_as(
                        "SELECT source, position, delivered_at FROM log_duplicates \
                         WHERE log = $1 AND event_id = $2 ORDER BY id",
                    )
                    .bind(log)
                    .bind(event_id)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(source, position, delivered_at)| $crate::store::Redelivery {
                        source,
                        position,
                        delivered_at,
                    })
                    .collect())
            }
        }
    };
}

pub(super) use impl_trace_store;

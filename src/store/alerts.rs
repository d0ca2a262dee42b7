//! Alerts and their notices: the alert's state, and the outbox its notices wait in until the
//! worker delivers them (claimed under a lease, retried with backoff).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{OutboxItem, QueuedNotice, StoreError};
use crate::domain::Alert;

#[async_trait]
pub trait AlertStore: Send + Sync {
    /// The invariant's alert as last recorded (inactive if never).
    async fn alert(&self, invariant: &str) -> Result<Alert, StoreError>;

    /// Records the alert's new state and queues its notices (each to wait for its group, or
    /// held by a silence), in one transaction.
    async fn record_alert(
        &self,
        invariant: &str,
        alert: &Alert,
        notices: &[QueuedNotice],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Releases every claim on undelivered messages; for a process that knows no other worker
    /// is alive (the one `serve` of a SQLite store, at start). Returns how many it released.
    async fn release_outbox_claims(&self) -> Result<u64, StoreError>;

    /// Claims up to `limit` undelivered messages that are due, for `lease`: another worker
    /// will not take them until the lease ends (a worker that dies releases them that way).
    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, StoreError>;

    /// Marks a claimed message delivered.
    async fn outbox_delivered(&self, id: i64, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Records a failed delivery and when to try again.
    async fn outbox_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Outbox messages, newest first (for operators and tests).
    async fn outbox(&self, limit: u32) -> Result<Vec<OutboxItem>, StoreError>;
}

macro_rules! impl_alert_store {
    // (The arguments of `ledger::impl_store!`, which defines the row readers used here.)
    ($store:ty, $db:ty, $backend:literal, $begin:literal, $skip_locked:literal, $replicas:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::AlertStore for $store {
            async fn alert(
                &self,
                invariant: &str,
            ) -> Result<$crate::domain::Alert, $crate::store::StoreError> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT state, active_since, last_violating_at, last_notified_at FROM alerts WHERE invariant = $1",
                )
                .bind(invariant)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match row {
                    None => $crate::domain::Alert::inactive(),
                    Some(row) => {
                        let state: String = row.try_get("state")?;
                        $crate::domain::Alert {
                            state: $crate::domain::AlertState::parse(&state),
                            active_since: row.try_get("active_since")?,
                            last_violating_at: row.try_get("last_violating_at")?,
                            last_notified_at: row.try_get("last_notified_at")?,
                        }
                    }
                })
            }

            async fn record_alert(
                &self,
                invariant: &str,
                alert: &$crate::domain::Alert,
                notices: &[$crate::store::QueuedNotice],
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let before: Option<String> =
                    sqlx::query_scalar("SELECT state FROM alerts WHERE invariant = $1")
                        .bind(invariant)
                        .fetch_optional(&mut *tx)
                        .await?;
                let before = before.unwrap_or_else(|| "inactive".to_owned());
                if before != alert.state.as_str() {
                    // Alert transitions go to the audit log: incident timelines read them there.
                    Self::write_audit(
                        &mut tx,
                        at,
                        "scheduler",
                        &format!("alert.{}", alert.state.as_str()),
                        &format!("invariant:{invariant}"),
                        &serde_json::json!({
                            "from": before,
                            "to": alert.state.as_str(),
                            "active_since": alert.active_since,
                        }),
                    )
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO alerts (invariant, state, active_since, last_violating_at, last_notified_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (invariant) DO UPDATE SET state = excluded.state, \
                       active_since = excluded.active_since, last_violating_at = excluded.last_violating_at, \
                       last_notified_at = excluded.last_notified_at, updated_at = excluded.updated_at",
                )
                .bind(invariant)
                .bind(alert.state.as_str())
                .bind(alert.active_since)
                .bind(alert.last_violating_at)
                .bind(alert.last_notified_at)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                for n in notices {
                    Self::insert_notice(&mut tx, n, at).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn release_outbox_claims(&self) -> Result<u64, $crate::store::StoreError> {
                Ok(sqlx::query(
                    "UPDATE outbox SET claimed_until = NULL \
                     WHERE delivered_at IS NULL AND claimed_until IS NOT NULL",
                )
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn claim_outbox(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                lease: chrono::TimeDelta,
                limit: u32,
            ) -> Result<Vec<$crate::store::OutboxItem>, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let rows = sqlx::query(concat!(
                    "UPDATE outbox SET claimed_until = $1 WHERE id IN (",
                    "SELECT id FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= $2 ",
                    "AND (claimed_until IS NULL OR claimed_until < $2) ORDER BY id LIMIT $3 ",
                    $skip_locked,
                    ") RETURNING id, dedup_key, channel, payload, attempts, created_at, delivered_at, last_error"
                ))
                .bind(now + lease)
                .bind(now)
                .bind(i64::from(limit.max(1)))
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                let mut items = rows
                    .iter()
                    .map(Self::outbox_item)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                items.sort_by_key(|i| i.id);
                Ok(items)
            }

            async fn outbox_delivered(
                &self,
                id: i64,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "UPDATE outbox SET delivered_at = $2, attempts = attempts + 1, claimed_until = NULL, last_error = NULL WHERE id = $1",
                )
                .bind(id)
                .bind(at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn outbox_failed(
                &self,
                id: i64,
                error: &str,
                retry_at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3, claimed_until = NULL \
                     WHERE id = $1 AND delivered_at IS NULL",
                )
                .bind(id)
                .bind(error)
                .bind(retry_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn outbox(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::store::OutboxItem>, $crate::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT id, dedup_key, channel, payload, attempts, created_at, delivered_at, last_error \
                     FROM outbox ORDER BY id DESC LIMIT $1",
                )
                .bind(i64::from(limit.max(1)))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(Self::outbox_item)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }
        }
    };
}

pub(super) use impl_alert_store;

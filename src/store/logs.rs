//! trueup's own event logs: each event once per log, by its id, with how often it was
//! delivered. A batch of deliveries is stored in one transaction; a feed acknowledges its
//! messages only after that commit, so a crash loses nothing, and a redelivery of a message
//! already stored is recognised by its feed position and neither stored nor counted again.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{CapturedEvent, Intake, LogName};

/// One event of a log, as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema, sqlx::FromRow)]
pub struct LoggedEvent {
    pub id: i64,
    pub log: String,
    pub event_id: String,
    pub event_at: Option<DateTime<Utc>>,
    pub ingested_at: DateTime<Utc>,
    /// The feed whose delivery stored it (`nats:SOURCE/STREAM`, `redis:SOURCE/KEY`, `webhook`).
    pub source: String,
    /// Where in that feed (a stream sequence, an entry id).
    pub position: Option<String>,
    /// How often it was delivered: 1, plus each duplicate.
    pub deliveries: i64,
    pub last_delivered_at: DateTime<Utc>,
    #[sqlx(json)]
    pub headers: serde_json::Value,
    #[serde(skip)]
    #[schemars(skip)]
    pub payload: Vec<u8>,
}

/// A log's events counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogCounts {
    pub events: u64,
    /// Deliveries beyond each event's first.
    pub duplicates: u64,
}

#[async_trait]
pub trait EventLogStore: Send + Sync {
    /// Stores a batch of deliveries to `log` in one transaction, in order; says for each what
    /// storing it did. Nothing of the batch is kept if this fails.
    async fn ingest(
        &self,
        log: &LogName,
        events: &[CapturedEvent],
        at: DateTime<Utc>,
    ) -> Result<Vec<Intake>, StoreError>;

    /// One event of a log, by its id.
    async fn logged_event(
        &self,
        log: &str,
        event_id: &str,
    ) -> Result<Option<LoggedEvent>, StoreError>;

    /// A page of a log's events in the order they were stored, after `after_id`.
    async fn logged_events(
        &self,
        log: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, StoreError>;

    async fn log_counts(&self, log: &str) -> Result<LogCounts, StoreError>;

    /// What `invariants` may still need of the events they read: the earliest event time of
    /// their open violations and of the actions of their unfinished plans, and how many of
    /// those have no event time (then no event can be told unneeded).
    async fn retention_needs(&self, invariants: &[String]) -> Result<RetentionNeeds, StoreError>;

    /// Deletes up to `limit` events of `log` captured before `before` whose event time (when
    /// they have one) is before it too, with their duplicate deliveries and outcomes, in one
    /// transaction;
    /// how many.
    async fn purge_log(
        &self,
        log: &str,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;
}

/// See [`EventLogStore::retention_needs`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionNeeds {
    pub earliest: Option<DateTime<Utc>>,
    pub untimed: u64,
}

/// The columns of a [`crate::source::LogEventRow`] (its `sequence` is the row's `id`).
pub(super) const LOG_ROW_COLUMNS: &str = "id, event_id, event_at, ingested_at, headers, payload";

pub(super) const EVENT_COLUMNS: &str = "id, log, event_id, event_at, ingested_at, source, position, \
     deliveries, last_delivered_at, headers, payload";

/// An `INSERT INTO log_events` of `events` at the indices `chunk`, captured `at`.
pub(super) fn insert_events<'a, DB>(
    log: &'a str,
    events: &'a [crate::domain::CapturedEvent],
    chunk: &[usize],
    at: DateTime<Utc>,
) -> sqlx::QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a Option<String>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<DateTime<Utc>>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    DateTime<Utc>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    sqlx::types::Json<&'a serde_json::Map<String, serde_json::Value>>:
        sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a Vec<u8>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut qb = sqlx::QueryBuilder::<DB>::new(
        "INSERT INTO log_events (log, event_id, event_at, ingested_at, source, position, \
         deliveries, last_delivered_at, headers, payload) ",
    );
    qb.push_values(chunk, |mut b, &i| {
        let e = &events[i];
        b.push_bind(log)
            .push_bind(&e.identity.event_id)
            .push_bind(e.identity.event_at)
            .push_bind(at)
            .push_bind(&e.source)
            .push_bind(&e.position)
            .push_bind(1_i64)
            .push_bind(at)
            .push_bind(sqlx::types::Json(&e.headers))
            .push_bind(&e.payload);
    });
    qb
}

/// `$by_day`: the store keeps events in partitions by log and day, and their ids apart in
/// `log_event_ids` (PostgreSQL; see `log_days.rs`).
macro_rules! impl_event_log_store {
    ($store:ty, $db:ty, $begin:literal, $by_day:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::EventLogStore for $store {
            async fn ingest(
                &self,
                log: &$crate::domain::LogName,
                events: &[$crate::domain::CapturedEvent],
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::domain::Intake>, $crate::store::StoreError> {
                use $crate::domain::Intake;
                let mut tx = self.pool.begin_with($begin).await?;
                // In id order (stable, so repeats of one id keep their delivery order): two
                // transactions taking the same ids then lock them in the same order, and never
                // wait on each other in a circle.
                let mut order: Vec<usize> = (0..events.len()).collect();
                order.sort_by(|a, b| events[*a].identity.event_id.cmp(&events[*b].identity.event_id));
                let mut outcomes: Vec<Option<Intake>> = vec![None; events.len()];
                // The first delivery of each id of the batch, in id order.
                let mut firsts: Vec<usize> = Vec::with_capacity(events.len());
                for &i in &order {
                    let new_id = firsts.last().is_none_or(|&f| {
                        events[f].identity.event_id != events[i].identity.event_id
                    });
                    if new_id {
                        firsts.push(i);
                    }
                }
                // Which of those ids the log does not hold yet: partitioned by day, the events
                // cannot be unique by id, so their ids are, apart; else the events are. A
                // statement per chunk, not kept prepared (each batch's size makes another one,
                // and each holds room for its parameters).
                let mut fresh: std::collections::HashSet<String> = Default::default();
                for chunk in firsts.chunks(if $by_day { 1000 } else { 500 }) {
                    let new: Vec<String> = if $by_day {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO log_event_ids (log, event_id, ingested_at) ",
                        );
                        qb.push_values(chunk, |mut b, &i| {
                            b.push_bind(log.as_str())
                                .push_bind(&events[i].identity.event_id)
                                .push_bind(at);
                        });
                        qb.push(" ON CONFLICT (log, event_id) DO NOTHING RETURNING event_id");
                        qb.build_query_scalar().persistent(false).fetch_all(&mut *tx).await?
                    } else {
                        let mut qb = $crate::store::logs::insert_events::<$db>(log.as_str(), events, chunk, at);
                        qb.push(" ON CONFLICT (log, event_id) DO NOTHING RETURNING event_id");
                        qb.build_query_scalar().persistent(false).fetch_all(&mut *tx).await?
                    };
                    fresh.extend(new);
                }
                let stored: Vec<usize> = firsts
                    .into_iter()
                    .filter(|&i| fresh.contains(&events[i].identity.event_id))
                    .collect();
                if $by_day {
                    for chunk in stored.chunks(500) {
                        $crate::store::logs::insert_events::<$db>(log.as_str(), events, chunk, at)
                            .build()
                            .persistent(false)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                for i in stored {
                    outcomes[i] = Some(Intake::Stored);
                }
                for i in order {
                    if outcomes[i].is_some() {
                        continue;
                    }
                    let e = &events[i];
                    // Stored before: this delivery is either the one that stored it, or a
                    // duplicate counted before, come again unacknowledged; or a new duplicate.
                    // On a log partitioned by day, the day that holds the event: one partition
                    // to look in, not each of the log's days.
                    let day: Option<chrono::DateTime<chrono::Utc>> = if $by_day {
                        Some(
                            sqlx::query_scalar(
                                "SELECT ingested_at FROM log_event_ids WHERE log = $1 AND event_id = $2",
                            )
                            .bind(log.as_str())
                            .bind(&e.identity.event_id)
                            .fetch_one(&mut *tx)
                            .await?,
                        )
                    } else {
                        None
                    };
                    let (source, position): (String, Option<String>) = match day {
                        Some(day) => sqlx::query_as(
                            "SELECT source, position FROM log_events \
                             WHERE log = $1 AND event_id = $2 AND ingested_at = $3",
                        )
                        .bind(log.as_str())
                        .bind(&e.identity.event_id)
                        .bind(day)
                        .fetch_one(&mut *tx)
                        .await?,
                        None => sqlx::query_as(
                            "SELECT source, position FROM log_events WHERE log = $1 AND event_id = $2",
                        )
                        .bind(log.as_str())
                        .bind(&e.identity.event_id)
                        .fetch_one(&mut *tx)
                        .await?,
                    };
                    if e.position.is_some() && source == e.source && position == e.position {
                        outcomes[i] = Some(Intake::Redelivered);
                        continue;
                    }
                    let counted: Option<i64> = sqlx::query_scalar(
                        "INSERT INTO log_duplicates (log, event_id, source, position, delivered_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (log, event_id, source, position) DO NOTHING RETURNING id",
                    )
                    .bind(log.as_str())
                    .bind(&e.identity.event_id)
                    .bind(&e.source)
                    .bind(&e.position)
                    .bind(at)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if counted.is_none() {
                        outcomes[i] = Some(Intake::Redelivered);
                        continue;
                    }
                    let update = sqlx::query_scalar(if day.is_some() {
                        "UPDATE log_events SET deliveries = deliveries + 1, last_delivered_at = $3 \
                         WHERE log = $1 AND event_id = $2 AND ingested_at = $4 RETURNING deliveries"
                    } else {
                        "UPDATE log_events SET deliveries = deliveries + 1, last_delivered_at = $3 \
                         WHERE log = $1 AND event_id = $2 RETURNING deliveries"
                    })
                    .bind(log.as_str())
                    .bind(&e.identity.event_id)
                    .bind(at);
                    let deliveries: i64 = match day {
                        Some(day) => update.bind(day),
                        None => update,
                    }
                    .fetch_one(&mut *tx)
                    .await?;
                    outcomes[i] = Some(Intake::Duplicate {
                        deliveries: deliveries as u64,
                    });
                }
                tx.commit().await?;
                Ok(outcomes
                    .into_iter()
                    .map(|o| o.expect("every delivery has an outcome"))
                    .collect())
            }

            async fn logged_event(
                &self,
                log: &str,
                event_id: &str,
            ) -> Result<Option<$crate::store::LoggedEvent>, $crate::store::StoreError> {
                let row = sqlx::query_as(&format!(
                    "SELECT {} FROM log_events WHERE log = $1 AND event_id = $2",
                    $crate::store::logs::EVENT_COLUMNS
                ))
                .bind(log)
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row)
            }

            async fn logged_events(
                &self,
                log: &str,
                after_id: Option<i64>,
                limit: u32,
            ) -> Result<Vec<$crate::store::LoggedEvent>, $crate::store::StoreError> {
                let rows = sqlx::query_as(&format!(
                    "SELECT {} FROM log_events WHERE log = $1 AND id > $2 ORDER BY id LIMIT $3",
                    $crate::store::logs::EVENT_COLUMNS
                ))
                .bind(log)
                .bind(after_id.unwrap_or(0))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }

            async fn log_counts(
                &self,
                log: &str,
            ) -> Result<$crate::store::LogCounts, $crate::store::StoreError> {
                let (events, deliveries): (i64, Option<i64>) = sqlx::query_as(
                    "SELECT COUNT(*), CAST(SUM(deliveries) AS BIGINT) FROM log_events WHERE log = $1",
                )
                .bind(log)
                .fetch_one(&self.pool)
                .await?;
                Ok($crate::store::LogCounts {
                    events: events as u64,
                    duplicates: (deliveries.unwrap_or(0) - events) as u64,
                })
            }

            async fn retention_needs(
                &self,
                invariants: &[String],
            ) -> Result<$crate::store::RetentionNeeds, $crate::store::StoreError> {
                let mut needs = $crate::store::RetentionNeeds::default();
                if invariants.is_empty() {
                    return Ok(needs);
                }
                let list = $crate::store::trace::placeholders(1, invariants.len());
                let violations = format!(
                    "SELECT MIN(event_at), COUNT(*) - COUNT(event_at) FROM violations \
                     WHERE invariant IN ({list}) AND status IN ('open', 'reopened')"
                );
                let actions = format!(
                    "SELECT MIN(a.event_at), COUNT(*) - COUNT(a.event_at) FROM plan_actions a \
                     JOIN plans p ON p.id = a.plan_id \
                     WHERE p.invariant IN ({list}) \
                       AND p.state NOT IN ('rejected', 'superseded', 'cancelled') \
                       AND a.status IN ('pending', 'in_progress', 'failed', 'parked')"
                );
                for sql in [violations, actions] {
                    let mut q = sqlx::query_as::<_, (Option<chrono::DateTime<chrono::Utc>>, i64)>(&sql);
                    for i in invariants {
                        q = q.bind(i);
                    }
                    let (earliest, untimed) = q.fetch_one(&self.pool).await?;
                    needs.untimed += untimed.max(0) as u64;
                    needs.earliest = match (needs.earliest, earliest) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Ok(needs)
            }

            async fn purge_log(
                &self,
                log: &str,
                before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<u64, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let doomed: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT id, event_id FROM log_events WHERE log = $1 AND ingested_at < $2 \
                     AND (event_at IS NULL OR event_at < $2) ORDER BY id LIMIT $3",
                )
                .bind(log)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
                if doomed.is_empty() {
                    return Ok(0);
                }
                let list = $crate::store::trace::placeholders(2, doomed.len());
                let tables: &[&str] = if $by_day {
                    &["log_duplicates", "log_outcomes", "log_event_ids"]
                } else {
                    &["log_duplicates", "log_outcomes"]
                };
                for table in tables {
                    let sql = format!("DELETE FROM {table} WHERE log = $1 AND event_id IN ({list})");
                    let mut q = sqlx::query(&sql).bind(log);
                    for (_, event_id) in &doomed {
                        q = q.bind(event_id);
                    }
                    q.execute(&mut *tx).await?;
                }
                let sql = format!("DELETE FROM log_events WHERE log = $1 AND id IN ({list})");
                let mut q = sqlx::query(&sql).bind(log);
                for (id, _) in &doomed {
                    q = q.bind(id);
                }
                q.execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(doomed.len() as u64)
            }
        }
    };
}

pub(super) use impl_event_log_store;

macro_rules! impl_log_reader {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::source::LogReader for $store {
            async fn log_page(
                &self,
                log: &str,
                after: i64,
                until: i64,
                limit: u32,
            ) -> Result<Vec<$crate::source::LogEventRow>, String> {
                let rows: Vec<$crate::source::LogEventRow> = sqlx::query_as(&format!(
                    "SELECT {} FROM log_events \
                     WHERE log = $1 AND id > $2 AND id <= $3 ORDER BY id LIMIT $4",
                    $crate::store::logs::LOG_ROW_COLUMNS
                ))
                .bind(log)
                .bind(after)
                .bind(until)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| e.to_string())?;
                Ok(rows)
            }

            async fn log_event(
                &self,
                log: &str,
                event_id: &str,
            ) -> Result<Option<$crate::source::LogEventRow>, String> {
                let row: Option<$crate::source::LogEventRow> = sqlx::query_as(&format!(
                    "SELECT {} FROM log_events WHERE log = $1 AND event_id = $2",
                    $crate::store::logs::LOG_ROW_COLUMNS
                ))
                .bind(log)
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| e.to_string())?;
                Ok(row)
            }

            async fn log_end(&self, log: &str) -> Result<i64, String> {
                let end: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(id) FROM log_events WHERE log = $1")
                        .bind(log)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(|e| e.to_string())?;
                Ok(end.unwrap_or(0))
            }
        }
    };
}

pub(super) use impl_log_reader;

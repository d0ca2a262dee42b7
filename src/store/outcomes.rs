//! What became of each logged event, per invariant reading its log on the left: written
//! when a full run of that invariant completes (`runner::outcomes`) and when a replay action
//! for the event's key applies, read by `trueup log`, the API and the trace.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{EventOutcome, RunId};

/// An event seen by a run for the first time, and what the run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedOutcome {
    pub event_id: String,
    /// The event's key as the invariant's violations hold it ([`crate::domain::Violation::key_json`]).
    pub key: String,
    pub outcome: EventOutcome,
    /// The downstream record, when known.
    pub target_record_id: Option<String>,
}

/// What one completed full run found of a log's events.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeWrite<'a> {
    pub log: &'a str,
    pub invariant: &'a str,
    pub run: RunId,
    /// When the run began: a replay applied since is newer than what the run saw.
    pub started_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
    /// Events without an outcome yet that the run could judge.
    pub decided: &'a [DecidedOutcome],
    /// Every key the run found violated, with the outcome that gives its events.
    pub violated: &'a [(String, EventOutcome)],
    /// Events once missing or mismatched that the run judged and found through since, with
    /// their downstream record: `processed` (or `replayed` again, when a replay delivered
    /// them before).
    pub healed: &'a [HealedOutcome],
    /// Every event up to this sequence now has its first outcome.
    pub through: i64,
}

/// An event once missing or mismatched, found through by a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealedOutcome {
    pub event_id: String,
    pub target_record_id: String,
}

/// How many events a write changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Events given their first outcome.
    pub first: u64,
    /// Events whose outcome changed (violated, or got through since).
    pub changed: u64,
}

/// One event's outcome for one invariant.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct OutcomeRecord {
    pub log: String,
    pub invariant: String,
    pub event_id: String,
    pub outcome: EventOutcome,
    pub processed_at: DateTime<Utc>,
    pub target_record_id: Option<String>,
    /// The run that found it so (none for a replay).
    pub run_id: Option<i64>,
    /// The replay action that delivered it: its plan and its place in the plan.
    pub plan_id: Option<i64>,
    pub action_seq: Option<i64>,
}

/// A log's events with their outcomes, for a listing.
#[derive(Debug, Clone, Default)]
pub struct OutcomeQuery {
    pub log: String,
    /// Only this invariant's outcomes (else every invariant's, an event once per invariant).
    pub invariant: Option<String>,
    /// Only events with this outcome (else every event, those no run judged yet too).
    pub outcome: Option<EventOutcome>,
    /// Events captured after this sequence.
    pub after: i64,
    /// Events a page (an event judged by several invariants has a line for each).
    pub limit: u32,
}

/// One line of a log's listing: `event_id | ingested_at | processed_at | outcome |
/// target_record_id`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct EventLine {
    /// The event's place in the log (page with `after`).
    pub sequence: i64,
    pub event_id: String,
    pub ingested_at: DateTime<Utc>,
    pub deliveries: i64,
    /// The invariant the outcome is from; none when no run has judged the event yet.
    pub invariant: Option<String>,
    pub outcome: Option<EventOutcome>,
    pub processed_at: Option<DateTime<Utc>>,
    pub target_record_id: Option<String>,
}

/// Where the page after `lines` (asked for `limit` events) starts: after its last event,
/// when the page was full (lines are per event and invariant, so events are counted).
pub fn next_after(lines: &[EventLine], limit: u32) -> Option<i64> {
    let events: std::collections::BTreeSet<i64> = lines.iter().map(|l| l.sequence).collect();
    (events.len() as u32 == limit)
        .then(|| lines.last().map(|l| l.sequence))
        .flatten()
}

#[async_trait]
pub trait OutcomeStore: Send + Sync {
    /// The sequence through which every event of `log` has its first outcome for
    /// `invariant` (0: none yet).
    async fn outcome_mark(&self, log: &str, invariant: &str) -> Result<i64, StoreError>;

    /// Records what a completed full run found, in one transaction.
    async fn write_outcomes(&self, write: &OutcomeWrite<'_>) -> Result<OutcomeCounts, StoreError>;

    /// The events of `log` that `invariant` last found missing or mismatched, with their keys.
    async fn unsettled_outcomes(
        &self,
        log: &str,
        invariant: &str,
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// These events of `log` (those it still holds), in capture order.
    async fn log_events_by_ids(
        &self,
        log: &str,
        event_ids: &[String],
    ) -> Result<Vec<crate::source::LogEventRow>, StoreError>;

    /// A replay action (plan, seq) for `key` (as violations hold it) applied: the events of
    /// `log` with that key for `invariant` are `replayed`. How many.
    async fn mark_replayed(
        &self,
        log: &str,
        invariant: &str,
        key: &str,
        (plan, action_seq): (i64, i64),
        target_record_id: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// One event's outcomes, one per invariant that judged it.
    async fn event_outcomes(
        &self,
        log: &str,
        event_id: &str,
    ) -> Result<Vec<OutcomeRecord>, StoreError>;

    /// A page of a log's events with their outcomes, in capture order.
    async fn event_lines(&self, query: &OutcomeQuery) -> Result<Vec<EventLine>, StoreError>;
}

/// Rows or keys per statement (eight parameters a row at most).
pub(super) const CHUNK: usize = 500;

/// The events' outcomes as stored, from its text.
pub(super) fn outcome_of(raw: &str) -> Result<EventOutcome, StoreError> {
    EventOutcome::parse(raw).ok_or_else(|| {
        StoreError::Database(sqlx::Error::Decode(
            format!("log_outcomes holds an unknown outcome `{raw}`").into(),
        ))
    })
}

#[derive(sqlx::FromRow)]
pub(super) struct OutcomeRow {
    log: String,
    invariant: String,
    event_id: String,
    outcome: String,
    processed_at: DateTime<Utc>,
    target_record_id: Option<String>,
    run_id: Option<i64>,
    plan_id: Option<i64>,
    action_seq: Option<i64>,
}

impl OutcomeRow {
    pub(super) fn parse(self) -> Result<OutcomeRecord, StoreError> {
        Ok(OutcomeRecord {
            outcome: outcome_of(&self.outcome)?,
            log: self.log,
            invariant: self.invariant,
            event_id: self.event_id,
            processed_at: self.processed_at,
            target_record_id: self.target_record_id,
            run_id: self.run_id,
            plan_id: self.plan_id,
            action_seq: self.action_seq,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct LineRow {
    id: i64,
    event_id: String,
    ingested_at: DateTime<Utc>,
    deliveries: i64,
    invariant: Option<String>,
    outcome: Option<String>,
    processed_at: Option<DateTime<Utc>>,
    target_record_id: Option<String>,
}

impl LineRow {
    pub(super) fn parse(self) -> Result<EventLine, StoreError> {
        Ok(EventLine {
            outcome: self.outcome.as_deref().map(outcome_of).transpose()?,
            sequence: self.id,
            event_id: self.event_id,
            ingested_at: self.ingested_at,
            deliveries: self.deliveries,
            invariant: self.invariant,
            processed_at: self.processed_at,
            target_record_id: self.target_record_id,
        })
    }
}

macro_rules! impl_outcome_store {
    ($store:ty, $db:ty, $begin:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::OutcomeStore for $store {
            async fn outcome_mark(
                &self,
                log: &str,
                invariant: &str,
            ) -> Result<i64, $crate::store::StoreError> {
                let through: Option<i64> = sqlx::query_scalar(
                    "SELECT through FROM log_outcome_marks WHERE log = $1 AND invariant = $2",
                )
                .bind(log)
                .bind(invariant)
                .fetch_optional(&self.pool)
                .await?;
                Ok(through.unwrap_or(0))
            }

            async fn write_outcomes(
                &self,
                w: &$crate::store::OutcomeWrite<'_>,
            ) -> Result<$crate::store::OutcomeCounts, $crate::store::StoreError> {
                use $crate::domain::EventOutcome;
                use $crate::store::outcomes::CHUNK;
                let mut counts = $crate::store::OutcomeCounts::default();
                let mut tx = self.pool.begin_with($begin).await?;
                // First outcomes; an event judged before keeps its own (a change reaches it
                // by its key, below).
                for chunk in w.decided.chunks(CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO log_outcomes (log, invariant, event_id, key, outcome, \
                         processed_at, target_record_id, run_id) ",
                    );
                    qb.push_values(chunk, |mut b, d| {
                        b.push_bind(w.log)
                            .push_bind(w.invariant)
                            .push_bind(d.event_id.as_str())
                            .push_bind(d.key.as_str())
                            .push_bind(d.outcome.as_str())
                            .push_bind(w.at)
                            .push_bind(d.target_record_id.as_deref())
                            .push_bind(w.run);
                    });
                    qb.push(" ON CONFLICT (log, invariant, event_id) DO NOTHING");
                    counts.first += qb.build().execute(&mut *tx).await?.rows_affected();
                }
                // Events whose key is violated now; a replay applied after the run began is
                // newer than what the run saw, and keeps its plan action either way.
                for outcome in [EventOutcome::Missing, EventOutcome::Mismatched] {
                    let keys: Vec<&str> = w
                        .violated
                        .iter()
                        .filter(|(_, o)| *o == outcome)
                        .map(|(k, _)| k.as_str())
                        .collect();
                    for chunk in keys.chunks(CHUNK) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new("UPDATE log_outcomes SET outcome = ");
                        qb.push_bind(outcome.as_str())
                            .push(", processed_at = ")
                            .push_bind(w.at)
                            .push(", run_id = ")
                            .push_bind(w.run);
                        // Missing: no downstream record any more.
                        if outcome == EventOutcome::Missing {
                            qb.push(", target_record_id = NULL");
                        }
                        qb.push(" WHERE log = ")
                            .push_bind(w.log)
                            .push(" AND invariant = ")
                            .push_bind(w.invariant)
                            .push(" AND outcome <> ")
                            .push_bind(outcome.as_str())
                            .push(" AND NOT (outcome = 'replayed' AND processed_at >= ")
                            .push_bind(w.started_at)
                            .push(") AND key IN (");
                        let mut list = qb.separated(", ");
                        for k in chunk {
                            list.push_bind(*k);
                        }
                        qb.push(")");
                        counts.changed += qb.build().execute(&mut *tx).await?.rows_affected();
                    }
                }
                // Events found through since (the first column of a VALUES list is `column1`
                // on both engines).
                for chunk in w.healed.chunks(CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "UPDATE log_outcomes SET outcome = CASE WHEN plan_id IS NULL \
                         THEN 'processed' ELSE 'replayed' END, processed_at = ",
                    );
                    qb.push_bind(w.at)
                        .push(", run_id = ")
                        .push_bind(w.run)
                        .push(", target_record_id = v.column2 FROM (");
                    qb.push_values(chunk, |mut b, h| {
                        b.push_bind(h.event_id.as_str())
                            .push_bind(h.target_record_id.as_str());
                    });
                    qb.push(") AS v WHERE log_outcomes.log = ")
                        .push_bind(w.log)
                        .push(" AND log_outcomes.invariant = ")
                        .push_bind(w.invariant)
                        .push(
                            " AND log_outcomes.event_id = v.column1 \
                             AND log_outcomes.outcome IN ('missing', 'mismatched')",
                        );
                    counts.changed += qb.build().execute(&mut *tx).await?.rows_affected();
                }
                sqlx::query(
                    "INSERT INTO log_outcome_marks (log, invariant, through) VALUES ($1, $2, $3) \
                     ON CONFLICT (log, invariant) DO UPDATE SET through = excluded.through",
                )
                .bind(w.log)
                .bind(w.invariant)
                .bind(w.through)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(counts)
            }

            async fn unsettled_outcomes(
                &self,
                log: &str,
                invariant: &str,
            ) -> Result<Vec<(String, String)>, $crate::store::StoreError> {
                let rows = sqlx::query_as(
                    "SELECT event_id, key FROM log_outcomes WHERE log = $1 AND invariant = $2 \
                     AND outcome IN ('missing', 'mismatched') ORDER BY event_id",
                )
                .bind(log)
                .bind(invariant)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }

            async fn log_events_by_ids(
                &self,
                log: &str,
                event_ids: &[String],
            ) -> Result<Vec<$crate::source::LogEventRow>, $crate::store::StoreError> {
                let mut events = Vec::new();
                for chunk in event_ids.chunks($crate::store::outcomes::CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {} FROM log_events WHERE log = ",
                        $crate::store::logs::LOG_ROW_COLUMNS
                    ));
                    qb.push_bind(log).push(" AND event_id IN (");
                    let mut list = qb.separated(", ");
                    for id in chunk {
                        list.push_bind(id.as_str());
                    }
                    qb.push(") ORDER BY id");
                    events.extend(qb.build_query_as().fetch_all(&self.pool).await?);
                }
                Ok(events)
            }

            async fn mark_replayed(
                &self,
                log: &str,
                invariant: &str,
                key: &str,
                (plan, action_seq): (i64, i64),
                target_record_id: Option<&str>,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::store::StoreError> {
                let done = sqlx::query(
                    "UPDATE log_outcomes SET outcome = 'replayed', processed_at = $1, \
                     plan_id = $2, action_seq = $7, target_record_id = COALESCE($3, target_record_id), \
                     run_id = NULL WHERE log = $4 AND invariant = $5 AND key = $6",
                )
                .bind(at)
                .bind(plan)
                .bind(target_record_id)
                .bind(log)
                .bind(invariant)
                .bind(key)
                .bind(action_seq)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected())
            }

            async fn event_outcomes(
                &self,
                log: &str,
                event_id: &str,
            ) -> Result<Vec<$crate::store::OutcomeRecord>, $crate::store::StoreError> {
                let rows: Vec<$crate::store::outcomes::OutcomeRow> = sqlx::query_as(
                    "SELECT log, invariant, event_id, outcome, processed_at, target_record_id, \
                     run_id, plan_id, action_seq FROM log_outcomes WHERE log = $1 AND event_id = $2 \
                     ORDER BY invariant",
                )
                .bind(log)
                .bind(event_id)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(|r| r.parse()).collect()
            }

            async fn event_lines(
                &self,
                q: &$crate::store::OutcomeQuery,
            ) -> Result<Vec<$crate::store::EventLine>, $crate::store::StoreError> {
                // A page of events (filtered by outcome), then each one's lines: a page never
                // ends halfway through an event's invariants.
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT e.id, e.event_id, e.ingested_at, e.deliveries, o.invariant, o.outcome, \
                     o.processed_at, o.target_record_id FROM log_events e \
                     LEFT JOIN log_outcomes o ON o.log = e.log AND o.event_id = e.event_id",
                );
                if let Some(invariant) = &q.invariant {
                    qb.push(" AND o.invariant = ").push_bind(invariant.as_str());
                }
                if let Some(outcome) = q.outcome {
                    qb.push(" AND o.outcome = ").push_bind(outcome.as_str());
                }
                qb.push(" WHERE e.log = ")
                    .push_bind(q.log.as_str())
                    .push(" AND e.id IN (SELECT p.id FROM log_events p WHERE p.log = ")
                    .push_bind(q.log.as_str())
                    .push(" AND p.id > ")
                    .push_bind(q.after);
                if let Some(outcome) = q.outcome {
                    qb.push(
                        " AND EXISTS (SELECT 1 FROM log_outcomes f WHERE f.log = p.log \
                         AND f.event_id = p.event_id AND f.outcome = ",
                    )
                    .push_bind(outcome.as_str());
                    if let Some(invariant) = &q.invariant {
                        qb.push(" AND f.invariant = ").push_bind(invariant.as_str());
                    }
                    qb.push(")");
                }
                qb.push(" ORDER BY p.id LIMIT ")
                    .push_bind(i64::from(q.limit))
                    .push(") ORDER BY e.id, o.invariant");
                let rows: Vec<$crate::store::outcomes::LineRow> =
                    qb.build_query_as().fetch_all(&self.pool).await?;
                rows.into_iter().map(|r| r.parse()).collect()
            }
        }
    };
}

pub(super) use impl_outcome_store;

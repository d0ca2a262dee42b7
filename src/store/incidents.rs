//! Incidents in the store: the incident (window, scope, state, frozen report) and its timeline
//! of phase marks and notes. Like `plans.rs`, the SQL is written once for both backends and
//! every change writes its audit entry in the same transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::IncidentState;

#[derive(Debug, Clone)]
pub struct NewIncident {
    pub name: String,
    pub summary: Option<String>,
    pub window_from: DateTime<Utc>,
    pub window_to: Option<DateTime<Utc>>,
    /// Named invariants; empty: every invariant with violations in the window.
    pub invariants: Vec<String>,
    pub opened_by: String,
    pub opened_at: DateTime<Utc>,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct IncidentRecord {
    pub id: i64,
    pub name: String,
    pub summary: Option<String>,
    pub window_from: DateTime<Utc>,
    pub window_to: Option<DateTime<Utc>>,
    pub invariants: Vec<String>,
    pub state: IncidentState,
    pub opened_by: String,
    pub opened_at: DateTime<Utc>,
    pub closed_by: Option<String>,
    pub closed_at: Option<DateTime<Utc>>,
    pub override_reason: Option<String>,
    pub report_hash: Option<String>,
}

/// What closing an incident stores: who, when, why if overridden, and the frozen report.
#[derive(Debug, Clone)]
pub struct IncidentClosure {
    pub closed_by: String,
    pub closed_at: DateTime<Utc>,
    /// Set when it was closed despite blockers.
    pub override_reason: Option<String>,
    /// The report as it was when the incident closed (JSON), and its content hash.
    pub report: String,
    pub report_hash: String,
}

/// A closed incident's report, as stored when it closed.
#[derive(Debug, Clone, PartialEq)]
pub struct FrozenReport {
    pub report: String,
    pub report_hash: String,
}

impl IncidentRecord {
    pub fn window(&self) -> super::IncidentWindow {
        super::IncidentWindow {
            from: self.window_from,
            to: self.window_to,
        }
    }
}

/// A phase mark or a note.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct IncidentEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// `phase` or `note`.
    pub kind: String,
    pub phase: Option<String>,
    pub text: Option<String>,
}

#[async_trait]
pub trait IncidentStore: Send + Sync {
    /// Opens an incident; `None` when the name is taken.
    async fn open_incident(&self, incident: &NewIncident) -> Result<Option<i64>, StoreError>;

    async fn incident(&self, name: &str) -> Result<Option<IncidentRecord>, StoreError>;

    /// Incidents, newest first.
    async fn incidents(&self, limit: u32) -> Result<Vec<IncidentRecord>, StoreError>;

    /// Adds a phase mark or a note to an open incident; `false` if it is closed.
    async fn add_incident_event(
        &self,
        incident: i64,
        actor: &str,
        kind: &str,
        phase: Option<&str>,
        text: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Its phase marks and notes in order.
    async fn incident_events(&self, incident: i64) -> Result<Vec<IncidentEvent>, StoreError>;

    /// Closes an open incident and stores its frozen report; `false` if it was not open.
    async fn close_incident(
        &self,
        incident: i64,
        closure: &IncidentClosure,
    ) -> Result<bool, StoreError>;

    /// The report frozen when the incident closed.
    async fn frozen_report(&self, incident: i64) -> Result<Option<FrozenReport>, StoreError>;
}

macro_rules! impl_incident_store {
    ($store:ty, $db:ty, $begin:literal) => {
        impl $store {
            fn incident_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<$crate::store::IncidentRecord, sqlx::Error> {
                use sqlx::Row;
                let invariants: sqlx::types::Json<Vec<String>> = row.try_get("invariants")?;
                let state: String = row.try_get("state")?;
                Ok($crate::store::IncidentRecord {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    summary: row.try_get("summary")?,
                    window_from: row.try_get("window_from")?,
                    window_to: row.try_get("window_to")?,
                    invariants: invariants.0,
                    state: if state == "closed" {
                        $crate::domain::IncidentState::Closed
                    } else {
                        $crate::domain::IncidentState::Open
                    },
                    opened_by: row.try_get("opened_by")?,
                    opened_at: row.try_get("opened_at")?,
                    closed_by: row.try_get("closed_by")?,
                    closed_at: row.try_get("closed_at")?,
                    override_reason: row.try_get("override_reason")?,
                    report_hash: row.try_get("report_hash")?,
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::IncidentStore for $store {
            async fn open_incident(
                &self,
                incident: &$crate::store::NewIncident,
            ) -> Result<Option<i64>, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO incidents (name, summary, window_from, window_to, invariants, state, opened_by, opened_at) \
                     VALUES ($1, $2, $3, $4, $5, 'open', $6, $7) ON CONFLICT (name) DO NOTHING RETURNING id",
                )
                .bind(&incident.name)
                .bind(&incident.summary)
                .bind(incident.window_from)
                .bind(incident.window_to)
                .bind(sqlx::types::Json(&incident.invariants))
                .bind(&incident.opened_by)
                .bind(incident.opened_at)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(id) = id else {
                    return Ok(None);
                };
                Self::write_audit(
                    &mut tx,
                    incident.opened_at,
                    &incident.opened_by,
                    "incident.open",
                    &format!("incident:{}", incident.name),
                    &serde_json::json!({
                    "from": incident.window_from,
                    "to": incident.window_to,
                    "invariants": incident.invariants,
                    "summary": incident.summary,
                }),
                )
                .await?;
                tx.commit().await?;
                Ok(Some(id))
            }

            async fn incident(
                &self,
                name: &str,
            ) -> Result<Option<$crate::store::IncidentRecord>, $crate::store::StoreError> {
                let row = sqlx::query("SELECT * FROM incidents WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.as_ref().map(Self::incident_row).transpose()?)
            }

            async fn incidents(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::store::IncidentRecord>, $crate::store::StoreError> {
                let rows = sqlx::query("SELECT * FROM incidents ORDER BY id DESC LIMIT $1")
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .iter()
                    .map(Self::incident_row)
                    .collect::<Result<Vec<_>, _>>()?)
            }

            async fn add_incident_event(
                &self,
                incident: i64,
                actor: &str,
                kind: &str,
                phase: Option<&str>,
                text: Option<&str>,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let name: Option<String> = sqlx::query_scalar(
                    "SELECT name FROM incidents WHERE id = $1 AND state = 'open'",
                )
                .bind(incident)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(name) = name else {
                    return Ok(false);
                };
                sqlx::query(
                    "INSERT INTO incident_events (incident_id, at, actor, kind, phase, text) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(incident)
                .bind(at)
                .bind(actor)
                .bind(kind)
                .bind(phase)
                .bind(text)
                .execute(&mut *tx)
                .await?;
                Self::write_audit(
                    &mut tx,
                    at,
                    actor,
                    &format!("incident.{kind}"),
                    &format!("incident:{name}"),
                    &serde_json::json!({ "phase": phase, "text": text }),
                )
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn incident_events(
                &self,
                incident: i64,
            ) -> Result<Vec<$crate::store::IncidentEvent>, $crate::store::StoreError> {
                Ok(sqlx::query_as::<_, (i64, chrono::DateTime<chrono::Utc>, String, String, Option<String>, Option<String>)>(
                    "SELECT id, at, actor, kind, phase, text FROM incident_events WHERE incident_id = $1 ORDER BY id",
                )
                .bind(incident)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|(id, at, actor, kind, phase, text)| $crate::store::IncidentEvent {
                    id,
                    at,
                    actor,
                    kind,
                    phase,
                    text,
                })
                .collect())
            }

            async fn close_incident(
                &self,
                incident: i64,
                closure: &$crate::store::IncidentClosure,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let name: Option<String> = sqlx::query_scalar(
                    "UPDATE incidents SET state = 'closed', closed_by = $1, closed_at = $2, \
                     override_reason = $3, report = $4, report_hash = $5 \
                     WHERE id = $6 AND state = 'open' RETURNING name",
                )
                .bind(&closure.closed_by)
                .bind(closure.closed_at)
                .bind(&closure.override_reason)
                .bind(&closure.report)
                .bind(&closure.report_hash)
                .bind(incident)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(name) = name else {
                    return Ok(false);
                };
                Self::write_audit(
                    &mut tx,
                    closure.closed_at,
                    &closure.closed_by,
                    if closure.override_reason.is_some() {
                        "incident.close.override"
                    } else {
                        "incident.close"
                    },
                    &format!("incident:{name}"),
                    &serde_json::json!({
                        "override_reason": closure.override_reason,
                        "report_hash": closure.report_hash,
                    }),
                )
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn frozen_report(
                &self,
                incident: i64,
            ) -> Result<Option<$crate::store::FrozenReport>, $crate::store::StoreError> {
                let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT report, report_hash FROM incidents WHERE id = $1",
                )
                .bind(incident)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match row {
                    Some((Some(report), Some(report_hash))) => {
                        Some($crate::store::FrozenReport { report, report_hash })
                    }
                    _ => None,
                })
            }
        }
    };
}

pub(super) use impl_incident_store;

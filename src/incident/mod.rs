//! Incidents: an outage's window and scope, the phases people mark (contain → restore →
//! reconcile → verify) and their notes. Closure reports build on this (issue 6 continues).

use chrono::{DateTime, Utc};

use crate::domain::{IncidentName, Invariant, Phase};
use crate::plan::Actor;
use crate::store::{IncidentEvent, IncidentRecord, IncidentState, NewIncident, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("no incident named `{0}`; `trueup incident list` shows them")]
    NotFound(String),
    #[error("incident `{0}` is closed; a closed incident does not change")]
    Closed(String),
}

/// An incident with its timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IncidentView {
    #[serde(flatten)]
    pub incident: IncidentRecord,
    pub events: Vec<IncidentEvent>,
    /// The latest mark of each phase reached, in phase order.
    pub phases: Vec<PhaseMark>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseMark {
    pub phase: Phase,
    pub at: DateTime<Utc>,
    pub by: String,
}

/// Opens an incident. `invariants` must name loaded invariants (empty: every invariant with
/// violations in the window).
#[allow(clippy::too_many_arguments)]
pub async fn open(
    store: &dyn Store,
    loaded: &[Invariant],
    name: &str,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    invariants: &[String],
    summary: Option<&str>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<IncidentRecord, IncidentError> {
    let name = IncidentName::parse(name).map_err(|e| IncidentError::Invalid(e.to_string()))?;
    if let Some(to) = to
        && to <= from
    {
        return Err(IncidentError::Invalid(format!(
            "--to {} is not after --from {}",
            to.to_rfc3339(),
            from.to_rfc3339()
        )));
    }
    for inv in invariants {
        if !loaded.iter().any(|i| i.name.as_str() == inv) {
            let hint = crate::rules::suggest(inv, loaded.iter().map(|i| i.name.as_str()))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(IncidentError::Invalid(format!(
                "no invariant named `{inv}`{hint}"
            )));
        }
    }
    let created = store
        .open_incident(&NewIncident {
            name: name.to_string(),
            summary: summary.map(str::to_owned),
            window_from: from,
            window_to: to,
            invariants: invariants.to_vec(),
            opened_by: actor.name.clone(),
            opened_at: now,
        })
        .await?;
    if created.is_none() {
        return Err(IncidentError::Invalid(format!(
            "an incident named `{name}` exists already; choose another name or `trueup incident show {name}`"
        )));
    }
    load(store, name.as_str()).await
}

pub async fn load(store: &dyn Store, name: &str) -> Result<IncidentRecord, IncidentError> {
    store
        .incident(name)
        .await?
        .ok_or_else(|| IncidentError::NotFound(name.to_owned()))
}

pub async fn view(store: &dyn Store, name: &str) -> Result<IncidentView, IncidentError> {
    let incident = load(store, name).await?;
    let events = store.incident_events(incident.id).await?;
    let mut phases: Vec<PhaseMark> = Vec::new();
    for e in events.iter().filter(|e| e.kind == "phase") {
        let Some(phase) = e.phase.as_deref().and_then(Phase::parse) else {
            continue;
        };
        phases.retain(|m| m.phase != phase);
        phases.push(PhaseMark {
            phase,
            at: e.at,
            by: e.actor.clone(),
        });
    }
    phases.sort_by_key(|m| m.phase);
    Ok(IncidentView {
        incident,
        events,
        phases,
    })
}

/// Marks that the response reached a phase, with an optional note.
pub async fn mark_phase(
    store: &dyn Store,
    name: &str,
    phase: &str,
    note: Option<&str>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<(), IncidentError> {
    let phase = Phase::parse(phase).ok_or_else(|| {
        IncidentError::Invalid(format!("`{phase}` is not a phase; use {}", Phase::NAMES))
    })?;
    add(store, name, "phase", Some(phase.as_str()), note, actor, now).await
}

pub async fn add_note(
    store: &dyn Store,
    name: &str,
    text: &str,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<(), IncidentError> {
    if text.trim().is_empty() {
        return Err(IncidentError::Invalid("the note is empty".into()));
    }
    add(store, name, "note", None, Some(text.trim()), actor, now).await
}

#[allow(clippy::too_many_arguments)]
async fn add(
    store: &dyn Store,
    name: &str,
    kind: &str,
    phase: Option<&str>,
    text: Option<&str>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<(), IncidentError> {
    let incident = load(store, name).await?;
    if incident.state == IncidentState::Closed
        || !store
            .add_incident_event(incident.id, &actor.name, kind, phase, text, now)
            .await?
    {
        return Err(IncidentError::Closed(name.to_owned()));
    }
    Ok(())
}

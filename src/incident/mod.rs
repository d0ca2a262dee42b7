//! Incidents: an outage's window and scope, the phases people mark (contain → restore →
//! reconcile → verify) and their notes, the closure report (`report.rs`, rendered by
//! `render.rs`), its verification runs, and closing on evidence.

pub mod render;
pub mod report;

use std::borrow::Borrow;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::domain::Actor;
use crate::domain::IncidentState;
use crate::domain::{IncidentName, Invariant, Phase, Role};
use crate::store::{
    IncidentClosure, IncidentEvent, IncidentRecord, NewIncident, Store, StoreError,
};

pub use render::{RenderError, ReportFormat, render};

/// How old a verification run may be before `verify` makes a new one.
pub const DEFAULT_FRESH_WITHIN: chrono::TimeDelta = chrono::TimeDelta::minutes(15);
pub use report::{Blocker, Closure, Report, VerificationResult};

#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("no incident named `{0}`")]
    NotFound(String),
    #[error("an incident named `{0}` exists already")]
    Exists(String),
    #[error("incident `{0}` is closed; a closed incident does not change")]
    Closed(String),
    #[error("{}", blocked_message(.name, .blockers))]
    Blocked {
        name: String,
        blockers: Vec<Blocker>,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "the frozen report of incident `{0}` does not match its stored hash: the store was changed behind trueup's back"
    )]
    Tampered(String),
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl IncidentError {
    /// What the person can do about it, for each surface to word.
    pub fn next_step(&self) -> Option<crate::domain::NextStep> {
        use crate::domain::NextStep;
        match self {
            IncidentError::NotFound(_) => Some(NextStep::ListIncidents),
            IncidentError::Exists(name) => Some(NextStep::ChooseAnotherIncidentName(name.clone())),
            IncidentError::Blocked { name, .. } => {
                Some(NextStep::ResolveBlockersOrOverride(name.clone()))
            }
            _ => None,
        }
    }
}

fn blocked_message(name: &str, blockers: &[Blocker]) -> String {
    let mut out = format!(
        "incident `{name}` is not ready to close; {} blocker(s):",
        blockers.len()
    );
    for b in blockers {
        out.push_str("\n  - ");
        if let Some(i) = &b.invariant {
            out.push_str(&format!("{i}: "));
        }
        out.push_str(&b.detail);
    }
    out
}

/// An incident with its timeline.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct IncidentView {
    #[serde(flatten)]
    pub incident: IncidentRecord,
    pub events: Vec<IncidentEvent>,
    /// The latest mark of each phase reached, in phase order.
    pub phases: Vec<PhaseMark>,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct PhaseMark {
    pub phase: Phase,
    pub at: DateTime<Utc>,
    pub by: String,
}

/// Opens an incident. `invariants` must name loaded invariants (empty: every invariant with
/// violations in the window). Functions here take the loaded invariants as any slice that
/// borrows them (the CLI's `Vec<Invariant>`, the server catalog's `Arc`s).
#[allow(clippy::too_many_arguments)]
pub async fn open(
    store: &dyn Store,
    loaded: &[impl Borrow<Invariant> + Sync],
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
            "the window's end {} is not after its start {}",
            to.to_rfc3339(),
            from.to_rfc3339()
        )));
    }
    for inv in invariants {
        if !loaded.iter().any(|i| i.borrow().name.as_str() == inv) {
            let hint = crate::rules::suggest(inv, loaded.iter().map(|i| i.borrow().name.as_str()))
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
        return Err(IncidentError::Exists(name.to_string()));
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
    let phases = latest_phase_marks(&events);
    Ok(IncidentView {
        incident,
        events,
        phases,
    })
}

/// The latest mark of each phase reached, in phase order.
pub fn latest_phase_marks(events: &[IncidentEvent]) -> Vec<PhaseMark> {
    let mut latest: std::collections::BTreeMap<Phase, PhaseMark> = Default::default();
    for e in events.iter().filter(|e| e.kind == "phase") {
        if let Some(phase) = e.phase.as_deref().and_then(Phase::parse) {
            latest.insert(
                phase,
                PhaseMark {
                    phase,
                    at: e.at,
                    by: e.actor.clone(),
                },
            );
        }
    }
    latest.into_values().collect()
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

/// The incident's closure report: the frozen one if it is closed, else built from the store
/// as it is now (no evaluation is run; [`unverified`] says what to evaluate first).
pub async fn report(
    store: &dyn Store,
    loaded: &[impl Borrow<Invariant> + Sync],
    name: &str,
) -> Result<Report, IncidentError> {
    let incident = load(store, name).await?;
    if incident.state == IncidentState::Closed {
        return frozen(store, &incident).await;
    }
    let evidence = report::gather(store, incident, loaded, chrono::Utc::now()).await?;
    Ok(report::assemble(&evidence, loaded, None))
}

async fn frozen(store: &dyn Store, incident: &IncidentRecord) -> Result<Report, IncidentError> {
    let stored = store
        .frozen_report(incident.id)
        .await?
        .ok_or_else(|| IncidentError::Tampered(incident.name.clone()))?;
    if content_hash(&stored.report) != stored.report_hash {
        return Err(IncidentError::Tampered(incident.name.clone()));
    }
    let mut report: Report = serde_json::from_str(&stored.report)
        .map_err(|_| IncidentError::Tampered(incident.name.clone()))?;
    report.content_hash = Some(stored.report_hash);
    Ok(report)
}

/// SHA-256 of the frozen report's stored text.
pub fn content_hash(frozen: &str) -> String {
    hex::encode(Sha256::digest(frozen.as_bytes()))
}

/// The in-scope invariants to evaluate again before the report can verify the incident: no
/// run after the last repair, or one older than `fresh_within`. Only loaded invariants are
/// listed (one that is not loaded is a blocker of its own). Empty for a closed incident.
pub async fn unverified(
    store: &dyn Store,
    loaded: &[impl Borrow<Invariant> + Sync],
    name: &str,
    fresh_within: chrono::TimeDelta,
    now: DateTime<Utc>,
) -> Result<Vec<String>, IncidentError> {
    let incident = load(store, name).await?;
    if incident.state == IncidentState::Closed {
        return Ok(Vec::new());
    }
    let evidence = report::gather(store, incident, loaded, now).await?;
    let current = report::assemble(&evidence, loaded, None);
    Ok(current
        .invariants
        .into_iter()
        .filter(|part| {
            let v = &part.verification;
            // A partial run (incremental, truncated) is never evidence: a full one is due.
            let fresh = v.result != report::VerificationResult::Partial
                && v.run.as_ref().is_some_and(|r| {
                    r.started_at > v.required_after && now - r.started_at <= fresh_within
                });
            part.loaded && !fresh
        })
        .map(|part| part.name)
        .collect())
}

/// Closes the incident on evidence: refused while the report has blockers, unless
/// `override_reason` is given by an approver. The report is frozen with its hash.
pub async fn close(
    store: &dyn Store,
    loaded: &[impl Borrow<Invariant> + Sync],
    name: &str,
    override_reason: Option<&str>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Report, IncidentError> {
    let incident = load(store, name).await?;
    if incident.state == IncidentState::Closed {
        return Err(IncidentError::Closed(name.to_owned()));
    }
    let override_reason = match override_reason.map(str::trim) {
        Some("") => {
            return Err(IncidentError::Invalid(
                "closing despite the blockers needs a reason: say why the incident closes anyway"
                    .into(),
            ));
        }
        other => other,
    };
    let evidence = report::gather(store, incident.clone(), loaded, now).await?;
    let draft = report::assemble(&evidence, loaded, None);
    if !draft.verdict.ready {
        if override_reason.is_none() {
            return Err(IncidentError::Blocked {
                name: name.to_owned(),
                blockers: draft.verdict.blockers,
            });
        }
        if actor.role < Role::Approver {
            return Err(IncidentError::Forbidden(format!(
                "`{}` has the {} role; closing over blockers needs approver or admin",
                actor.name, actor.role
            )));
        }
    }
    let closure = Closure {
        closed_by: actor.name.clone(),
        closed_at: now,
        overridden: !draft.verdict.ready,
        override_reason: (!draft.verdict.ready)
            .then(|| override_reason.map(str::to_owned))
            .flatten(),
    };
    let frozen_report = report::assemble(&evidence, loaded, Some(&closure));
    let text = serde_json::to_string(&frozen_report)
        .map_err(|e| IncidentError::Render(RenderError::new(e.to_string())))?;
    let hash = content_hash(&text);
    let closed = store
        .close_incident(
            incident.id,
            &IncidentClosure {
                closed_by: closure.closed_by.clone(),
                closed_at: now,
                override_reason: closure.override_reason.clone(),
                report: text,
                report_hash: hash.clone(),
            },
        )
        .await?;
    if !closed {
        return Err(IncidentError::Closed(name.to_owned()));
    }
    let mut report = frozen_report;
    report.content_hash = Some(hash);
    Ok(report)
}

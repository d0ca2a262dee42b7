//! Reading an incident's evidence from the store.

use crate::domain::ViolationKind;
use crate::store::{IncidentRecord, StatusFilter, Store, StoreError, ViolationFilter};

use super::*;

/// Reads what the report needs from the store. `until` is where the SLO measures end: the
/// close, or now for a report of an open incident.
pub async fn gather(
    store: &dyn Store,
    incident: IncidentRecord,
    loaded: &[impl std::borrow::Borrow<crate::domain::Invariant> + Sync],
    until: chrono::DateTime<chrono::Utc>,
) -> Result<Evidence, StoreError> {
    let window = incident.window();
    let scope = if incident.invariants.is_empty() {
        let mut names: Vec<String> = store
            .violation_groups(&ViolationFilter {
                status: StatusFilter::All,
                window: Some(window),
                ..ViolationFilter::default()
            })
            .await?
            .into_iter()
            .map(|g| g.invariant)
            .collect();
        names.dedup();
        names
    } else {
        let mut names = incident.invariants.clone();
        names.sort();
        names.dedup();
        names
    };
    let events = store.incident_events(incident.id).await?;
    let mut invariants = Vec::with_capacity(scope.len());
    let mut targets = vec![format!("incident:{}", incident.name)];
    for name in scope {
        let in_window = ViolationFilter {
            invariants: vec![name.clone()],
            status: StatusFilter::All,
            window: Some(window),
            ..ViolationFilter::default()
        };
        let groups = store.violation_groups(&in_window).await?;
        let open_anywhere = store
            .violation_groups(&ViolationFilter {
                invariants: vec![name.clone()],
                status: StatusFilter::Active,
                ..ViolationFilter::default()
            })
            .await?
            .iter()
            .map(|g| g.count)
            .sum();
        let mut kinds: Vec<&str> = groups.iter().map(|g| g.kind.as_str()).collect();
        kinds.dedup();
        let mut samples = Vec::new();
        for kind in kinds {
            let Some(kind) = ViolationKind::parse(kind) else {
                continue;
            };
            samples.extend(
                store
                    .violations(&ViolationFilter {
                        kind: Some(kind),
                        limit: SAMPLES_PER_KIND,
                        ..in_window.clone()
                    })
                    .await?,
            );
        }
        let runs = store.run_digest(&name, window.from, RUNS_LIMIT).await?;
        let mut plans = Vec::new();
        for plan in store.plans(Some(&name), 10_000).await? {
            if plan.proposed_at < window.from {
                continue;
            }
            targets.push(format!("plan:{}", plan.id));
            plans.push(PlanEvidence {
                progress: store.action_progress(plan.id).await?,
                last_applied_at: store.last_applied_at(plan.id).await?,
                plan,
            });
        }
        plans.sort_by_key(|p| p.plan.id);
        let objective = loaded
            .iter()
            .map(std::borrow::Borrow::borrow)
            .find(|i| i.name.as_str() == name)
            .and_then(|i| i.slo.clone());
        let slo = match objective {
            None => None,
            Some(objective) => {
                let incident =
                    crate::slo::over(store, &name, &objective, window.from, until).await?;
                let rolling = crate::slo::over(
                    store,
                    &name,
                    &objective,
                    until - objective.window.as_chrono(),
                    until,
                )
                .await?;
                Some(SloEvidence {
                    objective,
                    incident,
                    rolling,
                })
            }
        };
        targets.push(format!("invariant:{name}"));
        invariants.push(InvariantEvidence {
            name,
            groups,
            open_anywhere,
            samples,
            runs,
            plans,
            slo,
        });
    }
    let audit = store
        .audit_trail(&targets, window.from.min(incident.opened_at), AUDIT_LIMIT)
        .await?;
    Ok(Evidence {
        incident,
        events,
        invariants,
        audit,
    })
}

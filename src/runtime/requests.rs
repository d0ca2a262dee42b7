//! What a person asks of the running service, done the same way from the API and from the
//! console: apply a plan, verify an incident. Each request is audited under the caller's
//! identity before anything happens.

use chrono::{TimeDelta, Utc};
use serde_json::json;

use crate::domain::{Actor, RunId};
use crate::incident::{self, IncidentError};
use crate::plan::apply::{self, ApplyEnv, ApplyOptions, ApplyReport};
use crate::plan::{self, PlanError};
use crate::store::{PlanRecord, StoreError};

use super::{Attempt, RunPass, Runtime, run_once};

/// Audits the request, then runs a dry run (its report) or starts a live apply in the
/// background (`None`), refusing an unapproved, stale or paused plan up front.
pub async fn request_apply(
    runtime: &Runtime,
    actor: &Actor,
    p: &PlanRecord,
    opts: ApplyOptions,
) -> Result<Option<ApplyReport>, PlanError> {
    let id = p.id;
    let inv = runtime.catalog.find(&p.invariant);
    runtime
        .store
        .audit(
            &actor.name,
            "plan.apply.requested",
            &format!("plan:{id}"),
            &json!({"dry_run": opts.dry_run, "rate": opts.rate.to_string(), "max_failures": opts.max_failures}),
            Utc::now(),
        )
        .await?;
    let worker = format!("{}:{}", runtime.replica, actor.name);
    if opts.dry_run {
        let env = ApplyEnv {
            store: runtime.store.as_ref(),
            sources: &runtime.sources,
            targets: &runtime.targets,
            invariant: inv.as_deref(),
            actor,
            worker,
        };
        let report = apply::apply(&env, id, &opts, &runtime.cancel_runs, &|_| {}).await?;
        return Ok(Some(report));
    }
    plan::check_applicable(runtime.store.as_ref(), p, inv.as_deref(), Utc::now()).await?;
    let runtime = runtime.clone();
    let actor = actor.clone();
    tokio::spawn(async move {
        let env = ApplyEnv {
            store: runtime.store.as_ref(),
            sources: &runtime.sources,
            targets: &runtime.targets,
            invariant: inv.as_deref(),
            actor: &actor,
            worker,
        };
        match apply::apply(&env, id, &opts, &runtime.cancel_runs, &|_| {}).await {
            Ok(r) => tracing::info!(plan = id, state = r.state.as_str(), "apply finished"),
            Err(e) => tracing::error!(plan = id, "apply failed: {e}"),
        }
    });
    Ok(None)
}

/// One invariant a verification evaluated: its run, or that a run was already going.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct VerificationRun {
    pub invariant: String,
    pub run: Option<RunId>,
    /// The run's status, or `busy`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_after: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Incident(#[from] IncidentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store could not record a run.
    #[error("{0}")]
    RunNotRecorded(String),
}

/// Evaluates, as requested runs (audited, under the invariant's run lock, with metrics, alert
/// and plans), the in-scope invariants the incident's verification needs. One entry per
/// invariant: its run, or that it was busy.
pub async fn run_verification(
    runtime: &Runtime,
    actor: &Actor,
    name: &str,
    fresh_within: TimeDelta,
) -> Result<Vec<VerificationRun>, VerifyError> {
    let store = runtime.store.as_ref();
    let names = incident::unverified(
        store,
        &runtime.catalog.snapshot(),
        name,
        fresh_within,
        Utc::now(),
    )
    .await?;
    let mut runs = Vec::new();
    for invariant in names {
        let Some(inv) = runtime.catalog.find(&invariant) else {
            continue;
        };
        store
            .audit(
                &actor.name,
                "run.requested",
                &format!("invariant:{invariant}"),
                &json!({ "incident": name }),
                Utc::now(),
            )
            .await?;
        runs.push(
            match run_once(&inv, runtime, None, actor, RunPass::Full).await {
                Attempt::Ran(r) => VerificationRun {
                    invariant: r.run.invariant.clone(),
                    run: Some(r.run.run_id),
                    status: r.run.status.as_str().into(),
                    open_after: Some(r.run.open_after),
                    error: r.run.error.clone(),
                },
                Attempt::Busy => VerificationRun {
                    invariant,
                    run: None,
                    status: "busy".into(),
                    open_after: None,
                    error: Some(
                        "a run of this invariant was already going; verify again when it ends"
                            .into(),
                    ),
                },
                Attempt::StoreFailed(e) => return Err(VerifyError::RunNotRecorded(e)),
            },
        );
    }
    Ok(runs)
}

//! Plans: the list, one plan with its actions and progress, approve, reject, apply; the audit log.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use chrono::Utc;
use minijinja::context;
use serde::Deserialize;

use crate::domain::json_text;
use crate::domain::{PlanId, PlanState};
use crate::http::HttpState;
use crate::plan::apply::Rate;
use crate::plan::{self, diff_marker};
use crate::store::ActionRecord;

use super::super::session::Session;
use super::super::{PageResult, render, serde};
use super::*;

pub(in crate::http::console) async fn plans(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let store = state.runtime.store.as_ref();
    let now = Utc::now();
    let mut groups: BTreeMap<&'static str, Vec<plan::PlanView>> = BTreeMap::new();
    for p in store.plans(None, 200).await? {
        let inv = state.runtime.catalog.find(&p.invariant);
        let v = plan::view(store, p, inv.as_deref(), now).await?;
        groups.entry(v.status).or_default().push(v);
    }
    let order = [
        "applying",
        "paused",
        "stopped",
        "approved",
        "proposed",
        "stale",
        "applied",
        "rejected",
        "superseded",
        "cancelled",
    ];
    let queue: Vec<_> = order
        .iter()
        .filter_map(|s| {
            groups
                .get(s)
                .map(|plans| context! { status => *s, plans => serde(plans) })
        })
        .collect();
    Ok(render(
        &session,
        "plans.html",
        context! { nav => "plans", queue => queue },
    ))
}

async fn plan_page(state: &HttpState, session: &Session, id: PlanId, watch: bool) -> PageResult {
    let store = state.runtime.store.as_ref();
    let record = plan::load(store, id).await?;
    // The last dry run of this content: the plan's own, or its window's on the replay page.
    let dry_run = plan::dry_runs::last(store, id, &record.content_hash).await?;
    let inv = state.runtime.catalog.find(&record.invariant);
    let view = plan::view(store, record, inv.as_deref(), Utc::now()).await?;
    let actions = store.plan_actions(id, None, ACTIONS_SHOWN).await?;
    let me = &session.caller.name;
    let approved_by_me = view.approvers.iter().any(|a| a == me);
    // Why the approve control is disabled for this approver, if it is.
    let approve_blocked = if let Some(why) = &view.stale {
        Some(format!("It cannot be approved: {why}."))
    } else if view.plan.state != PlanState::Proposed {
        Some(format!(
            "It is {}; only a proposed plan is approved.",
            view.plan.state.as_str()
        ))
    } else if approved_by_me && view.approved {
        Some(format!(
            "You approved this content; it has the {} it needs.",
            if view.plan.approvals_required == 1 {
                "approval".to_owned()
            } else {
                format!("{} approvals", view.plan.approvals_required)
            }
        ))
    } else if approved_by_me {
        Some("You approved this content already; another approver must add theirs.".to_owned())
    } else {
        None
    };
    // Why the apply controls are disabled, if they are.
    let apply_blocked = {
        use PlanState::*;
        match view.plan.state {
            _ if view.stale.is_some() && view.plan.state != Applied => Some(format!(
                "It cannot be applied: {}.",
                view.stale.as_deref().unwrap_or("")
            )),
            Applied => Some("It has been applied.".to_owned()),
            Rejected | Superseded | Cancelled => {
                Some(format!("It is {}.", view.plan.state.as_str()))
            }
            Applying => Some("It is being applied.".to_owned()),
            Paused => Some("It is paused; resume it to go on.".to_owned()),
            Proposed if !view.approved => Some(format!(
                "It needs {} approval(s) before it is applied; a dry run shows what would happen.",
                view.plan.approvals_required
            )),
            Proposed | Stopped => None,
        }
    };
    // A dry run is for a plan that can still be applied.
    let can_dry_run =
        matches!(view.plan.state, PlanState::Proposed | PlanState::Stopped) && view.stale.is_none();
    // Applied, and the re-check of what was applied (a replay's window) still running.
    let verifying = view.plan.state == PlanState::Applied && view.plan.verification.is_none();
    let applying = view.plan.state == PlanState::Applying;
    // A stopped plan: what to do about it (retry what failed, or apply again).
    let stopped_next = (view.plan.state == PlanState::Stopped).then(|| {
        crate::http::console::console_next_step(&plan::apply::after_stop(&view.progress, id))
    });
    let actions: Vec<_> = actions.iter().map(action_view).collect();
    // What an operator may do to the plan's course now.
    let state_now = view.plan.state;
    // An apply was just asked for (a first apply, a resume, a retry) and has not yet moved the
    // plan to `applying`.
    let just_asked = watch && matches!(state_now, PlanState::Proposed | PlanState::Stopped);
    let retry = state_now == PlanState::Stopped
        && matches!(
            plan::apply::after_stop(&view.progress, id),
            crate::domain::NextStep::RetryFailed(_)
        )
        && view.stale.is_none();
    let controls = context! {
        // (Also while an apply just asked for has not yet moved the plan to `applying`.)
        pause => applying || just_asked,
        resume => plan::Control::Resume.applies_to(state_now) && view.stale.is_none(),
        cancel => plan::Control::Cancel.applies_to(state_now),
        retry => retry,
        failed => [crate::domain::ActionStatus::Failed, crate::domain::ActionStatus::Parked]
            .iter()
            .filter_map(|s| view.progress.get(s))
            .sum::<u64>(),
    };
    // The incidents whose window and scope hold a replay's window: the page links to them.
    let window = |k: &str| {
        view.plan.meta[k]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok())
    };
    let covering: Vec<String> = match (window("from"), window("to")) {
        (Some(from), Some(to)) => store
            .incidents(200)
            .await?
            .into_iter()
            .filter(|i| {
                i.window_from < to
                    && i.window_to.is_none_or(|end| end > from)
                    && (i.invariants.is_empty() || i.invariants.contains(&view.plan.invariant))
            })
            .map(|i| i.name)
            .collect(),
        _ => Vec::new(),
    };
    Ok(render(
        session,
        "plan.html",
        context! {
            nav => "plans",
            covering => covering,
            p => serde(&view),
            total => view.plan.action_count,
            done => plan::apply::finished(&view.progress),
            actions => actions,
            approve_blocked => approve_blocked,
            apply_blocked => apply_blocked,
            default_rate => Rate::default_for(view.plan.kind).to_string(),
            can_dry_run => can_dry_run,
            dry_run => serde(&dry_run),
            applying => applying,
            // Just asked to apply: the page follows the progress even before the apply has
            // moved the plan to `applying` (from proposed, or stopped by a resume).
            watch => applying || just_asked || verifying,
            verifying => verifying,
            stopped_next => stopped_next,
            controls => controls,
        },
    ))
}

fn action_view(a: &ActionRecord) -> minijinja::Value {
    let params: Vec<(String, String)> = a
        .spec
        .sql_bindings()
        .into_iter()
        .map(|(label, v)| (label, json_text(v)))
        .collect();
    context! {
        a => serde(a),
        params => params,
        marker => diff_marker(&a.violation_kind),
        evidence => serde(&evidence_view(&a.evidence)),
    }
}

/// Actions a plan's page lists (and its live progress follows).
const ACTIONS_SHOWN: u32 = 200;

#[derive(Deserialize)]
pub(in crate::http::console) struct PlanQuery {
    #[serde(default)]
    watch: bool,
}

pub(in crate::http::console) async fn plan(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
    Query(q): Query<PlanQuery>,
) -> PageResult {
    plan_page(&state, &session, id, q.watch).await
}

/// Live progress for the plan page's script.
pub(in crate::http::console) async fn plan_progress(
    State(state): State<HttpState>,
    Path(id): Path<PlanId>,
) -> PageResult {
    let store = state.runtime.store.as_ref();
    let record = plan::load(store, id).await?;
    let progress = store.action_progress(id).await?;
    // The statuses of the actions the page lists, so that the list follows the apply too.
    let listed: BTreeMap<String, crate::domain::ActionStatus> = store
        .plan_actions(id, None, ACTIONS_SHOWN)
        .await?
        .into_iter()
        .map(|a| (a.seq.to_string(), a.status))
        .collect();
    Ok(Json(serde_json::json!({
        "state": record.state,
        "total": record.action_count,
        "done": plan::apply::finished(&progress),
        "progress": progress,
        "listed": listed,
        // The re-check after an apply has been recorded.
        "verified": record.verification.is_some(),
    }))
    .into_response())
}

#[derive(Deserialize)]
pub(in crate::http::console) struct ApproveForm {
    content_hash: String,
}

pub(in crate::http::console) async fn approve(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
    Form(form): Form<ApproveForm>,
) -> PageResult {
    let store = state.runtime.store.as_ref();
    let record = plan::load(store, id).await?;
    let seen = crate::http::plans_api::reviewed_hash(id, &form.content_hash)?;
    let inv = state.runtime.catalog.find(&record.invariant);
    plan::approve(
        store,
        id,
        inv.as_deref(),
        &session.caller.actor(),
        Some(&seen),
        Utc::now(),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/plans/{id}")).into_response())
}

#[derive(Deserialize)]
pub(in crate::http::console) struct RejectForm {
    reason: String,
}

pub(in crate::http::console) async fn reject(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
    Form(form): Form<RejectForm>,
) -> PageResult {
    plan::reject(
        state.runtime.store.as_ref(),
        id,
        &session.caller.actor(),
        &form.reason,
        Utc::now(),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/plans/{id}")).into_response())
}

#[derive(Deserialize)]
pub(in crate::http::console) struct ApplyForm {
    /// `dry_run` or `live`.
    mode: String,
    /// e.g. `5/s` or `unlimited` (default: the plan kind's).
    rate: Option<String>,
    /// Apply again the actions that failed or parked (a stopped plan).
    #[serde(default)]
    retry_failed: bool,
}

pub(in crate::http::console) async fn apply(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
    Form(form): Form<ApplyForm>,
) -> PageResult {
    let record = plan::load(state.runtime.store.as_ref(), id).await?;
    let opts = crate::plan::apply::ApplyOptions {
        dry_run: form.mode != "live",
        rate: form_rate(form.rate.as_deref(), Rate::default_for(record.kind))?,
        retry_failed: form.retry_failed,
        ..crate::plan::apply::ApplyOptions::default()
    };
    match crate::runtime::request_apply(&state.runtime, &session.caller.actor(), &record, opts)
        .await?
    {
        // The dry run is recorded: the plan's page shows it (and offers the live apply).
        Some(_) => Ok(Redirect::to(&format!("/ui/plans/{id}#dry-run-result")).into_response()),
        None => Ok(Redirect::to(&format!("/ui/plans/{id}?watch=true")).into_response()),
    }
}

#[derive(Deserialize)]
pub(in crate::http::console) struct ControlForm {
    /// Resume: the rate to apply on at (default: the plan kind's).
    rate: Option<String>,
}

/// Pause: no action starts once it is recorded.
pub(in crate::http::console) async fn pause(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
) -> PageResult {
    control_and_back(&state, &session, id, plan::Control::Pause).await
}

/// Cancel: nothing more is applied.
pub(in crate::http::console) async fn cancel(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
) -> PageResult {
    control_and_back(&state, &session, id, plan::Control::Cancel).await
}

/// Moves the plan's course as the signed-in person, then back to its page.
async fn control_and_back(
    state: &HttpState,
    session: &Session,
    id: PlanId,
    control: plan::Control,
) -> PageResult {
    let store = state.runtime.store.as_ref();
    plan::control(store, id, control, &session.caller.actor(), Utc::now()).await?;
    Ok(Redirect::to(&format!("/ui/plans/{id}")).into_response())
}

/// Resume a paused plan and apply on, in the background (as the API's resume does).
pub(in crate::http::console) async fn resume(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
    Form(form): Form<ControlForm>,
) -> PageResult {
    let store = state.runtime.store.as_ref();
    let record = plan::load(store, id).await?;
    // The rate is read before anything moves: a bad one leaves the plan paused.
    let rate = form_rate(form.rate.as_deref(), Rate::default_for(record.kind))?;
    plan::control(
        store,
        id,
        plan::Control::Resume,
        &session.caller.actor(),
        Utc::now(),
    )
    .await?;
    let record = plan::load(store, id).await?;
    let opts = crate::plan::apply::ApplyOptions {
        dry_run: false,
        rate,
        ..crate::plan::apply::ApplyOptions::default()
    };
    crate::runtime::request_apply(&state.runtime, &session.caller.actor(), &record, opts).await?;
    Ok(Redirect::to(&format!("/ui/plans/{id}?watch=true")).into_response())
}

#[derive(Deserialize)]
pub(in crate::http::console) struct AuditQuery {
    target: Option<String>,
    actor: Option<String>,
    /// The page of entries older than this one (newest first).
    before: Option<i64>,
    /// Each action's own record too, not only the decisions.
    #[serde(default)]
    actions: bool,
}

/// Audit entries on one page of the console.
const AUDIT_PAGE: u32 = 200;

pub(in crate::http::console) async fn audit(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let target = q.target.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let actor = q.actor.as_deref().map(str::trim).filter(|a| !a.is_empty());
    // Decisions unless asked for every action's record too: one replay writes thousands.
    let decisions_only = !q.actions;
    let filter = crate::store::AuditFilter {
        target: target.map(str::to_owned),
        actor: actor.map(str::to_owned),
        decisions_only,
    };
    let entries = state
        .runtime
        .store
        .audit_log(
            &filter,
            crate::store::AuditPage::Before(q.before),
            AUDIT_PAGE,
        )
        .await?;
    let older_before = (entries.len() == AUDIT_PAGE as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(render(
        &session,
        "audit.html",
        context! {
            nav => "audit",
            entries => serde(&entries),
            target => target.unwrap_or(""),
            actor => actor.unwrap_or(""),
            actions => q.actions,
            older_before => older_before,
        },
    ))
}

//! `/api/v1/plans`: review, approve, reject and apply compensation plans, as the caller's
//! token identity.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use crate::domain::{PlanId, PlanState};
use crate::plan::apply::{ApplyOptions, Rate};
use crate::plan::{self, PlanError};

use super::HttpState;
use super::auth::Caller;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};

const MAX_PAGE: u32 = 1000;

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> Self {
        let next = e.next_step();
        let error = match e {
            PlanError::NotFound(_) => ApiError::not_found(e.to_string()),
            PlanError::Forbidden { .. } => ApiError::forbidden(e.to_string()),
            PlanError::Refused { .. }
            | PlanError::NoCompensation(_)
            | PlanError::Render { .. }
            | PlanError::Target { .. }
            | PlanError::Recheck(_) => ApiError::conflict(e.to_string()),
            PlanError::Store(e) => ApiError::internal(e),
        };
        error.with_next(next)
    }
}

async fn audit(
    state: &HttpState,
    caller: &Caller,
    action: &str,
    plan: Option<PlanId>,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let target = plan.map_or_else(|| "plans".to_owned(), |p| format!("plan:{p}"));
    state
        .runtime
        .store
        .audit(&caller.name, action, &target, &details, Utc::now())
        .await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlansQuery {
    invariant: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn list(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<PlansQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let plans = state
        .runtime
        .store
        .plans(
            q.invariant.as_deref(),
            q.limit.unwrap_or(50).clamp(1, MAX_PAGE),
        )
        .await?;
    let now = Utc::now();
    let mut items = Vec::new();
    for p in plans {
        let inv = state.runtime.catalog.find(&p.invariant);
        items.push(plan::view(state.runtime.store.as_ref(), p, inv.as_deref(), now).await?);
    }
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionsQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

pub(super) async fn get(
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<PlanId>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = plan::load(state.runtime.store.as_ref(), id).await?;
    let inv = state.runtime.catalog.find(&p.invariant);
    let view = plan::view(state.runtime.store.as_ref(), p, inv.as_deref(), Utc::now()).await?;
    // What to do about a plan an apply left stopped or paused, as a route.
    let next = match view.plan.state {
        PlanState::Stopped => Some(plan::apply::after_stop(&view.progress, id)),
        PlanState::Paused => Some(crate::domain::NextStep::ResumePlan(id)),
        _ => None,
    };
    let mut body = json!({ "plan": view });
    if let Some(step) = next {
        body["next_step"] = json!(super::error::api_next_step(&step));
    }
    Ok(Json(body))
}

pub(super) async fn actions(
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<PlanId>,
    ApiQuery(q): ApiQuery<ActionsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    plan::load(state.runtime.store.as_ref(), id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let items = state.runtime.store.plan_actions(id, q.after, limit).await?;
    let next_after = (items.len() as u32 == limit)
        .then(|| items.last().map(|a| a.seq))
        .flatten();
    Ok(Json(json!({ "items": items, "next_after": next_after })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    invariant: String,
}

pub(super) async fn create(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    body: Option<ApiJson<CreateBody>>,
) -> Result<Response, ApiError> {
    let Some(ApiJson(body)) = body else {
        return Err(ApiError::bad_request(
            "send a JSON body {\"invariant\": \"NAME\"}",
        ));
    };
    let inv =
        state.runtime.catalog.find(&body.invariant).ok_or_else(|| {
            ApiError::not_found(format!("no invariant named `{}`", body.invariant))
        })?;
    audit(
        &state,
        &caller,
        "plan.create.requested",
        None,
        json!({"invariant": body.invariant}),
    )
    .await?;
    let proposal = plan::propose(
        state.runtime.store.as_ref(),
        &state.runtime.config,
        &inv,
        &caller.actor(),
        None,
        Utc::now(),
    )
    .await?;
    let status = match proposal {
        plan::Proposal::Created { .. } => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(proposal)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApproveBody {
    /// The content hash the approver reviewed.
    content_hash: String,
}

pub(super) async fn approve(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<PlanId>,
    body: Option<ApiJson<ApproveBody>>,
) -> Result<Json<plan::ApprovalStatus>, ApiError> {
    let p = plan::load(state.runtime.store.as_ref(), id).await?;
    let Some(ApiJson(body)) = body else {
        return Err(ApiError::bad_request(
            "send a JSON body {\"content_hash\": \"...\"} with the hash of the plan you reviewed (GET /api/v1/plans/{id})",
        ));
    };
    let seen = reviewed_hash(id, &body.content_hash)?;
    let inv = state.runtime.catalog.find(&p.invariant);
    let status = plan::approve(
        state.runtime.store.as_ref(),
        id,
        inv.as_deref(),
        &caller.actor(),
        Some(&seen),
        Utc::now(),
    )
    .await?;
    Ok(Json(status))
}

/// The whole content hash an approval is bound to (API and console), or a 422 that says
/// what to send.
pub(super) fn reviewed_hash(id: PlanId, raw: &str) -> Result<plan::ReviewedHash, ApiError> {
    plan::ReviewedHash::exact(raw).map_err(|e| {
        ApiError::unprocessable(format!(
            "plan {id}: {e}. Send the whole `content_hash` of the plan you reviewed, as GET /api/v1/plans/{id} gives it"
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RejectBody {
    reason: String,
}

pub(super) async fn reject(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<PlanId>,
    body: Option<ApiJson<RejectBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    plan::load(state.runtime.store.as_ref(), id).await?;
    let Some(ApiJson(body)) = body else {
        return Err(ApiError::bad_request(
            "send a JSON body {\"reason\": \"...\"}",
        ));
    };
    plan::reject(
        state.runtime.store.as_ref(),
        id,
        &caller.actor(),
        &body.reason,
        Utc::now(),
    )
    .await?;
    Ok(Json(json!({ "plan": id, "state": "rejected" })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ApplyBody {
    #[serde(default)]
    dry_run: bool,
    rate: Option<String>,
    max_failures: Option<u64>,
    #[serde(default)]
    retry_failed: bool,
}

/// A dry run answers with its report. A live apply starts in the background and answers 202;
/// its progress is in `GET /api/v1/plans/{id}`.
pub(super) async fn apply(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<PlanId>,
    body: Option<ApiJson<ApplyBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let p = plan::load(state.runtime.store.as_ref(), id).await?;
    let rate = match &body.rate {
        Some(r) => Rate::parse(r).map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => Rate::default_for(p.kind),
    };
    let opts = ApplyOptions {
        dry_run: body.dry_run,
        rate,
        max_failures: body.max_failures.unwrap_or(10).max(1),
        retry_failed: body.retry_failed,
        ..ApplyOptions::default()
    };
    match crate::runtime::request_apply(&state.runtime, &caller.actor(), &p, opts).await? {
        Some(report) => Ok(Json(report).into_response()),
        None => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "plan": id, "state": "applying", "progress": format!("/api/v1/plans/{id}") })),
        )
            .into_response()),
    }
}

async fn change_state(
    state: &HttpState,
    caller: &Caller,
    id: PlanId,
    control: plan::Control,
) -> Result<(), ApiError> {
    plan::control(
        state.runtime.store.as_ref(),
        id,
        control,
        &caller.actor(),
        Utc::now(),
    )
    .await?;
    Ok(())
}

/// Pauses a plan: once the pause is recorded no action starts (the store hands out none);
/// the actions under way finish.
pub(super) async fn pause(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<PlanId>,
) -> Result<Json<serde_json::Value>, ApiError> {
    change_state(&state, &caller, id, plan::Control::Pause).await?;
    Ok(Json(json!({ "plan": id, "state": "paused" })))
}

/// Cancels a plan: nothing more is applied.
pub(super) async fn cancel(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<PlanId>,
) -> Result<Json<serde_json::Value>, ApiError> {
    change_state(&state, &caller, id, plan::Control::Cancel).await?;
    Ok(Json(json!({ "plan": id, "state": "cancelled" })))
}

/// Resumes a paused plan and applies it in the background (like `apply`).
pub(super) async fn resume(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<PlanId>,
    body: Option<ApiJson<ApplyBody>>,
) -> Result<Response, ApiError> {
    change_state(&state, &caller, id, plan::Control::Resume).await?;
    apply(State(state), Extension(caller), ApiPath(id), body).await
}

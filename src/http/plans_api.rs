//! `/api/v1/plans`: review, approve, reject and apply compensation plans, as the caller's
//! token identity.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::domain::{PlanId, PlanState};
use crate::plan::apply::{ApplyOptions, Rate};
use crate::plan::{self, PlanError};

use super::HttpState;
use super::auth::Caller;
use super::contract::{Items, Page};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::params::{ContentHash, Count, PageSize, Rate as RateParam, Text, page_size};

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

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PlansQuery {
    /// Only this invariant's plans.
    invariant: Option<String>,
    limit: Option<PageSize>,
}

/// One plan, and what to do about it when an apply left it stopped or paused.
#[derive(Serialize, JsonSchema)]
pub(super) struct PlanDetail {
    plan: plan::PlanView,
    /// A route that takes the plan on (absent unless stopped or paused).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_step: Option<String>,
}

/// A plan's new state after a request.
#[derive(Serialize, JsonSchema)]
pub(super) struct PlanStateChange {
    plan: PlanId,
    /// rejected, paused, cancelled or applying.
    state: &'static str,
    /// Where its progress shows (an apply in the background).
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<String>,
}

impl PlanStateChange {
    fn now(plan: PlanId, state: &'static str) -> Self {
        Self {
            plan,
            state,
            progress: None,
        }
    }
}

pub(super) async fn list(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<PlansQuery>,
) -> Result<Json<Items<plan::PlanView>>, ApiError> {
    let plans = state
        .runtime
        .store
        .plans(q.invariant.as_deref(), page_size(q.limit, 50))
        .await?;
    let now = Utc::now();
    let mut items = Vec::new();
    for p in plans {
        let inv = state.runtime.catalog.find(&p.invariant);
        items.push(plan::view(state.runtime.store.as_ref(), p, inv.as_deref(), now).await?);
    }
    Ok(Json(Items { items }))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionsQuery {
    /// The previous page's `next_after`.
    after: Option<i64>,
    limit: Option<PageSize>,
}

pub(super) async fn get(
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<PlanId>,
) -> Result<Json<PlanDetail>, ApiError> {
    let p = plan::load(state.runtime.store.as_ref(), id).await?;
    let inv = state.runtime.catalog.find(&p.invariant);
    let view = plan::view(state.runtime.store.as_ref(), p, inv.as_deref(), Utc::now()).await?;
    // What to do about a plan an apply left stopped or paused, as a route.
    let next = match view.plan.state {
        PlanState::Stopped => Some(plan::apply::after_stop(&view.progress, id)),
        PlanState::Paused => Some(crate::domain::NextStep::ResumePlan(id)),
        _ => None,
    };
    Ok(Json(PlanDetail {
        plan: view,
        next_step: next.map(|step| super::error::api_next_step(&step)),
    }))
}

pub(super) async fn actions(
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<PlanId>,
    ApiQuery(q): ApiQuery<ActionsQuery>,
) -> Result<Json<Page<crate::store::ActionRecord>>, ApiError> {
    plan::load(state.runtime.store.as_ref(), id).await?;
    let limit = page_size(q.limit, 100);
    let items = state.runtime.store.plan_actions(id, q.after, limit).await?;
    let next_after = (items.len() as u32 == limit)
        .then(|| items.last().map(|a| a.seq))
        .flatten();
    Ok(Json(Page { items, next_after }))
}

#[derive(Deserialize, JsonSchema)]
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

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApproveBody {
    /// The content hash the approver reviewed.
    content_hash: ContentHash,
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
    let seen = reviewed_hash(id, &body.content_hash.0)?;
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

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RejectBody {
    /// Why (it goes into the audit log).
    reason: Text,
}

pub(super) async fn reject(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<PlanId>,
    body: Option<ApiJson<RejectBody>>,
) -> Result<Json<PlanStateChange>, ApiError> {
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
        &body.reason.0,
        Utc::now(),
    )
    .await?;
    Ok(Json(PlanStateChange::now(id, "rejected")))
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApplyBody {
    #[serde(default)]
    dry_run: bool,
    /// How fast actions are applied (default: the plan kind's).
    rate: Option<RateParam>,
    /// Stop after this many failed actions (default 10).
    max_failures: Option<Count>,
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
        Some(r) => Rate::parse(&r.0).map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => Rate::default_for(p.kind),
    };
    let opts = ApplyOptions {
        dry_run: body.dry_run,
        rate,
        max_failures: body.max_failures.map_or(10, |c| c.0),
        retry_failed: body.retry_failed,
        ..ApplyOptions::default()
    };
    match crate::runtime::request_apply(&state.runtime, &caller.actor(), &p, opts).await? {
        Some(report) => Ok(Json(report).into_response()),
        None => Ok((
            StatusCode::ACCEPTED,
            Json(PlanStateChange {
                plan: id,
                state: "applying",
                progress: Some(format!("/api/v1/plans/{id}")),
            }),
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
) -> Result<Json<PlanStateChange>, ApiError> {
    change_state(&state, &caller, id, plan::Control::Pause).await?;
    Ok(Json(PlanStateChange::now(id, "paused")))
}

/// Cancels a plan: nothing more is applied.
pub(super) async fn cancel(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<PlanId>,
) -> Result<Json<PlanStateChange>, ApiError> {
    change_state(&state, &caller, id, plan::Control::Cancel).await?;
    Ok(Json(PlanStateChange::now(id, "cancelled")))
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

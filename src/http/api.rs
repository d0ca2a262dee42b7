//! `/api/v1` handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::domain::ViolationStatus;
use crate::domain::{Invariant, InvariantSpec, ViolationKind};
use crate::runtime::{Attempt, run_once};
use crate::store::{StatusFilter, ViolationFilter};

use super::auth::Caller;
use super::contract::{Items, Page};
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::params::{Duration, PageSize, page_size};
use super::{HttpState, endpoints};

fn find(state: &HttpState, name: &str) -> Result<Arc<Invariant>, ApiError> {
    state
        .runtime
        .catalog
        .find(name)
        .ok_or_else(|| ApiError::not_found(format!("no invariant named `{name}`")))
}

/// One invariant in a list: what it is and how it stands.
#[derive(Serialize, JsonSchema)]
pub(super) struct InvariantSummary {
    name: String,
    /// check, reconcile or transitions.
    kind: &'static str,
    severity: String,
    owner: Option<String>,
    description: Option<String>,
    /// Its cron schedule; null: it runs on request only.
    schedule: Option<String>,
    /// How it stands in this process (null until this process has seen a run of it).
    state: Option<crate::runtime::board::InvariantState>,
}

/// One invariant: as in the list, with its definition and recent runs.
#[derive(Serialize, JsonSchema)]
pub(super) struct InvariantDetail {
    #[serde(flatten)]
    summary: InvariantSummary,
    /// What it evaluates: `check`, `reconcile` or `transitions`, with its queries.
    definition: serde_json::Value,
    time_column: Option<String>,
    grace: Option<String>,
    /// The latest runs, newest first.
    recent_runs: Vec<crate::store::RunRecord>,
}

fn summary(state: &HttpState, inv: &Invariant) -> InvariantSummary {
    InvariantSummary {
        name: inv.name.to_string(),
        kind: inv.kind_name(),
        severity: inv.severity.to_string(),
        owner: inv.owner.clone(),
        description: inv.description.clone(),
        schedule: inv.schedule.as_ref().map(ToString::to_string),
        state: state.runtime.board.get(inv.name.as_str()),
    }
}

pub(super) fn definition(inv: &Invariant) -> serde_json::Value {
    let side = |s: &crate::domain::QuerySide| json!({"source": s.source, "query": s.query});
    match &inv.spec {
        InvariantSpec::Check(c) => {
            json!({"check": {"source": c.side.source, "query": c.side.query, "key": c.key}})
        }
        InvariantSpec::Reconcile(r) => json!({"reconcile": {
            "left": side(&r.left), "right": side(&r.right), "key": r.key,
            "expect": format!("{:?}", r.expect), "compare": r.compare,
        }}),
        InvariantSpec::Transitions(t) => json!({"transitions": {
            "source": t.side.source, "query": t.side.query, "key": t.key, "state": t.state,
            "at": t.at, "allowed": t.allowed, "initial": t.initial,
        }}),
    }
}

pub(super) async fn list_invariants(
    State(state): State<HttpState>,
) -> Json<Items<InvariantSummary>> {
    let items = state
        .runtime
        .catalog
        .snapshot()
        .iter()
        .map(|i| summary(&state, i))
        .collect();
    Json(Items { items })
}

pub(super) async fn get_invariant(
    State(state): State<HttpState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<InvariantDetail>, ApiError> {
    let inv = find(&state, &name)?;
    let recent_runs = state.runtime.store.runs(Some(&name), 10).await?;
    Ok(Json(InvariantDetail {
        summary: summary(&state, &inv),
        definition: definition(&inv),
        time_column: inv.time_column.as_ref().map(ToString::to_string),
        grace: inv.grace.map(|g| g.to_string()),
        recent_runs,
    }))
}

pub(super) async fn trigger_run(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let inv = find(&state, &name)?;
    state
        .runtime
        .store
        .audit(
            &caller.name,
            "run.requested",
            &format!("invariant:{name}"),
            &json!({}),
            Utc::now(),
        )
        .await?;
    match run_once(
        &inv,
        &state.runtime,
        None,
        &caller.actor(),
        crate::runtime::RunPass::Declared,
    )
    .await
    {
        Attempt::Ran(outcome) => Ok(Json(outcome).into_response()),
        Attempt::Busy => Err(ApiError::conflict(format!(
            "a run of `{name}` is in progress; wait for it (GET /api/v1/invariants/{name})"
        ))),
        Attempt::StoreFailed(e) => Err(ApiError::internal(e)),
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RunsQuery {
    /// Only this invariant's runs.
    invariant: Option<String>,
    limit: Option<PageSize>,
}

pub(super) async fn list_runs(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Result<Json<Items<crate::store::RunRecord>>, ApiError> {
    let runs = state
        .runtime
        .store
        .runs(q.invariant.as_deref(), page_size(q.limit, 50))
        .await?;
    Ok(Json(Items { items: runs }))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ViolationsQuery {
    /// Only this invariant's violations.
    invariant: Option<String>,
    /// Default `active` (open or reopened).
    status: Option<StatusParam>,
    kind: Option<ViolationKind>,
    /// Seen last at or after.
    since: Option<DateTime<Utc>>,
    /// Seen last before.
    until: Option<DateTime<Utc>>,
    /// Their rows' event time at or after.
    event_from: Option<DateTime<Utc>>,
    /// Their rows' event time before.
    event_until: Option<DateTime<Utc>>,
    /// The previous page's `next_after`.
    after: Option<i64>,
    limit: Option<PageSize>,
}

/// Which violations by status: `active` (open or reopened), one status, or `all`.
#[derive(Deserialize, JsonSchema, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
pub(super) enum StatusParam {
    #[default]
    Active,
    Open,
    Reopened,
    Resolved,
    All,
}

impl From<StatusParam> for StatusFilter {
    fn from(p: StatusParam) -> Self {
        match p {
            StatusParam::Active => StatusFilter::Active,
            StatusParam::Open => StatusFilter::Only(ViolationStatus::Open),
            StatusParam::Reopened => StatusFilter::Only(ViolationStatus::Reopened),
            StatusParam::Resolved => StatusFilter::Only(ViolationStatus::Resolved),
            StatusParam::All => StatusFilter::All,
        }
    }
}

pub(super) async fn list_violations(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<ViolationsQuery>,
) -> Result<Json<Page<crate::store::ViolationRecord>>, ApiError> {
    let status = q.status.unwrap_or_default().into();
    let kind = q.kind;
    let limit = page_size(q.limit, 100);
    let items = state
        .runtime
        .store
        .violations(&ViolationFilter {
            invariants: q.invariant.into_iter().collect(),
            status,
            kind,
            new_in_run: None,
            since: q.since,
            until: q.until,
            event_from: q.event_from,
            event_until: q.event_until,
            window: None,
            after_id: q.after,
            limit,
        })
        .await?;
    let next_after = (items.len() as u32 == limit)
        .then(|| items.last().map(|v| v.id))
        .flatten();
    Ok(Json(Page { items, next_after }))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct HistogramQuery {
    invariant: Option<String>,
    status: Option<StatusParam>,
    kind: Option<ViolationKind>,
    event_from: Option<DateTime<Utc>>,
    event_until: Option<DateTime<Utc>>,
    /// A bucket's width, at least a second (default 5m).
    bucket: Option<Duration>,
}

/// Violations counted by event time.
#[derive(Serialize, JsonSchema)]
pub(super) struct Histogram {
    bucket_seconds: u64,
    /// Every violation counted (the sum of the buckets).
    total: usize,
    /// Consecutive buckets, empty ones included.
    buckets: Vec<crate::domain::Bucket>,
}

/// Violations counted by event time, in buckets (`bucket`, default 5m): where the outage was.
pub(super) async fn violation_histogram(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<HistogramQuery>,
) -> Result<Json<Histogram>, ApiError> {
    let bucket = q.bucket.map_or(
        crate::domain::HumanDuration::from_std(std::time::Duration::from_secs(300)),
        |b| b.parse(),
    );
    let filter = ViolationFilter {
        invariants: q.invariant.into_iter().collect(),
        status: q.status.unwrap_or_default().into(),
        kind: q.kind,
        event_from: q.event_from,
        event_until: q.event_until,
        ..ViolationFilter::default()
    };
    let times = state.runtime.store.event_times(&filter).await?;
    let buckets = crate::domain::histogram(&times, bucket.as_chrono())
        .ok_or_else(|| ApiError::bad_request("bucket: at least one second"))?;
    Ok(Json(Histogram {
        bucket_seconds: bucket.as_std().as_secs(),
        total: times.len(),
        buckets,
    }))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TraceQuery {
    /// The event id or key (a JSON array for a key of several columns).
    #[schemars(length(min = 1), regex(pattern = r"\S"))]
    key: String,
    /// Only this invariant's violations and actions.
    invariant: Option<String>,
}

pub(super) async fn trace(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<TraceQuery>,
) -> Result<Json<crate::trace::Trace>, ApiError> {
    match state.runtime.trace(&q.key, q.invariant.as_deref()).await {
        Ok(t) => Ok(Json(t)),
        Err(e @ crate::trace::TraceError::UnknownInvariant(_)) => {
            Err(ApiError::not_found(e.to_string()))
        }
        Err(e @ crate::trace::TraceError::EmptyKey) => Err(ApiError::bad_request(e.to_string())),
        Err(crate::trace::TraceError::Store(e)) => Err(e.into()),
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// Only entries about this target (`plan:7`, `incident:db-outage`, ...).
    target: Option<String>,
    /// The previous page's `next_after`.
    after: Option<i64>,
    limit: Option<PageSize>,
}

pub(super) async fn audit_log(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Page<crate::store::AuditEntry>>, ApiError> {
    let limit = page_size(q.limit, 100);
    let items = state
        .runtime
        .store
        .audit_log(
            &crate::store::AuditFilter {
                target: q.target,
                ..Default::default()
            },
            crate::store::AuditPage::After(q.after),
            limit,
        )
        .await?;
    let next_after = (items.len() as u32 == limit)
        .then(|| items.last().map(|e| e.id))
        .flatten();
    Ok(Json(Page { items, next_after }))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LogEventsQuery {
    /// Only this invariant's outcomes.
    invariant: Option<String>,
    /// Only events with this outcome.
    outcome: Option<crate::domain::EventOutcome>,
    /// Events captured after this sequence (`next_after` of the previous page).
    after: Option<i64>,
    /// Events a page (an event judged by several invariants has an item for each).
    limit: Option<PageSize>,
}

/// A log's events with what became of each, oldest first.
pub(super) async fn log_events(
    State(state): State<HttpState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogEventsQuery>,
) -> Result<Json<Page<crate::store::EventLine>>, ApiError> {
    if !state
        .runtime
        .config
        .event_logs
        .keys()
        .any(|l| l.as_str() == name)
    {
        return Err(ApiError::not_found(format!(
            "no event log is named `{name}`"
        )));
    }
    let limit = page_size(q.limit, 100);
    let items = state
        .runtime
        .store
        .event_lines(&crate::store::OutcomeQuery {
            log: name,
            invariant: q.invariant,
            outcome: q.outcome,
            after: q.after.unwrap_or(0),
            limit,
        })
        .await?;
    let next_after = crate::store::next_after(&items, limit);
    Ok(Json(Page { items, next_after }))
}

/// The OpenAPI 3.1 document, generated from the same endpoint list as the router.
pub(super) async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

pub fn openapi_document() -> serde_json::Value {
    let endpoints = endpoints();
    super::contract::document(endpoints.iter().map(|e| super::contract::Operation {
        method: &e.method,
        path: e.path,
        role: e.role,
        summary: e.summary,
        mutating: e.mutating,
        contract: &e.contract,
    }))
}

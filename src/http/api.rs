//! `/api/v1` handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::domain::ViolationStatus;
use crate::domain::{Invariant, InvariantSpec, ViolationKind};
use crate::runtime::{Attempt, run_once};
use crate::store::{StatusFilter, ViolationFilter};

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::{HttpState, endpoints};

const MAX_PAGE: u32 = 1000;

fn find(state: &HttpState, name: &str) -> Result<Arc<Invariant>, ApiError> {
    state
        .runtime
        .catalog
        .find(name)
        .ok_or_else(|| ApiError::not_found(format!("no invariant named `{name}`")))
}

fn summary(state: &HttpState, inv: &Invariant) -> serde_json::Value {
    let board = state.runtime.board.get(inv.name.as_str());
    json!({
        "name": inv.name,
        "kind": inv.kind_name(),
        "severity": inv.severity,
        "owner": inv.owner,
        "description": inv.description,
        "schedule": inv.schedule.as_ref().map(ToString::to_string),
        "state": board,
    })
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

pub(super) async fn list_invariants(State(state): State<HttpState>) -> Json<serde_json::Value> {
    let items: Vec<serde_json::Value> = state
        .runtime
        .catalog
        .snapshot()
        .iter()
        .map(|i| summary(&state, i))
        .collect();
    Json(json!({ "items": items }))
}

pub(super) async fn get_invariant(
    State(state): State<HttpState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let inv = find(&state, &name)?;
    let runs = state.runtime.store.runs(Some(&name), 10).await?;
    let mut out = summary(&state, &inv);
    out["definition"] = definition(&inv);
    out["time_column"] = json!(inv.time_column);
    out["grace"] = json!(inv.grace.map(|g| g.to_string()));
    out["recent_runs"] = json!(runs);
    Ok(Json(out))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunsQuery {
    invariant: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn list_runs(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let runs = state
        .runtime
        .store
        .runs(
            q.invariant.as_deref(),
            q.limit.unwrap_or(50).clamp(1, MAX_PAGE),
        )
        .await?;
    Ok(Json(json!({ "items": runs })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ViolationsQuery {
    invariant: Option<String>,
    status: Option<String>,
    kind: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    event_from: Option<DateTime<Utc>>,
    event_until: Option<DateTime<Utc>>,
    after: Option<i64>,
    limit: Option<u32>,
}

fn status_filter(raw: Option<&str>) -> Result<StatusFilter, ApiError> {
    Ok(match raw {
        None | Some("active") => StatusFilter::Active,
        Some("open") => StatusFilter::Only(ViolationStatus::Open),
        Some("reopened") => StatusFilter::Only(ViolationStatus::Reopened),
        Some("resolved") => StatusFilter::Only(ViolationStatus::Resolved),
        Some("all") => StatusFilter::All,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status `{other}` is unknown; use active, open, reopened, resolved or all"
            )));
        }
    })
}

fn kind_filter(raw: Option<&str>) -> Result<Option<ViolationKind>, ApiError> {
    raw.map(|k| {
        ViolationKind::parse(k).ok_or_else(|| {
            ApiError::bad_request(format!(
                "kind `{k}` is unknown; use missing, extra, duplicate, mismatch, check or transition"
            ))
        })
    })
    .transpose()
}

pub(super) async fn list_violations(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<ViolationsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = status_filter(q.status.as_deref())?;
    let kind = kind_filter(q.kind.as_deref())?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
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
    Ok(Json(json!({ "items": items, "next_after": next_after })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistogramQuery {
    invariant: Option<String>,
    status: Option<String>,
    kind: Option<String>,
    event_from: Option<DateTime<Utc>>,
    event_until: Option<DateTime<Utc>>,
    bucket: Option<String>,
}

/// Violations counted by event time, in buckets (`bucket`, default 5m): where the outage was.
pub(super) async fn violation_histogram(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<HistogramQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bucket = crate::domain::HumanDuration::parse(q.bucket.as_deref().unwrap_or("5m"))
        .map_err(|e| ApiError::bad_request(format!("bucket: {e}")))?;
    let filter = ViolationFilter {
        invariants: q.invariant.into_iter().collect(),
        status: status_filter(q.status.as_deref())?,
        kind: kind_filter(q.kind.as_deref())?,
        event_from: q.event_from,
        event_until: q.event_until,
        ..ViolationFilter::default()
    };
    let times = state.runtime.store.event_times(&filter).await?;
    let buckets = crate::domain::histogram(&times, bucket.as_chrono())
        .ok_or_else(|| ApiError::bad_request("bucket: at least one second"))?;
    Ok(Json(json!({
        "bucket_seconds": bucket.as_std().as_secs(),
        "total": times.len(),
        "buckets": buckets,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    target: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

pub(super) async fn audit_log(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
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
    Ok(Json(json!({ "items": items, "next_after": next_after })))
}

/// The OpenAPI 3.1 document, generated from the same endpoint list as the router.
pub(super) async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

pub fn openapi_document() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    for e in endpoints() {
        let path = paths.entry(e.path.to_owned()).or_insert_with(|| json!({}));
        let mut op = json!({
            "summary": e.summary,
            "responses": {
                "200": {"description": "OK"},
            },
        });
        if e.path.contains("{name}") {
            op["parameters"] = json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
            op["responses"]["404"] = json!({"description": "No such invariant"});
        }
        if e.path.contains("{id}") {
            op["parameters"] = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}]);
            op["responses"]["404"] = json!({"description": "No such plan"});
        }
        match e.role {
            Some(role) => {
                op["security"] = json!([{"bearer": []}]);
                op["x-trueup-role"] = json!(role);
                op["responses"]["401"] = json!({"description": "No or unknown bearer token"});
                op["responses"]["403"] =
                    json!({"description": format!("The token's role is below {role}")});
            }
            None => op["security"] = json!([]),
        }
        if e.mutating {
            op["responses"]["409"] = json!({"description": "Conflicts with work in progress"});
        }
        path[e.method.as_str().to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "trueup", "version": env!("CARGO_PKG_VERSION")},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    })
}

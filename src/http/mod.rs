//! HTTP: health, readiness, Prometheus metrics and the JSON API under `/api/v1`.
//!
//! Every endpoint is declared once in [`endpoints`], with the role it needs; the router and the
//! OpenAPI document are both built from that list, so they cannot disagree, and no route can
//! be added without saying who may call it. Handlers never touch SQL: they go through the
//! `Store` trait and the [`Runtime`] (run now, request an apply, verify, the board).

mod api;
pub mod console;
pub mod contract;
mod incidents_api;
mod ingest;
mod params;
mod plans_api;
pub mod silences_api;
pub use api::openapi_document;
pub mod auth;
pub mod error;
mod extract;

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use crate::config::ApiToken;
use crate::domain::Role;
use crate::runtime::Runtime;
use contract::Contract;

#[derive(Clone)]
pub struct HttpState {
    pub runtime: Runtime,
    pub tokens: Arc<Vec<ApiToken>>,
}

/// One endpoint: where it is, who may call it, what it does.
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    /// `None`: anyone (health checks; and webhook ingest, which each request's signature
    /// authenticates instead of a token).
    pub role: Option<Role>,
    pub summary: &'static str,
    /// Whether it changes anything (and so writes an audit record).
    pub mutating: bool,
    /// What it takes and answers, as types (the OpenAPI document is made from these).
    pub contract: Contract,
    handler: MethodRouter<HttpState>,
}

impl Endpoint {
    fn takes(mut self, contract: Contract) -> Self {
        self.contract = contract;
        self
    }

    /// A POST that changes only what it reports itself (an event log's intake, counted in
    /// metrics), never trueup's decisions: no audit record per request.
    fn not_audited(mut self) -> Self {
        self.mutating = false;
        self
    }
}

fn endpoint(
    method: Method,
    path: &'static str,
    role: Option<Role>,
    summary: &'static str,
    handler: MethodRouter<HttpState>,
) -> Endpoint {
    Endpoint {
        mutating: method != Method::GET,
        method,
        path,
        role,
        summary,
        contract: Contract::default(),
        handler,
    }
}

pub fn endpoints() -> Vec<Endpoint> {
    use Role::*;
    vec![
        endpoint(
            Method::GET,
            "/healthz",
            None,
            "The process is up.",
            get(healthz),
        )
        .takes(Contract::default().answers_text(StatusCode::OK, "text/plain", "The process is up")),
        endpoint(
            Method::GET,
            "/readyz",
            None,
            "The store answers.",
            get(readyz),
        )
        .takes(Contract::default().answers_text(StatusCode::OK, "text/plain", "The store answers").answers_text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "The store does not answer")),
        endpoint(
            Method::GET,
            "/metrics",
            Some(Viewer),
            "Prometheus metrics.",
            get(metrics),
        )
        .takes(Contract::default().answers_text(StatusCode::OK, "text/plain", "Prometheus exposition format 0.0.4")),
        endpoint(
            Method::GET,
            "/api/v1/openapi.json",
            Some(Viewer),
            "This API's OpenAPI document.",
            get(api::openapi),
        )
        .takes(Contract::default().answers::<serde_json::Value>(StatusCode::OK, "This document")),
        endpoint(
            Method::GET,
            "/api/v1/invariants",
            Some(Viewer),
            "Every invariant with its health, state and last error.",
            get(api::list_invariants),
        )
        .takes(Contract::default().answers::<contract::Items<api::InvariantSummary>>(StatusCode::OK, "Every loaded invariant")),
        endpoint(
            Method::GET,
            "/api/v1/invariants/{name}",
            Some(Viewer),
            "One invariant, with its definition and recent runs.",
            get(api::get_invariant),
        )
        .takes(Contract::default().answers::<api::InvariantDetail>(StatusCode::OK, "The invariant")),
        endpoint(
            Method::POST,
            "/api/v1/invariants/{name}/runs",
            Some(Operator),
            "Evaluate the invariant now; answers with the run's outcome (409 if a run is going).",
            post(api::trigger_run),
        )
        .takes(Contract::default().answers::<crate::plan::Evaluation>(StatusCode::OK, "The run's outcome, and the plan it proposed if any")),
        endpoint(
            Method::GET,
            "/api/v1/runs",
            Some(Viewer),
            "Recent runs, newest first (`invariant`, `limit`).",
            get(api::list_runs),
        )
        .takes(Contract::default().query::<api::RunsQuery>().answers::<contract::Items<crate::store::RunRecord>>(StatusCode::OK, "Runs, newest first")),
        endpoint(
            Method::GET,
            "/api/v1/violations",
            Some(Viewer),
            "Violations (`invariant`, `status`, `kind`, `since`, `until`, `after`, `limit`), keyset-paged by `next_after`.",
            get(api::list_violations),
        )
        .takes(Contract::default().query::<api::ViolationsQuery>().answers::<contract::Page<crate::store::ViolationRecord>>(StatusCode::OK, "Violations; `next_after` pages on")),
        endpoint(
            Method::GET,
            "/api/v1/violations/histogram",
            Some(Viewer),
            "Violations counted by event time (`invariant`, `kind`, `status`, `event_from`, `event_until`, `bucket`, default 5m), empty buckets included.",
            get(api::violation_histogram),
        )
        .takes(Contract::default().query::<api::HistogramQuery>().answers::<api::Histogram>(StatusCode::OK, "Violations counted by event time")),
        endpoint(
            Method::GET,
            "/api/v1/plans",
            Some(Viewer),
            "Compensation plans, newest first (`invariant`, `limit`), with status, approvals and progress.",
            get(plans_api::list),
        )
        .takes(Contract::default().query::<plans_api::PlansQuery>().answers::<contract::Items<crate::plan::PlanView>>(StatusCode::OK, "Plans, newest first")),
        endpoint(
            Method::POST,
            "/api/v1/plans",
            Some(Operator),
            "Propose a plan now from an invariant's open violations (body `{\"invariant\": NAME}`).",
            post(plans_api::create),
        )
        .takes(Contract::default().body::<plans_api::CreateBody>().refuses(StatusCode::NOT_FOUND, "No invariant of that name").answers::<crate::plan::Proposal>(StatusCode::CREATED, "A plan was proposed").answers::<crate::plan::Proposal>(StatusCode::OK, "No plan was needed, or an equal one is pending")),
        endpoint(
            Method::GET,
            "/api/v1/plans/{id}",
            Some(Viewer),
            "One plan: content hash, approvals, status and progress by action status; `next_step` says what to do about a stopped or paused plan.",
            get(plans_api::get),
        )
        .takes(Contract::default().answers::<plans_api::PlanDetail>(StatusCode::OK, "The plan")),
        endpoint(
            Method::GET,
            "/api/v1/plans/{id}/actions",
            Some(Viewer),
            "The plan's actions in order (`after`, `limit`), with evidence and outcomes.",
            get(plans_api::actions),
        )
        .takes(Contract::default().query::<plans_api::ActionsQuery>().answers::<contract::Page<crate::store::ActionRecord>>(StatusCode::OK, "The plan's actions in order; `next_after` pages on")),
        endpoint(
            Method::POST,
            "/api/v1/plans/{id}/approve",
            Some(Approver),
            "Approve the plan as the caller (body `{\"content_hash\": ...}`: the content reviewed).",
            post(plans_api::approve),
        )
        .takes(Contract::default().body::<plans_api::ApproveBody>().answers::<crate::plan::ApprovalStatus>(StatusCode::OK, "The approvals so far")),
        endpoint(
            Method::POST,
            "/api/v1/plans/{id}/reject",
            Some(Approver),
            "Reject the plan (body `{\"reason\": ...}`).",
            post(plans_api::reject),
        )
        .takes(Contract::default().body::<plans_api::RejectBody>().answers::<plans_api::PlanStateChange>(StatusCode::OK, "Rejected")),
        endpoint(
            Method::POST,
            "/api/v1/plans/{id}/apply",
            Some(Operator),
            "Dry-run (answers with the report) or apply an approved plan in the background (202; progress in GET /api/v1/plans/{id}). Body: `dry_run`, `rate`, `max_failures`, `retry_failed`.",
            post(plans_api::apply),
        )
        .takes(Contract::default().optional_body::<plans_api::ApplyBody>().answers::<crate::plan::apply::ApplyReport>(StatusCode::OK, "The dry run's report").answers::<plans_api::PlanStateChange>(StatusCode::ACCEPTED, "Applying in the background").refuses(StatusCode::FORBIDDEN, "The caller may not apply this plan (its approver, for a plan with manual steps)")),
        endpoint(
            Method::POST,
            "/api/v1/plans/{id}/pause",
            Some(Operator),
            "Pause a plan (a replay, say): once recorded, no action starts; the actions under way finish.",
            post(plans_api::pause),
        )
        .takes(Contract::default().answers::<plans_api::PlanStateChange>(StatusCode::OK, "Paused")),
        endpoint(
            Method::POST,
            "/api/v1/plans/{id}/resume",
            Some(Operator),
            "Resume a paused plan and apply it in the background (body as for apply).",
            post(plans_api::resume),
        )
        .takes(Contract::default().optional_body::<plans_api::ApplyBody>().answers::<crate::plan::apply::ApplyReport>(StatusCode::OK, "The dry run's report").answers::<plans_api::PlanStateChange>(StatusCode::ACCEPTED, "Applying in the background")),
        endpoint(
            Method::POST,
            "/api/v1/plans/{id}/cancel",
            Some(Operator),
            "Cancel a plan: nothing more is applied.",
            post(plans_api::cancel),
        )
        .takes(Contract::default().answers::<plans_api::PlanStateChange>(StatusCode::OK, "Cancelled")),
        endpoint(
            Method::GET,
            "/api/v1/silences",
            Some(Viewer),
            "Active silences, soonest ending first (`all=true`: those that ended too).",
            get(silences_api::list),
        )
        .takes(Contract::default().query::<silences_api::ListQuery>().answers::<contract::Items<silences_api::SilenceView>>(StatusCode::OK, "Silences")),
        endpoint(
            Method::POST,
            "/api/v1/silences",
            Some(Operator),
            "Hold the notices of the alerts matching every matcher (body `matchers`, `duration`, `reason`); audited.",
            post(silences_api::create),
        )
        .takes(Contract::default().body::<silences_api::CreateBody>().answers::<silences_api::SilenceView>(StatusCode::CREATED, "The silence, active")),
        endpoint(
            Method::POST,
            "/api/v1/silences/{id}/expire",
            Some(Operator),
            "End a silence now (409 if it had ended); audited.",
            post(silences_api::expire),
        )
        .takes(Contract::default().answers::<silences_api::SilenceView>(StatusCode::OK, "The silence, expired")),
        endpoint(
            Method::GET,
            "/api/v1/incidents",
            Some(Viewer),
            "Incidents, newest first.",
            get(incidents_api::list),
        )
        .takes(Contract::default().answers::<contract::Items<crate::store::IncidentRecord>>(StatusCode::OK, "Incidents, newest first")),
        endpoint(
            Method::POST,
            "/api/v1/incidents",
            Some(Operator),
            "Open an incident (body `name`, `from`, optional `to`, `invariants`, `summary`).",
            post(incidents_api::open),
        )
        .takes(Contract::default().body::<incidents_api::OpenBody>().answers::<crate::store::IncidentRecord>(StatusCode::CREATED, "The incident, opened")),
        endpoint(
            Method::GET,
            "/api/v1/incidents/{name}",
            Some(Viewer),
            "One incident with its phase marks and notes.",
            get(incidents_api::get),
        )
        .takes(Contract::default().answers::<crate::incident::IncidentView>(StatusCode::OK, "The incident")),
        endpoint(
            Method::POST,
            "/api/v1/incidents/{name}/phases",
            Some(Operator),
            "Mark a phase (body `phase`: contain, restore, reconcile or verify; optional `note`).",
            post(incidents_api::phase),
        )
        .takes(Contract::default().body::<incidents_api::PhaseBody>().answers::<crate::incident::IncidentView>(StatusCode::OK, "The incident, with the phase marked")),
        endpoint(
            Method::POST,
            "/api/v1/incidents/{name}/notes",
            Some(Operator),
            "Add a note (body `text`).",
            post(incidents_api::note),
        )
        .takes(Contract::default().body::<incidents_api::NoteBody>().answers::<crate::incident::IncidentView>(StatusCode::OK, "The incident, with the note")),
        endpoint(
            Method::GET,
            "/api/v1/incidents/{name}/report",
            Some(Viewer),
            "The closure report (`format`: json, md or html; `download`); the frozen one once closed.",
            get(incidents_api::report),
        )
        .takes(Contract::default().query::<incidents_api::ReportQuery>().answers::<contract::IncidentReport>(StatusCode::OK, "The report: JSON by default, Markdown for `format=md`, HTML for `format=html`").answers_text(StatusCode::OK, "text/markdown", "").answers_text(StatusCode::OK, "text/html", "")),
        endpoint(
            Method::POST,
            "/api/v1/incidents/{name}/verify",
            Some(Operator),
            "Evaluate the in-scope invariants not verified since the last repair (optional body `fresh_within`).",
            post(incidents_api::verify),
        )
        .takes(Contract::default().optional_body::<incidents_api::VerifyBody>().answers::<incidents_api::Verification>(StatusCode::OK, "The verification runs and the verdict")),
        endpoint(
            Method::POST,
            "/api/v1/incidents/{name}/close",
            Some(Operator),
            "Close on evidence: refused with the blockers (409) unless `override_reason` is given by an approver.",
            post(incidents_api::close),
        )
        .takes(Contract::default().optional_body::<incidents_api::CloseBody>().answers::<contract::IncidentReport>(StatusCode::OK, "The frozen report").refuses(StatusCode::FORBIDDEN, "An override needs an approver")),
        endpoint(
            Method::POST,
            "/ingest/{name}",
            None,
            "A signed webhook into the event log `name` (header `t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">`): 201 stored, 200 a duplicate delivery (counted, not stored again).",
            post(ingest::ingest),
        )
        .not_audited()
        .takes(Contract::default().body::<serde_json::Value>().answers::<ingest::IngestAnswer>(StatusCode::CREATED, "Stored").answers::<ingest::IngestAnswer>(StatusCode::OK, "A duplicate delivery of an event id the log holds: counted, not stored again").refuses(StatusCode::UNAUTHORIZED, "The signature is missing, does not match, or is outside the tolerance").refuses(StatusCode::PAYLOAD_TOO_LARGE, "Over the log's max_event_bytes").refuses(StatusCode::BAD_REQUEST, "Not JSON, or without a usable event id or time").refuses(StatusCode::REQUEST_TIMEOUT, "The body did not arrive within 30 s").answers::<serde_json::Value>(StatusCode::SERVICE_UNAVAILABLE, "The store cannot take it now; nothing was kept, send it again")),
        endpoint(
            Method::GET,
            "/api/v1/trace",
            Some(Viewer),
            "What happened to one event or key (`key`, optional `invariant`): captured, violations, actions, verification, incidents, oldest first.",
            get(api::trace),
        )
        .takes(Contract::default().query::<api::TraceQuery>().answers::<crate::trace::Trace>(StatusCode::OK, "The timeline (empty when nothing is known of the key)").refuses(StatusCode::NOT_FOUND, "No invariant of that name").refuses(StatusCode::BAD_REQUEST, "No key")),
        endpoint(
            Method::GET,
            "/api/v1/logs/{name}/events",
            Some(Viewer),
            "An event log's events, oldest first, each with what became of it (`outcome` processed, missing, mismatched or replayed; `processed_at`; `target_record_id`), one item per invariant that judged it (`invariant`, `outcome`, `after`, `limit`).",
            get(api::log_events),
        )
        .takes(Contract::default().query::<api::LogEventsQuery>().answers::<contract::Page<crate::store::EventLine>>(StatusCode::OK, "Events and outcomes; `next_after` pages on").refuses(StatusCode::NOT_FOUND, "No event log of that name")),
        endpoint(
            Method::GET,
            "/api/v1/audit",
            Some(Admin),
            "The append-only audit log (`target`, `after`, `limit`).",
            get(api::audit_log),
        )
        .takes(Contract::default().query::<api::AuditQuery>().answers::<contract::Page<crate::store::AuditEntry>>(StatusCode::OK, "Audit entries, oldest first; `next_after` pages on")),
    ]
}

pub fn router(state: HttpState) -> Router {
    let mut router = Router::new();
    for e in endpoints() {
        let handler = match e.role {
            Some(role) => e.handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), role),
                auth::require_role,
            )),
            None => e.handler,
        };
        router = router.route(e.path, handler);
    }
    router
        .merge(console::routes(&state))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Counts every request by its route template (not the raw path, which would explode the
/// label set) and status.
async fn count_requests(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    state
        .runtime
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.runtime.store.runs(None, 1).await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!("not ready: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store does not answer\n",
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    state
        .runtime
        .metrics
        .record_sources(state.runtime.sources.privileged());
    state
        .runtime
        .metrics
        .record_turns(state.runtime.sources.turn_use());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.runtime.metrics.render(),
    )
        .into_response()
}

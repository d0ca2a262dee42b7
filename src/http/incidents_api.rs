//! `/api/v1/incidents`: open incidents, mark phases, add notes, read their timelines, as the
//! caller's token identity.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::incident::{self, IncidentError, ReportFormat};
use crate::runtime::VerifyError;

use super::HttpState;
use super::auth::Caller;
use super::contract::Items;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::params::{Duration, IncidentName, Text};

impl From<IncidentError> for ApiError {
    fn from(e: IncidentError) -> Self {
        let next = e.next_step();
        let error = match e {
            IncidentError::NotFound(_) => ApiError::not_found(e.to_string()),
            IncidentError::Exists(_) => ApiError::conflict(e.to_string()),
            // Well-formed, but not what the incident can take (a window that ends before it
            // starts, an invariant that is not loaded).
            IncidentError::Invalid(_) => ApiError::unprocessable(e.to_string()),
            IncidentError::Closed(_) => ApiError::conflict(e.to_string()),
            IncidentError::Blocked { ref blockers, .. } => {
                let blockers = serde_json::to_value(blockers).unwrap_or_default();
                ApiError::conflict(e.to_string()).with_field("blockers", blockers)
            }
            IncidentError::Forbidden(_) => ApiError::forbidden(e.to_string()),
            IncidentError::Tampered(_) | IncidentError::Render(_) => ApiError::internal(e),
            IncidentError::Store(e) => ApiError::internal(e),
        };
        error.with_next(next)
    }
}

pub(super) async fn list(
    State(state): State<HttpState>,
) -> Result<Json<Items<crate::store::IncidentRecord>>, ApiError> {
    let items = state.runtime.store.incidents(200).await?;
    Ok(Json(Items { items }))
}

pub(super) async fn get(
    State(state): State<HttpState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<incident::IncidentView>, ApiError> {
    Ok(Json(
        incident::view(state.runtime.store.as_ref(), &name).await?,
    ))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenBody {
    name: IncidentName,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    #[serde(default)]
    invariants: Vec<String>,
    summary: Option<String>,
}

pub(super) async fn open(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    body: Option<ApiJson<OpenBody>>,
) -> Result<Response, ApiError> {
    let Some(ApiJson(body)) = body else {
        return Err(ApiError::bad_request(
            "send a JSON body {\"name\": ..., \"from\": RFC 3339, \"to\"?, \"invariants\"?, \"summary\"?}",
        ));
    };
    let opened = incident::open(
        state.runtime.store.as_ref(),
        &state.runtime.catalog.snapshot(),
        &body.name.0,
        body.from,
        body.to,
        &body.invariants,
        body.summary.as_deref(),
        &caller.actor(),
        Utc::now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(opened)).into_response())
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PhaseBody {
    phase: crate::domain::Phase,
    note: Option<String>,
}

pub(super) async fn phase(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    body: Option<ApiJson<PhaseBody>>,
) -> Result<Json<incident::IncidentView>, ApiError> {
    incident::load(state.runtime.store.as_ref(), &name).await?;
    let Some(ApiJson(body)) = body else {
        return Err(ApiError::bad_request(
            "send a JSON body {\"phase\": \"contain|restore|reconcile|verify\", \"note\"?}",
        ));
    };
    incident::mark_phase(
        state.runtime.store.as_ref(),
        &name,
        body.phase.as_str(),
        body.note.as_deref(),
        &caller.actor(),
        Utc::now(),
    )
    .await?;
    Ok(Json(
        incident::view(state.runtime.store.as_ref(), &name).await?,
    ))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NoteBody {
    text: Text,
}

pub(super) async fn note(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    body: Option<ApiJson<NoteBody>>,
) -> Result<Json<incident::IncidentView>, ApiError> {
    incident::load(state.runtime.store.as_ref(), &name).await?;
    let Some(ApiJson(body)) = body else {
        return Err(ApiError::bad_request("send a JSON body {\"text\": ...}"));
    };
    incident::add_note(
        state.runtime.store.as_ref(),
        &name,
        &body.text.0,
        &caller.actor(),
        Utc::now(),
    )
    .await?;
    Ok(Json(
        incident::view(state.runtime.store.as_ref(), &name).await?,
    ))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportQuery {
    /// json (the default), md or html.
    format: Option<ReportFormat>,
    /// Serve it as a file to save rather than to show.
    #[serde(default)]
    download: bool,
}

/// The closure report as it stands (the frozen one once closed). Runs nothing: `POST
/// .../verify` evaluates first.
pub(super) async fn report(
    State(state): State<HttpState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReportQuery>,
) -> Result<Response, ApiError> {
    report_response(
        &state,
        &name,
        q.format.unwrap_or(ReportFormat::Json),
        q.download,
        None,
    )
    .await
}

/// A report format asked for in a query (`default` when none is).
pub(super) fn report_format(
    raw: Option<&str>,
    default: ReportFormat,
) -> Result<ReportFormat, ApiError> {
    match raw {
        None => Ok(default),
        Some(raw) => ReportFormat::parse(raw)
            .ok_or_else(|| ApiError::bad_request(format!("format `{raw}`: use json, md or html"))),
    }
}

/// The incident's report rendered in `format`, as a file to save when `download`, its HTML
/// linking `back` to where it was opened. The API and the console serve reports through this.
pub(super) async fn report_response(
    state: &HttpState,
    name: &str,
    format: ReportFormat,
    download: bool,
    back: Option<&str>,
) -> Result<Response, ApiError> {
    // From the console's page, its keys link to its trace page; elsewhere through
    // `serve.external_url`, when set.
    let external = state
        .runtime
        .config
        .serve
        .external_url
        .as_ref()
        .map(|u| u.as_str());
    // A page shown by the console links within it; a file saved from it, like any other,
    // links absolutely or not at all.
    let links = incident::render::ReportLinks {
        back,
        console: if back.is_some() && !download {
            Some("")
        } else {
            external
        },
    };
    let report = incident::report(
        state.runtime.store.as_ref(),
        &state.runtime.catalog.snapshot(),
        name,
    )
    .await?;
    let body =
        incident::render::render_linked(&report, format, &links).map_err(IncidentError::from)?;
    let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    if download {
        let disposition = format!(
            "attachment; filename=\"incident-{}.{}\"",
            report.incident.name,
            format.extension()
        );
        if let Ok(v) = HeaderValue::from_str(&disposition) {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(response)
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Incident(e) => e.into(),
            VerifyError::Store(e) => ApiError::internal(e),
            VerifyError::RunNotRecorded(message) => ApiError::internal(message),
        }
    }
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyBody {
    /// A verification run older than this is made again (default 15m).
    fresh_within: Option<Duration>,
}

/// What a verification did, and the verdict after it.
#[derive(Serialize, JsonSchema)]
pub(super) struct Verification {
    runs: Vec<crate::runtime::VerificationRun>,
    verdict: crate::incident::report::Verdict,
}

/// Evaluates the in-scope invariants whose latest run does not verify the incident, then
/// returns the verdict.
pub(super) async fn verify(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    body: Option<ApiJson<VerifyBody>>,
) -> Result<Json<Verification>, ApiError> {
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let fresh_within = body
        .fresh_within
        .map_or(incident::DEFAULT_FRESH_WITHIN, |d| d.parse().as_chrono());
    // Evaluations run to the end even if the client goes away.
    let task = tokio::spawn(async move {
        let runs =
            crate::runtime::run_verification(&state.runtime, &caller.actor(), &name, fresh_within)
                .await?;
        let report = incident::report(
            state.runtime.store.as_ref(),
            &state.runtime.catalog.snapshot(),
            &name,
        )
        .await?;
        Ok::<_, ApiError>(Verification {
            runs,
            verdict: report.verdict,
        })
    });
    let value = task.await.map_err(ApiError::internal)??;
    Ok(Json(value))
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CloseBody {
    /// Close despite blockers (approver or admin), saying why.
    override_reason: Option<Text>,
}

/// Closes the incident if its report has no blockers (or they are overridden), freezing the
/// report.
pub(super) async fn close(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    body: Option<ApiJson<CloseBody>>,
) -> Result<Json<incident::Report>, ApiError> {
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let report = incident::close(
        state.runtime.store.as_ref(),
        &state.runtime.catalog.snapshot(),
        &name,
        body.override_reason.as_ref().map(|t| t.0.as_str()),
        &caller.actor(),
        Utc::now(),
    )
    .await?;
    Ok(Json(report))
}

//! Incidents: open, mark phases, note, verify, close, and the report.

use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use chrono::Utc;
use minijinja::context;
use serde::Deserialize;

use crate::http::HttpState;
use crate::http::incidents_api::{report_format, report_response};

use super::super::session::Session;
use super::super::{PageResult, Refusal, render, serde};
use super::*;

/// What the open-incident form starts with (a replay plan's page links here with its window).
#[derive(Deserialize, Default)]
pub(in crate::http::console) struct IncidentPrefill {
    invariant: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

pub(in crate::http::console) async fn incidents(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Query(prefill): Query<IncidentPrefill>,
) -> PageResult {
    let list = state.runtime.store.incidents(200).await?;
    Ok(render(
        &session,
        "incidents.html",
        context! {
            nav => "incidents",
            incidents => serde(&list),
            invariants => state.runtime.catalog.snapshot().iter().map(|i| i.name.to_string()).collect::<Vec<_>>(),
            prefill => context! {
                invariant => prefill.invariant.unwrap_or_default(),
                from => prefill.from.unwrap_or_default(),
                to => prefill.to.unwrap_or_default(),
            },
        },
    ))
}

#[derive(Deserialize)]
pub(in crate::http::console) struct OpenIncidentForm {
    name: String,
    from: String,
    to: Option<String>,
    summary: Option<String>,
    /// One invariant, or empty: every invariant with violations in the window.
    invariant: Option<String>,
}

pub(in crate::http::console) async fn open_incident(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Form(form): Form<OpenIncidentForm>,
) -> PageResult {
    let from = form_time("from", Some(&form.from))?
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "say when it started (from)"))?;
    let to = form_time("to", form.to.as_deref())?;
    let invariants: Vec<String> = filled(form.invariant.as_deref())
        .map(str::to_owned)
        .into_iter()
        .collect();
    let opened = crate::incident::open(
        state.runtime.store.as_ref(),
        &state.runtime.catalog.snapshot(),
        form.name.trim(),
        from,
        to,
        &invariants,
        filled(form.summary.as_deref()),
        &session.caller.actor(),
        Utc::now(),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/incidents/{}", opened.name)).into_response())
}

async fn incident_page(
    state: &HttpState,
    session: &Session,
    name: &str,
    status: StatusCode,
    refusal: Option<Vec<crate::incident::Blocker>>,
    verified: Option<usize>,
) -> PageResult {
    // The report holds the incident and its timeline: one read of the store for the page.
    let report = crate::incident::report(
        state.runtime.store.as_ref(),
        &state.runtime.catalog.snapshot(),
        name,
    )
    .await?;
    let page = render(
        session,
        "incident.html",
        context! {
            nav => "incidents",
            i => serde(&report.incident),
            report => serde(&report),
            phases => crate::domain::Phase::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            refusal => serde(&refusal),
            verified => verified,
            fresh_within_minutes => crate::incident::DEFAULT_FRESH_WITHIN.num_minutes(),
        },
    );
    Ok((status, page).into_response())
}

#[derive(Deserialize)]
pub(in crate::http::console) struct IncidentQuery {
    /// Just verified: how many invariants that evaluated again.
    verified: Option<usize>,
}

pub(in crate::http::console) async fn incident(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Query(q): Query<IncidentQuery>,
) -> PageResult {
    incident_page(&state, &session, &name, StatusCode::OK, None, q.verified).await
}

/// Back to the incident's page after a change.
fn to_incident(name: &str) -> PageResult {
    Ok(Redirect::to(&format!("/ui/incidents/{name}")).into_response())
}

#[derive(Deserialize)]
pub(in crate::http::console) struct PhaseForm {
    phase: String,
    note: Option<String>,
}

pub(in crate::http::console) async fn incident_phase(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<PhaseForm>,
) -> PageResult {
    crate::incident::mark_phase(
        state.runtime.store.as_ref(),
        &name,
        &form.phase,
        filled(form.note.as_deref()),
        &session.caller.actor(),
        Utc::now(),
    )
    .await?;
    to_incident(&name)
}

#[derive(Deserialize)]
pub(in crate::http::console) struct NoteForm {
    text: String,
}

pub(in crate::http::console) async fn incident_note(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<NoteForm>,
) -> PageResult {
    crate::incident::add_note(
        state.runtime.store.as_ref(),
        &name,
        &form.text,
        &session.caller.actor(),
        Utc::now(),
    )
    .await?;
    to_incident(&name)
}

/// Evaluates what the incident's verification needs, as the API's verify does, then shows the
/// incident again.
pub(in crate::http::console) async fn incident_verify(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> PageResult {
    let page = format!("/ui/incidents/{name}");
    // To the end even if the browser goes away.
    let runs = tokio::spawn(async move {
        crate::runtime::run_verification(
            &state.runtime,
            &session.caller.actor(),
            &name,
            crate::incident::DEFAULT_FRESH_WITHIN,
        )
        .await
        .map_err(crate::http::error::ApiError::from)
    })
    .await
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))??;
    // The page says what the click did: how many invariants were evaluated again (none when
    // each was evaluated recently enough).
    Ok(Redirect::to(&format!("{page}?verified={}#verdict", runs.len())).into_response())
}

#[derive(Deserialize)]
pub(in crate::http::console) struct CloseForm {
    override_reason: Option<String>,
}

pub(in crate::http::console) async fn incident_close(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<CloseForm>,
) -> PageResult {
    let closed = crate::incident::close(
        state.runtime.store.as_ref(),
        &state.runtime.catalog.snapshot(),
        &name,
        filled(form.override_reason.as_deref()),
        &session.caller.actor(),
        Utc::now(),
    )
    .await;
    match closed {
        Ok(_) => to_incident(&name),
        Err(crate::incident::IncidentError::Blocked { blockers, .. }) => {
            incident_page(
                &state,
                &session,
                &name,
                StatusCode::CONFLICT,
                Some(blockers),
                None,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub(in crate::http::console) struct ReportQuery {
    format: Option<String>,
    #[serde(default)]
    download: bool,
}

/// The closure report: the HTML one as a page of its own, the others as files to download.
pub(in crate::http::console) async fn incident_report(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    Query(q): Query<ReportQuery>,
) -> PageResult {
    let format = report_format(q.format.as_deref(), crate::incident::ReportFormat::Html)?;
    let download = q.download || format != crate::incident::ReportFormat::Html;
    let back = format!(
        "/ui/incidents/{}",
        percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
    );
    Ok(report_response(&state, &name, format, download, Some(&back)).await?)
}

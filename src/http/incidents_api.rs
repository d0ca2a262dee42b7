//! `/api/v1/incidents`: open incidents, mark phases, add notes, read their timelines, as the
//! caller's token identity.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::incident::{self, IncidentError};
use crate::plan::Actor;

use super::HttpState;
use super::auth::Caller;
use super::error::ApiError;

impl From<IncidentError> for ApiError {
    fn from(e: IncidentError) -> Self {
        match e {
            IncidentError::NotFound(_) => ApiError::not_found(e.to_string()),
            IncidentError::Invalid(_) => ApiError::bad_request(e.to_string()),
            IncidentError::Closed(_) => ApiError::conflict(e.to_string()),
            IncidentError::Store(e) => ApiError::internal(e),
        }
    }
}

fn actor(caller: &Caller) -> Actor {
    Actor {
        name: caller.name.clone(),
        role: caller.role,
    }
}

pub(super) async fn list(
    State(state): State<HttpState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let items = state.shared.store.incidents(200).await?;
    Ok(Json(json!({ "items": items })))
}

pub(super) async fn get(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Result<Json<incident::IncidentView>, ApiError> {
    Ok(Json(
        incident::view(state.shared.store.as_ref(), &name).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenBody {
    name: String,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    #[serde(default)]
    invariants: Vec<String>,
    summary: Option<String>,
}

pub(super) async fn open(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    body: Option<Json<OpenBody>>,
) -> Result<Response, ApiError> {
    let Some(Json(body)) = body else {
        return Err(ApiError::bad_request(
            "send a JSON body {\"name\": ..., \"from\": RFC 3339, \"to\"?, \"invariants\"?, \"summary\"?}",
        ));
    };
    let loaded: Vec<crate::domain::Invariant> = state
        .catalog
        .snapshot()
        .iter()
        .map(|i| (**i).clone())
        .collect();
    let opened = incident::open(
        state.shared.store.as_ref(),
        &loaded,
        &body.name,
        body.from,
        body.to,
        &body.invariants,
        body.summary.as_deref(),
        &actor(&caller),
        Utc::now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(opened)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PhaseBody {
    phase: String,
    note: Option<String>,
}

pub(super) async fn phase(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Option<Json<PhaseBody>>,
) -> Result<Json<incident::IncidentView>, ApiError> {
    incident::load(state.shared.store.as_ref(), &name).await?;
    let Some(Json(body)) = body else {
        return Err(ApiError::bad_request(
            "send a JSON body {\"phase\": \"contain|restore|reconcile|verify\", \"note\"?}",
        ));
    };
    incident::mark_phase(
        state.shared.store.as_ref(),
        &name,
        &body.phase,
        body.note.as_deref(),
        &actor(&caller),
        Utc::now(),
    )
    .await?;
    Ok(Json(
        incident::view(state.shared.store.as_ref(), &name).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoteBody {
    text: String,
}

pub(super) async fn note(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Option<Json<NoteBody>>,
) -> Result<Json<incident::IncidentView>, ApiError> {
    incident::load(state.shared.store.as_ref(), &name).await?;
    let Some(Json(body)) = body else {
        return Err(ApiError::bad_request("send a JSON body {\"text\": ...}"));
    };
    incident::add_note(
        state.shared.store.as_ref(),
        &name,
        &body.text,
        &actor(&caller),
        Utc::now(),
    )
    .await?;
    Ok(Json(
        incident::view(state.shared.store.as_ref(), &name).await?,
    ))
}

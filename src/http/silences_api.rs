//! `/api/v1/silences`: list, create and expire silences, as the caller's token identity.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::{Invariant, NewSilence, Silence};
use crate::store::SilenceExpiry;

use super::HttpState;
use super::auth::Caller;
use super::contract::Items;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::params::{Duration, Text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    /// Holding the notices of the alerts it matches.
    Active,
    /// Ended early by someone (`expired_by`).
    Expired,
    /// Ran to its end.
    Ended,
}

/// A silence as the API and the console show it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SilenceView {
    pub id: i64,
    /// Each as `label="value"` with `=`, `!=`, `=~` or `!~`.
    pub matchers: Vec<String>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// When it ends (or ended).
    pub ends_at: DateTime<Utc>,
    pub state: SilenceState,
    pub expired_by: Option<String>,
    /// The loaded invariants whose alerts it matches.
    pub matches_now: Vec<String>,
}

impl SilenceView {
    pub fn of<I: std::borrow::Borrow<Invariant>>(
        s: &Silence,
        now: DateTime<Utc>,
        invariants: &[I],
    ) -> Self {
        Self {
            id: s.id,
            matchers: s.matchers.iter().map(ToString::to_string).collect(),
            reason: s.reason.clone(),
            created_by: s.created_by.clone(),
            created_at: s.created_at,
            ends_at: s.ended_at(),
            state: match (s.is_active(now), &s.expired_at) {
                (true, _) => SilenceState::Active,
                (false, Some(_)) => SilenceState::Expired,
                (false, None) => SilenceState::Ended,
            },
            expired_by: s.expired_by.clone(),
            matches_now: s.matching(invariants),
        }
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Include silences that ended.
    #[serde(default)]
    all: bool,
}

pub(super) async fn list(
    State(state): State<HttpState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Items<SilenceView>>, ApiError> {
    let now = Utc::now();
    let invariants = state.runtime.catalog.snapshot();
    let items = state
        .runtime
        .store
        .silences(now, q.all, 500)
        .await?
        .iter()
        .map(|s| SilenceView::of(s, now, &invariants))
        .collect();
    Ok(Json(Items { items }))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    /// Every one must match: `label=value`, `label!=value`, `label=~regex`, `label!~regex`.
    matchers: Vec<String>,
    /// How long it holds notices (at most 30d).
    duration: Duration,
    /// Why.
    reason: Text,
}

pub(super) async fn create(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    body: Option<ApiJson<CreateBody>>,
) -> Result<Response, ApiError> {
    let Some(ApiJson(body)) = body else {
        return Err(ApiError::bad_request(
            "send a JSON body {\"matchers\": [\"invariant=orders-billed\"], \"duration\": \"2h\", \"reason\": \"...\"}",
        ));
    };
    let view = create_silence(
        &state.runtime,
        &body.matchers,
        body.duration.parse().as_chrono(),
        &body.reason.0,
        &caller.name,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Records a silence as `actor`'s (the API and the console both create them here).
pub(super) async fn create_silence(
    runtime: &crate::runtime::Runtime,
    matchers: &[String],
    length: chrono::TimeDelta,
    reason: &str,
    actor: &str,
) -> Result<SilenceView, ApiError> {
    let now = Utc::now();
    let new = NewSilence::parse(matchers, length, reason, now)
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let silence = runtime.store.create_silence(&new, actor, now).await?;
    Ok(SilenceView::of(&silence, now, &runtime.catalog.snapshot()))
}

/// Ends a silence now as `actor`; 404 if there is none, 409 if it had ended.
pub(super) async fn expire_silence(
    runtime: &crate::runtime::Runtime,
    id: i64,
    actor: &str,
) -> Result<SilenceView, ApiError> {
    let now = Utc::now();
    match runtime.store.expire_silence(id, actor, now).await? {
        SilenceExpiry::Expired(s) => Ok(SilenceView::of(&s, now, &runtime.catalog.snapshot())),
        SilenceExpiry::AlreadyEnded(s) => Err(ApiError::conflict(format!(
            "silence {id} had already ended at {}",
            s.ended_at().to_rfc3339()
        ))),
        SilenceExpiry::NotFound => Err(ApiError::not_found(format!(
            "no silence {id}; GET /api/v1/silences?all=true lists them"
        ))),
    }
}

pub(super) async fn expire(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<SilenceView>, ApiError> {
    Ok(Json(
        expire_silence(&state.runtime, id, &caller.name).await?,
    ))
}

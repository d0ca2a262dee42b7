//! Silences: who holds which alerts' notices, until when and why; create one, end one.

use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use chrono::Utc;
use minijinja::context;
use serde::Deserialize;

use crate::domain::HumanDuration;
use crate::http::HttpState;
use crate::http::silences_api::{SilenceView, create_silence, expire_silence};

use super::super::session::Session;
use super::super::{PageResult, Refusal, render, serde};

/// What the form starts with (an invariant's page links here with its name).
#[derive(Deserialize, Default)]
pub(in crate::http::console) struct SilencePrefill {
    invariant: Option<String>,
}

pub(in crate::http::console) async fn silences(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Query(prefill): Query<SilencePrefill>,
) -> PageResult {
    let now = Utc::now();
    let invariants = state.runtime.catalog.snapshot();
    let list: Vec<SilenceView> = state
        .runtime
        .store
        .silences(now, true, 100)
        .await?
        .iter()
        .map(|s| SilenceView::of(s, now, &invariants))
        .collect();
    let active = list
        .iter()
        .filter(|s| s.state == crate::http::silences_api::SilenceState::Active)
        .count();
    let matcher = prefill
        .invariant
        .filter(|n| invariants.iter().any(|i| i.name.as_str() == n))
        .map(|n| format!("invariant={n}"))
        .unwrap_or_default();
    Ok(render(
        &session,
        "silences.html",
        context! {
            nav => "silences",
            silences => serde(&list),
            active,
            matcher,
        },
    ))
}

#[derive(Deserialize)]
pub(in crate::http::console) struct SilenceForm {
    /// One matcher per line.
    matchers: String,
    duration: String,
    reason: String,
}

pub(in crate::http::console) async fn create(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Form(form): Form<SilenceForm>,
) -> PageResult {
    let length = HumanDuration::parse(&form.duration).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            &format!("duration: {e}; write a length such as 30m, 2h or 1d"),
        )
    })?;
    let matchers: Vec<String> = form
        .matchers
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    create_silence(
        &state.runtime,
        &matchers,
        length.as_chrono(),
        &form.reason,
        &session.caller.name,
    )
    .await?;
    Ok(Redirect::to("/ui/silences").into_response())
}

pub(in crate::http::console) async fn expire(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
) -> PageResult {
    expire_silence(&state.runtime, id, &session.caller.name).await?;
    Ok(Redirect::to("/ui/silences").into_response())
}

//! "What happened to event X?": the trace of one event or key (see `crate::trace`).

use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use minijinja::context;
use serde::Deserialize;

use crate::http::HttpState;

use super::super::session::Session;
use super::super::{PageResult, Refusal, render, serde};

#[derive(Deserialize, Default)]
pub(in crate::http::console) struct TraceForm {
    key: Option<String>,
    invariant: Option<String>,
}

pub(in crate::http::console) async fn trace(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Query(form): Query<TraceForm>,
) -> PageResult {
    let key = form.key.unwrap_or_default();
    let invariant = form.invariant.filter(|i| !i.is_empty());
    let invariants: Vec<String> = state
        .runtime
        .catalog
        .snapshot()
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    let traced = if key.trim().is_empty() {
        None
    } else {
        match state.runtime.trace(&key, invariant.as_deref()).await {
            Ok(t) => Some(t),
            Err(e @ crate::trace::TraceError::UnknownInvariant(_)) => {
                return Err(Refusal::new(StatusCode::NOT_FOUND, &e.to_string()));
            }
            Err(e @ crate::trace::TraceError::EmptyKey) => {
                return Err(Refusal::new(StatusCode::BAD_REQUEST, &e.to_string()));
            }
            Err(crate::trace::TraceError::Store(e)) => return Err(e.into()),
        }
    };
    let steps = traced.as_ref().map(|t| {
        t.steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "at": s.at,
                    "kind": s.kind,
                    "label": s.kind.label(),
                    "summary": s.summary,
                    "invariant": s.invariant,
                    "plan": s.plan,
                    "incident": s.incident,
                    "details": serde_json::to_string_pretty(&s.details).unwrap_or_default(),
                })
            })
            .collect::<Vec<_>>()
    });
    Ok(render(
        &session,
        "trace.html",
        context! {
            nav => "trace",
            key => key.trim(),
            invariant,
            invariants,
            traced => traced.is_some(),
            steps => steps.as_ref().map(serde),
        },
    ))
}

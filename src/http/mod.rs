//! HTTP endpoints: health, readiness and Prometheus metrics. Handlers never touch SQL: they go
//! through the `Store` trait and the in-memory board.

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::domain::Invariant;
use crate::serve::metrics::Metrics;
use crate::serve::state::Board;
use crate::store::Store;

#[derive(Clone)]
pub struct HttpState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub board: Arc<Board>,
    pub invariants: Vec<Arc<Invariant>>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The process can do its job: the store answers.
async fn readyz(State(state): State<HttpState>) -> Response {
    match state.store.runs(None, 1).await {
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
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

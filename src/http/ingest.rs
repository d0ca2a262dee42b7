//! `POST /ingest/<log>`: a signed webhook into one of trueup's event logs. The signature
//! (not a token) authenticates it; see `capture::webhook`. 201 when stored, 200 for a
//! duplicate delivery (counted, not stored again); 401 for a missing, forged or expired
//! signature, 413 over the log's size cap, 400 for a body without a usable id or time, 404
//! for a log that takes no webhooks, 503 when the store cannot take it now (send it again).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::HttpState;
use super::error::ApiError;
use crate::capture::{WebhookError, intake_word, receive_webhook};
use crate::domain::{Intake, LogName};

/// What an accepted delivery did.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct IngestAnswer {
    pub log: String,
    pub event_id: String,
    /// `stored`, or `duplicate` (this id was stored before; counted, not stored again).
    pub outcome: String,
    /// How often this event id has been delivered, this delivery included.
    pub deliveries: u64,
}

/// Webhook bodies read at once: each may be up to its log's `max_event_bytes` before its
/// signature can be checked, so an unauthenticated flood is bounded here.
static READING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);
/// A body that takes longer to arrive is refused (a slow sender holds a slot).
const BODY_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Request headers never kept with an event: credentials (any header whose name says it
/// holds one: `X-Api-Key`, `X-Auth-Token`, another provider's signature), and the signature
/// itself. Events are shown to every viewer.
fn kept_with_event(name: &str, signature_header: &str) -> bool {
    !(crate::config::header_holds_a_secret(name)
        || name.eq_ignore_ascii_case("set-cookie")
        || name.eq_ignore_ascii_case(signature_header))
}

pub async fn ingest(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let config = &state.runtime.config;
    let Some(log) = LogName::parse(&name)
        .ok()
        .and_then(|n| config.event_logs.get(&n))
        .filter(|l| l.webhook().is_some())
    else {
        return ApiError::not_found(WebhookError::NoSuchLog(name).to_string()).into_response();
    };
    let metrics = &state.runtime.metrics.capture;
    let max = log.shape.max_event_bytes;
    let Ok(_slot) = READING.try_acquire() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(serde_json::json!({
                "error": "unavailable",
                "message": "too many webhooks arriving at once; nothing was kept, send it again",
            })),
        )
            .into_response();
    };
    // Read at most one byte over the cap: a larger body is refused without being held.
    let read = tokio::time::timeout(BODY_WITHIN, axum::body::to_bytes(body, max + 1)).await;
    let Ok(read) = read else {
        return ApiError::refused(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {}s; nothing was kept",
                BODY_WITHIN.as_secs()
            ),
        )
        .into_response();
    };
    let body = match read {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if !too_large {
                return ApiError::bad_request(format!("cannot read the body: {e}")).into_response();
            }
            let bytes = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(max + 1);
            metrics.rejected(log.name.as_str(), crate::capture::WEBHOOK_FEED, "too_large");
            return refusal(crate::domain::Refusal::TooLarge { bytes, max }).into_response();
        }
    };
    let feed = log.webhook().expect("checked above");
    let signature = headers
        .get(feed.signature_header.as_str())
        .and_then(|v| v.to_str().ok());
    let mut kept = serde_json::Map::new();
    for (name, value) in &headers {
        let n = name.as_str();
        if !kept_with_event(n, &feed.signature_header) {
            continue;
        }
        kept.insert(
            n.to_owned(),
            serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    match receive_webhook(
        log,
        signature,
        kept,
        &body,
        state.runtime.store.as_ref(),
        metrics,
        Utc::now(),
    )
    .await
    {
        Ok(received) => {
            let (status, deliveries) = match received.intake {
                Intake::Stored => (StatusCode::CREATED, 1),
                Intake::Duplicate { deliveries } => (StatusCode::OK, deliveries),
                // A webhook has no position, so a delivery is never taken for a redelivery.
                Intake::Redelivered => (StatusCode::OK, 0),
            };
            (
                status,
                Json(IngestAnswer {
                    log: log.name.to_string(),
                    event_id: received.identity.event_id,
                    outcome: intake_word(received.intake).to_owned(),
                    deliveries,
                }),
            )
                .into_response()
        }
        Err(WebhookError::Refused(r)) => refusal(r).into_response(),
        Err(e @ WebhookError::NoSuchLog(_)) => ApiError::not_found(e.to_string()).into_response(),
        Err(WebhookError::Store(e)) => {
            tracing::error!(log = %log.name, "a webhook delivery could not be stored: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                Json(serde_json::json!({
                    "error": "unavailable",
                    "message": "the event could not be stored now; nothing was kept, send it again",
                })),
            )
                .into_response()
        }
    }
}

fn refusal(r: crate::domain::Refusal) -> ApiError {
    let status = match r.reason() {
        "signature" | "expired" => StatusCode::UNAUTHORIZED,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let message = r.to_string();
    match status {
        StatusCode::UNAUTHORIZED => ApiError::unauthorized(message),
        _ => ApiError::refused(status, message),
    }
    .with_field("reason", serde_json::Value::String(r.reason().to_owned()))
}

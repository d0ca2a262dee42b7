//! One error type for every endpoint. 4xx bodies say what was wrong and what to do; 5xx
//! bodies are opaque and the cause goes to the log.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::domain::NextStep;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// More fields for the body, next to `error` and `message`.
    fields: Option<Box<(&'static str, serde_json::Value)>>,
    /// What the caller can do next; worded for an API caller in the body, for a person by the
    /// console.
    next: Option<NextStep>,
}

/// A next step as an API caller takes it: a route.
pub fn api_next_step(step: &NextStep) -> String {
    match step {
        NextStep::ListPlans => "GET /api/v1/plans lists the plans".into(),
        NextStep::ListIncidents => "GET /api/v1/incidents lists them".into(),
        NextStep::ChooseAnotherIncidentName(name) => {
            format!("choose another name, or GET /api/v1/incidents/{name}")
        }
        NextStep::ProposeFreshPlan(invariant) => {
            format!("POST /api/v1/plans {{\"invariant\": \"{invariant}\"}} proposes a fresh one")
        }
        NextStep::ReviewPlanAgain(id) => format!("GET /api/v1/plans/{id} shows it"),
        NextStep::ResumePlan(id) => format!("resume it (POST /api/v1/plans/{id}/resume)"),
        NextStep::ApprovePlan(id) => format!("approve it (POST /api/v1/plans/{id}/approve)"),
        NextStep::RetryFailed(id) => {
            format!("fix the cause, then POST /api/v1/plans/{id}/apply {{\"retry_failed\": true}}")
        }
        NextStep::ContinueApply(id) => {
            format!("POST /api/v1/plans/{id}/apply again to continue")
        }
        NextStep::ResolveBlockersOrOverride(name) => format!(
            "resolve them, or close anyway as an approver: POST /api/v1/incidents/{name}/close {{\"override_reason\": \"...\"}} (the report records who and why)"
        ),
    }
}

impl ApiError {
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.into(),
            fields: None,
            next: None,
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
            fields: None,
            next: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            fields: None,
            next: None,
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: message.into(),
            fields: None,
            next: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
            fields: None,
            next: None,
        }
    }

    /// A request axum's extractors could not read (its path, query string or body), with
    /// the status they chose for it.
    pub fn refused(status: StatusCode, message: impl Into<String>) -> Self {
        if status.is_server_error() {
            return Self::internal(message.into());
        }
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
            _ => "bad_request",
        };
        Self {
            status,
            code,
            message: message.into(),
            fields: None,
            next: None,
        }
    }

    /// A well-formed request whose content cannot be used as sent.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "unprocessable",
            message: message.into(),
            fields: None,
            next: None,
        }
    }

    /// An internal failure: logged with its cause, reported without it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!("request failed: {cause}");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "trueup could not complete the request; the server log has the cause".into(),
            fields: None,
            next: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What the caller is told (for 5xx, the opaque message, never the cause).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What the caller can do next.
    pub fn with_next(mut self, step: Option<NextStep>) -> Self {
        self.next = step;
        self
    }

    pub fn next(&self) -> Option<&NextStep> {
        self.next.as_ref()
    }

    /// Adds a field to the body (e.g. the list of blockers a refusal is about).
    pub fn with_field(mut self, name: &'static str, value: serde_json::Value) -> Self {
        self.fields = Some(Box::new((name, value)));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self.next {
            // A message that lists things (an incident's blockers) ends in its list: the next
            // step goes on a line of its own.
            Some(step) if self.message.contains('\n') => {
                format!("{}\n{}", self.message, api_next_step(step))
            }
            Some(step) => format!("{}; {}", self.message, api_next_step(step)),
            None => self.message,
        };
        let mut body = serde_json::json!({"error": self.code, "message": message});
        if let Some((name, value)) = self.fields.map(|f| *f) {
            body[name] = value;
        }
        let body = Json(body);
        if self.status == StatusCode::UNAUTHORIZED {
            (
                self.status,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"trueup\"")],
                body,
            )
                .into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::internal(e)
    }
}

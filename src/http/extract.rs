//! The API's extractors: axum's own, refusing in the API's JSON error body. axum answers a
//! path, query string or body it cannot read with `text/plain`, unlike every other refusal a
//! client of `/api/v1` gets (`{"error": ..., "message": ...}`).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A path's parameters (`/plans/{id}`).
pub(super) struct ApiPath<T>(pub T);

/// A query string's parameters (`?limit=50`).
pub(super) struct ApiQuery<T>(pub T);

/// A JSON body; as `Option<ApiJson<T>>`, absent when the request has no body.
pub(super) struct ApiJson<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::refused(
            e.status(),
            format!(
                "the path does not name what this route takes: {}",
                e.body_text()
            ),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::refused(
            e.status(),
            format!(
                "the query string is not one this route takes: {}; GET /api/v1/openapi.json lists its parameters",
                e.body_text()
            ),
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::refused(
            e.status(),
            format!(
                "the body is not the JSON this route takes: {}; GET /api/v1/openapi.json describes it",
                e.body_text()
            ),
        )
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(t) = axum::extract::Path::from_request_parts(parts, state).await?;
        Ok(Self(t))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(t) =
            axum::extract::Query::from_request_parts(parts, state).await?;
        Ok(Self(t))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(t) = <axum::Json<T> as FromRequest<S>>::from_request(req, state).await?;
        Ok(Self(t))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        let body = <axum::Json<T> as OptionalFromRequest<S>>::from_request(req, state).await?;
        Ok(body.map(|axum::Json(t)| Self(t)))
    }
}

//! Bearer tokens → a caller with a role. Only the tokens' SHA-256 digests are held.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::ApiToken;
use crate::domain::Role;

use super::HttpState;
use super::error::ApiError;

/// Who is calling, as established from their token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// The caller as the library's acting identity.
    pub fn actor(&self) -> crate::domain::Actor {
        crate::domain::Actor {
            name: self.name.clone(),
            role: self.role,
        }
    }
}

pub fn identify(tokens: &[ApiToken], authorization: Option<&str>) -> Result<Caller, ApiError> {
    let presented = authorization
        .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <token>`"))?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?;
    let digest = ApiToken::digest(presented);
    tokens
        .iter()
        .find(|t| t.sha256 == digest)
        .map(|t| Caller {
            name: t.name.clone(),
            role: t.role,
        })
        .ok_or_else(|| ApiError::unauthorized("the token is not one trueup knows"))
}

/// Route layer: lets the request through only for a caller with at least `needed`, and hands
/// the caller to the handler.
pub async fn require_role(
    State((state, needed)): State<(HttpState, Role)>,
    mut req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match identify(&state.tokens, header) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if caller.role < needed {
        return ApiError::forbidden(format!(
            "`{}` has role {}; this needs {} or above",
            caller.name, caller.role, needed
        ))
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

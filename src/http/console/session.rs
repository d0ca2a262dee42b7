//! Console sign-in: a token is exchanged for a session cookie (HttpOnly, SameSite=Strict)
//! whose id the store keeps only as a SHA-256. Every page needs a session with a role; every
//! POST also needs the session's CSRF token in its form and, when the browser sends one, an
//! `Origin` of this server. Both checks are here, in the one layer every console route has,
//! so no handler can forget them.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use chrono::{TimeDelta, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::config::ApiToken;
use crate::domain::Role;
use crate::http::HttpState;
use crate::http::auth::Caller;
use crate::store::SessionRecord;

use super::Refusal;

pub const COOKIE: &str = "trueup_session";
/// How long a sign-in lasts.
pub const SESSION_TTL: TimeDelta = TimeDelta::hours(12);
/// The largest form the console accepts.
const MAX_FORM: usize = 64 * 1024;

/// A signed-in caller, with the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
    id_sha256: String,
}

fn secret() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The session the request's cookie names, if it is live and its token still exists.
pub async fn current(state: &HttpState, jar: &CookieJar) -> Result<Option<Session>, Refusal> {
    let Some(id) = jar.get(COOKIE).map(|c| c.value().to_owned()) else {
        return Ok(None);
    };
    let id_sha256 = digest(&id);
    let record = state.shared.store.session(&id_sha256, Utc::now()).await?;
    // The role comes from the configuration now: a removed token ends its sessions.
    Ok(record.and_then(|r| {
        state
            .tokens
            .iter()
            .find(|t| t.name == r.token_name)
            .map(|t| Session {
                caller: Caller {
                    name: t.name.clone(),
                    role: t.role,
                },
                csrf: r.csrf,
                id_sha256,
            })
    }))
}

/// Signs a token in: a new session and its cookie. `None` if trueup does not know the token.
pub async fn sign_in(
    state: &HttpState,
    token: &str,
    secure: bool,
) -> Result<Option<Cookie<'static>>, Refusal> {
    let digest_of_token = ApiToken::digest(token.trim());
    let Some(known) = state.tokens.iter().find(|t| t.sha256 == digest_of_token) else {
        return Ok(None);
    };
    let id = secret();
    let now = Utc::now();
    state
        .shared
        .store
        .create_session(
            &digest(&id),
            &SessionRecord {
                token_name: known.name.clone(),
                csrf: secret(),
                created_at: now,
                expires_at: now + SESSION_TTL,
            },
        )
        .await?;
    Ok(Some(
        Cookie::build((COOKIE, id))
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure)
            .path("/ui")
            .build(),
    ))
}

pub async fn sign_out(state: &HttpState, session: &Session) -> Result<(), Refusal> {
    state
        .shared
        .store
        .end_session(&session.id_sha256, Utc::now())
        .await?;
    Ok(())
}

/// The cookie that removes the session cookie.
pub fn removal() -> Cookie<'static> {
    Cookie::build((COOKIE, "")).path("/ui").build()
}

/// Route layer of every console page: a session with at least `needed`; for a POST, the
/// session's CSRF token in the form and no foreign `Origin`.
pub async fn require(
    State((state, needed)): State<(HttpState, Role)>,
    jar: CookieJar,
    req: Request,
    next: Next,
) -> Response {
    let session = match current(&state, &jar).await {
        Ok(Some(s)) => s,
        Ok(None) if req.method() == Method::GET => {
            let next = req
                .uri()
                .path_and_query()
                .map_or("/ui/", |p| p.as_str())
                .to_owned();
            let to = format!(
                "/ui/login?next={}",
                percent_encoding::utf8_percent_encode(&next, percent_encoding::NON_ALPHANUMERIC)
            );
            return Redirect::to(&to).into_response();
        }
        Ok(None) => {
            return super::error_page(
                StatusCode::UNAUTHORIZED,
                "you are not signed in (or your session ended); sign in again",
            );
        }
        Err(refusal) => return refusal.into_response(),
    };
    if session.caller.role < needed {
        return super::error_page(
            StatusCode::FORBIDDEN,
            &format!(
                "`{}` has the {} role; this needs {needed} or above",
                session.caller.name, session.caller.role
            ),
        );
    }
    let req = if req.method() == Method::POST {
        match checked_post(req, &session).await {
            Ok(r) => r,
            Err(refusal) => return refusal.into_response(),
        }
    } else {
        req
    };
    let mut req = req;
    req.extensions_mut().insert(session);
    next.run(req).await
}

/// Checks a POST's origin and CSRF token, and hands back the request with its body intact.
async fn checked_post(req: Request, session: &Session) -> Result<Request, Refusal> {
    let forbidden = |why: &str| Refusal::new(StatusCode::FORBIDDEN, why);
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin = origin.to_str().unwrap_or("");
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin_host != host {
            return Err(forbidden(
                "this form was sent from another site; use the console itself",
            ));
        }
    }
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large"))?;
    let presented = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned());
    // Compare digests: equal-length values, so the comparison time tells nothing.
    if presented.map(|p| digest(&p)) != Some(digest(&session.csrf)) {
        return Err(forbidden(
            "the form's CSRF token is missing or stale; reload the page and try again",
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Whether the browser reached us over HTTPS (directly or through a proxy that says so).
pub fn is_https(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

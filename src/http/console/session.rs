//! Console sign-in: a token is exchanged for a session cookie (HttpOnly, SameSite=Strict)
//! whose id the store keeps only as a SHA-256. Every page needs a session with a role; every
//! POST also needs the session's CSRF token in its form and, when the browser sends one, an
//! `Origin` of this server. Both checks are here, in the one layer every console route has,
//! so no handler can forget them.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
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
    let record = state.runtime.store.session(&id_sha256, Utc::now()).await?;
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
        .runtime
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
        .runtime
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
    same_origin(req.headers()).map_err(forbidden)?;
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

/// Whether a form POST comes from the console's own pages, as the browser says: its
/// `Sec-Fetch-Site` if it sends one, else its `Origin`, else its `Referer`, which must name
/// this host. A POST that says none of them is refused: every browser the console supports
/// sends at least one, so only a request made outside a browser (or one stripped on the way)
/// lacks them all, and a cookie alone must never be enough to act.
pub fn same_origin(headers: &axum::http::HeaderMap) -> Result<(), &'static str> {
    const FOREIGN: &str = "this form was sent from another site; use the console itself";
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site") {
        return if site.eq_ignore_ascii_case("same-origin") {
            Ok(())
        } else {
            Err(FOREIGN)
        };
    }
    let host = text(header::HOST.as_str()).unwrap_or("");
    let host_of = |url: &str| -> Option<String> {
        let (_, rest) = url.split_once("://")?;
        Some(rest.split(['/', '?', '#']).next().unwrap_or("").to_owned())
    };
    let claimed = match (
        text(header::ORIGIN.as_str()),
        text(header::REFERER.as_str()),
    ) {
        (Some(origin), _) => host_of(origin),
        (None, Some(referer)) => host_of(referer),
        (None, None) => {
            return Err(
                "the browser said neither where this form comes from (no Origin, no Referer); use the console in a browser, and do not strip those headers in a proxy",
            );
        }
    };
    match claimed {
        Some(h) if !host.is_empty() && h.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(FOREIGN),
    }
}

/// Whether the browser reached us over HTTPS (directly or through a proxy that says so).
pub fn is_https(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::same_origin;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("trueup.example:8080"));
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_post_from_the_console_itself_is_same_origin() {
        for pairs in [
            &[("sec-fetch-site", "same-origin")][..],
            &[("origin", "http://trueup.example:8080")],
            &[("origin", "https://TRUEUP.example:8080")],
            &[("referer", "http://trueup.example:8080/ui/plans/1")],
        ] {
            assert_eq!(same_origin(&headers(pairs)), Ok(()), "{pairs:?}");
        }
    }

    #[test]
    fn a_post_from_elsewhere_or_from_nowhere_is_refused() {
        for pairs in [
            &[][..],
            &[("sec-fetch-site", "cross-site")],
            &[
                ("sec-fetch-site", "same-site"),
                ("origin", "http://trueup.example:8080"),
            ],
            &[("sec-fetch-site", "none")],
            &[("origin", "null")],
            &[("origin", "http://evil.example")],
            &[("origin", "http://trueup.example:8080.evil.example")],
            &[(
                "referer",
                "http://evil.example/?http://trueup.example:8080/",
            )],
        ] {
            assert!(same_origin(&headers(pairs)).is_err(), "{pairs:?}");
        }
    }
}

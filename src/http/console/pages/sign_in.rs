//! Signing in and out: a token exchanged for a session.

use axum::extract::{Extension, Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use minijinja::context;
use serde::Deserialize;

use crate::http::HttpState;

use super::super::session::{self, Session};
use super::super::{PageResult, render_status};
use super::*;

#[derive(Deserialize)]
pub(in crate::http::console) struct LoginQuery {
    next: Option<String>,
}

pub(in crate::http::console) async fn login_form(
    State(state): State<HttpState>,
    jar: CookieJar,
    Query(q): Query<LoginQuery>,
) -> Response {
    if let Ok(Some(_)) = session::current(&state, &jar).await {
        return Redirect::to(&safe_next(q.next.as_deref())).into_response();
    }
    render_status(
        StatusCode::OK,
        "login.html",
        context! { next => safe_next(q.next.as_deref()) },
    )
}

#[derive(Deserialize)]
pub(in crate::http::console) struct LoginForm {
    token: String,
    next: Option<String>,
}

pub(in crate::http::console) async fn login(
    State(state): State<HttpState>,
    headers: HeaderMap,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> PageResult {
    // A sign-in forged from another site would sign the browser in as someone else.
    if let Err(why) = session::same_origin(&headers) {
        return Ok(render_status(
            StatusCode::FORBIDDEN,
            "login.html",
            context! { next => "/ui/", error => why },
        ));
    }
    let next = safe_next(form.next.as_deref());
    Ok(
        match session::sign_in(&state, &form.token, session::is_https(&headers)).await? {
            Some(cookie) => (jar.add(cookie), Redirect::to(&next)).into_response(),
            None => render_status(
                StatusCode::UNAUTHORIZED,
                "login.html",
                context! {
                    next => next,
                    error => "trueup does not know this token; check it (tokens are listed, hashed, under serve.tokens in trueup.yaml)",
                },
            ),
        },
    )
}

pub(in crate::http::console) async fn logout(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    jar: CookieJar,
) -> PageResult {
    session::sign_out(&state, &session).await?;
    Ok((jar.remove(session::removal()), Redirect::to("/ui/login")).into_response())
}

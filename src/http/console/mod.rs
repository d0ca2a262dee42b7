//! The operator web console under `/ui`: server-rendered pages (minijinja, auto-escaped
//! `*.html` templates), every asset compiled into the binary, a little JavaScript only for
//! live progress and the timeline selection. Reading pages work without JavaScript.
//!
//! Like the API, every page is declared once in [`pages`] with the role it needs; the session
//! layer (`session.rs`) enforces the role, and the CSRF token on every POST, for all of them.
//! Handlers act through the same library calls as the API (`plan::approve`, `apply`, ...),
//! which check roles again: hiding a button is never the guard.

// Helpers here fail with the error page itself (`Result<_, Response>`): the page is what the
// browser gets, and boxing it would buy nothing on this path.
#![allow(clippy::result_large_err)]

mod chart;
mod pages;
mod session;

use std::sync::LazyLock;

use axum::Router;
use axum::http::{Method, StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use minijinja::Environment;
use minijinja::value::{Serde, Value};

use crate::domain::Role;

use super::HttpState;
use session::Session;

/// One console page or form action: where it is and who may use it.
pub struct Page {
    pub method: Method,
    pub path: &'static str,
    /// `None`: anyone (the sign-in page and the static assets).
    pub role: Option<Role>,
    handler: MethodRouter<HttpState>,
}

fn page(
    method: Method,
    path: &'static str,
    role: Option<Role>,
    handler: MethodRouter<HttpState>,
) -> Page {
    Page {
        method,
        path,
        role,
        handler,
    }
}

pub fn pages() -> Vec<Page> {
    use Role::*;
    vec![
        // The address people type: the console.
        page(
            Method::GET,
            "/",
            None,
            get(|| async { axum::response::Redirect::to("/ui/") }),
        ),
        // Browsers ask for it whatever the page says.
        page(
            Method::GET,
            "/favicon.ico",
            None,
            get(|| async { asset(axum::extract::Path("favicon.svg".to_owned())).await }),
        ),
        page(Method::GET, "/ui/login", None, get(pages::login_form)),
        page(Method::POST, "/ui/login", None, post(pages::login)),
        page(Method::GET, "/ui/assets/{file}", None, get(asset)),
        page(
            Method::POST,
            "/ui/logout",
            Some(Viewer),
            post(pages::logout),
        ),
        page(Method::GET, "/ui/", Some(Viewer), get(pages::overview)),
        page(
            Method::GET,
            "/ui/invariants/{name}",
            Some(Viewer),
            get(pages::invariant),
        ),
        page(Method::GET, "/ui/plans", Some(Viewer), get(pages::plans)),
        page(
            Method::GET,
            "/ui/plans/{id}",
            Some(Viewer),
            get(pages::plan),
        ),
        page(
            Method::GET,
            "/ui/plans/{id}/progress",
            Some(Viewer),
            get(pages::plan_progress),
        ),
        page(
            Method::POST,
            "/ui/plans/{id}/approve",
            Some(Approver),
            post(pages::approve),
        ),
        page(
            Method::POST,
            "/ui/plans/{id}/reject",
            Some(Approver),
            post(pages::reject),
        ),
        page(
            Method::POST,
            "/ui/plans/{id}/apply",
            Some(Operator),
            post(pages::apply),
        ),
        page(
            Method::POST,
            "/ui/plans/{id}/pause",
            Some(Operator),
            post(pages::pause),
        ),
        page(
            Method::POST,
            "/ui/plans/{id}/resume",
            Some(Operator),
            post(pages::resume),
        ),
        page(
            Method::POST,
            "/ui/plans/{id}/cancel",
            Some(Operator),
            post(pages::cancel),
        ),
        page(Method::GET, "/ui/replay", Some(Viewer), get(pages::replay)),
        page(
            Method::POST,
            "/ui/replay",
            Some(Operator),
            post(pages::propose_replay),
        ),
        page(
            Method::GET,
            "/ui/incidents",
            Some(Viewer),
            get(pages::incidents),
        ),
        page(
            Method::POST,
            "/ui/incidents",
            Some(Operator),
            post(pages::open_incident),
        ),
        page(
            Method::GET,
            "/ui/incidents/{name}",
            Some(Viewer),
            get(pages::incident),
        ),
        page(
            Method::GET,
            "/ui/incidents/{name}/report",
            Some(Viewer),
            get(pages::incident_report),
        ),
        page(
            Method::POST,
            "/ui/incidents/{name}/phases",
            Some(Operator),
            post(pages::incident_phase),
        ),
        page(
            Method::POST,
            "/ui/incidents/{name}/notes",
            Some(Operator),
            post(pages::incident_note),
        ),
        page(
            Method::POST,
            "/ui/incidents/{name}/verify",
            Some(Operator),
            post(pages::incident_verify),
        ),
        page(
            Method::POST,
            "/ui/incidents/{name}/close",
            Some(Operator),
            post(pages::incident_close),
        ),
        page(
            Method::GET,
            "/ui/trace",
            Some(Viewer),
            get(pages::trace::trace),
        ),
        page(
            Method::GET,
            "/ui/silences",
            Some(Viewer),
            get(pages::silences::silences),
        ),
        page(
            Method::POST,
            "/ui/silences",
            Some(Operator),
            post(pages::silences::create),
        ),
        page(
            Method::POST,
            "/ui/silences/{id}/expire",
            Some(Operator),
            post(pages::silences::expire),
        ),
        page(Method::GET, "/ui/audit", Some(Admin), get(pages::audit)),
    ]
}

/// The console's routes, each behind the session layer with its role.
pub fn routes(state: &HttpState) -> Router<HttpState> {
    let mut router = Router::new();
    for p in pages() {
        let handler = match p.role {
            Some(role) => p.handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), role),
                session::require,
            )),
            None => p.handler,
        };
        router = router.route(p.path, handler);
    }
    router.route(
        "/ui",
        get(|| async { axum::response::Redirect::to("/ui/") }),
    )
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = crate::incident::render::environment();
    env.add_filter("tracekey", crate::incident::render::tracekey);
    for (name, source) in [
        ("layout.html", include_str!("templates/layout.html")),
        ("login.html", include_str!("templates/login.html")),
        ("error.html", include_str!("templates/error.html")),
        ("overview.html", include_str!("templates/overview.html")),
        ("invariant.html", include_str!("templates/invariant.html")),
        ("plans.html", include_str!("templates/plans.html")),
        ("plan.html", include_str!("templates/plan.html")),
        ("audit.html", include_str!("templates/audit.html")),
        ("replay.html", include_str!("templates/replay.html")),
        ("incidents.html", include_str!("templates/incidents.html")),
        ("silences.html", include_str!("templates/silences.html")),
        ("incident.html", include_str!("templates/incident.html")),
        ("trace.html", include_str!("templates/trace.html")),
    ] {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("console template {name}: {e:#}"));
    }
    env
});

/// What every signed-in page knows: who is signed in, what they may do, the CSRF token.
fn base(session: &Session) -> Value {
    let role = session.caller.role;
    minijinja::context! {
        me => minijinja::context! { name => session.caller.name.clone(), role => role.as_str() },
        csrf => session.csrf.clone(),
        can => minijinja::context! {
            operate => role >= Role::Operator,
            approve => role >= Role::Approver,
            admin => role >= Role::Admin,
        },
    }
}

/// Renders a template with `status`. A template that fails is a bug: it is logged and the
/// page says so without details.
fn render_status(status: StatusCode, name: &str, ctx: Value) -> Response {
    let rendered = TEMPLATES.get_template(name).and_then(|t| t.render(ctx));
    match rendered {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!("console template {name}: {e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<!DOCTYPE html><title>trueup</title><p>This page could not be drawn; the server log says why.</p>"),
            )
                .into_response()
        }
    }
}

/// A signed-in page: the page's own context merged over [`base`].
fn render(session: &Session, name: &str, ctx: Value) -> Response {
    render_status(
        StatusCode::OK,
        name,
        minijinja::context! { ..ctx, ..base(session) },
    )
}

/// A page that explains why a request was refused or failed. Console handlers return
/// `Result<Response, Refusal>` and use `?` on the library's errors, which become the page the
/// API's status and message would have been.
pub(crate) struct Refusal(Response);

impl Refusal {
    pub(crate) fn new(status: StatusCode, message: &str) -> Self {
        Self(error_page(status, message))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.0
    }
}

impl From<super::error::ApiError> for Refusal {
    fn from(e: super::error::ApiError) -> Self {
        match e.next() {
            Some(step) => Self::new(
                e.status(),
                &format!("{}; {}", e.message(), console_next_step(step)),
            ),
            None => Self::new(e.status(), e.message()),
        }
    }
}

/// A next step as a person in the console takes it: a page.
fn console_next_step(step: &crate::domain::NextStep) -> String {
    use crate::domain::NextStep;
    match step {
        NextStep::ListPlans => "the Plans page lists them".into(),
        NextStep::ListIncidents => "the Incidents page lists them".into(),
        NextStep::ChooseAnotherIncidentName(name) => {
            format!("choose another name, or open /ui/incidents/{name}")
        }
        // The console does not propose compensation plans (yet): say where it is done.
        NextStep::ProposeFreshPlan(invariant) => format!(
            "a fresh plan for `{invariant}` is proposed from the CLI or the API; the console does not propose compensation plans"
        ),
        NextStep::ReviewPlanAgain(id) => format!("/ui/plans/{id} shows it"),
        NextStep::ResumePlan(id) => format!("resume it with Resume on /ui/plans/{id}"),
        NextStep::ApprovePlan(id) => format!("approve it on /ui/plans/{id}"),
        NextStep::RetryFailed(id) => format!(
            "fix the cause, then retry them with \"Retry the failed or parked\" on /ui/plans/{id}"
        ),
        NextStep::ContinueApply(_) => {
            "an operator applies it again (a dry run first) to continue".into()
        }
        NextStep::ResolveBlockersOrOverride(_) => "resolve them, or, as an approver, close anyway with an override reason (the report records who and why)".into(),
    }
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        super::error::ApiError::from(e).into()
    }
}

impl From<crate::plan::PlanError> for Refusal {
    fn from(e: crate::plan::PlanError) -> Self {
        super::error::ApiError::from(e).into()
    }
}

impl From<crate::incident::IncidentError> for Refusal {
    fn from(e: crate::incident::IncidentError) -> Self {
        super::error::ApiError::from(e).into()
    }
}

/// What a console handler answers: its page, or the page of its refusal.
pub(crate) type PageResult = Result<Response, Refusal>;

/// A page that explains a refusal or a failure.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    render_status(
        status,
        "error.html",
        minijinja::context! {
            status => status.as_u16(),
            reason => status.canonical_reason().unwrap_or(""),
            message => message,
        },
    )
}

fn serde<T: serde::Serialize>(value: &T) -> Value {
    Value::from(Serde(value))
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");
const FAVICON: &str = include_str!("assets/favicon.svg");

/// The console's style and script, compiled in.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return error_page(StatusCode::NOT_FOUND, "no such asset"),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_console_template_parses() {
        for name in TEMPLATES.templates().map(|(n, _)| n) {
            assert!(TEMPLATES.get_template(name).is_ok(), "{name}");
        }
        assert!(TEMPLATES.templates().count() >= 8);
    }

    #[test]
    fn a_plan_whose_recheck_failed_says_so_and_what_to_run_not_that_it_is_rechecking() {
        let failed = "the replay finished, but its window could not be re-checked: staging the violations failed";
        let html = TEMPLATES
            .get_template("plan.html")
            .unwrap()
            .render(serde(&serde_json::json!({
                "p": {
                    "id": 1, "invariant": "events-consumed", "kind": "replay", "state": "applied",
                    "meta": {}, "approvers": [], "progress": {},
                    "verification": {
                        "checked": 3, "closed": 3, "still_open": 0, "errors": 0,
                        "remaining_in_window": null, "failed": failed,
                        "at": "2026-12-06T14:00:00Z"
                    }
                },
                // As the plan page computes it: applied, and a verification recorded.
                "verifying": false,
                "can": {}, "controls": {}, "me": {}, "layout": {}, "actions": [],
            })))
            .unwrap();
        assert!(
            html.contains(&format!(
                "<p id=\"verification\" class=\"error\" role=\"alert\">Re-check failed: {failed}. The plan is applied; run <code>trueup check -i events-consumed --full</code> to see what holds now.</p>"
            )),
            "{html}"
        );
        assert!(!html.contains("Verified:") && !html.contains("re-checking what was applied"));
    }

    /// The text of a page, as a person reads it (tags dropped).
    async fn page_text(response: Response) -> String {
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        html.replace("&#x60;", "`").replace("&#x2f;", "/")
    }

    #[test]
    fn every_next_step_is_a_route_for_the_api_and_a_page_for_the_console() {
        for step in crate::domain::NextStep::one_of_each() {
            let api = crate::http::error::api_next_step(&step);
            assert!(api.contains("/api/v1/"), "{step:?}: {api}");
            assert!(
                !api.contains("trueup ") && !api.contains("/ui/"),
                "{step:?}: {api}"
            );
            // The console names a command or a route only for what it does not do itself,
            // and then says where that is done.
            let console = console_next_step(&step);
            assert!(!console.contains("GET /api"), "{step:?}: {console}");
            if console.contains("trueup ") || console.contains("/api/") {
                assert!(
                    console.contains("the CLI") || console.contains("the API"),
                    "{step:?}: {console}"
                );
            }
        }
    }

    #[tokio::test]
    async fn the_api_and_the_console_word_the_next_step_for_their_own_users() {
        use crate::http::error::ApiError;
        let missing = || crate::plan::PlanError::NotFound(7);
        // The API: a route.
        let api = ApiError::from(missing()).into_response();
        assert_eq!(api.status(), StatusCode::NOT_FOUND);
        let body: serde_json::Value = serde_json::from_slice(
            &axum::body::to_bytes(api.into_body(), usize::MAX)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            body["message"],
            "plan 7 does not exist; GET /api/v1/plans lists the plans"
        );
        // The console: a page, never a command or a route.
        let Refusal(page) = Refusal::from(missing());
        let text = page_text(page).await;
        assert!(
            text.contains("plan 7 does not exist; the Plans page lists them"),
            "{text}"
        );
        assert!(
            !text.contains("trueup plans") && !text.contains("GET /api"),
            "{text}"
        );
        // A stale plan: the API names the route that proposes a fresh one; the console says
        // where that is done, since it does not.
        let stale = || crate::plan::PlanError::Refused {
            plan: 4,
            reason: "it is stale: invariant `ledger` changed since the plan was proposed".into(),
            next: Some(crate::domain::NextStep::ProposeFreshPlan("ledger".into())),
        };
        let api = ApiError::from(stale()).into_response();
        assert_eq!(api.status(), StatusCode::CONFLICT);
        let body: serde_json::Value = serde_json::from_slice(
            &axum::body::to_bytes(api.into_body(), usize::MAX)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            body["message"],
            "plan 4: it is stale: invariant `ledger` changed since the plan was proposed; POST /api/v1/plans {\"invariant\": \"ledger\"} proposes a fresh one"
        );
        let Refusal(page) = Refusal::from(stale());
        let text = page_text(page).await;
        assert!(
            text.contains("is proposed from the CLI or the API; the console does not propose"),
            "{text}"
        );
        let taken = crate::incident::IncidentError::Exists("outage".into());
        let Refusal(page) = Refusal::from(taken);
        assert!(
            page_text(page)
                .await
                .contains("choose another name, or open /ui/incidents/outage")
        );
    }

    #[tokio::test]
    async fn an_error_page_escapes_what_it_is_told() {
        let page = error_page(StatusCode::NOT_FOUND, "no plan <script>x</script>");
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(page.into_body(), usize::MAX)
            .await
            .unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            html.contains("no plan &lt;script&gt;x&lt;&#x2f;script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script>x"), "{html}");
    }

    #[test]
    fn pages_that_change_something_need_more_than_a_viewer() {
        for p in pages() {
            if p.method == Method::POST && p.path != "/ui/login" && p.path != "/ui/logout" {
                assert!(p.role > Some(Role::Viewer), "{}", p.path);
            }
        }
    }
}

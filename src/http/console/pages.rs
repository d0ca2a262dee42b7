//! The console's pages and form actions.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use chrono::{DateTime, TimeDelta, Utc};
use minijinja::context;
use serde::{Deserialize, Serialize};

use crate::domain::{AlertState, Invariant, json_text};
use crate::domain::{PlanId, PlanState, RunStatus};
use crate::http::HttpState;
use crate::http::incidents_api::{report_format, report_response};
use crate::plan::apply::Rate;
use crate::plan::{self, diff_marker};
use crate::runtime::board::{Health, InvariantState};
use crate::store::{ActionRecord, StatusFilter, ViolationFilter};

use super::session::{self, Session};
use super::{PageResult, Refusal, render, render_status, serde};

/// Only a path inside the console: never a redirect to another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains("\\") => {
            n.to_owned()
        }
        _ => "/ui/".to_owned(),
    }
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

pub(super) async fn login_form(
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
pub(super) struct LoginForm {
    token: String,
    next: Option<String>,
}

pub(super) async fn login(
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

pub(super) async fn logout(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    jar: CookieJar,
) -> PageResult {
    session::sign_out(&state, &session).await?;
    Ok((jar.remove(session::removal()), Redirect::to("/ui/login")).into_response())
}

/// An invariant's state as the console shows it, from what the scheduler knows of it.
fn state_name(known: Option<&InvariantState>) -> &'static str {
    match known {
        Some(b) if b.health == Health::Error => "error",
        Some(b) if b.alert == AlertState::Firing => "firing",
        Some(b) if b.alert == AlertState::Pending => "pending",
        Some(b) if b.last_run_at.is_some() => "ok",
        _ => "unknown",
    }
}

#[derive(Serialize)]
struct Spark {
    /// SVG polyline points in a 100×20 box.
    points: String,
    first: u64,
    last: u64,
    max: u64,
    /// The first run drawn.
    since: String,
}

/// Open violations after each run of the last 24 hours, as a sparkline.
fn sparkline(runs: &[crate::store::RunRecord], now: DateTime<Utc>) -> Option<Spark> {
    let from = now - TimeDelta::hours(24);
    let mut series: Vec<(DateTime<Utc>, u64)> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Succeeded && r.started_at >= from)
        .map(|r| {
            (
                r.started_at,
                r.change.new + r.change.still_open + r.change.reopened,
            )
        })
        .collect();
    series.sort_by_key(|(t, _)| *t);
    let (first, last) = (series.first()?.1, series.last()?.1);
    let max = series.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    // Across the runs there are (a sparkline of runs from the last minute would otherwise be
    // a dot at the right edge); one run draws a flat line.
    let (start, end) = (series[0].0, series[series.len() - 1].0);
    let span = (end - start).num_milliseconds().max(1) as f64;
    let y = |n: u64| 19.0 - (n as f64 / max as f64) * 18.0;
    let points = if series.len() == 1 {
        format!("0,{y0:.1} 100,{y0:.1}", y0 = y(first))
    } else {
        series
            .iter()
            .map(|(t, n)| {
                let x = (*t - start).num_milliseconds() as f64 / span * 100.0;
                format!("{x:.1},{:.1}", y(*n))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(Spark {
        points,
        first,
        last,
        max,
        since: start.to_rfc3339(),
    })
}

#[derive(Deserialize)]
pub(super) struct OverviewQuery {
    q: Option<String>,
    severity: Option<String>,
    state: Option<String>,
}

pub(super) async fn overview(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Query(filter): Query<OverviewQuery>,
) -> PageResult {
    let store = state.runtime.store.as_ref();
    let open = store
        .violation_groups(&ViolationFilter {
            status: StatusFilter::Active,
            ..ViolationFilter::default()
        })
        .await?;
    let now = Utc::now();
    let board = state.runtime.board.snapshot();
    let mut rows = Vec::new();
    for inv in state.runtime.catalog.snapshot().iter() {
        let name = inv.name.as_str();
        let b = board.get(name);
        let status = state_name(b);
        let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
        for g in open.iter().filter(|g| g.invariant == name) {
            *by_kind.entry(g.kind.as_str()).or_default() += g.count;
        }
        let wanted = filter
            .q
            .as_deref()
            .is_none_or(|q| q.is_empty() || name.contains(q.trim()))
            && filter
                .severity
                .as_deref()
                .is_none_or(|s| s.is_empty() || inv.severity.to_string() == s)
            && filter
                .state
                .as_deref()
                .is_none_or(|s| s.is_empty() || s == status);
        if !wanted {
            continue;
        }
        let runs = store.runs(Some(name), 300).await?;
        rows.push(context! {
            name => name,
            severity => inv.severity.to_string(),
            owner => inv.owner.clone(),
            rule => inv.kind_name(),
            state => status,
            last_run_at => b.and_then(|b| b.last_run_at).or(runs.first().map(|r| r.started_at)).map(|t| t.to_rfc3339()),
            last_error => b.and_then(|b| b.last_error.clone()),
            open => by_kind.values().sum::<u64>(),
            by_kind => serde(&by_kind),
            spark => serde(&sparkline(&runs, now)),
        });
    }
    Ok(render(
        &session,
        "overview.html",
        context! {
            nav => "overview",
            rows => rows,
            q => filter.q.unwrap_or_default(),
            severity => filter.severity.unwrap_or_default(),
            state => filter.state.unwrap_or_default(),
            severities => ["critical", "high", "medium", "low"],
            states => ["firing", "pending", "error", "ok", "unknown"],
        },
    ))
}

/// Evidence as rows of column / left / right, with the columns that differ marked, and the
/// other facts (counts, transitions) beside it.
#[derive(Serialize)]
struct EvidenceView {
    columns: Vec<EvidenceColumn>,
    facts: Vec<(String, String)>,
}

#[derive(Serialize)]
struct EvidenceColumn {
    name: String,
    left: Option<String>,
    right: Option<String>,
    differs: bool,
}

fn evidence_view(evidence: &serde_json::Value) -> EvidenceView {
    let side = |k: &str| evidence.get(k).and_then(|v| v.as_object());
    let (left, right) = (side("left").or(side("row")), side("right"));
    let mut names: Vec<&String> = left
        .iter()
        .chain(right.iter())
        .flat_map(|m| m.keys())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(*n));
    let columns = names
        .into_iter()
        .map(|n| {
            let l = left.and_then(|m| m.get(n)).map(json_text);
            let r = right.and_then(|m| m.get(n)).map(json_text);
            EvidenceColumn {
                differs: left.is_some() && right.is_some() && l != r,
                name: n.clone(),
                left: l,
                right: r,
            }
        })
        .collect();
    let facts = evidence
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "left" | "right" | "row" | "diff"))
                .map(|(k, v)| (k.clone(), json_text(v)))
                .collect()
        })
        .unwrap_or_default();
    EvidenceView { columns, facts }
}

fn find(state: &HttpState, name: &str) -> Result<std::sync::Arc<Invariant>, Refusal> {
    state.runtime.catalog.find(name).ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            &format!("no invariant named `{name}`"),
        )
    })
}

pub(super) async fn invariant(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> PageResult {
    let inv = find(&state, &name)?;
    let store = state.runtime.store.as_ref();
    let active = ViolationFilter {
        invariants: vec![name.clone()],
        status: StatusFilter::Active,
        limit: 200,
        ..ViolationFilter::default()
    };
    let (runs, violations, times, plans) = tokio::try_join!(
        store.runs(Some(&name), 50),
        store.violations(&active),
        store.event_times(&active),
        store.plans(Some(&name), 20),
    )?;
    // Buckets sized so the whole spread fits in about sixty bars.
    let spread = match (times.iter().min(), times.iter().max()) {
        (Some(a), Some(b)) => (*b - *a).num_seconds().max(60),
        _ => 3600,
    };
    let bucket = [60, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86_400]
        .into_iter()
        .find(|w| spread / w <= 60)
        .unwrap_or(86_400);
    let buckets = crate::domain::histogram(&times, TimeDelta::seconds(bucket)).unwrap_or_default();
    let tallest = buckets.iter().map(|b| b.count).max().unwrap_or(1).max(1);
    let bars: Vec<_> = buckets
        .iter()
        .map(|b| {
            context! {
                from => b.start.to_rfc3339(),
                to => (b.start + TimeDelta::seconds(bucket)).to_rfc3339(),
                count => b.count,
                height => (b.count as f64 / tallest as f64 * 100.0).round() as u64,
            }
        })
        .collect();
    let violations: Vec<_> = violations
        .iter()
        .map(|v| {
            context! {
                v => serde(v),
                evidence => serde(&evidence_view(&v.evidence)),
            }
        })
        .collect();
    let board = state.runtime.board.get(&name);
    Ok(render(
        &session,
        "invariant.html",
        context! {
            nav => "overview",
            inv => context! {
                name => name,
                description => inv.description.clone(),
                owner => inv.owner.clone(),
                severity => inv.severity.to_string(),
                rule => inv.kind_name(),
                schedule => inv.schedule.as_ref().map(ToString::to_string),
                time_column => inv.time_column.as_ref().map(ToString::to_string),
                grace => inv.grace.map(|g| g.to_string()),
                replay => inv.replay.is_some(),
                definition => serde_json::to_string_pretty(&crate::http::api::definition(&inv)).unwrap_or_default(),
                defined_at => format!("{}:{}", inv.defined_at.0.display(), inv.defined_at.1),
            },
            state => state_name(board.as_ref()),
            runs => serde(&runs),
            violations => violations,
            bars => bars,
            bucket_secs => bucket,
            plans => serde(&plans),
        },
    ))
}

pub(super) async fn plans(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let store = state.runtime.store.as_ref();
    let now = Utc::now();
    let mut groups: BTreeMap<&'static str, Vec<plan::PlanView>> = BTreeMap::new();
    for p in store.plans(None, 200).await? {
        let inv = state.runtime.catalog.find(&p.invariant);
        let v = plan::view(store, p, inv.as_deref(), now).await?;
        groups.entry(v.status).or_default().push(v);
    }
    let order = [
        "applying",
        "paused",
        "stopped",
        "approved",
        "proposed",
        "stale",
        "applied",
        "rejected",
        "superseded",
        "cancelled",
    ];
    let queue: Vec<_> = order
        .iter()
        .filter_map(|s| {
            groups
                .get(s)
                .map(|plans| context! { status => *s, plans => serde(plans) })
        })
        .collect();
    Ok(render(
        &session,
        "plans.html",
        context! { nav => "plans", queue => queue },
    ))
}

async fn plan_page(
    state: &HttpState,
    session: &Session,
    id: PlanId,
    dry_run: Option<crate::plan::apply::ApplyReport>,
    watch: bool,
) -> PageResult {
    let store = state.runtime.store.as_ref();
    let record = plan::load(store, id).await?;
    let inv = state.runtime.catalog.find(&record.invariant);
    let view = plan::view(store, record, inv.as_deref(), Utc::now()).await?;
    let actions = store.plan_actions(id, None, 200).await?;
    let me = &session.caller.name;
    let approved_by_me = view.approvers.iter().any(|a| a == me);
    // Why the approve control is disabled for this approver, if it is.
    let approve_blocked = if let Some(why) = &view.stale {
        Some(format!("It cannot be approved: {why}."))
    } else if view.plan.state != PlanState::Proposed {
        Some(format!(
            "It is {}; only a proposed plan is approved.",
            view.plan.state.as_str()
        ))
    } else if approved_by_me {
        Some("You approved this content already; another approver must add theirs.".to_owned())
    } else {
        None
    };
    // Why the apply controls are disabled, if they are.
    let apply_blocked = {
        use PlanState::*;
        match view.plan.state {
            _ if view.stale.is_some() && view.plan.state != Applied => Some(format!(
                "It cannot be applied: {}.",
                view.stale.as_deref().unwrap_or("")
            )),
            Applied => Some("It has been applied.".to_owned()),
            Rejected | Superseded | Cancelled => {
                Some(format!("It is {}.", view.plan.state.as_str()))
            }
            Applying => Some("It is being applied.".to_owned()),
            Paused => Some("It is paused; resume it to go on.".to_owned()),
            Proposed if !view.approved => Some(format!(
                "It needs {} approval(s) before it is applied; a dry run shows what would happen.",
                view.plan.approvals_required
            )),
            Proposed | Stopped => None,
        }
    };
    // A dry run is for a plan that can still be applied.
    let can_dry_run =
        matches!(view.plan.state, PlanState::Proposed | PlanState::Stopped) && view.stale.is_none();
    // Applied, and the re-check of what was applied (a replay's window) still running.
    let verifying = view.plan.state == PlanState::Applied && view.plan.verification.is_none();
    let applying = view.plan.state == PlanState::Applying;
    let actions: Vec<_> = actions.iter().map(action_view).collect();
    Ok(render(
        session,
        "plan.html",
        context! {
            nav => "plans",
            p => serde(&view),
            total => view.plan.action_count,
            done => plan::apply::finished(&view.progress),
            actions => actions,
            approve_blocked => approve_blocked,
            apply_blocked => apply_blocked,
            default_rate => Rate::default_for(view.plan.kind).to_string(),
            can_dry_run => can_dry_run,
            dry_run => serde(&dry_run),
            applying => applying,
            // Just asked to apply: the page follows the progress even before the apply has
            // moved the plan to `applying`.
            watch => applying || (watch && view.plan.state == PlanState::Proposed) || verifying,
            verifying => verifying,
        },
    ))
}

fn action_view(a: &ActionRecord) -> minijinja::Value {
    let params: Vec<(String, String)> = a
        .spec
        .sql_bindings()
        .into_iter()
        .map(|(label, v)| (label, json_text(v)))
        .collect();
    context! {
        a => serde(a),
        params => params,
        marker => diff_marker(&a.violation_kind),
        evidence => serde(&evidence_view(&a.evidence)),
    }
}

#[derive(Deserialize)]
pub(super) struct PlanQuery {
    #[serde(default)]
    watch: bool,
}

pub(super) async fn plan(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
    Query(q): Query<PlanQuery>,
) -> PageResult {
    plan_page(&state, &session, id, None, q.watch).await
}

/// Live progress for the plan page's script.
pub(super) async fn plan_progress(
    State(state): State<HttpState>,
    Path(id): Path<PlanId>,
) -> PageResult {
    let store = state.runtime.store.as_ref();
    let record = plan::load(store, id).await?;
    let progress = store.action_progress(id).await?;
    Ok(Json(serde_json::json!({
        "state": record.state,
        "total": record.action_count,
        "done": plan::apply::finished(&progress),
        "progress": progress,
        // The re-check after an apply has been recorded.
        "verified": record.verification.is_some(),
    }))
    .into_response())
}

#[derive(Deserialize)]
pub(super) struct ApproveForm {
    content_hash: String,
}

pub(super) async fn approve(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
    Form(form): Form<ApproveForm>,
) -> PageResult {
    let store = state.runtime.store.as_ref();
    let record = plan::load(store, id).await?;
    let seen = crate::http::plans_api::reviewed_hash(id, &form.content_hash)?;
    let inv = state.runtime.catalog.find(&record.invariant);
    plan::approve(
        store,
        id,
        inv.as_deref(),
        &session.caller.actor(),
        Some(&seen),
        Utc::now(),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/plans/{id}")).into_response())
}

#[derive(Deserialize)]
pub(super) struct RejectForm {
    reason: String,
}

pub(super) async fn reject(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
    Form(form): Form<RejectForm>,
) -> PageResult {
    plan::reject(
        state.runtime.store.as_ref(),
        id,
        &session.caller.actor(),
        &form.reason,
        Utc::now(),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/plans/{id}")).into_response())
}

#[derive(Deserialize)]
pub(super) struct ApplyForm {
    /// `dry_run` or `live`.
    mode: String,
    /// e.g. `5/s` or `unlimited` (default: the plan kind's).
    rate: Option<String>,
}

pub(super) async fn apply(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(id): Path<PlanId>,
    Form(form): Form<ApplyForm>,
) -> PageResult {
    let record = plan::load(state.runtime.store.as_ref(), id).await?;
    let opts = crate::plan::apply::ApplyOptions {
        dry_run: form.mode != "live",
        rate: form_rate(form.rate.as_deref(), Rate::default_for(record.kind))?,
        ..crate::plan::apply::ApplyOptions::default()
    };
    match crate::runtime::request_apply(&state.runtime, &session.caller.actor(), &record, opts)
        .await?
    {
        Some(report) => plan_page(&state, &session, id, Some(report), false).await,
        None => Ok(Redirect::to(&format!("/ui/plans/{id}?watch=true")).into_response()),
    }
}

/// A rate from a form (`5/s`, `unlimited`); empty is `default`.
fn form_rate(raw: Option<&str>, default: Rate) -> Result<Rate, Refusal> {
    match raw.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(default),
        Some(r) => Rate::parse(r).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, &e)),
    }
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    target: Option<String>,
    actor: Option<String>,
    after: Option<i64>,
}

pub(super) async fn audit(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let target = q.target.as_deref().filter(|t| !t.trim().is_empty());
    let entries = state
        .runtime
        .store
        .audit_log(target.map(str::trim), q.after, 200)
        .await?;
    let actor = q.actor.as_deref().map(str::trim).filter(|a| !a.is_empty());
    let next_after = (entries.len() == 200)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let entries: Vec<_> = entries
        .into_iter()
        .filter(|e| actor.is_none_or(|a| e.actor == a))
        .collect();
    Ok(render(
        &session,
        "audit.html",
        context! {
            nav => "audit",
            entries => serde(&entries),
            target => target.unwrap_or(""),
            actor => actor.unwrap_or(""),
            next_after => next_after,
        },
    ))
}

#[derive(Deserialize)]
pub(super) struct ReplayQuery {
    invariant: String,
    from: Option<String>,
    to: Option<String>,
    rate: Option<String>,
}

/// A time from a form: RFC 3339; empty is absent.
fn form_time(field: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, Refusal> {
    match raw.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(r) => r.parse::<DateTime<Utc>>().map(Some).map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                &format!("{field} `{r}` is not an RFC 3339 time (like 2026-11-25T01:00:00Z): {e}"),
            )
        }),
    }
}

/// An invariant's replay window as a form gives it: checked against its replay settings.
fn replay_window<'a>(
    inv: &'a Invariant,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(&'a crate::domain::ReplaySpec, crate::plan::replay::Window), Refusal> {
    let (from, to) = (form_time("from", from)?, form_time("to", to)?);
    crate::plan::replay::check_window(inv, from, to, false, None)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, &e))
}

/// The replay dry run for a window: what would be delivered, skipped, left out; and the form
/// that submits the replay for approval.
pub(super) async fn replay(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Query(q): Query<ReplayQuery>,
) -> PageResult {
    let inv = find(&state, &q.invariant)?;
    let (spec, window) = replay_window(&inv, q.from.as_deref(), q.to.as_deref())?;
    let rate = form_rate(q.rate.as_deref(), Rate::DEFAULT_REPLAY)?;
    let who = session.caller.actor();
    let env = crate::plan::apply::ApplyEnv {
        store: state.runtime.store.as_ref(),
        sources: &state.runtime.sources,
        targets: &state.runtime.targets,
        invariant: Some(&inv),
        actor: &who,
        worker: "console-dry-run".into(),
    };
    let dry =
        crate::plan::replay::dry_run(&env, &state.runtime.config, &inv, spec, window, rate, 5)
            .await?;
    Ok(render(
        &session,
        "replay.html",
        context! {
            nav => "overview",
            invariant => inv.name.as_str(),
            partition => spec.partition.as_ref().map(ToString::to_string),
            max_window => spec.max_window.to_string(),
            from => window.from.to_rfc3339(),
            to => window.to.to_rfc3339(),
            rate => rate.to_string(),
            dry => serde(&dry),
        },
    ))
}

#[derive(Deserialize)]
pub(super) struct ReplayForm {
    invariant: String,
    from: String,
    to: String,
}

/// Proposes the replay of a window as a plan, for approval.
pub(super) async fn propose_replay(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Form(form): Form<ReplayForm>,
) -> PageResult {
    let inv = find(&state, &form.invariant)?;
    let (spec, window) = replay_window(&inv, Some(&form.from), Some(&form.to))?;
    let proposal = crate::plan::replay::propose(
        state.runtime.store.as_ref(),
        &state.runtime.config,
        &inv,
        spec,
        window,
        None,
        &session.caller.actor(),
        Utc::now(),
    )
    .await?;
    match proposal {
        plan::Proposal::Created { plan: id, .. } => {
            Ok(Redirect::to(&format!("/ui/plans/{id}")).into_response())
        }
        _ => Err(Refusal::new(
            StatusCode::CONFLICT,
            "nothing to replay: no open `missing` violation has its event in this window",
        )),
    }
}

pub(super) async fn incidents(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let list = state.runtime.store.incidents(200).await?;
    Ok(render(
        &session,
        "incidents.html",
        context! {
            nav => "incidents",
            incidents => serde(&list),
            invariants => state.runtime.catalog.snapshot().iter().map(|i| i.name.to_string()).collect::<Vec<_>>(),
        },
    ))
}

#[derive(Deserialize)]
pub(super) struct OpenIncidentForm {
    name: String,
    from: String,
    to: Option<String>,
    summary: Option<String>,
    /// One invariant, or empty: every invariant with violations in the window.
    invariant: Option<String>,
}

/// A form field's text, trimmed; empty is absent.
fn filled(raw: Option<&str>) -> Option<&str> {
    raw.map(str::trim).filter(|s| !s.is_empty())
}

pub(super) async fn open_incident(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Form(form): Form<OpenIncidentForm>,
) -> PageResult {
    let from = form_time("from", Some(&form.from))?
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "say when it started (from)"))?;
    let to = form_time("to", form.to.as_deref())?;
    let invariants: Vec<String> = filled(form.invariant.as_deref())
        .map(str::to_owned)
        .into_iter()
        .collect();
    let opened = crate::incident::open(
        state.runtime.store.as_ref(),
        &state.runtime.catalog.snapshot(),
        form.name.trim(),
        from,
        to,
        &invariants,
        filled(form.summary.as_deref()),
        &session.caller.actor(),
        Utc::now(),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/incidents/{}", opened.name)).into_response())
}

async fn incident_page(
    state: &HttpState,
    session: &Session,
    name: &str,
    status: StatusCode,
    refusal: Option<Vec<crate::incident::Blocker>>,
) -> PageResult {
    // The report holds the incident and its timeline: one read of the store for the page.
    let report = crate::incident::report(
        state.runtime.store.as_ref(),
        &state.runtime.catalog.snapshot(),
        name,
    )
    .await?;
    let page = render(
        session,
        "incident.html",
        context! {
            nav => "incidents",
            i => serde(&report.incident),
            report => serde(&report),
            phases => crate::domain::Phase::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            refusal => serde(&refusal),
        },
    );
    Ok((status, page).into_response())
}

pub(super) async fn incident(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> PageResult {
    incident_page(&state, &session, &name, StatusCode::OK, None).await
}

/// Back to the incident's page after a change.
fn to_incident(name: &str) -> PageResult {
    Ok(Redirect::to(&format!("/ui/incidents/{name}")).into_response())
}

#[derive(Deserialize)]
pub(super) struct PhaseForm {
    phase: String,
    note: Option<String>,
}

pub(super) async fn incident_phase(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<PhaseForm>,
) -> PageResult {
    crate::incident::mark_phase(
        state.runtime.store.as_ref(),
        &name,
        &form.phase,
        filled(form.note.as_deref()),
        &session.caller.actor(),
        Utc::now(),
    )
    .await?;
    to_incident(&name)
}

#[derive(Deserialize)]
pub(super) struct NoteForm {
    text: String,
}

pub(super) async fn incident_note(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<NoteForm>,
) -> PageResult {
    crate::incident::add_note(
        state.runtime.store.as_ref(),
        &name,
        &form.text,
        &session.caller.actor(),
        Utc::now(),
    )
    .await?;
    to_incident(&name)
}

/// Evaluates what the incident's verification needs, as the API's verify does, then shows the
/// incident again.
pub(super) async fn incident_verify(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> PageResult {
    let to = format!("/ui/incidents/{name}#verdict");
    // To the end even if the browser goes away.
    tokio::spawn(async move {
        crate::runtime::run_verification(
            &state.runtime,
            &session.caller.actor(),
            &name,
            crate::incident::DEFAULT_FRESH_WITHIN,
        )
        .await
        .map_err(crate::http::error::ApiError::from)
    })
    .await
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))??;
    Ok(Redirect::to(&to).into_response())
}

#[derive(Deserialize)]
pub(super) struct CloseForm {
    override_reason: Option<String>,
}

pub(super) async fn incident_close(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<CloseForm>,
) -> PageResult {
    let closed = crate::incident::close(
        state.runtime.store.as_ref(),
        &state.runtime.catalog.snapshot(),
        &name,
        filled(form.override_reason.as_deref()),
        &session.caller.actor(),
        Utc::now(),
    )
    .await;
    match closed {
        Ok(_) => to_incident(&name),
        Err(crate::incident::IncidentError::Blocked { blockers, .. }) => {
            incident_page(
                &state,
                &session,
                &name,
                StatusCode::CONFLICT,
                Some(blockers),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct ReportQuery {
    format: Option<String>,
    #[serde(default)]
    download: bool,
}

/// The closure report: the HTML one as a page of its own, the others as files to download.
pub(super) async fn incident_report(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    Query(q): Query<ReportQuery>,
) -> PageResult {
    let format = report_format(q.format.as_deref(), crate::incident::ReportFormat::Html)?;
    let download = q.download || format != crate::incident::ReportFormat::Html;
    Ok(report_response(&state, &name, format, download).await?)
}

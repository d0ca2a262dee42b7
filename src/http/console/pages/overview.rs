//! The overview (every invariant, its state and recent runs) and one invariant with its violations.

use std::collections::BTreeMap;

use axum::extract::{Extension, Path, Query, State};
use chrono::{DateTime, TimeDelta, Utc};
use minijinja::context;
use serde::{Deserialize, Serialize};

use crate::domain::RunStatus;
use crate::http::HttpState;
use crate::store::{StatusFilter, ViolationFilter};

use super::super::session::Session;
use super::super::{PageResult, Refusal, render, serde};
use super::*;

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
        .map(|r| (r.started_at, r.change.open_after()))
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

/// An invariant's consistency objective as the overview shows it.
#[derive(Serialize)]
struct SloView {
    /// "42% left", "none left (310% used)".
    left: String,
    /// ok, low (under a quarter left) or spent.
    level: &'static str,
    objective: String,
    max_open: String,
    window: String,
    /// "SLI 99.95% over 30 days: 12 min in breach of 43 min 12 s allowed".
    detail: String,
    breaching: bool,
    /// Time after failed runs, when nothing confirmed the state ("2 h"); None when none.
    unverified: Option<String>,
}

fn slo_view(status: &crate::slo::SloStatus) -> SloView {
    use crate::slo::{budget_left_words, percent, span_words};
    let left = status.budget_left();
    let m = &status.measure;
    let o = &status.objective;
    SloView {
        left: budget_left_words(m.budget_used(o)),
        level: if left <= 0.0 {
            "spent"
        } else if left < 0.25 {
            "low"
        } else {
            "ok"
        },
        objective: o.target.to_string(),
        max_open: o.max_open.to_string(),
        window: o.window_words(),
        detail: format!(
            "{}: {} in breach of {} allowed{}",
            match m.sli() {
                Some(sli) => format!("SLI {} over {}", percent(sli), o.window_words()),
                None => "no completed run yet".to_owned(),
            },
            span_words(m.breach),
            span_words(o.allowed_breach()),
            if m.measured < o.window.as_chrono() && m.sli().is_some() {
                format!(" (measured for {})", span_words(m.measured))
            } else {
                String::new()
            }
        ),
        breaching: m.breaching,
        unverified: (m.unverified > TimeDelta::zero()).then(|| span_words(m.unverified)),
    }
}

#[derive(Deserialize)]
pub(in crate::http::console) struct OverviewQuery {
    q: Option<String>,
    severity: Option<String>,
    state: Option<String>,
}

pub(in crate::http::console) async fn overview(
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
        let slo = crate::slo::status(store, inv, now).await?;
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
            slo => serde(&slo.as_ref().map(slo_view)),
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

/// The range an invariant's page draws its chart over, as `?from=…&to=…` gives it.
#[derive(Deserialize)]
pub(in crate::http::console) struct ChartRange {
    from: Option<String>,
    to: Option<String>,
}

/// How far back resolved violations are drawn when no range is asked for.
const RESOLVED_LOOKBACK_DAYS: i64 = 7;

pub(in crate::http::console) async fn invariant(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Query(range): Query<ChartRange>,
) -> PageResult {
    let inv = find(&state, &name)?;
    let view = match (
        form_time("from", range.from.as_deref())?,
        form_time("to", range.to.as_deref())?,
    ) {
        (Some(from), Some(to)) => Some((from, to)),
        (None, None) => None,
        _ => {
            return Err(Refusal::new(
                axum::http::StatusCode::BAD_REQUEST,
                "the chart's range needs both from and to (RFC 3339 times), or neither to fit the violations",
            ));
        }
    };
    let store = state.runtime.store.as_ref();
    let active = ViolationFilter {
        invariants: vec![name.clone()],
        status: StatusFilter::Active,
        limit: 200,
        ..ViolationFilter::default()
    };
    // Resolved ones: those in the range asked for, or those seen in the last days — so a
    // window that was repaired stays on the chart, drawn as resolved.
    let resolved = ViolationFilter {
        status: StatusFilter::Only(crate::domain::ViolationStatus::Resolved),
        since: view
            .is_none()
            .then(|| Utc::now() - TimeDelta::days(RESOLVED_LOOKBACK_DAYS)),
        event_from: view.map(|v| v.0),
        event_until: view.map(|v| v.1),
        ..active.clone()
    };
    let (runs, violations, times, resolved_times, plans, groups) = tokio::try_join!(
        store.runs(Some(&name), 50),
        store.violations(&active),
        store.event_times(&active),
        store.event_times(&resolved),
        store.plans(Some(&name), 20),
        store.violation_groups(&active),
    )?;
    // All of them, though only the first page is listed.
    let open_total: u64 = groups.iter().map(|g| g.count).sum();
    let chart = crate::http::console::chart::chart(&crate::http::console::chart::ChartInput {
        open: &times,
        resolved: &resolved_times,
        range: view,
        max_window: inv.replay.as_ref().map(|r| r.max_window.as_chrono()),
    })
    .map_err(|e| {
        Refusal::new(
            axum::http::StatusCode::BAD_REQUEST,
            &format!(
                "{e}: choose a narrower range, or open the page without one to fit the violations"
            ),
        )
    })?;
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
    let now = Utc::now();
    let labels = crate::domain::AlertLabels::of(&inv);
    let silenced: Vec<crate::http::silences_api::SilenceView> = state
        .runtime
        .store
        .silences(now, false, 500)
        .await?
        .iter()
        .filter(|s| s.matches(&labels))
        .map(|s| crate::http::silences_api::SilenceView::of(s, now, std::slice::from_ref(&*inv)))
        .collect();
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
                labels => inv.labels.clone(),
                runbook_url => inv.runbook_url.as_ref().map(ToString::to_string),
            },
            silenced => serde(&silenced),
            state => state_name(board.as_ref()),
            runs => serde(&runs),
            violations => violations,
            open_total => open_total,
            chart => serde(&chart),
            view => view.is_some(),
            resolved_lookback_days => RESOLVED_LOOKBACK_DAYS,
            max_window => inv.replay.as_ref().map(|r| r.max_window.to_string()),
            plans => serde(&plans),
        },
    ))
}

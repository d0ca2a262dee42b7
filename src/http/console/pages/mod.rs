//! The console's pages and form actions.

mod incidents;
mod overview;
mod plans;
mod replay;
mod sign_in;
pub(in crate::http::console) mod silences;
pub(in crate::http::console) mod trace;

pub(in crate::http::console) use incidents::*;
pub(in crate::http::console) use overview::*;
pub(in crate::http::console) use plans::*;
pub(in crate::http::console) use replay::*;
pub(in crate::http::console) use sign_in::*;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{AlertState, Invariant, json_text};
use crate::http::HttpState;
use crate::plan::apply::Rate;
use crate::runtime::board::{Health, InvariantState};

use super::Refusal;

/// Only a path inside the console: never a redirect to another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains("\\") => {
            n.to_owned()
        }
        _ => "/ui/".to_owned(),
    }
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

fn find(state: &HttpState, name: &str) -> Result<std::sync::Arc<Invariant>, Refusal> {
    state.runtime.catalog.find(name).ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            &format!("no invariant named `{name}`"),
        )
    })
}

/// A rate from a form (`5/s`, `unlimited`); empty is `default`.
fn form_rate(raw: Option<&str>, default: Rate) -> Result<Rate, Refusal> {
    match raw.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(default),
        Some(r) => {
            Rate::parse(r).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, &e.to_string()))
        }
    }
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

/// A form field's text, trimmed; empty is absent.
fn filled(raw: Option<&str>) -> Option<&str> {
    raw.map(str::trim).filter(|s| !s.is_empty())
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

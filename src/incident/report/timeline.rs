//! The timeline's wording: runs, audit entries and the closure as lines a person reads.

use std::collections::BTreeMap;

use crate::domain::{PlanKind, RunStatus};
use crate::store::{AuditEntry, RunRecord};

use super::*;

/// A run as a timeline entry. A run still running has no outcome yet: in a closed incident's
/// report (frozen at the close) it says so for good, not "running".
pub(super) fn run_entry(run: &RunRecord, closed: bool) -> TimelineEntry {
    let text = match run.status {
        RunStatus::Succeeded => format!(
            "run {}: {} new, {} reopened, {} resolved, {} still open",
            run.id, run.change.new, run.change.reopened, run.change.resolved, run.change.still_open
        ),
        RunStatus::Running if closed => format!(
            "run {} was still running when the incident closed: its outcome is not part of this report",
            run.id
        ),
        RunStatus::Running => format!("run {} is running: its outcome is not known yet", run.id),
        s => format!(
            "run {} {}: {}",
            run.id,
            s.as_str(),
            run.error.as_deref().unwrap_or("no error recorded")
        ),
    };
    TimelineEntry {
        at: run.started_at,
        kind: EntryKind::Run,
        actor: "trueup".into(),
        invariant: Some(run.invariant.clone()),
        plan: None,
        run: Some(run.id),
        text,
    }
}

/// An audit entry as a timeline entry; `None` for entries a reader does not need.
pub(super) fn audit_entry(
    e: &AuditEntry,
    plans: &BTreeMap<i64, (PlanKind, String)>,
) -> Option<TimelineEntry> {
    let d = &e.details;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let mut entry = TimelineEntry {
        at: e.at,
        kind: EntryKind::Incident,
        actor: e.actor.clone(),
        invariant: None,
        plan: None,
        run: None,
        text: String::new(),
    };
    if let Some(name) = e.target.strip_prefix("invariant:") {
        let to = e.action.strip_prefix("alert.")?;
        entry.kind = EntryKind::Alert;
        entry.invariant = Some(name.to_owned());
        entry.text = format!("alert {} → {}", s("from").unwrap_or_else(|| "?".into()), to);
        return Some(entry);
    }
    if let Some(id) = e.target.strip_prefix("plan:") {
        let id: i64 = id.parse().ok()?;
        let (kind, invariant) = plans.get(&id)?;
        entry.kind = if *kind == PlanKind::Replay {
            EntryKind::Replay
        } else {
            EntryKind::Plan
        };
        entry.plan = Some(id);
        entry.invariant = Some(invariant.clone());
        let what = format!("{} plan {id}", kind.as_str());
        entry.text = match e.action.as_str() {
            "plan.propose" => format!(
                "{what} proposed: {} action(s)",
                d.get("actions").and_then(|v| v.as_u64()).unwrap_or(0)
            ),
            "plan.approve" => format!("{what} approved"),
            "plan.reject" => format!("{what} rejected"),
            "plan.supersede" => format!(
                "{what} superseded by plan {}",
                d.get("superseded_by").and_then(|v| v.as_i64()).unwrap_or(0)
            ),
            "plan.apply.requested" => {
                if d.get("dry_run").and_then(|v| v.as_bool()) == Some(true) {
                    format!("{what}: dry run")
                } else {
                    format!(
                        "{what}: apply requested at {}",
                        s("rate").unwrap_or_else(|| "the default rate".into())
                    )
                }
            }
            "plan.apply.start" => format!("{what}: apply started"),
            "plan.apply.finish" => format!("{what} applied"),
            "plan.apply.stop" => format!("{what}: apply stopped"),
            "plan.pause" => format!("{what} paused"),
            "plan.resume" => format!("{what} resumed"),
            "plan.cancel" => format!("{what} cancelled"),
            "plan.verify" if d.get("failed").and_then(|f| f.as_str()).is_some() => format!(
                "{what} applied; re-check failed: {}",
                d["failed"].as_str().unwrap_or_default()
            ),
            "plan.verify" => {
                let n = |k: &str| d.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                let mut text = format!(
                    "{what} verified: {} re-checked, {} closed, {} still open",
                    n("checked"),
                    n("closed"),
                    n("still_open")
                );
                if let Some(r) = d.get("remaining_in_window").and_then(|v| v.as_u64()) {
                    text.push_str(&format!(", {r} missing left in its window"));
                }
                text
            }
            other => format!("{what}: {other}"),
        };
        return Some(entry);
    }
    entry.text = match e.action.as_str() {
        "incident.open" => "incident opened".to_owned(),
        "incident.phase" => {
            entry.kind = EntryKind::Phase;
            let phase = s("phase").unwrap_or_default();
            match s("text") {
                Some(t) => format!("phase {phase}: {t}"),
                None => format!("phase {phase}"),
            }
        }
        "incident.note" => {
            entry.kind = EntryKind::Note;
            format!("note: {}", s("text").unwrap_or_default())
        }
        // The close is added from the closure itself (the report is frozen before the close
        // is written).
        _ => return None,
    };
    Some(entry)
}

pub(super) fn closing_text(c: &Closure) -> String {
    match &c.override_reason {
        Some(reason) => format!("incident closed with blockers overridden: {reason}"),
        None => "incident closed".to_owned(),
    }
}

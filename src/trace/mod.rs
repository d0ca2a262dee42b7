//! "What happened to event X?" — one timeline for one event or key: when each event log
//! captured it and how often it was delivered, every invariant that saw it and its
//! violation's life, every plan or replay action that touched it (idempotency key, attempts,
//! outcome), the verification after those plans, and the incidents whose window holds it.
//! The CLI (`trueup trace`), the API (`GET /api/v1/trace`) and the console page all show this
//! one [`Trace`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::{InvariantName, LogName};
use crate::store::{ActionRecord, Store, StoreError, ViolationRecord};

/// One event's or key's timeline.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Trace {
    /// The key as asked for.
    pub key: String,
    /// Only this invariant's part, when one was named.
    pub invariant: Option<String>,
    /// Oldest first.
    pub steps: Vec<Step>,
}

/// One thing that happened to the event or key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Step {
    pub at: DateTime<Utc>,
    pub kind: StepKind,
    /// The invariant it concerns, if any.
    pub invariant: Option<String>,
    /// One line a person reads.
    pub summary: String,
    /// The plan it concerns (actions, verification).
    pub plan: Option<i64>,
    /// The incident it concerns.
    pub incident: Option<String>,
    /// What the line stands on (an event's headers, a violation's evidence, an action's
    /// outcome).
    pub details: serde_json::Value,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// An event log stored it.
    Captured,
    /// An event log got it again (a duplicate, counted, not stored again).
    DeliveredAgain,
    /// An invariant found it violated.
    ViolationOpened,
    /// A plan (compensation or replay) acted on it.
    Action,
    /// What became of the logged event, as an invariant reading its log found it last
    /// (processed, missing, mismatched, replayed).
    Outcome,
    /// A plan's apply re-checked what it did.
    Verified,
    /// A plan's apply could not re-check what it did (the plan is applied all the same).
    RecheckFailed,
    /// The invariant no longer found it violated.
    ViolationResolved,
    /// An incident's window holds it.
    Incident,
}

impl StepKind {
    pub fn label(self) -> &'static str {
        match self {
            StepKind::Captured => "captured",
            StepKind::DeliveredAgain => "delivered again",
            StepKind::ViolationOpened => "violation",
            StepKind::Action => "action",
            StepKind::Outcome => "outcome",
            StepKind::Verified => "verified",
            StepKind::RecheckFailed => "re-check failed",
            StepKind::ViolationResolved => "resolved",
            StepKind::Incident => "incident",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("no invariant is named `{0}`")]
    UnknownInvariant(String),
    #[error("give the key to trace (an event id, or a key value)")]
    EmptyKey,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The keys a violation could have been stored under for `key` as typed: the text; the
/// integer, number or boolean it reads as; and a JSON array as it is (a key of several
/// columns).
pub fn key_forms(key: &str) -> Vec<serde_json::Value> {
    let mut forms = vec![serde_json::json!([key])];
    let trimmed = key.trim();
    if let Ok(n) = trimmed.parse::<i64>() {
        forms.push(serde_json::json!([n]));
    } else if let Ok(x) = trimmed.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(x)
    {
        forms.push(serde_json::json!([n]));
    }
    if let Ok(b) = trimmed.parse::<bool>() {
        forms.push(serde_json::json!([b]));
    }
    if trimmed.starts_with('[')
        && let Ok(v @ serde_json::Value::Array(_)) = serde_json::from_str(trimmed)
    {
        forms.push(v);
    }
    forms
}

/// Builds the timeline of `key` over `invariants` (or the one named) and `logs`.
pub async fn trace(
    store: &dyn Store,
    invariants: &[InvariantName],
    logs: &[LogName],
    key: &str,
    only: Option<&str>,
) -> Result<Trace, TraceError> {
    if key.trim().is_empty() {
        return Err(TraceError::EmptyKey);
    }
    let invariants: Vec<&InvariantName> = match only {
        Some(name) => vec![
            invariants
                .iter()
                .find(|i| i.as_str() == name)
                .ok_or_else(|| TraceError::UnknownInvariant(name.to_owned()))?,
        ],
        None => invariants.iter().collect(),
    };
    let mut steps = Vec::new();
    // An event id is looked up in every log as typed.
    for log in logs {
        captured(store, log, key, only, &mut steps).await?;
    }
    // By key, whatever the violation's kind or discriminator (a transition's carries its
    // states and time); their actions by the fingerprints found.
    let names: Vec<String> = invariants.iter().map(|i| i.to_string()).collect();
    let violations = store.violations_by_key(&names, &key_forms(key)).await?;
    for v in &violations {
        violation_steps(v, &mut steps);
    }
    let fingerprints: Vec<String> = violations.iter().map(|v| v.fingerprint.clone()).collect();
    let actions = store.actions_by_fingerprint(&fingerprints).await?;
    let mut plans = BTreeMap::new();
    for a in &actions {
        if let std::collections::btree_map::Entry::Vacant(e) = plans.entry(a.plan_id)
            && let Some(plan) = store.plan(a.plan_id).await?
        {
            e.insert(plan);
        }
    }
    for a in &actions {
        let plan = plans.get(&a.plan_id);
        steps.push(action_step(a, plan));
    }
    for plan in plans.values() {
        let Some(v) = &plan.verification else {
            continue;
        };
        let Some(at) = v
            .get("at")
            .and_then(|a| serde_json::from_value::<DateTime<Utc>>(a.clone()).ok())
        else {
            continue;
        };
        if let Some(why) = v.get("failed").and_then(serde_json::Value::as_str) {
            steps.push(Step {
                at,
                kind: StepKind::RecheckFailed,
                invariant: Some(plan.invariant.clone()),
                summary: format!(
                    "{} plan {} applied; re-check failed: {why}",
                    plan.kind.as_str(),
                    plan.id
                ),
                plan: Some(plan.id),
                incident: None,
                details: v.clone(),
            });
            continue;
        }
        let n = |f: &str| v.get(f).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let mut summary = format!(
            "{} plan {} verified: {} of {} re-checked no longer hold",
            plan.kind.as_str(),
            plan.id,
            n("closed"),
            n("checked")
        );
        if let Some(left) = v
            .get("remaining_in_window")
            .and_then(serde_json::Value::as_u64)
        {
            summary.push_str(&format!("; {left} missing left in its window"));
        }
        steps.push(Step {
            at,
            kind: StepKind::Verified,
            invariant: Some(plan.invariant.clone()),
            summary,
            plan: Some(plan.id),
            incident: None,
            details: v.clone(),
        });
    }
    // Incidents whose window holds a violation of this key, for its invariant.
    if !violations.is_empty() {
        for incident in store.incidents(10_000).await? {
            let holds = violations.iter().any(|v| {
                incident.invariants.iter().any(|i| i == &v.invariant)
                    && incident
                        .window()
                        .contains(v.event_at.unwrap_or(v.first_seen))
            });
            if holds {
                steps.push(Step {
                    at: incident.opened_at,
                    kind: StepKind::Incident,
                    invariant: None,
                    summary: format!(
                        "incident `{}` ({}) holds it in its window",
                        incident.name,
                        match incident.state {
                            crate::domain::IncidentState::Open => "open",
                            crate::domain::IncidentState::Closed => "closed",
                        }
                    ),
                    plan: None,
                    incident: Some(incident.name.clone()),
                    details: serde_json::json!({
                        "window_from": incident.window_from,
                        "window_to": incident.window_to,
                        "invariants": incident.invariants,
                    }),
                });
            }
        }
    }
    steps.sort_by(|a, b| a.at.cmp(&b.at).then(a.kind.cmp(&b.kind)));
    Ok(Trace {
        key: key.to_owned(),
        invariant: only.map(str::to_owned),
        steps,
    })
}

async fn captured(
    store: &dyn Store,
    log: &LogName,
    event_id: &str,
    only: Option<&str>,
    steps: &mut Vec<Step>,
) -> Result<(), StoreError> {
    let Some(event) = store.logged_event(log.as_str(), event_id).await? else {
        return Ok(());
    };
    let times = if event.deliveries == 1 {
        "once".to_owned()
    } else {
        format!("{} times", event.deliveries)
    };
    steps.push(Step {
        at: event.ingested_at,
        kind: StepKind::Captured,
        invariant: None,
        summary: format!(
            "captured into log `{log}` from {} (delivered {times})",
            event.source
        ),
        plan: None,
        incident: None,
        details: serde_json::json!({
            "log": log.as_str(),
            "source": event.source,
            "position": event.position,
            "event_at": event.event_at,
            "deliveries": event.deliveries,
            "headers": event.headers,
        }),
    });
    for o in store.event_outcomes(log.as_str(), event_id).await? {
        if only.is_some_and(|name| name != o.invariant) {
            continue;
        }
        steps.push(outcome_step(log, o));
    }
    for again in store.log_redeliveries(log.as_str(), event_id).await? {
        steps.push(Step {
            at: again.delivered_at,
            kind: StepKind::DeliveredAgain,
            invariant: None,
            summary: format!(
                "delivered again to log `{log}` from {} (a duplicate, counted, not stored again)",
                again.source
            ),
            plan: None,
            incident: None,
            details: serde_json::json!({"log": log.as_str(), "source": again.source, "position": again.position}),
        });
    }
    Ok(())
}

fn outcome_step(log: &LogName, o: crate::store::OutcomeRecord) -> Step {
    use crate::domain::EventOutcome;
    let target = o
        .target_record_id
        .as_deref()
        .map(|t| format!(" as `{t}`"))
        .unwrap_or_default();
    let by = match (o.run_id, o.plan_id, o.action_seq) {
        (_, Some(plan), Some(seq)) => format!("plan {plan} action {seq}"),
        (Some(run), _, _) => format!("run {run}"),
        _ => "?".into(),
    };
    let summary = match o.outcome {
        EventOutcome::Processed => {
            format!(
                "log `{log}`: processed downstream{target} (`{}`, {by})",
                o.invariant
            )
        }
        EventOutcome::Missing => {
            format!("log `{log}`: missing downstream (`{}`, {by})", o.invariant)
        }
        EventOutcome::Mismatched => {
            format!(
                "log `{log}`: mismatched downstream{target} (`{}`, {by})",
                o.invariant
            )
        }
        EventOutcome::Replayed => {
            format!("log `{log}`: replayed{target} by {by} (`{}`)", o.invariant)
        }
    };
    Step {
        at: o.processed_at,
        kind: StepKind::Outcome,
        invariant: Some(o.invariant.clone()),
        summary,
        plan: o.plan_id,
        incident: None,
        details: serde_json::json!({
            "log": log.as_str(),
            "outcome": o.outcome,
            "target_record_id": o.target_record_id,
            "run_id": o.run_id,
            "plan_id": o.plan_id,
            "action_seq": o.action_seq,
        }),
    }
}

/// What an invariant finds of a key, by the violation's kind: "it missing", "a state change
/// not allowed".
fn finding(kind: &str) -> String {
    match kind {
        "missing" => "it missing".into(),
        "extra" => "it extra".into(),
        "duplicate" => "it duplicated".into(),
        "mismatch" => "it mismatched".into(),
        "check" => "it in its check".into(),
        "transition" => "a state change not allowed".into(),
        other => format!("it {other}"),
    }
}

fn violation_steps(v: &ViolationRecord, steps: &mut Vec<Step>) {
    let mut summary = format!(
        "`{}` found {} (run {})",
        v.invariant,
        finding(&v.kind),
        v.first_run_id
    );
    if v.times_reopened > 0 {
        summary.push_str(&format!(
            "; reopened {} time{} since",
            v.times_reopened,
            if v.times_reopened == 1 { "" } else { "s" }
        ));
    }
    steps.push(Step {
        at: v.first_seen,
        kind: StepKind::ViolationOpened,
        invariant: Some(v.invariant.clone()),
        summary,
        plan: None,
        incident: None,
        details: serde_json::json!({
            "status": v.status.as_str(),
            "event_at": v.event_at,
            "last_seen": v.last_seen,
            "evidence": v.evidence,
        }),
    });
    if let Some(at) = v.resolved_at {
        steps.push(Step {
            at,
            kind: StepKind::ViolationResolved,
            invariant: Some(v.invariant.clone()),
            summary: format!(
                "`{}` no longer finds {}: resolved (last seen in run {})",
                v.invariant,
                finding(&v.kind),
                v.last_run_id
            ),
            plan: None,
            incident: None,
            details: serde_json::json!({"status": v.status.as_str()}),
        });
    }
}

fn action_step(a: &ActionRecord, plan: Option<&crate::store::PlanRecord>) -> Step {
    let kind = plan.map_or("", |p| p.kind.as_str());
    let target = a.spec.target().map_or_else(
        || "a step for a person".to_owned(),
        |t| format!("{} on target `{t}`", a.spec.type_name().to_uppercase()),
    );
    let said = a.outcome.as_ref().map(|o| {
        let mut parts = Vec::new();
        if let Some(s) = o.get("http_status") {
            parts.push(format!("HTTP {s}"));
        }
        if let Some(r) = o.get("rows_affected") {
            parts.push(format!("{r} row(s)"));
        }
        if let Some(d) = o.get("detail").and_then(serde_json::Value::as_str)
            && !d.is_empty()
        {
            parts.push(d.to_owned());
        }
        parts.join(", ")
    });
    let attempts = format!(
        "{} attempt{}",
        a.attempts,
        if a.attempts == 1 { "" } else { "s" }
    );
    let mut summary = format!(
        "{kind} plan {} action {}: {} after {attempts} ({target}; idempotency key {})",
        a.plan_id,
        a.seq,
        a.status.as_str(),
        a.idempotency_key
    );
    if let Some(said) = said.filter(|s| !s.is_empty()) {
        summary.push_str(&format!(": {said}"));
    }
    Step {
        at: a
            .finished_at
            .or(plan.map(|p| p.proposed_at))
            .unwrap_or_else(Utc::now),
        kind: StepKind::Action,
        invariant: plan.map(|p| p.invariant.clone()),
        summary,
        plan: Some(a.plan_id),
        incident: None,
        details: serde_json::json!({
            "status": a.status.as_str(),
            "attempts": a.attempts,
            "idempotency_key": a.idempotency_key,
            "partition": a.partition,
            "spec": a.spec,
            "outcome": a.outcome,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_looked_up_as_text_as_an_integer_when_it_reads_as_one_or_as_a_json_array() {
        use serde_json::json;
        assert_eq!(key_forms("evt-3"), [json!(["evt-3"])]);
        assert_eq!(key_forms("42"), [json!(["42"]), json!([42])]);
        assert_eq!(key_forms("2.5"), [json!(["2.5"]), json!([2.5])]);
        assert_eq!(key_forms("true"), [json!(["true"]), json!([true])]);
        assert_eq!(key_forms(" a "), [json!([" a "])]);
        assert_eq!(
            key_forms(r#"["a", 1]"#),
            [json!([r#"["a", 1]"#]), json!(["a", 1])]
        );
    }
}

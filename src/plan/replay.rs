//! Replaying lost events: the upstream events of `missing` violations whose event time falls
//! in an operator's window are re-delivered downstream, in event order per partition, as a
//! plan (approved like any other, applied by `apply` with partition leases).
//!
//! There is no "replay everything": a window is mandatory, and one wider than the invariant's
//! `max_window` needs an explicit flag and a reason, which the audit log keeps.

use chrono::{DateTime, Utc};

use super::apply::{ApplyEnv, Rate, Sample, applied_before};
use super::recheck::already_processed;
use super::{HashedAction, PlanError, Proposal, base_url_of, content_hash, idempotency_key};
use crate::config::Config;
use crate::domain::Actor;
use crate::domain::{Invariant, ReplaySpec, ViolationContext, ViolationKind};
use crate::domain::{PlanKind, PlanState};
use crate::store::{NewAction, NewPlan, StatusFilter, Store, ViolationFilter, ViolationRecord};

/// A replay window on the upstream events' own time: `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Why a replay window was refused, as data: each surface words it for its own user (the CLI
/// in flags, the console in form fields). Nothing was done in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The invariant cannot be replayed at all.
    #[error(
        "invariant `{invariant}` has no `replay:` block, so trueup does not know how to re-deliver its events; add one (see README, \"Replaying lost events\")"
    )]
    NotReplayable { invariant: String },
    /// One end of the window (or both) was not given: there is no "replay everything".
    #[error("a replay needs a window on the events' own time, both its start and its end")]
    Unbounded,
    /// The window ends before it starts.
    #[error("the window's start {from} is not before its end {to}", from = .from.to_rfc3339(), to = .to.to_rfc3339())]
    Reversed {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// Wider than the invariant's `replay.max_window`, without the explicit flag.
    #[error("the window is {width}, wider than `{invariant}`'s replay.max_window ({max_window})", width = humantime::format_duration(*.width))]
    TooWide {
        invariant: String,
        width: std::time::Duration,
        max_window: crate::domain::HumanDuration,
    },
    /// The explicit flag for a wide window came without a reason for the audit log.
    #[error("a window wider than replay.max_window needs a reason (recorded in the audit log)")]
    WideWithoutReason,
}

/// Checks a window against the invariant's replay settings. `wide` with a `reason` allows a
/// window beyond `max_window`.
pub fn check_window<'a>(
    invariant: &'a Invariant,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    wide: bool,
    reason: Option<&str>,
) -> Result<(&'a ReplaySpec, Window), WindowError> {
    let Some(spec) = &invariant.replay else {
        return Err(WindowError::NotReplayable {
            invariant: invariant.name.to_string(),
        });
    };
    let (Some(from), Some(to)) = (from, to) else {
        return Err(WindowError::Unbounded);
    };
    if from >= to {
        return Err(WindowError::Reversed { from, to });
    }
    let width = to - from;
    if width > spec.max_window.as_chrono() {
        if !wide {
            return Err(WindowError::TooWide {
                invariant: invariant.name.to_string(),
                width: width.to_std().unwrap_or_default(),
                max_window: spec.max_window,
            });
        }
        if reason.is_none_or(|r| r.trim().is_empty()) {
            return Err(WindowError::WideWithoutReason);
        }
    }
    Ok((spec, Window { from, to }))
}

/// The invariant's open `missing` violations with an event time in the window, in event order.
pub async fn candidates(
    store: &dyn Store,
    invariant: &Invariant,
    window: Window,
) -> Result<Vec<ViolationRecord>, PlanError> {
    let mut out = super::all_violations(
        store,
        ViolationFilter {
            invariants: vec![invariant.name.to_string()],
            status: StatusFilter::Active,
            kind: Some(ViolationKind::Missing),
            event_from: Some(window.from),
            event_until: Some(window.to),
            ..ViolationFilter::default()
        },
    )
    .await?;
    out.sort_by(|a, b| {
        (a.event_at, a.key.to_string(), a.id).cmp(&(b.event_at, b.key.to_string(), b.id))
    });
    Ok(out)
}

/// What a dry run found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DryRun {
    pub window: Option<Window>,
    pub would_replay: u64,
    pub would_skip_processed: u64,
    /// Missing events of the invariant outside the window (not replayed).
    pub outside_window: u64,
    /// Events in the window parked by an earlier replay that has not finished.
    pub parked: u64,
    pub samples: std::collections::BTreeMap<String, Vec<Sample>>,
    /// At the chosen rate, for the events that would be replayed.
    pub estimated_secs: Option<f64>,
    pub rate: String,
}

struct Rendered {
    actions: Vec<NewAction>,
}

fn render(
    config: &Config,
    invariant: &Invariant,
    spec: &ReplaySpec,
    violations: &[ViolationRecord],
) -> Result<Rendered, PlanError> {
    let name = invariant.name.as_str();
    let key_columns: Vec<&str> = invariant.key().iter().map(|c| c.as_str()).collect();
    let base_url = base_url_of(config);
    let mut actions = Vec::with_capacity(violations.len());
    let mut failures = Vec::new();
    for v in violations {
        let key_values = super::key_values(&v.key);
        let ctx = ViolationContext {
            invariant: name,
            kind: ViolationKind::Missing,
            fingerprint: &v.fingerprint,
            key: key_columns.iter().copied().zip(key_values.iter()).collect(),
            evidence: &v.evidence,
        };
        let rendered = spec.deliver.render(&ctx, &base_url).and_then(|delivery| {
            let key = match &spec.idempotency_key {
                Some(t) => t.render_text(&ctx)?,
                None => idempotency_key(name, &v.fingerprint, &delivery),
            };
            let partition = match &spec.partition {
                Some(column) => {
                    let p = crate::domain::Placeholder {
                        scope: crate::domain::Scope::Left,
                        field: column.to_string(),
                    };
                    match ctx.lookup(&p)? {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    }
                }
                None => String::new(),
            };
            Ok((delivery, key, partition))
        });
        match rendered {
            Ok((spec, idempotency_key, partition)) => actions.push(NewAction {
                fingerprint: v.fingerprint.clone(),
                violation_kind: ViolationKind::Missing,
                key: v.key.clone(),
                evidence: v.evidence.clone(),
                spec,
                idempotency_key,
                partition,
                event_at: v.event_at,
            }),
            Err(e) => failures.push(format!("event {} : {e}", v.key)),
        }
    }
    if let Some(first) = failures.first() {
        return Err(PlanError::Render {
            invariant: name.to_owned(),
            count: failures.len(),
            first: first.clone(),
        });
    }
    Ok(Rendered { actions })
}

/// A replay plan's metadata and content hash: what its approval is bound to.
fn content(
    invariant: &Invariant,
    spec: &ReplaySpec,
    window: Window,
    reason: Option<&str>,
    actions: &[NewAction],
) -> (serde_json::Value, String, String) {
    let definition_hash = invariant.definition_hash();
    let wide = window.to - window.from > spec.max_window.as_chrono();
    let meta = serde_json::json!({
        "from": window.from,
        "to": window.to,
        "reason": reason,
        "partition": spec.partition.as_ref().map(|p| p.to_string()),
        "wide": wide,
    });
    let hash = content_hash(
        invariant.name.as_str(),
        &definition_hash,
        PlanKind::Replay,
        &meta,
        actions.iter().map(HashedAction::from),
    );
    (meta, definition_hash, hash)
}

/// Walks the replay without delivering anything: what would be replayed, what the downstream
/// already processed, what lies outside the window, what an earlier replay parked. It is
/// recorded (audit log) with the content hash of the plan that proposing this window with
/// this `reason` would make, so that plan needs no second dry run.
#[allow(clippy::too_many_arguments)]
pub async fn dry_run(
    env: &ApplyEnv<'_>,
    config: &Config,
    invariant: &Invariant,
    spec: &ReplaySpec,
    window: Window,
    reason: Option<&str>,
    rate: Rate,
    samples: usize,
) -> Result<DryRun, PlanError> {
    let violations = candidates(env.store, invariant, window).await?;
    let rendered = render(config, invariant, spec, &violations)?;
    let hash = (!rendered.actions.is_empty())
        .then(|| content(invariant, spec, window, reason, &rendered.actions).2);
    let mut out = DryRun {
        window: Some(window),
        rate: rate.to_string(),
        ..DryRun::default()
    };
    let mut keep = |category: &str, a: &NewAction, detail: Option<String>| {
        let list = out.samples.entry(category.to_owned()).or_default();
        if list.len() < samples {
            list.push(Sample {
                seq: list.len() as i64 + 1,
                key: a.key.clone(),
                action: super::apply::summary(&a.spec),
                detail,
            });
        }
    };
    let parked = parked_keys(env.store, invariant).await?;
    let (mut would, mut processed, mut parked_n) = (0, 0, 0);
    for a in &rendered.actions {
        if parked.contains(&a.idempotency_key) {
            parked_n += 1;
            keep("parked", a, Some("parked by an earlier replay".into()));
        }
        // Not yet in a plan (plan 0): any plan that applied this key counts.
        let skip = match applied_before(env, 0, &a.spec, &a.idempotency_key).await? {
            Some(why) => Some(why),
            None => already_processed(invariant, spec, env.sources, &a.key, &a.fingerprint).await?,
        };
        match skip {
            Some(why) => {
                processed += 1;
                keep("would_skip_processed", a, Some(why));
            }
            None => {
                would += 1;
                keep("would_replay", a, None);
            }
        }
    }
    let all_missing = env
        .store
        .event_times(&ViolationFilter {
            invariants: vec![invariant.name.to_string()],
            status: StatusFilter::Active,
            kind: Some(ViolationKind::Missing),
            ..ViolationFilter::default()
        })
        .await?;
    out.outside_window = all_missing
        .iter()
        .filter(|t| **t < window.from || **t >= window.to)
        .count() as u64;
    out.would_replay = would;
    out.would_skip_processed = processed;
    out.parked = parked_n;
    out.estimated_secs = match rate {
        Rate::PerSecond(r) => Some(would as f64 / r),
        Rate::Unlimited => None,
    };
    super::dry_runs::record_window(
        env.store,
        env.actor,
        invariant.name.as_str(),
        window,
        hash.as_deref(),
        &out,
        chrono::Utc::now(),
    )
    .await?;
    Ok(out)
}

/// Idempotency keys parked by replays of this invariant that are not finished.
async fn parked_keys(
    store: &dyn Store,
    invariant: &Invariant,
) -> Result<std::collections::BTreeSet<String>, PlanError> {
    let mut keys = std::collections::BTreeSet::new();
    for plan in store.plans(Some(invariant.name.as_str()), 50).await? {
        if plan.kind != PlanKind::Replay
            || matches!(plan.state, PlanState::Cancelled | PlanState::Superseded)
        {
            continue;
        }
        keys.extend(
            super::all_actions(store, plan.id)
                .await?
                .into_iter()
                .filter(|a| a.status == crate::domain::ActionStatus::Parked)
                .map(|a| a.idempotency_key),
        );
    }
    Ok(keys)
}

/// Proposes the live replay as a plan (it needs approval like any other).
#[allow(clippy::too_many_arguments)]
pub async fn propose(
    store: &dyn Store,
    config: &Config,
    invariant: &Invariant,
    spec: &ReplaySpec,
    window: Window,
    reason: Option<&str>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Proposal, PlanError> {
    let violations = candidates(store, invariant, window).await?;
    let rendered = render(config, invariant, spec, &violations)?;
    if rendered.actions.is_empty() {
        return Ok(Proposal::Nothing);
    }
    let name = invariant.name.as_str();
    let wide = window.to - window.from > spec.max_window.as_chrono();
    let (meta, definition_hash, hash) = content(invariant, spec, window, reason, &rendered.actions);
    let partitions: std::collections::BTreeSet<&str> = rendered
        .actions
        .iter()
        .map(|a| a.partition.as_str())
        .collect();
    let plan = NewPlan {
        kind: PlanKind::Replay,
        meta,
        invariant: name.to_owned(),
        definition_hash,
        content_hash: hash,
        severity: invariant.severity.to_string(),
        approvals_required: config.plans.approvals_for(invariant.severity),
        has_manual: false,
        proposed_by: actor.name.clone(),
        proposed_at: now,
        expires_at: now + config.plans.ttl.as_chrono(),
        source_run_id: None,
        counts: serde_json::json!({
            "events": rendered.actions.len(),
            "partitions": partitions.len(),
        }),
    };
    let id = store.create_plan(&plan, &rendered.actions).await?;
    super::dry_runs::carry_window(store, name, id, &plan.content_hash, now).await?;
    if let Some(reason) = reason.filter(|_| wide) {
        store
            .audit(
                &actor.name,
                "replay.wide_window",
                &format!("plan:{id}"),
                &serde_json::json!({ "from": window.from, "to": window.to, "reason": reason }),
                now,
            )
            .await?;
    }
    Ok(Proposal::Created {
        plan: id,
        actions: rendered.actions.len() as u64,
    })
}

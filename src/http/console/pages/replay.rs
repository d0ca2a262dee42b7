//! Replays: the dry run of a window and proposing the replay plan.

use axum::extract::{Extension, Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use chrono::Utc;
use minijinja::context;
use serde::Deserialize;

use crate::domain::Invariant;
use crate::http::HttpState;
use crate::plan::apply::Rate;
use crate::plan::{self};

use super::super::session::Session;
use super::super::{PageResult, Refusal, render, serde};
use super::*;

#[derive(Deserialize)]
pub(in crate::http::console) struct ReplayQuery {
    invariant: String,
    from: Option<String>,
    to: Option<String>,
    rate: Option<String>,
    /// Why a window wider than `max_window` is safe (recorded with the plan).
    reason: Option<String>,
}

/// A reason given in a form: trimmed, none when blank.
fn wide_reason(reason: Option<&str>) -> Option<&str> {
    reason.map(str::trim).filter(|r| !r.is_empty())
}

/// An invariant's replay window as a form gives it: checked against its replay settings (a
/// window past `max_window` only with a reason).
fn replay_window<'a>(
    inv: &'a Invariant,
    from: Option<&str>,
    to: Option<&str>,
    reason: Option<&str>,
) -> Result<(&'a crate::domain::ReplaySpec, crate::plan::replay::Window), Refusal> {
    let (from, to) = (form_time("from", from)?, form_time("to", to)?);
    crate::plan::replay::check_window(inv, from, to, reason.is_some(), reason)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, &window_refusal(&e)))
}

/// A refused replay window, in the form's terms: the timeline selection and the form's fields.
fn window_refusal(e: &crate::plan::replay::WindowError) -> String {
    use crate::plan::replay::WindowError as W;
    match e {
        W::NotReplayable { .. } => e.to_string(),
        W::Unbounded => "a replay needs a window on the events' own time: select it on the timeline, or fill in both From and To. There is no \"replay everything\"; nothing was done".into(),
        W::Reversed { .. } => format!("{e}: swap From and To. Nothing was done"),
        W::TooWide { .. } | W::WideWithoutReason => format!(
            "{e}; narrow it, or say in the Reason field why a window this wide is safe (it is recorded with the plan and in the audit log). Nothing was done"
        ),
    }
}

/// The replay dry run for a window: what would be delivered, skipped, left out; and the form
/// that submits the replay for approval.
pub(in crate::http::console) async fn replay(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Query(q): Query<ReplayQuery>,
) -> PageResult {
    let inv = find(&state, &q.invariant)?;
    let reason = wide_reason(q.reason.as_deref());
    let (spec, window) = replay_window(&inv, q.from.as_deref(), q.to.as_deref(), reason)?;
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
    let dry = crate::plan::replay::dry_run(
        &env,
        &state.runtime.config,
        &inv,
        spec,
        window,
        reason,
        rate,
        5,
    )
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
            reason => reason.unwrap_or(""),
            wide => (window.to - window.from) > spec.max_window.as_chrono(),
            dry => serde(&dry),
        },
    ))
}

#[derive(Deserialize)]
pub(in crate::http::console) struct ReplayForm {
    invariant: String,
    from: String,
    to: String,
    reason: Option<String>,
}

/// Proposes the replay of a window as a plan, for approval.
pub(in crate::http::console) async fn propose_replay(
    State(state): State<HttpState>,
    Extension(session): Extension<Session>,
    Form(form): Form<ReplayForm>,
) -> PageResult {
    let inv = find(&state, &form.invariant)?;
    let reason = wide_reason(form.reason.as_deref());
    let (spec, window) = replay_window(&inv, Some(&form.from), Some(&form.to), reason)?;
    let proposal = crate::plan::replay::propose(
        state.runtime.store.as_ref(),
        &state.runtime.config,
        &inv,
        spec,
        window,
        reason,
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

#[cfg(test)]
mod tests {
    use super::window_refusal;
    use crate::plan::replay::WindowError;

    #[test]
    fn a_refused_window_is_worded_in_the_forms_fields_not_the_clis_flags() {
        let unbounded = window_refusal(&WindowError::Unbounded);
        assert!(
            unbounded.contains("select it on the timeline, or fill in both From and To"),
            "{unbounded}"
        );
        let from = "2026-11-25T07:00:00Z".parse().unwrap();
        let to = "2026-11-25T01:00:00Z".parse().unwrap();
        let reversed = window_refusal(&WindowError::Reversed { from, to });
        assert_eq!(
            reversed,
            "the window's start 2026-11-25T07:00:00+00:00 is not before its end 2026-11-25T01:00:00+00:00: swap From and To. Nothing was done"
        );
        let wide = window_refusal(&WindowError::TooWide {
            invariant: "ledger".into(),
            width: std::time::Duration::from_secs(3 * 3600),
            max_window: crate::domain::HumanDuration::parse("2h").unwrap(),
        });
        assert!(
            wide.starts_with("the window is 3h, wider than `ledger`'s replay.max_window (2h); narrow it, or say in the Reason field why a window this wide is safe"),
            "{wide}"
        );
        for said in [unbounded, reversed] {
            assert!(!said.contains("--"), "{said}");
        }
    }
}

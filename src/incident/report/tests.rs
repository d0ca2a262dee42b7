//! The report from hand-made evidence: verdicts, blockers, timeline wording.

use super::assemble::*;
use super::*;
use crate::domain::{Invariant, ViolationKind};
use crate::domain::{LedgerChange, RunStats};
use crate::store::Approval;
use crate::store::RunRecord;

fn t(raw: &str) -> DateTime<Utc> {
    format!("2026-11-20T{raw}:00Z").parse().unwrap()
}

fn loaded() -> Vec<Invariant> {
    let known = crate::rules::Known {
        sources: ["up", "down"]
            .into_iter()
            .map(|s| {
                (
                    crate::domain::SourceName::parse(s).unwrap(),
                    crate::config::SourceClass::Sql(crate::config::SourceKind::Sqlite),
                )
            })
            .collect(),
        channels: Default::default(),
        targets: Default::default(),
        single_connection: Default::default(),
        retained_logs: Default::default(),
    };
    let (invariants, errors) = crate::rules::parse_file(
        r#"invariants:
  - name: events-processed
    time_column: created_at
    reconcile:
      left: {source: up, query: "SELECT id AS event_id, created_at FROM events"}
      right: {source: down, query: "SELECT event_id FROM processed"}
      key: event_id
"#,
        std::path::Path::new("invariants/x.yaml"),
        &known,
    );
    assert!(errors.is_empty(), "{errors:?}");
    invariants
}

fn incident() -> IncidentRecord {
    IncidentRecord {
        id: 1,
        name: "outage".into(),
        summary: None,
        window_from: t("02:00"),
        window_to: Some(t("03:00")),
        invariants: vec!["events-processed".into()],
        state: IncidentState::Open,
        opened_by: "olga".into(),
        opened_at: t("04:00"),
        closed_by: None,
        closed_at: None,
        override_reason: None,
        report_hash: None,
    }
}

fn run(id: i64, started: &str, status: RunStatus, observed: u64) -> RunRecord {
    RunRecord {
        id,
        invariant: "events-processed".into(),
        started_at: t(started),
        finished_at: Some(t(started)),
        status,
        stats: RunStats {
            rows_left: 100,
            rows_right: 100 - observed,
            observed,
            counts: [(ViolationKind::Missing, observed)].into(),
            ..RunStats::default()
        },
        change: LedgerChange::default(),
        error: (status == RunStatus::Failed).then(|| "connection refused".into()),
    }
}

fn plan(id: i64, kind: PlanKind, state: PlanState, approvals: &[&str]) -> PlanRecord {
    PlanRecord {
        id,
        kind,
        meta: serde_json::json!({"from": t("02:00"), "to": t("03:00")}),
        invariant: "events-processed".into(),
        definition_hash: "d".into(),
        content_hash: "h".into(),
        severity: "high".into(),
        approvals_required: 1,
        has_manual: false,
        proposed_by: "olga".into(),
        proposed_at: t("04:10"),
        expires_at: t("23:00"),
        source_run_id: None,
        state,
        state_by: None,
        state_reason: None,
        state_at: None,
        action_count: 10,
        counts: serde_json::json!({}),
        verification: None,
        approvals: approvals
            .iter()
            .map(|a| Approval {
                approver: (*a).into(),
                content_hash: "h".into(),
                at: t("04:20"),
            })
            .collect(),
    }
}

/// A plan, its actions by status, and when its last action was applied.
type PlanFixture<'a> = (PlanRecord, &'a [(ActionStatus, u64)], Option<&'a str>);

fn evidence(open: u64, latest: Option<RunRecord>, plans: Vec<PlanFixture<'_>>) -> Evidence {
    let groups = [
        (ViolationStatus::Open, open),
        (ViolationStatus::Resolved, 10 - open),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(status, count)| ViolationGroup {
        invariant: "events-processed".into(),
        kind: "missing".into(),
        status,
        count,
        first_seen: t("04:00"),
        last_seen: t("04:05"),
        event_from: Some(t("02:00")),
        event_to: Some(t("02:09")),
    })
    .collect();
    Evidence {
        incident: incident(),
        events: vec![
            IncidentEvent {
                id: 1,
                at: t("04:30"),
                actor: "olga".into(),
                kind: "phase".into(),
                phase: Some("contain".into()),
                text: None,
            },
            IncidentEvent {
                id: 2,
                at: t("05:00"),
                actor: "ravi".into(),
                kind: "phase".into(),
                phase: Some("reconcile".into()),
                text: None,
            },
        ],
        invariants: vec![InvariantEvidence {
            name: "events-processed".into(),
            groups,
            open_anywhere: open + 2,
            samples: Vec::new(),
            runs: RunDigest {
                total: 3,
                failed: 0,
                notable: Vec::new(),
                latest,
                latest_full: None,
            },
            plans: plans
                .into_iter()
                .map(|(plan, progress, last)| PlanEvidence {
                    plan,
                    progress: progress.iter().copied().collect(),
                    last_applied_at: last.map(t),
                })
                .collect(),
            slo: None,
        }],
        audit: Vec::new(),
    }
}

fn kinds(report: &Report) -> Vec<BlockerKind> {
    report.verdict.blockers.iter().map(|b| b.kind).collect()
}

#[test]
fn a_later_run_that_read_only_part_of_the_rows_does_not_verify_the_window() {
    // Over its violation budget: it stored the first violations in key order, and the
    // window's may lie past them. Incremental: it read only the changed keys.
    let truncated = RunRecord {
        stats: RunStats {
            truncated: true,
            ..run(9, "06:00", RunStatus::Succeeded, 3).stats
        },
        ..run(9, "06:00", RunStatus::Succeeded, 3)
    };
    let incremental_tick = || RunRecord {
        stats: RunStats {
            coverage: crate::domain::Coverage::Changed {
                keys: 12,
                left_since: Some(t("05:50")),
                right_since: None,
            },
            ..run(10, "06:05", RunStatus::Succeeded, 0).stats
        },
        ..run(10, "06:05", RunStatus::Succeeded, 0)
    };
    for latest in [truncated, incremental_tick()] {
        let id = latest.id;
        let ev = evidence(
            0,
            Some(latest),
            vec![(
                plan(1, PlanKind::Compensation, PlanState::Applied, &["ana"]),
                &[(ActionStatus::Applied, 10)],
                Some("05:30"),
            )],
        );
        let report = assemble(&ev, &loaded(), None);
        let v = &report.invariants[0].verification;
        assert_eq!(v.result, VerificationResult::Partial, "run {id}");
        assert!(!v.passed, "run {id}");
        assert_eq!(kinds(&report), [BlockerKind::StaleVerification], "run {id}");
        let said = &report.verdict.blockers[0].detail;
        assert!(
            said.contains(&format!("run {id}")) && said.contains("read only part of the rows"),
            "{said}"
        );
        assert_ne!(report.verdict.summary, "ready to close");
    }
    // A full run after the repair is the evidence, whatever incremental ticks came after it.
    let full = run(8, "05:45", RunStatus::Succeeded, 0);
    let mut ev = evidence(
        0,
        Some(incremental_tick()),
        vec![(
            plan(1, PlanKind::Compensation, PlanState::Applied, &["ana"]),
            &[(ActionStatus::Applied, 10)],
            Some("05:30"),
        )],
    );
    ev.invariants[0].runs.latest_full = Some(full.clone());
    let report = assemble(&ev, &loaded(), None);
    let v = &report.invariants[0].verification;
    assert_eq!(
        (v.result, v.passed, v.run.as_ref().map(|r| r.id)),
        (VerificationResult::Holds, true, Some(8))
    );
    // One from before the repair is not.
    ev.invariants[0].runs.latest_full = Some(run(7, "05:20", RunStatus::Succeeded, 0));
    let report = assemble(&ev, &loaded(), None);
    assert_eq!(
        report.invariants[0].verification.result,
        VerificationResult::Partial
    );
    // A later run over its budget is not undone by an earlier full one: it found more than it
    // stored, and the window may hold some of it.
    let over_budget = RunRecord {
        stats: RunStats {
            truncated: true,
            ..run(11, "06:10", RunStatus::Succeeded, 50).stats
        },
        ..run(11, "06:10", RunStatus::Succeeded, 50)
    };
    ev.invariants[0].runs.latest = Some(over_budget);
    ev.invariants[0].runs.latest_full = Some(full);
    let report = assemble(&ev, &loaded(), None);
    let v = &report.invariants[0].verification;
    assert_eq!(
        (v.result, v.passed, v.run.as_ref().map(|r| r.id)),
        (VerificationResult::Partial, false, Some(11))
    );
}

#[test]
fn a_repaired_window_with_a_later_clean_run_is_ready_to_close() {
    let ev = evidence(
        0,
        Some(run(9, "06:00", RunStatus::Succeeded, 0)),
        vec![(
            plan(1, PlanKind::Compensation, PlanState::Applied, &["ana"]),
            &[(ActionStatus::Applied, 10)],
            Some("05:30"),
        )],
    );
    let report = assemble(&ev, &loaded(), None);
    assert_eq!(
        report.verdict.summary, "ready to close",
        "{:?}",
        report.verdict
    );
    let inv = &report.invariants[0];
    assert_eq!(inv.verification.result, VerificationResult::Holds);
    assert_eq!(inv.verification.required_after, t("05:30"));
    assert_eq!(inv.violations.open_outside_window, 2);
    assert_eq!(inv.compensation.applied, 10);
    assert_eq!(inv.compensation.approved, 10);
    assert_eq!(inv.consistency.as_ref().unwrap().parity_pct, Some(100.0));
    // Phases last until the next mark; the last one is still going on.
    let durations: Vec<Option<i64>> = report.phases.iter().map(|p| p.duration_secs).collect();
    assert_eq!(durations, [Some(1800), None]);
    assert_eq!(report, assemble(&ev, &loaded(), None), "no clock inside");
}

#[test]
fn a_run_before_the_last_repair_does_not_verify_it() {
    let ev = evidence(
        0,
        Some(run(9, "05:00", RunStatus::Succeeded, 0)),
        vec![(
            plan(1, PlanKind::Compensation, PlanState::Applied, &["ana"]),
            &[(ActionStatus::Applied, 10)],
            Some("05:30"),
        )],
    );
    let report = assemble(&ev, &loaded(), None);
    assert_eq!(kinds(&report), [BlockerKind::StaleVerification]);
    assert!(report.verdict.blockers[0].detail.contains("run 9"));
}

#[test]
fn every_kind_of_unfinished_work_is_a_blocker_of_its_own() {
    let ev = evidence(
        3,
        Some(run(9, "06:00", RunStatus::Failed, 0)),
        vec![
            (
                plan(1, PlanKind::Compensation, PlanState::Proposed, &[]),
                &[(ActionStatus::Pending, 10)],
                None,
            ),
            (
                plan(2, PlanKind::Compensation, PlanState::Stopped, &["ana"]),
                &[
                    (ActionStatus::Applied, 5),
                    (ActionStatus::Failed, 2),
                    (ActionStatus::Pending, 3),
                ],
                Some("05:00"),
            ),
            (
                plan(3, PlanKind::Replay, PlanState::Paused, &["ana"]),
                &[(ActionStatus::Applied, 4), (ActionStatus::Pending, 6)],
                Some("05:10"),
            ),
            (
                plan(4, PlanKind::Replay, PlanState::Applied, &["ana"]),
                &[(ActionStatus::Applied, 9), (ActionStatus::Parked, 1)],
                Some("05:20"),
            ),
            (
                plan(5, PlanKind::Compensation, PlanState::Rejected, &[]),
                &[(ActionStatus::Pending, 10)],
                None,
            ),
        ],
    );
    let report = assemble(&ev, &loaded(), None);
    assert_eq!(
        kinds(&report),
        [
            BlockerKind::OpenViolations,
            BlockerKind::EvaluationError,
            BlockerKind::UnapprovedPlan,
            BlockerKind::PendingActions,
            BlockerKind::FailedActions,
            BlockerKind::UnfinishedReplay,
            BlockerKind::UnfinishedReplay,
        ],
        "{:#?}",
        report.verdict
    );
    let plans: Vec<Option<i64>> = report.verdict.blockers.iter().map(|b| b.plan).collect();
    assert_eq!(
        plans,
        [None, None, Some(1), Some(2), Some(2), Some(3), Some(4)]
    );
    assert!(
        report.verdict.blockers[1]
            .detail
            .contains("connection refused")
    );
    let replays = &report.invariants[0].replays;
    assert_eq!(
        (
            replays[0].delivered,
            replays[0].pending,
            replays[0].complete
        ),
        (4, 6, false)
    );
    assert_eq!((replays[1].parked, replays[1].complete), (1, false));
    assert_eq!(
        report.invariants[0].consistency, None,
        "no consistency figures from a failed run"
    );
}

#[test]
fn an_invariant_that_is_no_longer_defined_cannot_be_verified() {
    let ev = evidence(
        0,
        Some(run(9, "06:00", RunStatus::Succeeded, 0)),
        Vec::new(),
    );
    let report = assemble(&ev, &[] as &[Invariant], None);
    assert_eq!(kinds(&report), [BlockerKind::NotLoaded]);
    assert_eq!(
        report.invariants[0].verification.result,
        VerificationResult::NotLoaded
    );
}

#[test]
fn a_long_timeline_keeps_its_start_and_end_and_counts_what_it_left_out() {
    let mut ev = evidence(
        0,
        Some(run(9, "06:00", RunStatus::Succeeded, 0)),
        Vec::new(),
    );
    ev.invariants[0].runs.notable = (0..TIMELINE_LIMIT as i64 + 50)
        .map(|i| RunRecord {
            started_at: t("06:00") + chrono::TimeDelta::seconds(i),
            ..run(i, "06:00", RunStatus::Failed, 0)
        })
        .collect();
    let report = assemble(&ev, &loaded(), None);
    let entries = &report.timeline.entries;
    assert_eq!(entries.len(), TIMELINE_LIMIT);
    assert_eq!(report.timeline.omitted, 50);
    assert_eq!(entries[0].run, Some(0));
    assert_eq!(
        entries[TIMELINE_LIMIT - 1].run,
        Some(TIMELINE_LIMIT as i64 + 49)
    );
}

/// A scheduled run still going when the incident closed stays in the frozen report as what it
/// was then, not as a run that is "running" for good; before the close it reads as under way.
#[test]
fn a_run_still_running_at_the_close_is_said_to_have_been_running_then() {
    let mut ev = evidence(
        0,
        Some(run(9, "06:00", RunStatus::Succeeded, 0)),
        Vec::new(),
    );
    ev.invariants[0].runs.notable = vec![run(10, "06:59", RunStatus::Running, 0)];
    let open = assemble(&ev, &loaded(), None);
    let texts = |r: &Report| -> Vec<String> {
        r.timeline
            .entries
            .iter()
            .filter(|e| e.run == Some(10))
            .map(|e| e.text.clone())
            .collect()
    };
    assert_eq!(
        texts(&open),
        ["run 10 is running: its outcome is not known yet"]
    );
    let closure = Closure {
        closed_by: "april".into(),
        closed_at: t("07:00"),
        overridden: false,
        override_reason: None,
    };
    let closed = assemble(&ev, &loaded(), Some(&closure));
    assert_eq!(
        texts(&closed),
        [
            "run 10 was still running when the incident closed: its outcome is not part of this report"
        ]
    );
    let md = crate::incident::render(&closed, crate::incident::ReportFormat::Md).unwrap();
    assert!(!md.contains("run 10 running"), "{md}");
    assert!(
        md.contains("run 10 was still running when the incident closed"),
        "{md}"
    );
}

#[test]
fn closing_sets_the_state_the_closure_and_the_end_of_the_last_phase() {
    let ev = evidence(
        1,
        Some(run(9, "06:00", RunStatus::Succeeded, 1)),
        Vec::new(),
    );
    let closure = Closure {
        closed_by: "april".into(),
        closed_at: t("07:00"),
        overridden: true,
        override_reason: Some("tracked in BILL-1".into()),
    };
    let report = assemble(&ev, &loaded(), Some(&closure));
    assert_eq!(report.incident.state, IncidentState::Closed);
    assert_eq!(report.phases[1].duration_secs, Some(7200));
    assert_eq!(report.closure.as_ref(), Some(&closure));
    let last = report.timeline.entries.last().unwrap();
    assert_eq!(
        last.text,
        "incident closed with blockers overridden: tracked in BILL-1"
    );
    let md = crate::incident::render(&report, crate::incident::ReportFormat::Md).unwrap();
    assert!(
        md.contains("**with blockers overridden**: tracked in BILL-1"),
        "{md}"
    );
    let html = crate::incident::render(&report, crate::incident::ReportFormat::Html).unwrap();
    assert!(
        html.contains("<strong>with blockers overridden</strong>"),
        "{html}"
    );
}

#[test]
fn the_timeline_says_what_the_audit_log_recorded_in_words() {
    let mut ev = evidence(
        0,
        Some(run(9, "06:00", RunStatus::Succeeded, 0)),
        vec![(
            plan(1, PlanKind::Replay, PlanState::Applied, &["ana"]),
            &[(ActionStatus::Applied, 10)],
            Some("05:30"),
        )],
    );
    let entry = |id: i64, action: &str, target: &str, details: serde_json::Value| AuditEntry {
        id,
        at: t("05:00") + chrono::TimeDelta::seconds(id),
        actor: "ana".into(),
        action: action.into(),
        target: target.into(),
        details,
    };
    ev.audit = vec![
        entry(
            1,
            "alert.firing",
            "invariant:events-processed",
            serde_json::json!({"from": "pending"}),
        ),
        entry(
            2,
            "plan.apply.requested",
            "plan:1",
            serde_json::json!({"dry_run": true}),
        ),
        entry(
            3,
            "plan.apply.requested",
            "plan:1",
            serde_json::json!({"dry_run": false, "rate": "5/s"}),
        ),
        entry(
            4,
            "plan.verify",
            "plan:1",
            serde_json::json!({"checked": 10, "closed": 10, "still_open": 0, "remaining_in_window": 0}),
        ),
        entry(
            5,
            "incident.note",
            "incident:outage",
            serde_json::json!({"text": "consumer back"}),
        ),
        entry(6, "plan.approve", "plan:99", serde_json::json!({})),
        entry(
            7,
            "plan.verify",
            "plan:1",
            serde_json::json!({"failed": "the replay finished, but its window could not be re-checked: the store is locked", "checked": 10, "closed": 10, "still_open": 0, "remaining_in_window": null}),
        ),
    ];
    let report = assemble(&ev, &loaded(), None);
    let texts: Vec<&str> = report
        .timeline
        .entries
        .iter()
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "alert pending → firing",
            "replay plan 1: dry run",
            "replay plan 1: apply requested at 5/s",
            "replay plan 1 verified: 10 re-checked, 10 closed, 0 still open, 0 missing left in its window",
            "note: consumer back",
            "replay plan 1 applied; re-check failed: the replay finished, but its window could not be re-checked: the store is locked",
        ],
        "a plan outside the incident is left out; a failed re-check is no verification"
    );
}

#[test]
fn html_from_the_ledger_is_escaped() {
    let mut ev = evidence(
        0,
        Some(run(9, "06:00", RunStatus::Succeeded, 0)),
        Vec::new(),
    );
    ev.incident.summary = Some("<script>alert(1)</script>".into());
    let report = assemble(&ev, &loaded(), None);
    let html = crate::incident::render(&report, crate::incident::ReportFormat::Html).unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;"), "{html}");
}

#[test]
fn the_report_states_the_error_budget_the_incident_consumed_in_every_format() {
    use crate::domain::{HumanDuration, Objective, SloMeasure, SloTarget};
    let mut ev = evidence(
        0,
        Some(run(9, "06:00", RunStatus::Succeeded, 0)),
        Vec::new(),
    );
    let objective = Objective {
        target: SloTarget::parse("99%").unwrap(),
        max_open: HumanDuration::parse("1h").unwrap(),
        window: HumanDuration::parse("30d").unwrap(),
    };
    let measure = |breach_min: i64, unverified_min: i64| SloMeasure {
        from: t("02:00"),
        to: t("07:00"),
        measured: chrono::TimeDelta::hours(5),
        breach: chrono::TimeDelta::minutes(breach_min),
        unverified: chrono::TimeDelta::minutes(unverified_min),
        breaching: false,
    };
    ev.invariants[0].slo = Some(SloEvidence {
        objective,
        // 3 h 2 min of the 7 h 12 min that 1 % of 30 days allows.
        incident: measure(182, 20),
        rolling: measure(216, 20),
    });
    let report = assemble(&ev, &loaded(), None);
    let slo = report.invariants[0].slo.as_ref().unwrap();
    assert_eq!(
        slo.objective,
        "no violation open longer than 1h, 99% of the time over 30 days"
    );
    assert_eq!((slo.budget_secs, slo.breach_secs), (25_920, 10_920));
    assert_eq!(slo.budget_used_pct, 42.1296);
    assert_eq!(slo.budget_left_pct, 50.0);
    let statement = "This incident consumed 42.1% of the error budget: 3 h 2 min in breach of the 7 h 12 min the objective allows over 30 days. 20 min of it followed failed runs: nothing confirmed the state then. Over the last 30 days: 50% left.";
    assert_eq!(slo.statement, statement);
    for format in [
        crate::incident::render::ReportFormat::Md,
        crate::incident::render::ReportFormat::Html,
    ] {
        let text = crate::incident::render::render(&report, format).unwrap();
        assert!(text.contains(statement), "{format:?}: {text}");
        assert!(text.contains("Error budget"), "{format:?}");
    }
    // JSON round trip, and a report frozen before SLOs existed (no `slo` field) still reads.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        serde_json::from_value::<Report>(json.clone()).unwrap(),
        report
    );
    let mut old = json;
    old["invariants"][0].as_object_mut().unwrap().remove("slo");
    let read: Report = serde_json::from_value(old).unwrap();
    assert_eq!(read.invariants[0].slo, None);
}

#[test]
fn each_sample_key_links_to_its_trace_where_the_console_is_known_and_nowhere_else() {
    use crate::incident::render::{ReportFormat, ReportLinks, render_linked};
    let mut ev = evidence(1, None, Vec::new());
    ev.invariants[0].samples = vec![crate::store::ViolationRecord {
        id: 1,
        fingerprint: "f".into(),
        invariant: "events-processed".into(),
        kind: "missing".into(),
        key: serde_json::json!(["evt 7/a"]),
        status: crate::domain::ViolationStatus::Open,
        first_seen: t("04:00"),
        last_seen: t("04:05"),
        resolved_at: None,
        event_at: Some(t("02:00")),
        times_reopened: 0,
        first_run_id: 1,
        last_run_id: 1,
        evidence: serde_json::json!({}),
    }];
    let report = assemble(&ev, &loaded(), None);
    let external = ReportLinks {
        back: None,
        console: Some("https://trueup.example.com/"),
    };
    // (HTML escapes `/` in text and attributes as `&#x2f;`, which a browser reads as `/`.)
    let html = render_linked(&report, ReportFormat::Html, &external)
        .unwrap()
        .replace("&#x2f;", "/");
    assert!(
        html.contains(r#"<code>evt 7/a</code> <a class="trace-link" href="https://trueup.example.com/ui/trace?key=evt%207/a&amp;invariant=events-processed">trace</a>"#),
        "{html}"
    );
    let md = render_linked(&report, ReportFormat::Md, &external).unwrap();
    assert!(
        md.contains("| missing | [evt 7/a](https://trueup.example.com/ui/trace?key=evt%207/a&invariant=events-processed) |"),
        "{md}"
    );
    // From the console's own page: relative to it.
    let console = ReportLinks {
        back: Some("/ui/incidents/x"),
        console: Some(""),
    };
    let html = render_linked(&report, ReportFormat::Html, &console)
        .unwrap()
        .replace("&#x2f;", "/");
    assert!(html.contains(r#"href="/ui/trace?key=evt%207/a&amp;invariant=events-processed""#));
    // No console address: the key as text, no link.
    for format in [ReportFormat::Html, ReportFormat::Md] {
        let text = render_linked(&report, format, &ReportLinks::default())
            .unwrap()
            .replace("&#x2f;", "/");
        assert!(
            text.contains("evt 7/a") && !text.contains("/ui/trace"),
            "{text}"
        );
    }
}

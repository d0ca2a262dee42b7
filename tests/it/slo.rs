//! Consistency SLOs end to end: runs recorded in the store spend an objective's error budget,
//! and the overview (in a browser), /metrics and the incident report say the same figures.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::json;
use trueup::domain::{
    Actor, InvariantName, Role, RunStats, RunStatus, Value, Violation, ViolationKind,
};

use crate::serve::{APPROVER, sample};

/// The demo's payments-ledger: 99.9% over 30 days with none open longer than 1h.
const LEDGER: &str = "payments-ledger";

// Multi-threaded: the server under test and the browser's client share the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violation_left_open_for_three_hours_spends_the_budget_on_the_overview_in_metrics_and_in_the_report()
 {
    let dir = tempfile::tempdir().unwrap();
    // No schedule: only the runs recorded here exist.
    let config = crate::helpers::demo_with(dir.path(), None, &crate::serve::tokens_yaml("")).await;
    let server = crate::helpers::TestServer::start(config).await;
    let (base, store) = (server.base.clone(), std::sync::Arc::clone(&server.store));

    // A payment missing from the ledger from 5 hours ago until the run 2 hours ago saw it
    // booked: open past the hour from −4 h to −2 h. The run at −2 h 30 min failed, so the half
    // hour after it is unverified.
    let now = Utc::now();
    let inv = InvariantName::parse(LEDGER).unwrap();
    let at = |minutes_ago: i64| now - TimeDelta::minutes(minutes_ago);
    let missing = Violation {
        kind: ViolationKind::Missing,
        key: vec![Value::Int(4242)],
        discriminator: None,
        event_at: Some(at(310)),
        evidence: json!({"left": {"payment_id": 4242}}),
    };
    for (minutes_ago, seen) in [
        (300, true),
        (240, true),
        (180, true),
        (150, false),
        (120, false),
    ] {
        let run = store
            .begin_run(&inv, at(minutes_ago) - TimeDelta::seconds(3))
            .await
            .unwrap();
        if minutes_ago == 150 {
            store
                .abandon_run(
                    run,
                    RunStatus::Failed,
                    "source `ledger`: timed out",
                    at(150),
                )
                .await
                .unwrap();
            continue;
        }
        // The first two runs also see 1,500 payments that the third finds booked.
        let mut seen: Vec<Violation> = if seen {
            vec![missing.clone()]
        } else {
            Vec::new()
        };
        if minutes_ago >= 240 {
            seen.extend((0..1500).map(|k| Violation {
                key: vec![Value::Int(k)],
                ..missing.clone()
            }));
        }
        store.observe(run, &inv, 0, &seen).await.unwrap();
        let stats = RunStats {
            observed: seen.len() as u64,
            ..Default::default()
        };
        store
            .complete_run(run, &inv, &stats, at(minutes_ago), None)
            .await
            .unwrap();
    }

    // /metrics, measured from the store every heartbeat.
    let breach = format!("trueup_slo_breach_seconds{{invariant=\"{LEDGER}\"}}");
    crate::helpers::wait_for("the SLO measured", Duration::from_secs(15), || async {
        let (_, m) = crate::serve::get(&format!("{base}/metrics")).await;
        sample(&m, &breach) == Some(7200.0)
    })
    .await;
    let (_, metrics) = crate::serve::get(&format!("{base}/metrics")).await;
    let ledger =
        |name: &str| sample(&metrics, &format!("{name}{{invariant=\"{LEDGER}\"}}")).unwrap();
    assert_eq!(ledger("trueup_slo_unverified_seconds"), 1800.0);
    assert_eq!(ledger("trueup_slo_error_budget_seconds"), 2592.0);
    assert_eq!(ledger("trueup_slo_breaching"), 0.0);
    let left = ledger("trueup_slo_error_budget_remaining_ratio");
    assert!((left - (1.0 - 7200.0 / 2592.0)).abs() < 1e-9, "{left}");
    // Measured since the first run, five hours ago: two of them in breach.
    let sli = ledger("trueup_slo_sli_ratio");
    assert!((0.599..0.601).contains(&sli), "{sli}");

    // The overview, as a person reads it.
    let b = crate::browser::open().await;
    b.sign_in(&base, APPROVER).await;
    b.wait_for("the overview", Duration::from_secs(10), |s| {
        s.contains(LEDGER)
    })
    .await;
    let row = |name: &str, css: &str| format!("tr[data-invariant=\"{name}\"] {css}");
    assert_eq!(
        b.text(&row(LEDGER, ".budget")).await,
        "none left (277.8% used)"
    );
    assert!(
        b.find(&row(LEDGER, ".budget"))
            .await
            .attr("class")
            .await
            .unwrap()
            .unwrap()
            .contains("budget-spent")
    );
    assert_eq!(
        b.text(&row(LEDGER, ".slo-objective")).await,
        "99.9% of 30 days with no violation open over 1h"
    );
    let detail = b.text(&row(LEDGER, ".slo-detail")).await;
    assert!(
        detail.starts_with(
            "SLI 60% over 30 days: 2 h in breach of 43 min 12 s allowed (measured for 5 h"
        ),
        "{detail}"
    );
    assert_eq!(
        b.text(&row(LEDGER, ".slo-unverified")).await,
        "30 min unverified: runs failed"
    );
    // An objective with no run yet has its whole budget; an invariant without one says so.
    assert_eq!(
        b.text(&row("order-events-billed", ".budget")).await,
        "100% left"
    );
    assert_eq!(
        b.text(&row("order-events-billed", ".slo-detail")).await,
        "no completed run yet: 0 s in breach of 7 h 12 min allowed"
    );
    assert_eq!(
        b.text(&row("payment-lifecycle", "td.slo")).await,
        "no objective"
    );
    // Counts read one way everywhere, the sparkline's included.
    let spark = b
        .find(&row(LEDGER, "svg.spark"))
        .await
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap();
    assert!(spark.ends_with(": 1,501, now 0 (at most 1,501)"), "{spark}");
    b.screenshot("overview-slo").await;

    // The incident over the outage: its report says what it consumed.
    let loaded: Vec<trueup::domain::Invariant> = trueup::rules::load(
        &dir.path().join("invariants"),
        &trueup::rules::Known::of(
            &trueup::config::Config::load(&dir.path().join("trueup.yaml")).unwrap(),
        ),
    )
    .unwrap();
    let olga = Actor {
        name: "olga".into(),
        role: Role::Operator,
    };
    trueup::incident::open(
        store.as_ref(),
        &loaded,
        "ledger-outage",
        at(320),
        Some(at(100)),
        &[LEDGER.to_owned()],
        Some("the ledger's consumer stalled"),
        &olga,
        Utc::now(),
    )
    .await
    .unwrap();
    let statement = "This incident consumed 277.8% of the error budget: 2 h in breach of the 43 min 12 s the objective allows over 30 days. 30 min of it followed failed runs: nothing confirmed the state then. Over the last 30 days: none left (277.8% used).";
    let report = trueup::incident::report(store.as_ref(), &loaded, "ledger-outage")
        .await
        .unwrap();
    let slo = report.invariants[0].slo.as_ref().unwrap();
    assert_eq!(slo.statement, statement);
    assert_eq!(
        (slo.breach_secs, slo.unverified_secs, slo.budget_secs),
        (7200, 1800, 2592)
    );
    b.goto(&format!("{base}/ui/incidents/ledger-outage/report"))
        .await;
    b.wait_for("the report", Duration::from_secs(10), |s| {
        s.contains("closure report")
    })
    .await;
    assert_eq!(b.text(".slo-statement").await, statement);
    assert_eq!(
        b.text("dl.slo dd").await,
        "no violation open longer than 1h, 99.9% of the time over 30 days"
    );
    b.screenshot("report-slo").await;
    b.close().await;
    server.stop().await;
}

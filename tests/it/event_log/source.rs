//! An event log read as an invariant's side (`source: log:NAME`).

use serde_json::json;

use super::{config, signed};
use crate::helpers::TestServer;
use crate::helpers::{keys_by_kind, sqlite_file, sqlite_url};

#[tokio::test]
async fn every_captured_order_is_checked_against_fulfilment_through_a_side_that_reads_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let shop = dir.path().join("shop.db");
    sqlite_file(
        &shop,
        "CREATE TABLE fulfilments (order_id INTEGER PRIMARY KEY, amount TEXT);
         INSERT INTO fulfilments VALUES (1, '10.00'), (2, '20.00'), (4, '41.00'), (9, '90.00');",
    )
    .await;
    std::fs::create_dir_all(dir.path().join("invariants")).unwrap();
    std::fs::write(
        dir.path().join("invariants/orders.yaml"),
        "invariants:
  - name: captured-orders-fulfilled
    reconcile:
      left:
        source: log:orders
        stream:
          columns:
            order_id: {path: data.order, type: int}
            amount: {path: data.amount, type: decimal}
            event: {meta: id}
            at: {meta: time}
            attempt: {header: x-attempt}
      right:
        source: shop
        query: SELECT order_id, CAST(amount AS REAL) AS amount FROM fulfilments
      key: order_id
      compare: [amount]
",
    )
    .unwrap();
    let server = TestServer::start(config(
        dir.path(),
        &format!(
            "sources:\n  shop:\n    url: {}\nevent_logs:\n  orders:\n    event_id: id\n    event_time: at\n    from:\n      - webhook: {{secret: \"${{ORDERS_SECRET}}\"}}\n",
            sqlite_url(&shop)
        ),
    ))
    .await;
    let client = reqwest::Client::new();
    for order in 1..=5 {
        let body = serde_json::to_vec(&json!({
            "id": format!("evt_{order}"),
            "at": format!("2026-12-05T10:0{order}:00Z"),
            "data": {"order": order, "amount": format!("{order}0.00")},
        }))
        .unwrap();
        let r = client
            .post(format!("{}/ingest/orders", server.base))
            .header("Trueup-Signature", signed(&body, 0))
            .header("x-attempt", "1")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    run(&server, "captured-orders-fulfilled").await;
    let found = keys_by_kind(
        server.store.as_ref(),
        "captured-orders-fulfilled",
        trueup::store::StatusFilter::Active,
    )
    .await;
    // 3 and 5 never fulfilled, 4 fulfilled for another amount, 9 fulfilled but never captured.
    assert_eq!(found["missing"], [3, 5].into());
    assert_eq!(found["mismatch"], [4].into());
    assert_eq!(found["extra"], [9].into());
    let missing = server
        .store
        .violations(&trueup::store::ViolationFilter {
            invariants: vec!["captured-orders-fulfilled".into()],
            kind: Some(trueup::domain::ViolationKind::Missing),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    // The evidence names the event, its time and its header.
    let evidence = missing[0].evidence.to_string();
    for says in ["evt_3", "2026-12-05T10:03:00", "\"attempt\":\"1\""] {
        assert!(evidence.contains(says), "{says} in {evidence}");
    }

    // What became of each event is written back to the log, with the downstream record.
    let events = |query: &'static str| {
        let (client, base) = (client.clone(), server.base.clone());
        async move {
            let r = client
                .get(format!("{base}/api/v1/logs/orders/events{query}"))
                .bearer_auth(crate::serve::VIEWER)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let page: serde_json::Value = r.json().await.unwrap();
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    format!(
                        "{} {} {}",
                        l["event_id"].as_str().unwrap(),
                        l["outcome"].as_str().unwrap_or("-"),
                        l["target_record_id"].as_str().unwrap_or("-")
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        events("").await,
        [
            "evt_1 processed 1",
            "evt_2 processed 2",
            "evt_3 missing -",
            "evt_4 mismatched 4",
            "evt_5 missing -"
        ]
    );
    assert_eq!(
        events("?outcome=missing&limit=1").await,
        ["evt_3 missing -"]
    );
    // Order 3 reaches fulfilment late, 4 is corrected; a sixth order arrives fulfilled.
    sqlite_file(
        &shop,
        "INSERT INTO fulfilments VALUES (3, '30.00'), (6, '60.00');
         UPDATE fulfilments SET amount = '40.00' WHERE order_id = 4;",
    )
    .await;
    let sixth = json!({
        "id": "evt_6", "at": "2026-12-05T10:06:00Z", "data": {"order": 6, "amount": "60.00"},
    });
    super::deliver(&server.base, &sixth).await;
    run(&server, "captured-orders-fulfilled").await;
    assert_eq!(
        events("").await,
        [
            "evt_1 processed 1",
            "evt_2 processed 2",
            "evt_3 processed 3",
            "evt_4 processed 4",
            "evt_5 missing -",
            "evt_6 processed 6"
        ]
    );
    let trace = trueup::trace::trace(
        server.store.as_ref(),
        &[trueup::domain::InvariantName::parse("captured-orders-fulfilled").unwrap()],
        &[trueup::domain::LogName::parse("orders").unwrap()],
        "evt_3",
        None,
    )
    .await
    .unwrap();
    let last = trace
        .steps
        .iter()
        .find(|s| s.kind == trueup::trace::StepKind::Outcome)
        .unwrap();
    assert!(
        last.summary.starts_with(
            "log `orders`: processed downstream as `3` (`captured-orders-fulfilled`, run "
        ),
        "{}",
        last.summary
    );
    let r = client
        .get(format!("{}/api/v1/logs/nope/events", server.base))
        .bearer_auth(crate::serve::VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn an_event_still_in_its_grace_period_or_past_the_violation_budget_gets_no_outcome_yet() {
    let dir = tempfile::tempdir().unwrap();
    let shop = dir.path().join("shop.db");
    sqlite_file(
        &shop,
        "CREATE TABLE fulfilments (order_id INTEGER PRIMARY KEY);
         INSERT INTO fulfilments VALUES (1);",
    )
    .await;
    std::fs::create_dir_all(dir.path().join("invariants")).unwrap();
    let side = "      left:
        source: log:orders
        stream:
          columns:
            order_id: {path: data.order, type: int}
            at: {meta: time}
      right:
        source: shop
        query: SELECT order_id FROM fulfilments
      key: order_id
";
    std::fs::write(
        dir.path().join("invariants/orders.yaml"),
        format!(
            "invariants:
  - name: fulfilled-within-an-hour
    time_column: at
    grace: 1h
    reconcile:
{side}  - name: fulfilled-budget-of-one
    violation_budget: 1
    reconcile:
{side}"
        ),
    )
    .unwrap();
    let server = TestServer::start(config(
        dir.path(),
        &format!(
            "sources:\n  shop:\n    url: {}\nevent_logs:\n  orders:\n    event_id: id\n    event_time: at\n    from:\n      - webhook: {{secret: \"${{ORDERS_SECRET}}\"}}\n",
            sqlite_url(&shop)
        ),
    ))
    .await;
    let now = chrono::Utc::now();
    // 1 fulfilled, 2 and 3 not: 2 is two hours old (due), 3 a minute (inside its grace).
    for (order, age) in [(1, 120), (2, 120), (3, 1)] {
        let event = json!({
            "id": format!("evt_{order}"),
            "at": (now - chrono::TimeDelta::minutes(age)).to_rfc3339(),
            "data": {"order": order},
        });
        super::deliver(&server.base, &event).await;
    }
    for invariant in ["fulfilled-within-an-hour", "fulfilled-budget-of-one"] {
        run(&server, invariant).await;
    }
    let lines = |invariant: &'static str| outcomes(&server, invariant);
    assert_eq!(
        lines("fulfilled-within-an-hour").await,
        ["evt_1 processed", "evt_2 missing", "evt_3 -"]
    );
    // The budget kept one of two violations: the run cannot tell the other from a processed
    // event, and writes nothing.
    assert_eq!(
        lines("fulfilled-budget-of-one").await,
        ["evt_1 -", "evt_2 -", "evt_3 -"]
    );
    // The event inside its grace period is judged by a later run: the mark stays before it.
    let first_unjudged = server
        .store
        .logged_event("orders", "evt_3")
        .await
        .unwrap()
        .unwrap()
        .id;
    assert_eq!(
        server
            .store
            .outcome_mark("orders", "fulfilled-within-an-hour")
            .await
            .unwrap(),
        first_unjudged - 1
    );
    server.stop().await;
}

/// Writes the invariant `orders-fulfilled` (the log ↔ `fulfilments`, `window` long).
fn windowed_invariant(dir: &std::path::Path, window: &str) {
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(
        dir.join("invariants/orders.yaml"),
        format!(
            "invariants:
  - name: orders-fulfilled
    time_column: at
    reconcile:
      window: {window}
      left:
        source: log:orders
        stream:
          columns:
            order_id: {{path: data.order, type: int}}
            at: {{meta: time}}
      right:
        source: shop
        query: SELECT order_id, at FROM fulfilments
      key: order_id
"
        ),
    )
    .unwrap();
}

/// Runs `invariant` through the API; it must succeed.
async fn run(server: &TestServer, invariant: &str) {
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/invariants/{invariant}/runs",
            server.base
        ))
        .bearer_auth(crate::serve::OPERATOR)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let run: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "succeeded", "{run}");
}

async fn run_and_list(server: &TestServer, invariant: &str) -> Vec<String> {
    run(server, invariant).await;
    outcomes(server, invariant).await
}

/// `event_id outcome` of each event of the log `orders` for `invariant` (`-`: none yet).
async fn outcomes(server: &TestServer, invariant: &str) -> Vec<String> {
    server
        .store
        .event_lines(&trueup::store::OutcomeQuery {
            log: "orders".into(),
            invariant: Some(invariant.into()),
            outcome: None,
            after: 0,
            limit: 100_000,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|l| format!("{} {}", l.event_id, l.outcome.map_or("-", |o| o.as_str())))
        .collect()
}

#[tokio::test]
async fn a_missing_event_that_slid_out_of_the_window_stays_missing_and_thousands_are_judged_in_batches()
 {
    use trueup::domain::{CapturedEvent, EventIdentity, LogName};
    let dir = tempfile::tempdir().unwrap();
    let shop = dir.path().join("shop.db");
    // Two hours old, so inside a 3h window and outside a 1h one.
    let at = chrono::Utc::now() - chrono::TimeDelta::hours(2);
    // Every other order of 12,000 reached fulfilment.
    let fulfilled: Vec<String> = (0..12_000)
        .step_by(2)
        .map(|n| format!("({n}, '{}')", at.to_rfc3339()))
        .collect();
    sqlite_file(
        &shop,
        &format!(
            "CREATE TABLE fulfilments (order_id INTEGER PRIMARY KEY, at TEXT);
             INSERT INTO fulfilments VALUES {};",
            fulfilled.join(", ")
        ),
    )
    .await;
    windowed_invariant(dir.path(), "3h");
    let config_text = format!(
        "sources:\n  shop:\n    url: {}\nevent_logs:\n  orders:\n    event_id: id\n    event_time: at\n    from:\n      - webhook: {{secret: \"${{ORDERS_SECRET}}\"}}\n",
        sqlite_url(&shop)
    );
    let server = TestServer::start(config(dir.path(), &config_text)).await;
    let events: Vec<CapturedEvent> = (0..12_000)
        .map(|n| CapturedEvent {
            identity: EventIdentity {
                event_id: format!("evt_{n:05}"),
                event_at: Some(at),
            },
            source: "webhook".into(),
            position: None,
            headers: serde_json::Map::new(),
            payload: serde_json::to_vec(
                &json!({"id": format!("evt_{n:05}"), "data": {"order": n}}),
            )
            .unwrap(),
        })
        .collect();
    let orders = LogName::parse("orders").unwrap();
    server
        .store
        .ingest(&orders, &events, chrono::Utc::now())
        .await
        .unwrap();
    let lines = run_and_list(&server, "orders-fulfilled").await;
    assert_eq!(lines.len(), 12_000);
    for (n, line) in lines.iter().enumerate() {
        let expected = if n % 2 == 0 { "processed" } else { "missing" };
        assert_eq!(line, &format!("evt_{n:05} {expected}"));
    }
    server.stop().await;

    // The window shrinks to 1h: the events are older than it, so the run reads none of them.
    // Their violations stay open, and so do their outcomes: not read is not processed.
    windowed_invariant(dir.path(), "1h");
    let server = TestServer::start(config(dir.path(), &config_text)).await;
    let again = run_and_list(&server, "orders-fulfilled").await;
    assert_eq!(again, lines);
    server.stop().await;
}

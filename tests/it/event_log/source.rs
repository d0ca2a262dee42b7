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
    let r = client
        .post(format!(
            "{}/api/v1/invariants/captured-orders-fulfilled/runs",
            server.base
        ))
        .bearer_auth(crate::serve::OPERATOR)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let outcome: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{outcome}");
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
    server.stop().await;
}

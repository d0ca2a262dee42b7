//! Replay past the upstream's retention: webhooks captured into the log, the provider's own
//! record emptied, and a consumer that lost six hours — the window replayed from the log.

use std::collections::BTreeMap;

use serde_json::json;

use super::config;
use crate::helpers::{
    TestPg, TestServer, combined_output as text, output_off_runtime as output, trueup_cli,
};

const EVENTS: i64 = 2_000;
const ACCOUNTS: i64 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_replayed_from_the_log_after_the_upstream_dropped_it_delivers_each_missing_event_once_in_order_per_account()
 {
    let data = TestPg::new().await;
    // The provider's events, one every 86.4 s over 48 hours, each account numbering its own;
    // the consumer's inbox lost the six hours from 2026-11-20T10:00 to 16:00.
    data.exec(&format!(
        "CREATE TABLE provider_events (id BIGINT PRIMARY KEY, account TEXT NOT NULL, seq BIGINT NOT NULL,
                                       at TIMESTAMPTZ NOT NULL, amount BIGINT NOT NULL);
         INSERT INTO provider_events
           SELECT g, 'acct-' || (g % {ACCOUNTS}), g / {ACCOUNTS},
                  TIMESTAMPTZ '2026-11-19T16:00:00Z' + (g * 86400) * INTERVAL '1 millisecond', g % 997
           FROM generate_series(1, {EVENTS}) g;
         CREATE TABLE inbox (n BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, account TEXT NOT NULL,
                             seq BIGINT NOT NULL, amount BIGINT NOT NULL);
         INSERT INTO inbox (event_id, account, seq, amount)
           SELECT 'evt-' || id, account, seq, amount FROM provider_events
           WHERE at < '2026-11-20T10:00:00Z' OR at >= '2026-11-20T16:00:00Z' ORDER BY id;"
    ))
    .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&data.url)
        .await
        .unwrap();
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM provider_events WHERE at >= '2026-11-20T10:00:00Z' AND at < '2026-11-20T16:00:00Z'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(lost, 250);

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("invariants")).unwrap();
    std::fs::write(
        dir.path().join("invariants/orders.yaml"),
        r#"invariants:
  - name: orders-received
    severity: high
    time_column: at
    reconcile:
      left:
        source: log:orders
        stream:
          columns:
            event_id: {meta: id}
            at: {meta: time}
            account: account
            seq: {path: seq, type: int}
            amount: {path: amount, type: int}
      right: {source: inbox, query: "SELECT event_id FROM inbox"}
      key: event_id
    replay:
      sql:
        target: inbox-writer
        statement: INSERT INTO inbox (event_id, account, seq, amount) VALUES ({{key.event_id}}, {{left.account}}, {{left.seq}}, {{left.amount}})
      partition: account
      max_window: 6h
"#,
    )
    .unwrap();
    let body = format!(
        "sources:\n  inbox: {{url: \"{}\"}}\ntargets:\n  inbox-writer: {{url: \"{}\"}}\nevent_logs:\n  orders:\n    event_id: id\n    event_time: at\n    from:\n      - webhook: {{secret: \"${{ORDERS_SECRET}}\"}}\n",
        data.reader_url, data.url
    );

    // The provider sent every event as a webhook, and trueup captured them.
    let server = TestServer::start(config(dir.path(), &body)).await;
    let events: Vec<(i64, String, i64, chrono::DateTime<chrono::Utc>, i64)> =
        sqlx::query_as("SELECT id, account, seq, at, amount FROM provider_events ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (id, account, seq, at, amount) in &events {
        let event = json!({
            "id": format!("evt-{id}"), "at": at.to_rfc3339(), "account": account, "seq": seq, "amount": amount,
        });
        super::deliver(&server.base, &event).await;
    }
    server.stop().await;
    // The provider keeps nothing now: only trueup's log holds the lost events.
    sqlx::query("TRUNCATE provider_events")
        .execute(&pool)
        .await
        .unwrap();

    let trueup = |args: &[&str]| {
        let mut c = trueup_cli(&dir.path().join("trueup.yaml"), "oncall");
        c.env("ORDERS_SECRET", super::SECRET).args(args);
        c
    };
    let checked = output(trueup(&["check"])).await;
    assert_eq!(checked.status.code(), Some(1), "{}", text(&checked));
    let opened = output(trueup(&[
        "incident",
        "open",
        "inbox-outage",
        "--from",
        "2026-11-20T10:00:00Z",
        "--to",
        "2026-11-20T16:00:00Z",
        "-i",
        "orders-received",
    ]))
    .await;
    assert!(opened.status.success(), "{}", text(&opened));
    assert!(text(&checked).contains("250"), "{}", text(&checked));
    let window = [
        "--from",
        "2026-11-20T10:00:00Z",
        "--to",
        "2026-11-20T16:00:00Z",
    ];
    let dry = output(trueup(
        &[
            &["replay", "-i", "orders-received", "-f", "json"][..],
            &window,
        ]
        .concat(),
    ))
    .await;
    assert!(dry.status.success(), "{}", text(&dry));
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(dry["would_replay"], 250, "{dry}");
    let proposed = output(trueup(
        &[
            &["replay", "-i", "orders-received", "--execute"][..],
            &window,
        ]
        .concat(),
    ))
    .await;
    assert!(
        text(&proposed).contains("proposed replay plan 1: 250 event(s)"),
        "{}",
        text(&proposed)
    );
    let approved = output(trueup(&["plan", "approve", "1"])).await;
    assert!(approved.status.success(), "{}", text(&approved));
    let applied = output(trueup(&[
        "apply",
        "1",
        "--rate",
        "unlimited",
        "--concurrency",
        "4",
    ]))
    .await;
    assert!(applied.status.success(), "{}", text(&applied));

    // Every event once; the replayed ones in order within each account.
    let inbox: Vec<(i64, String, String, i64)> =
        sqlx::query_as("SELECT n, event_id, account, seq FROM inbox ORDER BY n")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(inbox.len() as i64, EVENTS);
    let replayed = &inbox[(EVENTS - lost) as usize..];
    let mut by_account: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (_, event_id, account, seq) in replayed {
        let id: i64 = event_id.trim_start_matches("evt-").parse().unwrap();
        assert_eq!(
            *seq,
            id / ACCOUNTS,
            "{event_id} carries its own seq from the log"
        );
        by_account.entry(account).or_default().push(*seq);
    }
    assert_eq!(by_account.len() as i64, ACCOUNTS);
    for (account, seqs) in &by_account {
        assert!(seqs.is_sorted(), "{account}: {seqs:?}");
    }
    let again = output(trueup(&["check"])).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));

    // The log says what became of each event: the lost ones replayed (the check after the
    // replay leaves them so), every other one processed, none missing.
    let events = |outcome: &'static str| async move {
        let listed = output(trueup(&[
            "events",
            "orders",
            "--outcome",
            outcome,
            "--limit",
            "10000",
            "-f",
            "json",
        ]))
        .await;
        assert!(listed.status.success(), "{}", text(&listed));
        serde_json::from_slice::<Vec<serde_json::Value>>(&listed.stdout).unwrap()
    };
    let replayed_events = events("replayed").await;
    assert_eq!(replayed_events.len() as i64, lost);
    assert!(
        replayed_events
            .iter()
            .all(|e| e["target_record_id"] == e["event_id"]
                && e["invariant"] == "orders-received"
                && e["processed_at"].as_str().unwrap() > e["ingested_at"].as_str().unwrap())
    );
    assert_eq!(events("processed").await.len() as i64, EVENTS - lost);
    assert!(events("missing").await.is_empty());
    let table = output(trueup(&["events", "orders", "--limit", "3"])).await;
    let table = text(&table);
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].contains("event_id")
            && rows[0].contains("processed_at")
            && rows[0].contains("target_record_id"),
        "{table}"
    );
    assert_eq!(rows.len(), 5, "a header, 3 events, the next page: {table}");
    assert!(rows[4].starts_with("next page: --after "), "{table}");
    let unknown = output(trueup(&["events", "nope"])).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown).contains("no event log is named `nope` (trueup.yaml declares orders)"),
        "{}",
        text(&unknown)
    );

    // What happened to one replayed event, in order.
    let (_, replayed_id, _, _) = &replayed[0];
    let traced = output(trueup(&["trace", replayed_id])).await;
    assert!(traced.status.success(), "{}", text(&traced));
    let lines: Vec<String> = String::from_utf8_lossy(&traced.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let expected = [
        format!("trace of `{replayed_id}`:"),
        "captured into log `orders` from webhook (delivered once)".to_owned(),
        "`orders-received` found it missing (run 1)".to_owned(),
        "incident `inbox-outage` (open) holds it in its window".to_owned(),
        "replay plan 1 action ".to_owned(),
        format!("log `orders`: replayed as `{replayed_id}` by plan 1 action "),
        "replay plan 1 verified: 250 of 250 re-checked no longer hold; 0 missing left in its window".to_owned(),
        "`orders-received` no longer finds it missing: resolved (last seen in run 1)".to_owned(),
    ];
    assert_eq!(lines.len(), expected.len(), "{}", text(&traced));
    for (line, says) in lines.iter().zip(&expected) {
        assert!(
            line.contains(says.as_str()),
            "{says:?} in {line:?}\n{}",
            text(&traced)
        );
    }
    assert!(
        lines[4].contains(
            "applied after 1 attempt (SQL on target `inbox-writer`; idempotency key trueup-"
        ) && lines[4].ends_with(": 1 row(s)"),
        "{}",
        lines[4]
    );
    let json = output(trueup(&["trace", replayed_id, "-f", "json"])).await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let kinds: Vec<&str> = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "captured",
            "violation_opened",
            "incident",
            "action",
            "outcome",
            "verified",
            "violation_resolved"
        ]
    );
    assert_eq!(json["steps"][4]["details"]["outcome"], "replayed");
    assert_eq!(json["steps"][4]["details"]["plan_id"], 1);
    assert_eq!(json["steps"][3]["plan"], 1);
    assert_eq!(json["steps"][3]["details"]["status"], "applied");
    assert_eq!(json["steps"][2]["incident"], "inbox-outage");
    let unknown = output(trueup(&["trace", "evt-nope"])).await;
    assert!(unknown.status.success(), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("nothing is known of `evt-nope`"),
        "{}",
        text(&unknown)
    );
    let wrong = output(trueup(&["trace", replayed_id, "-i", "nope"])).await;
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("no invariant is named `nope`"),
        "{}",
        text(&wrong)
    );

    // The console: from the replay plan's action to the same timeline.
    let server = TestServer::start(config(dir.path(), &body)).await;
    let (status, api) = crate::serve::get(&format!(
        "{}/api/v1/trace?key={replayed_id}&invariant=orders-received",
        server.base
    ))
    .await;
    assert_eq!(status, 200, "{api}");
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["steps"], json["steps"]);
    let browser = crate::browser::open().await;
    browser.sign_in(&server.base, crate::serve::VIEWER).await;
    browser.goto(&format!("{}/ui/plans/1", server.base)).await;
    assert_eq!(browser.text("a.trace-link").await, "trace");
    browser.click("a.trace-link").await;
    browser
        .wait_for(
            "the trace page",
            std::time::Duration::from_secs(10),
            |src| src.contains("id=\"trace-count\""),
        )
        .await;
    let shown_key = browser.text("h1 code").await;
    assert!(
        replayed.iter().any(|(_, id, _, _)| *id == shown_key),
        "{shown_key}"
    );
    assert_eq!(browser.text("#trace-count").await, "7 steps");
    let rows = browser.text("#trace tbody").await;
    for says in [
        "captured into log `orders` from webhook (delivered once)",
        "`orders-received` found it missing (run 1)",
        "incident `inbox-outage` (open) holds it in its window",
        "replay plan 1 verified: 250 of 250 re-checked no longer hold; 0 missing left in its window",
        "`orders-received` no longer finds it missing: resolved (last seen in run 1)",
        &format!("log `orders`: replayed as `{shown_key}` by plan 1 action "),
    ] {
        assert!(rows.contains(says), "{says:?} in {rows}");
    }
    let mut labels = Vec::new();
    for cell in browser
        .client
        .find_all(fantoccini::Locator::Css("#trace tbody tr td span.status"))
        .await
        .unwrap()
    {
        labels.push(cell.text().await.unwrap());
    }
    assert_eq!(
        labels,
        [
            "captured",
            "violation",
            "incident",
            "action",
            "outcome",
            "verified",
            "resolved"
        ],
        "{rows}"
    );
    browser.close().await;
    server.stop().await;
}

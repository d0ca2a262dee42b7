//! A six-hour outage replayed end to end: found, dry-run, approved, applied across a crash, the
//! gap closed and the incident closed on evidence.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_six_hour_outage_is_replayed_once_in_order_across_a_crash_the_gap_closes_and_the_incident_closes_on_evidence()
 {
    let data = TestPg::new().await;
    let ledger = TestPg::new().await;
    // 50,000 events over 48 hours across 40 accounts, each account numbering its own events;
    // the consumer lost the six hours from 2026-11-20T10:00 to 16:00.
    data.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, account TEXT NOT NULL, seq BIGINT NOT NULL,
                              created_at TIMESTAMPTZ NOT NULL, amount BIGINT NOT NULL);
         INSERT INTO events
           SELECT g, 'acct-' || (g % 40), g / 40, TIMESTAMPTZ '2026-11-19T16:00:00Z' + (g * 3456) * INTERVAL '1 millisecond', g % 1000
           FROM generate_series(1, 50000) g;
         CREATE TABLE processed (event_id BIGINT NOT NULL);
         INSERT INTO processed SELECT id FROM events
           WHERE created_at < '2026-11-20T10:00:00Z' OR created_at >= '2026-11-20T16:00:00Z';",
    )
    .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&data.url)
        .await
        .unwrap();
    let (lost, lost_ids): (i64, Vec<i64>) = {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM events WHERE created_at >= '2026-11-20T10:00:00Z' AND created_at < '2026-11-20T16:00:00Z' ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        (ids.len() as i64, ids)
    };
    assert!((5500..7000).contains(&lost), "{lost} lost");
    let consumer = consumer::Consumer {
        seen: Default::default(),
        db: pool.clone(),
        failing: Default::default(),
    };
    let base = consumer::start(consumer.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("invariants")).unwrap();
    std::fs::write(
        dir.path().join("invariants/events.yaml"),
        r#"invariants:
  - name: events-consumed
    severity: high
    time_column: created_at
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, account, seq, amount, created_at FROM events"}
      right: {source: upstream, query: "SELECT event_id FROM processed"}
      key: event_id
    replay:
      http:
        target: consumer
        path: events/{{key.event_id}}
        body: {account: "{{left.account}}", seq: "{{left.seq}}", amount: "{{left.amount}}"}
      idempotency_key: evt-{{key.event_id}}
      partition: account
      max_window: 6h
"#,
    )
    .unwrap();
    let config = dir.path().join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {}\nsources:\n  upstream: {{url: \"{}\", pool_size: 8}}\ntargets:\n  consumer:\n    base_url: {base}\n    allow_private_network: true\n",
            ledger.url, data.reader_url
        ),
    )
    .unwrap();

    let checked = output({
        let mut c = trueup(&config);
        c.arg("check");
        c
    })
    .await;
    assert_eq!(checked.status.code(), Some(1), "{}", text(&checked));
    assert!(
        text(&checked).contains(&format!("missing {lost}")),
        "{}",
        text(&checked)
    );

    // The histogram shows the outage: six hourly buckets, nothing before or after.
    let hist = output({
        let mut c = trueup(&config);
        c.args([
            "violations",
            "-i",
            "events-consumed",
            "-k",
            "missing",
            "--histogram",
            "--bucket",
            "1h",
            "-f",
            "json",
        ]);
        c
    })
    .await;
    let hist: serde_json::Value = serde_json::from_slice(&hist.stdout).unwrap();
    let buckets = hist["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 6, "{hist}");
    assert_eq!(buckets[0]["start"], "2026-11-20T10:00:00Z");
    assert!(
        buckets.iter().all(|b| b["count"].as_u64().unwrap() > 900),
        "{hist}"
    );

    // The incident: before the replay its report shows the exact gap, and it cannot close.
    let incident = |args: &[&str]| {
        let mut c = trueup(&config);
        c.arg("incident").args(args);
        c
    };
    let opened = output(incident(&[
        "open",
        "consumer-outage",
        "--from",
        "2026-11-20T10:00:00Z",
        "--to",
        "2026-11-20T16:00:00Z",
        "-i",
        "events-consumed",
    ]))
    .await;
    assert!(opened.status.success(), "{}", text(&opened));
    let report = output(incident(&["report", "consumer-outage", "-f", "json"])).await;
    assert!(report.status.success(), "{}", text(&report));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    crate::incidents::assert_matches_schema(&report);
    let missing = &report["invariants"][0]["violations"]["by_kind"][0];
    assert_eq!(missing["kind"], "missing");
    assert_eq!(
        (missing["count"].as_i64(), missing["open"].as_i64()),
        (Some(lost), Some(lost))
    );
    let refused = output(incident(&["close", "consumer-outage"])).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains(&format!(
            "{lost} violation(s) in the window are still open (missing {lost})"
        )),
        "{}",
        text(&refused)
    );

    // Partial recovery processed 200 of the lost events before the replay.
    for id in lost_ids.iter().step_by(lost_ids.len() / 200).take(200) {
        sqlx::query("INSERT INTO processed VALUES ($1)")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }

    // No window, no replay.
    let refused = output({
        let mut c = trueup(&config);
        c.args(["replay", "-i", "events-consumed"]);
        c
    })
    .await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused).contains("give both --from and --to"),
        "{}",
        text(&refused)
    );
    let too_wide = output({
        let mut c = trueup(&config);
        c.args([
            "replay",
            "-i",
            "events-consumed",
            "--from",
            "2026-11-20T09:00:00Z",
            "--to",
            "2026-11-20T16:00:00Z",
        ]);
        c
    })
    .await;
    assert_eq!(too_wide.status.code(), Some(2));
    assert!(
        text(&too_wide).contains("wider than"),
        "{}",
        text(&too_wide)
    );

    let window = [
        "--from",
        "2026-11-20T10:00:00Z",
        "--to",
        "2026-11-20T16:00:00Z",
    ];
    let dry = output({
        let mut c = trueup(&config);
        c.args(["replay", "-i", "events-consumed", "-f", "json"])
            .args(window);
        c
    })
    .await;
    assert!(dry.status.success(), "{}", text(&dry));
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(dry["would_replay"], lost - 200, "{dry}");
    assert_eq!(dry["would_skip_processed"], 200, "{dry}");
    assert_eq!(dry["outside_window"], 0, "{dry}");
    assert_eq!(dry["parked"], 0, "{dry}");
    assert!(
        consumer.seen.lock().unwrap().requests.is_empty(),
        "the dry run delivered nothing"
    );

    let proposed = output({
        let mut c = trueup(&config);
        c.args(["replay", "-i", "events-consumed", "--execute"])
            .args(window);
        c
    })
    .await;
    assert!(
        text(&proposed).contains(&format!("proposed replay plan 1: {lost} event(s)")),
        "{}",
        text(&proposed)
    );
    let approved = output({
        let mut c = trueup(&config);
        c.args(["plan", "approve", "1"]);
        c
    })
    .await;
    assert!(approved.status.success(), "{}", text(&approved));

    // Kill the replay mid-way, then run it again.
    let store = trueup::store::open(&trueup::config::SecretUrl::new(ledger.url.clone()))
        .await
        .unwrap();
    let mut child = trueup(&config)
        .args([
            "apply",
            "1",
            "--rate",
            "unlimited",
            "--concurrency",
            "8",
            "--lease",
            "2s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    kill_at(&mut child, store.as_ref(), 1, 2000).await;

    // Paused, it does not apply; resumed, it goes on from where the killed one stopped.
    let paused = output({
        let mut c = trueup(&config);
        c.args(["replay", "pause", "1"]);
        c
    })
    .await;
    assert!(paused.status.success(), "{}", text(&paused));
    let refused = output({
        let mut c = trueup(&config);
        c.args(["apply", "1", "--rate", "unlimited"]);
        c
    })
    .await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("paused"), "{}", text(&refused));
    let out = output({
        let mut c = trueup(&config);
        c.args(["replay", "resume", "1", "--rate", "unlimited"]);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("plan 1 is applied"), "{}", text(&out));
    let plan = store.plan(1).await.unwrap().unwrap();
    assert_eq!(
        plan.verification.as_ref().unwrap()["remaining_in_window"],
        0,
        "{:?}",
        plan.verification
    );
    let cancel_after = output({
        let mut c = trueup(&config);
        c.args(["replay", "cancel", "1"]);
        c
    })
    .await;
    assert_eq!(
        cancel_after.status.code(),
        Some(2),
        "an applied replay cannot be cancelled"
    );
    let audit: Vec<String> = store
        .audit_log(
            &trueup::store::AuditFilter::target("plan:1"),
            trueup::store::AuditPage::After(None),
            10_000,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    for action in [
        "plan.propose",
        "plan.approve",
        "plan.pause",
        "plan.resume",
        "plan.apply.finish",
        "plan.verify",
    ] {
        assert!(audit.iter().any(|a| a == action), "{action}: {audit:?}");
    }

    // After the replay: the report shows what was delivered and skipped, and the replay's own
    // re-check (a run after the last delivery) verifies the window; the incident closes.
    let report = output(incident(&["report", "consumer-outage", "-f", "json"])).await;
    assert!(report.status.success(), "{}", text(&report));
    assert!(
        !text(&report).contains("verified `"),
        "the replay's re-check is the verification; nothing runs again: {}",
        text(&report)
    );
    let json = report.stdout.clone();
    let report: serde_json::Value = serde_json::from_slice(&json).unwrap();
    crate::incidents::assert_matches_schema(&report);
    let inv = &report["invariants"][0];
    let replay = &inv["replays"][0];
    assert_eq!(replay["plan"], 1);
    assert_eq!(replay["events"].as_i64(), Some(lost));
    // The 200 recovered by hand are skipped as already processed, and so are the few the
    // killed worker delivered without recording them (at most one per partition worker).
    let delivered = replay["delivered"].as_i64().unwrap();
    let skipped = replay["skipped_processed"].as_i64().unwrap();
    assert_eq!(delivered + skipped, lost, "{replay}");
    assert!((200..=208).contains(&skipped), "{replay}");
    assert_eq!(
        (replay["parked"].as_i64(), replay["failed"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(replay["remaining_in_window"], 0);
    assert_eq!(replay["complete"], true);
    assert_eq!(
        inv["violations"]["by_kind"][0]["resolved"].as_i64(),
        Some(lost)
    );
    assert_eq!(inv["verification"]["result"], "holds", "{inv:#}");
    assert_eq!(inv["verification"]["passed"], true);
    assert_eq!(inv["consistency"]["replays_complete_and_clean"], true);
    assert_eq!(inv["consistency"]["parity_pct"], 100.0);
    assert_eq!(
        report["verdict"]["summary"], "ready to close",
        "{:#}",
        report["verdict"]
    );
    let closed = output(incident(&["close", "consumer-outage"])).await;
    assert!(closed.status.success(), "{}", text(&closed));
    let frozen = output(incident(&["report", "consumer-outage", "-f", "md"])).await;
    let md = String::from_utf8(frozen.stdout.clone()).unwrap();
    assert!(
        md.contains("**Verdict: closed, ready: every check held**"),
        "{md}"
    );
    assert!(
        md.contains(&format!("| 1 | applied | 2026-11-20 10:00:00 UTC – 2026-11-20 16:00:00 UTC | {} | {} | {} | 0 | 0 | 0 | 0 | yes |",
            thousands(lost),
            thousands(delivered), skipped)),
        "{md}"
    );
    // Later violations leave the closed report as it was.
    sqlx::query("DELETE FROM processed WHERE event_id IN (1, 2, 3)")
        .execute(&pool)
        .await
        .unwrap();
    let later = output({
        let mut c = trueup(&config);
        c.arg("check");
        c
    })
    .await;
    assert_eq!(later.status.code(), Some(1), "{}", text(&later));
    let again = output(incident(&["report", "consumer-outage", "-f", "md"])).await;
    assert_eq!(again.stdout, frozen.stdout, "the closed report is frozen");
    sqlx::query("INSERT INTO processed VALUES (1), (2), (3)")
        .execute(&pool)
        .await
        .unwrap();

    // Exactly the still-missing events, once each, in order within each account.
    let seen = consumer.seen.lock().unwrap().clone();
    assert!(
        seen.out_of_order.is_empty(),
        "{:?}",
        &seen.out_of_order[..seen.out_of_order.len().min(5)]
    );
    assert_eq!(seen.requests.len() as i64, lost - 200);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM processed")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (50_000, 50_000));
    let progress = store.action_progress(1).await.unwrap();
    assert_eq!(
        progress.get(&trueup::domain::ActionStatus::Parked),
        None,
        "{progress:?}"
    );
    store.close().await;
}

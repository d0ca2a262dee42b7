//! Targets under faults: a MySQL target, an HTTP target behind a failing network, a SQL target
//! that stalls.

use super::*;

/// Three events in MariaDB, the second recorded: the invariant `events-recorded` compensates
/// the missing ones through the MySQL target `writer` (marker table included), and its plan
/// of two actions (events 1 and 3) is approved by `alice`.
async fn approved_mysql_plan() -> (
    crate::helpers::TestMysql,
    tempfile::TempDir,
    App,
    Targets,
    i64,
    Actor,
) {
    let my = crate::helpers::TestMysql::new().await;
    my.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, amount DECIMAL(10,2) NOT NULL, at DATETIME NOT NULL);
         INSERT INTO events VALUES (1, 1.50, '2026-11-20 10:00:00'), (2, 2.50, '2026-11-20 10:01:00'), (3, 3.50, '2026-11-20 10:02:00');
         CREATE TABLE records (event_id BIGINT NOT NULL, amount DECIMAL(10,2) NOT NULL, at DATETIME NOT NULL);
         INSERT INTO records VALUES (2, 2.50, '2026-11-20 10:01:00');",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  shop: {{url: \"{}\"}}\ntargets:\n  writer: {{url: \"{}\"}}\n",
            sqlite_url(&dir.path().join("trueup.db")),
            my.reader_url,
            my.url
        ),
        r#"invariants:
  - name: events-recorded
    severity: low
    reconcile:
      left: {source: shop, query: "SELECT id AS event_id, amount, at FROM events"}
      right: {source: shop, query: "SELECT event_id, amount, at FROM records"}
      key: event_id
    compensate:
      missing:
        sql:
          target: writer
          statement: INSERT INTO records (event_id, amount, at) VALUES ({{key.event_id}}, {{left.amount}}, {{left.at}})
"#,
    );
    let app = open(&config).await;
    let targets = Targets::open(&app.config).unwrap();
    let outcomes = app
        .check(&[], &trueup::domain::Actor::local("test"), false)
        .await
        .unwrap();
    let Some(Proposal::Created { plan: id, actions }) = outcomes[0].proposal.clone() else {
        panic!("{:?}", outcomes[0])
    };
    assert_eq!(actions, 2);
    let who = actor("alice", Role::Approver);
    plan::approve(
        app.store.as_ref(),
        id,
        app.invariants.first(),
        &who,
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    (my, dir, app, targets, id, who)
}

#[tokio::test]
async fn a_mysql_target_applies_each_action_once_with_its_marker() {
    let (my, _dir, app, targets, id, who) = approved_mysql_plan().await;
    let report = apply_plan(
        &env(&app, &targets, &who, "events-recorded", "w"),
        id,
        &unlimited(),
    )
    .await
    .unwrap();
    assert_eq!(report.counts.get(&Outcome::Applied), Some(&2), "{report:?}");
    assert_eq!(report.verification.unwrap().closed, 2);
    // The record goes missing again before any run saw the violation resolved: the same
    // occurrence, so a second plan finds the marker and applies nothing twice.
    let mut c = my.connect().await;
    sqlx::query("DELETE FROM records WHERE event_id = 3")
        .execute(&mut c)
        .await
        .unwrap();
    let (rows, markers): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM records), (SELECT COUNT(*) FROM trueup_applied_actions)",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!((rows, markers), (2, 2));
    app.check(&[], &trueup::domain::Actor::local("test"), false)
        .await
        .unwrap();
    let Proposal::Created { plan: again, .. } = plan::propose(
        app.store.as_ref(),
        &app.config,
        &app.invariants[0],
        &who,
        None,
        Utc::now(),
    )
    .await
    .unwrap() else {
        panic!("no second plan")
    };
    plan::approve(
        app.store.as_ref(),
        again,
        app.invariants.first(),
        &actor("bob", Role::Approver),
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    let second = apply_plan(
        &env(&app, &targets, &who, "events-recorded", "w"),
        again,
        &unlimited(),
    )
    .await
    .unwrap();
    assert_eq!(
        second.counts.get(&Outcome::SkippedAlreadyApplied),
        Some(&1),
        "{second:?}"
    );
    targets.close().await;
    app.close().await;
}

#[tokio::test]
async fn an_http_target_behind_a_failing_network_fails_actions_within_its_timeout_and_applies_each_once_after()
 {
    use crate::proxy::{Fault, FaultProxy};
    let data = TestPg::new().await;
    data.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL);
         INSERT INTO events SELECT g, g * 3 FROM generate_series(1, 200) g;
         CREATE TABLE deliveries (event_id BIGINT NOT NULL, amount BIGINT NOT NULL, idempotency_key TEXT NOT NULL);",
    )
    .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&data.url)
        .await
        .unwrap();
    let receiver = receiver::Receiver {
        requests: Default::default(),
        db: pool.clone(),
    };
    let base = receiver::start(receiver.clone()).await;
    let upstream: std::net::SocketAddr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  upstream: {{url: \"{}\"}}\ntargets:\n  consumer:\n    base_url: http://{}/\n    allow_private_network: true\n    timeout: 1s\n",
            sqlite_url(&dir.path().join("trueup.db")),
            data.reader_url,
            proxy.addr
        ),
        r#"invariants:
  - name: events-delivered
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, amount FROM events"}
      right: {source: upstream, query: "SELECT event_id FROM deliveries"}
      key: event_id
    compensate:
      missing:
        http: {target: consumer, path: "deliveries/{{key.event_id}}", body: {amount: "{{left.amount}}"}}
"#,
    );
    let run = |args: &'static [&'static str]| {
        let mut c = trueup(&config);
        c.args(args);
        crate::helpers::output_off_runtime(c)
    };
    let checked = run(&["check"]).await;
    assert!(
        crate::helpers::combined_output(&checked).contains("proposed plan 1: 200 actions"),
        "{}",
        crate::helpers::combined_output(&checked)
    );
    let approved = run(&["plan", "approve", "1"]).await;
    assert!(
        approved.status.success(),
        "{}",
        crate::helpers::combined_output(&approved)
    );

    // Blackholed, then answers cut by a reset: the apply stops after its failures, each
    // attempt ending at the target's 1 s timeout, and applies nothing it cannot confirm.
    for fault in [Fault::Blackhole, Fault::ResetAfter(0)] {
        proxy.set(fault);
        let started = Instant::now();
        let out = run(&[
            "apply",
            "1",
            "--rate",
            "unlimited",
            "--max-failures",
            "3",
            "--retry-failed",
        ])
        .await;
        let took = started.elapsed();
        let text = crate::helpers::combined_output(&out);
        println!("{fault:?}: apply stopped after {took:.1?}");
        assert!(!out.status.success(), "{fault:?}: {text}");
        assert!(
            took < Duration::from_secs(30),
            "{fault:?} took {took:?}: {text}"
        );
    }
    // The network recovers: the rest is applied, each event's effect booked once (an attempt
    // whose answer was cut after it reached the receiver is found done by the re-check).
    proxy.set(Fault::None);
    let out = run(&["apply", "1", "--rate", "unlimited", "--retry-failed"]).await;
    let text = crate::helpers::combined_output(&out);
    assert!(text.contains("plan 1 is applied"), "{text}");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM deliveries")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (200, 200));
    let requests = receiver.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 200);
    println!(
        "{} requests for 200 keys ({} keys sent more than once, booked once)",
        requests.values().sum::<u32>(),
        requests.values().filter(|n| **n > 1).count()
    );
}

#[tokio::test]
async fn a_sql_target_that_stalls_mid_apply_fails_within_its_deadline_and_each_action_lands_once() {
    use crate::proxy::{Fault, FaultProxy};
    let data = TestPg::new().await;
    data.exec(
        "CREATE TABLE payments (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL);
         INSERT INTO payments SELECT g, g * 5 FROM generate_series(1, 100) g;
         -- No unique key: an action applied twice would be a second row.
         CREATE TABLE ledger_entries (payment_id BIGINT NOT NULL, amount BIGINT NOT NULL);",
    )
    .await;
    let server = crate::helpers::pg_server();
    let host_port = server.rsplit('@').next().unwrap().trim_end_matches('/');
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .unwrap()
        .next()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  shop: {{url: \"{}\"}}\ntargets:\n  ledger-writer: {{url: \"{}\", statement_timeout: 1s}}\n",
            sqlite_url(&dir.path().join("trueup.db")),
            data.reader_url,
            proxy.url(&data.url)
        ),
        r#"invariants:
  - name: payments-booked
    reconcile:
      left: {source: shop, query: "SELECT id AS payment_id, amount FROM payments"}
      right: {source: shop, query: "SELECT payment_id, amount FROM ledger_entries"}
      key: payment_id
    compensate:
      missing:
        sql:
          target: ledger-writer
          statement: INSERT INTO ledger_entries (payment_id, amount) VALUES ({{key.payment_id}}, {{left.amount}})
"#,
    );
    let rows = async || -> (i64, i64) {
        let mut c = data.connect().await;
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT payment_id) FROM ledger_entries")
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    for args in [&["check"][..], &["plan", "approve", "1"]] {
        let mut c = trueup(&config);
        c.args(args);
        let out = crate::helpers::output_off_runtime(c).await;
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "{}",
            crate::helpers::combined_output(&out)
        );
    }
    // The apply runs; mid-way the target's connection stalls.
    let mut apply = trueup(&config);
    apply.args(["apply", "1", "--rate", "20/s", "--max-failures", "2"]);
    let running = tokio::task::spawn_blocking(move || apply.output().unwrap());
    let started = Instant::now();
    while rows().await.0 < 20 {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set(Fault::Blackhole);
    let stalled = Instant::now();
    // A hang (the apply waiting on the stalled network past its deadlines) fails here.
    let out = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the apply ends within its deadlines while the target is stalled")
        .unwrap();
    let took = stalled.elapsed();
    let text = crate::helpers::combined_output(&out);
    println!("the apply stopped {took:.1?} after the target stalled");
    assert!(!out.status.success(), "{text}");
    // Each of the two failed actions waits out the target's deadline (1 s + 5 s), no more.
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(20)).contains(&took),
        "{took:?}: {text}"
    );
    assert!(text.contains("failed                      2"), "{text}");
    // Back: every action lands exactly once, the one cut mid-flight included.
    proxy.set(Fault::None);
    let mut again = trueup(&config);
    again.args(["apply", "1", "--rate", "unlimited", "--retry-failed"]);
    let out = crate::helpers::output_off_runtime(again).await;
    let text = crate::helpers::combined_output(&out);
    assert!(text.contains("plan 1 is applied"), "{text}");
    assert_eq!(rows().await, (100, 100));
}

#[tokio::test]
async fn a_mysql_marker_tells_idempotency_keys_apart_exactly_and_refuses_a_table_that_would_not() {
    use trueup::domain::ActionSpec;
    use trueup::plan::targets::Executed;
    let my = crate::helpers::TestMysql::new().await;
    my.exec(
        "CREATE TABLE records (k VARCHAR(2000) NOT NULL);
         CREATE TABLE old_markers (idempotency_key VARCHAR(64) PRIMARY KEY, plan_id BIGINT NOT NULL,
                                   seq INTEGER NOT NULL, applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6));",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  shop: {{url: \"{}\"}}\ntargets:\n  writer: {{url: \"{}\"}}\n  old: {{url: \"{}\", marker_table: old_markers}}\n",
            sqlite_url(&dir.path().join("trueup.db")),
            my.reader_url,
            my.url,
            my.url
        ),
        r#"invariants:
  - name: records-seen
    reconcile:
      left: {source: shop, query: "SELECT k FROM records"}
      right: {source: shop, query: "SELECT k FROM records"}
      key: k
"#,
    );
    let app = open(&config).await;
    let targets = Targets::open(&app.config).unwrap();
    let insert = |target: &str, key: &str| ActionSpec::Sql {
        target: target.into(),
        statement: "INSERT INTO records (k) VALUES (?)".into(),
        params: vec![serde_json::json!(key)],
    };
    // Keys differing only in case, by a trailing space, or past a 64-byte prefix are
    // different actions: each is applied.
    let long = |last: char| format!("{}{last}", "k".repeat(70));
    let keys = [
        "evt_AbC".to_owned(),
        "evt_abc".to_owned(),
        "evt_abc ".to_owned(),
        long('1'),
        long('2'),
    ];
    for (seq, key) in keys.iter().enumerate() {
        match targets
            .execute(&insert("writer", key), key, 1, seq as i64)
            .await
        {
            Executed::Applied(_) => {}
            other => panic!("{key:?}: {other:?}"),
        }
    }
    // The same key again is the same action.
    let again = targets
        .execute(&insert("writer", "evt_abc"), "evt_abc", 1, 9)
        .await;
    assert!(matches!(again, Executed::AlreadyApplied(_)), "{again:?}");
    // A key longer than the marker holds is refused, never cut short.
    let too_long = "k".repeat(768);
    match targets
        .execute(&insert("writer", &too_long), &too_long, 1, 10)
        .await
    {
        Executed::Failed(e) => assert!(
            e.to_string().contains("idempotency key of 768 bytes"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    // A marker table comparing keys by a text collation is refused, saying how to fix it:
    // where an apply meets it first (is the key applied?) and where it writes.
    let asked = targets
        .already_applied(&insert("old", "evt_x"), "evt_x")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        asked.contains("ALTER TABLE old_markers MODIFY idempotency_key VARBINARY(767) NOT NULL"),
        "{asked}"
    );
    match targets
        .execute(&insert("old", "evt_x"), "evt_x", 2, 1)
        .await
    {
        Executed::Failed(e) => assert!(
            e.to_string()
                .contains("ALTER TABLE old_markers MODIFY idempotency_key VARBINARY(767) NOT NULL")
                && e.to_string().contains("differ only in case"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    let mut c = my.connect().await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(rows, 5, "each distinct key applied once, nothing else");
    targets.close().await;
    app.close().await;
}

#[tokio::test]
async fn an_action_whose_own_commit_was_never_recorded_is_recorded_applied_not_skipped() {
    let (my, _dir, app, targets, id, who) = approved_mysql_plan().await;
    // The first action's commit went through on an earlier attempt (its record and its marker
    // row), but its answer was lost: the store still has it pending.
    let first = app.store.plan_actions(id, None, 10).await.unwrap()[0].clone();
    assert_eq!(first.key, serde_json::json!([1]));
    let mut c = my.connect().await;
    sqlx::query(
        "CREATE TABLE trueup_applied_actions (idempotency_key VARBINARY(767) PRIMARY KEY, plan_id BIGINT NOT NULL,
                                              seq INTEGER NOT NULL, applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
    )
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO trueup_applied_actions (idempotency_key, plan_id, seq) VALUES (?, ?, ?)",
    )
    .bind(&first.idempotency_key)
    .bind(id)
    .bind(first.seq)
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query("INSERT INTO records VALUES (1, 1.50, '2026-11-20 10:00:00')")
        .execute(&mut c)
        .await
        .unwrap();
    let report = apply_plan(
        &env(&app, &targets, &who, "events-recorded", "w"),
        id,
        &unlimited(),
    )
    .await
    .unwrap();
    // Both are applied (one by the earlier attempt), and the verification counts both.
    let statuses: Vec<ActionStatus> = app
        .store
        .plan_actions(id, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(
        statuses,
        [ActionStatus::Applied, ActionStatus::Applied],
        "{report:?}"
    );
    assert_eq!(
        report.verification.as_ref().unwrap().closed,
        2,
        "{report:?}"
    );
    assert_eq!(report.state, PlanState::Applied);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(rows, 3, "nothing written twice");
    targets.close().await;
    app.close().await;
}

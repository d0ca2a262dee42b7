//! Applies under stress: killed mid-apply, rate-limited, raced by many applies and processes;
//! each action's effect lands once.

use super::*;

#[tokio::test]
async fn a_ten_thousand_action_sql_plan_killed_three_times_applies_each_action_exactly_once() {
    use rand::Rng;
    let data = TestPg::new().await;
    let ledger = TestPg::new().await;
    data.exec(
        "CREATE TABLE payments (id BIGINT PRIMARY KEY, amount NUMERIC(12,2) NOT NULL);
         INSERT INTO payments SELECT g, 10 + g / 100.0 FROM generate_series(1, 10000) g;
         -- No unique key: an action applied twice would show as a second row.
         CREATE TABLE ledger_entries (payment_id BIGINT NOT NULL, amount NUMERIC(12,2) NOT NULL);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  shop: {{url: \"{}\"}}\ntargets:\n  ledger-writer: {{url: \"{}\"}}\n",
            ledger.url, data.reader_url, data.url
        ),
        r#"invariants:
  - name: payments-booked
    severity: high
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
    let checked = trueup(&config).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(text.contains("proposed plan 1: 10000 actions"), "{text}");
    run_ok(trueup(&config).args(["plan", "approve", "1"]));

    let store = trueup::store::open(&trueup::config::SecretUrl::new(ledger.url.clone()))
        .await
        .unwrap();
    let finished = |store: Arc<dyn Store>| async move {
        store
            .action_progress(1)
            .await
            .unwrap()
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let mut rng = rand::rng();
    let points = [
        rng.random_range(500..3000),
        rng.random_range(3500..6000),
        rng.random_range(6500..9000),
    ];
    for point in points {
        let mut child = trueup(&config)
            .args(["apply", "1", "--rate", "unlimited", "--lease", "2s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while finished(Arc::clone(&store)).await < point {
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "apply made no progress"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "apply ended before the kill point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let out = run_ok(trueup(&config).args(["apply", "1", "--rate", "unlimited", "--lease", "2s"]));
    assert!(out.contains("plan 1 is applied"), "{out}");

    let mut db = data.connect().await;
    let (rows, distinct, wrong): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT payment_id), \
                COUNT(*) FILTER (WHERE l.amount <> p.amount) \
         FROM ledger_entries l JOIN payments p ON p.id = l.payment_id",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct, wrong),
        (10_000, 10_000, 0),
        "killed at {points:?}"
    );
    let markers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trueup_applied_actions")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(markers, 10_000);
    let progress = store.action_progress(1).await.unwrap();
    assert_eq!(progress.get(&ActionStatus::Failed), None, "{progress:?}");
    assert_eq!(
        progress.get(&ActionStatus::Applied).copied().unwrap_or(0)
            + progress.get(&ActionStatus::Skipped).copied().unwrap_or(0),
        10_000,
        "{progress:?}"
    );
    // Every action was claimed by a worker: the ones a killed worker held were taken over.
    let relaunched = store
        .plan_actions(1, None, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.attempts > 1)
        .count();
    assert!(
        relaunched <= 3,
        "{relaunched} actions needed a second attempt"
    );
    store.close().await;
}

#[tokio::test]
async fn a_rate_of_50_per_second_spreads_500_actions_over_at_least_10_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut up =
        String::from("CREATE TABLE events (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL);");
    for id in 1..=500 {
        up.push_str(&format!("INSERT INTO events VALUES ({id}, {id});"));
    }
    sqlite_file(&dir.path().join("upstream.db"), &up).await;
    sqlite_file(
        &dir.path().join("downstream.db"),
        "CREATE TABLE records (event_id INTEGER NOT NULL, amount INTEGER NOT NULL);",
    )
    .await;
    let config = write_config(
        dir.path(),
        &format!(
            "sources:\n  upstream: {{url: {}}}\n  downstream: {{url: {}}}\ntargets:\n  downstream-writer: {{url: {}}}\nplans:\n  approvals: {{critical: 1}}\n",
            sqlite_url(&dir.path().join("upstream.db")),
            sqlite_url(&dir.path().join("downstream.db")),
            sqlite_url(&dir.path().join("downstream.db")),
        ),
        EVENTS_RULES,
    );
    // Exit 1: violations are open (and a plan is proposed).
    let checked = trueup(&config)
        .arg("check")
        .env("TRUEUP_ACTOR", "proposer")
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(1));
    // `--hash` takes the hash a person reviewed: 12 characters at least, hex only; a prefix of
    // other content is refused. None of it counts as an approval.
    let shown = run_ok(trueup(&config).args(["plan", "show", "1", "--format", "json"]));
    let hash = serde_json::from_str::<serde_json::Value>(&shown).unwrap()["plan"]["content_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    for (sent, says) in [
        ("", "the content hash is empty"),
        (&hash[..11], "has 11 characters; give at least 12"),
        ("zzzzzzzzzzzzzz", "`z`, which is not a hexadecimal digit"),
        ("000000000000", "review it again"),
    ] {
        let out = trueup(&config)
            .args(["plan", "approve", "1", "--hash", sent])
            .output()
            .unwrap();
        let text = crate::helpers::combined_output(&out);
        assert_eq!(out.status.code(), Some(2), "{sent:?}: {text}");
        assert!(text.contains(says), "{sent:?}: {text}");
    }
    run_ok(trueup(&config).args(["plan", "approve", "1", "--hash", &hash[..12]]));
    let started = Instant::now();
    let out = run_ok(trueup(&config).args(["apply", "1", "--rate", "50/s"]));
    let took = started.elapsed();
    assert!(out.contains("plan 1 is applied"), "{out}");
    assert!(
        took >= Duration::from_secs(10),
        "500 actions at 50/s took {took:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(records(dir.path()).await.len(), 500);
}

#[tokio::test]
async fn a_thousand_http_actions_raced_by_fifty_applies_have_one_effect_per_idempotency_key() {
    let data = TestPg::new().await;
    let ledger = TestPg::new().await;
    data.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL);
         INSERT INTO events SELECT g, g * 3 FROM generate_series(1, 1000) g;
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
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"invariants:
  - name: events-delivered
    severity: high
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, amount FROM events"}
      right: {source: upstream, query: "SELECT event_id, amount FROM deliveries"}
      key: event_id
    compensate:
      missing:
        http:
          target: consumer
          method: POST
          path: deliveries/{{key.event_id}}
          headers: {X-Trueup-Invariant: "{{violation.invariant}}"}
          body: {event_id: "{{key.event_id}}", amount: "{{left.amount}}"}
  - name: events-delivered-guarded
    severity: high
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, amount FROM events WHERE id <= 3"}
      right: {source: upstream, query: "SELECT event_id, amount FROM deliveries WHERE event_id <= 3"}
      key: event_id
    compensate:
      missing:
        http: {target: guarded, path: "deliveries/{{key.event_id}}", body: {amount: "{{left.amount}}"}}
"#;
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  upstream: {{url: \"{}\", pool_size: 8}}\ntargets:\n  consumer:\n    base_url: {base}\n    allow_private_network: true\n  guarded:\n    base_url: {}\n",
            ledger.url,
            data.reader_url,
            base.replace("127.0.0.1", "localhost")
        ),
        rules,
    );
    let app = Arc::new(open(&config).await);
    let targets = Arc::new(Targets::open(&app.config).unwrap());
    let outcomes = app
        .check(
            &["events-delivered".into()],
            &trueup::domain::Actor::local("test"),
            false,
        )
        .await
        .unwrap();
    let Some(Proposal::Created { plan: id, actions }) = outcomes[0].proposal.clone() else {
        panic!("no plan: {:?}", outcomes[0])
    };
    assert_eq!(actions, 1000);
    plan::approve(
        app.store.as_ref(),
        id,
        app.invariants.first(),
        &actor("alice", Role::Approver),
        None,
        Utc::now(),
    )
    .await
    .unwrap();

    let mut racers = tokio::task::JoinSet::new();
    for n in 0..50 {
        let app = Arc::clone(&app);
        let targets = Arc::clone(&targets);
        racers.spawn(async move {
            let who = actor("alice", Role::Approver);
            let env = env(
                &app,
                &targets,
                &who,
                "events-delivered",
                &format!("racer-{n}"),
            );
            match apply::apply(&env, id, &unlimited(), &CancellationToken::new(), &|_| {}).await {
                Ok(report) => Some(report),
                // A racer that starts after the others finished finds nothing to do.
                Err(e) if e.to_string().contains("already been applied") => None,
                Err(e) => panic!("racer {n}: {e}"),
            }
        });
    }
    let mut applied = 0;
    let mut verified = 0;
    while let Some(report) = racers.join_next().await {
        let Some(report) = report.unwrap() else {
            continue;
        };
        applied += report.counts.get(&Outcome::Applied).copied().unwrap_or(0);
        verified += report.verification.map_or(0, |v| v.closed);
    }
    assert_eq!(applied, 1000, "each action applied by exactly one racer");
    assert_eq!(
        verified, 1000,
        "the one racer that finished the plan verified every action"
    );
    let requests = receiver.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1000);
    assert!(requests.values().all(|n| *n == 1), "a key was sent twice");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT idempotency_key) FROM deliveries")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (1000, 1000));
    // The keys the receiver saw are the plan's, stable per action.
    let stored = app.store.plan_actions(id, None, 1000).await.unwrap();
    assert!(
        stored
            .iter()
            .all(|a| requests.contains_key(&a.idempotency_key))
    );

    // A target on a name that resolves to loopback is refused before any request is sent.
    sqlx::query("DELETE FROM deliveries WHERE event_id <= 3")
        .execute(&pool)
        .await
        .unwrap();
    let outcomes = app
        .check(
            &["events-delivered-guarded".into()],
            &trueup::domain::Actor::local("test"),
            false,
        )
        .await
        .unwrap();
    let Some(Proposal::Created { plan: guarded, .. }) = outcomes[0].proposal.clone() else {
        panic!("no plan: {:?}", outcomes[0])
    };
    plan::approve(
        app.store.as_ref(),
        guarded,
        app.invariants.get(1),
        &actor("alice", Role::Approver),
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    let who = actor("alice", Role::Approver);
    let report = apply_plan(
        &env(&app, &targets, &who, "events-delivered-guarded", "w"),
        guarded,
        &unlimited(),
    )
    .await
    .unwrap();
    assert_eq!(report.counts.get(&Outcome::Failed), Some(&3), "{report:?}");
    let why = report.samples[&Outcome::Failed][0].detail.clone().unwrap();
    assert!(
        why.contains("loopback") && why.contains("allow_private_network"),
        "{why}"
    );
    assert_eq!(report.state, PlanState::Stopped);
    assert_eq!(
        receiver.requests.lock().unwrap().len(),
        1000,
        "no request reached the receiver"
    );
    targets.close().await;
    app.close().await;
}

#[tokio::test]
async fn eight_apply_processes_racing_on_one_http_plan_send_each_key_once() {
    let data = TestPg::new().await;
    let ledger = TestPg::new().await;
    data.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL);
         INSERT INTO events SELECT g, g FROM generate_series(1, 300) g;
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
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  upstream: {{url: \"{}\"}}\ntargets:\n  consumer:\n    base_url: {base}\n    allow_private_network: true\n",
            ledger.url, data.reader_url
        ),
        r#"invariants:
  - name: events-delivered
    severity: high
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, amount FROM events"}
      right: {source: upstream, query: "SELECT event_id, amount FROM deliveries"}
      key: event_id
    compensate:
      missing:
        http: {target: consumer, path: "deliveries/{{key.event_id}}", body: {amount: "{{left.amount}}"}}
"#,
    );
    let checked = trueup(&config).arg("check").output().unwrap();
    assert!(String::from_utf8_lossy(&checked.stdout).contains("proposed plan 1: 300 actions"));
    run_ok(trueup(&config).args(["plan", "approve", "1"]));
    let racers: Vec<std::process::Child> = (0..8)
        .map(|_| {
            trueup(&config)
                .args(["apply", "1", "--rate", "unlimited", "-f", "json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = 0;
    for racer in racers {
        let out = tokio::task::spawn_blocking(move || racer.wait_with_output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Ok(report) = serde_json::from_str::<serde_json::Value>(&stdout) {
            applied += report["counts"]["applied"].as_u64().unwrap_or(0);
        } else {
            // A racer that started after the plan was done is refused, and says so.
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("already been applied"), "{stdout}{stderr}");
        }
    }
    assert_eq!(applied, 300);
    let requests = receiver.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 300);
    assert!(requests.values().all(|n| *n == 1), "a key was sent twice");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 300);
}

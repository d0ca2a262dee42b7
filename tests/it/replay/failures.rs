//! Replays under failure: an event that keeps failing is parked while the replay goes on, and a
//! replay killed at eight points delivers each event once, in order.

use super::*;

/// Sixty events from 10:00:00, a second apart, in three accounts, none processed yet; the
/// consumer (HTTP) refuses events 7 and 31 until `consumer.failing` is cleared; the invariant
/// `events-consumed` replays to it with two attempts, so those two are parked.
pub(crate) struct ConsumerDown {
    pub data: TestPg,
    pub pool: sqlx::PgPool,
    pub consumer: consumer::Consumer,
    pub dir: tempfile::TempDir,
    pub config: std::path::PathBuf,
}

pub(crate) async fn consumer_down() -> ConsumerDown {
    let data = TestPg::new().await;
    data.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, account TEXT NOT NULL, seq BIGINT NOT NULL,
                              created_at TIMESTAMPTZ NOT NULL);
         INSERT INTO events SELECT g, 'acct-' || (g % 3), g, TIMESTAMPTZ '2026-11-20T10:00:00Z' + g * INTERVAL '1 second'
           FROM generate_series(1, 60) g;
         CREATE TABLE processed (event_id BIGINT NOT NULL);",
    )
    .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&data.url)
        .await
        .unwrap();
    let consumer = consumer::Consumer {
        seen: Default::default(),
        db: pool.clone(),
        failing: Default::default(),
    };
    consumer.failing.lock().unwrap().extend([7, 31]);
    let base = consumer::start(consumer.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("invariants")).unwrap();
    std::fs::write(
        dir.path().join("invariants/events.yaml"),
        r#"invariants:
  - name: events-consumed
    time_column: created_at
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, account, seq, created_at FROM events"}
      right: {source: upstream, query: "SELECT event_id FROM processed"}
      key: event_id
    replay:
      http: {target: consumer, path: "events/{{key.event_id}}", body: {account: "{{left.account}}", seq: "{{left.seq}}"}}
      partition: account
      attempts: 2
      max_window: 30m
"#,
    )
    .unwrap();
    let config = dir.path().join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {}\nsources:\n  upstream: {{url: \"{}\"}}\ntargets:\n  consumer:\n    base_url: {base}\n    allow_private_network: true\n",
            sqlite_url(&dir.path().join("trueup.db")),
            data.reader_url
        ),
    )
    .unwrap();
    ConsumerDown {
        data,
        pool,
        consumer,
        dir,
        config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_failing_is_parked_the_replay_goes_on_and_a_retry_delivers_it() {
    let ConsumerDown {
        data: _data,
        pool,
        consumer,
        dir,
        config,
    } = consumer_down().await;
    let run = |args: &'static [&'static str]| {
        let mut c = trueup(&config);
        c.args(args);
        output(c)
    };
    run(&["check"]).await;
    let window: &[&str] = &[
        "--from",
        "2026-11-20T10:00:00Z",
        "--to",
        "2026-11-20T11:00:00Z",
    ];
    // An hour is wider than max_window: it takes --wide and a reason, which is audited.
    let mut unexplained = trueup(&config);
    unexplained
        .args(["replay", "-i", "events-consumed", "--wide", "--execute"])
        .args(window);
    let unexplained = output(unexplained).await;
    assert_eq!(unexplained.status.code(), Some(2));
    assert!(
        text(&unexplained).contains("--wide needs --reason"),
        "{}",
        text(&unexplained)
    );
    let mut propose = trueup(&config);
    propose
        .args([
            "replay",
            "-i",
            "events-consumed",
            "--execute",
            "--wide",
            "--reason",
            "consumer down 10:00-11:00, INC-42",
        ])
        .args(window);
    let proposed = output(propose).await;
    assert!(proposed.status.success(), "{}", text(&proposed));
    let store = trueup::store::open(&trueup::config::SecretUrl::new(sqlite_url(
        &dir.path().join("trueup.db"),
    )))
    .await
    .unwrap();
    let audit = store
        .audit_log(
            &trueup::store::AuditFilter::target("plan:1"),
            trueup::store::AuditPage::After(None),
            50,
        )
        .await
        .unwrap();
    let wide = audit
        .iter()
        .find(|e| e.action == "replay.wide_window")
        .expect("audited");
    assert_eq!(wide.details["reason"], "consumer down 10:00-11:00, INC-42");
    assert_eq!(wide.actor, "cli:oncall");
    store.close().await;
    assert!(run(&["plan", "approve", "1"]).await.status.success());
    let first = run(&["apply", "1", "--rate", "unlimited", "-f", "json"]).await;
    assert_eq!(first.status.code(), Some(1), "{}", text(&first));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["counts"]["applied"], 58, "{report}");
    assert_eq!(report["counts"]["parked"], 2, "{report}");
    assert_eq!(report["state"], "stopped", "{report}");
    assert!(
        report["stopped"]
            .as_str()
            .unwrap()
            .contains("2 event(s) parked"),
        "{report}"
    );
    let detail = report["samples"]["parked"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("failed 2 time(s)") && detail.contains("500"),
        "{detail}"
    );
    // The parked list is visible.
    let shown = run(&["plan", "show", "1", "--limit", "100"]).await;
    assert_eq!(
        text(&shown).matches("[parked]").count(),
        2,
        "{}",
        text(&shown)
    );

    // The consumer is fixed; retrying delivers the parked events and closes the gap.
    consumer.failing.lock().unwrap().clear();
    let retry = run(&["apply", "1", "--rate", "unlimited", "--retry-failed"]).await;
    assert!(retry.status.success(), "{}", text(&retry));
    assert!(
        text(&retry).contains(
            "re-checked the replay window: 0 missing event(s) remain (the gap is closed)"
        ),
        "{}",
        text(&retry)
    );
    let delivered: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT event_id) FROM processed")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(delivered, 60);
}

#[tokio::test]
async fn a_replay_killed_at_eight_points_delivers_each_event_once_and_in_order() {
    let data = TestPg::new().await;
    // 2,399 events in 12 accounts over a day; the consumer lost the 1,200 of the afternoon.
    data.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, account TEXT NOT NULL, seq BIGINT NOT NULL,
                              created_at TIMESTAMPTZ NOT NULL, amount BIGINT NOT NULL);
         INSERT INTO events
           SELECT g, 'acct-' || (g % 12), g / 12, TIMESTAMPTZ '2026-11-20T00:00:00Z' + g * INTERVAL '36 seconds', g
           FROM generate_series(1, 2399) g;
         CREATE TABLE processed (event_id BIGINT NOT NULL);
         INSERT INTO processed SELECT id FROM events WHERE created_at < '2026-11-20T12:00:00Z';",
    )
    .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&data.url)
        .await
        .unwrap();
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
      max_window: 12h
"#,
    )
    .unwrap();
    let config = dir.path().join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {}\nsources:\n  upstream: {{url: \"{}\"}}\ntargets:\n  consumer:\n    base_url: {base}\n    allow_private_network: true\n",
            sqlite_url(&dir.path().join("trueup.db")),
            data.reader_url
        ),
    )
    .unwrap();
    for args in [
        &["check"][..],
        &[
            "replay",
            "-i",
            "events-consumed",
            "--from",
            "2026-11-20T12:00:00Z",
            "--to",
            "2026-11-21T00:00:00Z",
            "--execute",
        ],
        &["plan", "approve", "1"],
    ] {
        let out = output({
            let mut c = trueup(&config);
            c.args(args);
            c
        })
        .await;
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "{args:?}: {}",
            text(&out)
        );
    }
    let lost: i64 = 1200;
    let store = trueup::store::open(&trueup::config::SecretUrl::new(sqlite_url(
        &dir.path().join("trueup.db"),
    )))
    .await
    .unwrap();
    let apply = || {
        trueup(&config)
            .args([
                "apply",
                "1",
                "--rate",
                "unlimited",
                "--concurrency",
                "4",
                "--lease",
                "1s",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut killed_at = Vec::new();
    for k in 1..=8u64 {
        let point = k * lost as u64 / 9;
        let mut child = apply();
        killed_at.push(kill_at(&mut child, store.as_ref(), 1, point).await);
    }
    let last = output({
        let mut c = trueup(&config);
        c.args([
            "apply",
            "1",
            "--rate",
            "unlimited",
            "--concurrency",
            "4",
            "--lease",
            "1s",
        ]);
        c
    })
    .await;
    assert!(last.status.success(), "{}", text(&last));
    let seen = consumer.seen.lock().unwrap().clone();
    let twice = seen.requests.values().filter(|n| **n > 1).count();
    println!(
        "killed at {killed_at:?} of {lost}: {} keys, {twice} sent again after a kill (same key), {} out of order",
        seen.requests.len(),
        seen.out_of_order.len()
    );
    assert_eq!(
        seen.requests.len() as i64,
        lost,
        "every lost event delivered"
    );
    assert!(seen.out_of_order.is_empty(), "{:?}", seen.out_of_order);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM processed")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (2399, 2399), "each event processed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_interrupted_by_ctrl_c_is_stopped_with_its_events_left_and_the_next_apply_delivers_them()
 {
    let ConsumerDown {
        data: _data,
        pool: _pool,
        consumer,
        dir,
        config,
    } = consumer_down().await;
    consumer.failing.lock().unwrap().clear();
    let run = |args: &'static [&'static str]| {
        let mut c = trueup(&config);
        c.args(args);
        output(c)
    };
    replay_proposed_and_approved(&config).await;
    let store = trueup::store::open(&trueup::config::SecretUrl::new(sqlite_url(
        &dir.path().join("trueup.db"),
    )))
    .await
    .unwrap();
    // Ten a second: Ctrl-C lands while most of the 60 events are still to go.
    let child = trueup(&config)
        .args(["apply", "1", "--rate", "10/s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::helpers::wait_for(
        "the apply to finish five actions",
        std::time::Duration::from_secs(60),
        || async { finished_actions(store.as_ref(), 1).await >= 5 },
    )
    .await;
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let interrupted = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let said = text(&interrupted);
    assert_eq!(interrupted.status.code(), Some(1), "{said}");
    assert!(said.contains("stopped: interrupted"), "{said}");
    assert!(said.contains("plan 1 is stopped"), "{said}");
    let delivered = consumer.seen.lock().unwrap().requests.len();
    assert!(
        (5..60).contains(&delivered),
        "{delivered} delivered: {said}"
    );
    let plan = store.plan(1).await.unwrap().unwrap();
    assert_eq!(plan.state, trueup::domain::PlanState::Stopped);
    let progress = store.action_progress(1).await.unwrap();
    let pending = progress
        .get(&trueup::domain::ActionStatus::Pending)
        .copied()
        .unwrap_or(0);
    assert_eq!(pending as usize, 60 - delivered, "{progress:?}");
    store.close().await;

    // Applied again, it delivers the rest, each once, and only then is the plan applied.
    let rest = run(&["apply", "1", "--rate", "unlimited"]).await;
    assert!(rest.status.success(), "{}", text(&rest));
    assert!(text(&rest).contains("plan 1 is applied"), "{}", text(&rest));
    let seen = consumer.seen.lock().unwrap().clone();
    assert_eq!(seen.requests.len(), 60);
    assert!(
        seen.requests.values().all(|n| *n == 1),
        "{:?}",
        seen.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_replay_keep_its_rate_and_wait_as_long_as_the_consumer_asks() {
    // A consumer that is overloaded: every request answers 503; for event 1 it asks for a
    // second's rest.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(i64, std::time::Instant)>>>;
    let seen: Seen = Default::default();
    async fn overloaded(
        axum::extract::State(seen): axum::extract::State<Seen>,
        axum::extract::Path(id): axum::extract::Path<i64>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        seen.lock().unwrap().push((id, std::time::Instant::now()));
        let busy = axum::http::StatusCode::SERVICE_UNAVAILABLE;
        if id == 1 {
            (busy, [("retry-after", "1")]).into_response()
        } else {
            busy.into_response()
        }
    }
    let app = axum::Router::new()
        .route("/events/{id}", axum::routing::post(overloaded))
        .with_state(seen.clone());
    let (_data, _dir, config) = approved_replay(6, 3, 3, app).await;
    let run = |args: &'static [&'static str]| {
        let mut c = trueup(&config);
        c.args(args);
        output(c)
    };
    let applied = run(&[
        "apply",
        "1",
        "--rate",
        "4/s",
        "--concurrency",
        "3",
        "-f",
        "json",
    ])
    .await;
    let report: serde_json::Value =
        serde_json::from_slice(&applied.stdout).unwrap_or_else(|_| panic!("{}", text(&applied)));
    assert_eq!(report["counts"]["parked"], 6, "{report}");
    let mut seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 18, "three tries of each of six events");
    seen.sort_by_key(|(_, at)| *at);
    // Every try, retries included, waits its turn at the rate: 18 requests at 4/s take at
    // least 17 periods of 250 ms (less one, for what a delivery does between its tick and its
    // request). Unpaced, the retries went out between the ticks: all 18 within ~2 s.
    let span = seen[17].1 - seen[0].1;
    assert!(
        span >= std::time::Duration::from_millis(16 * 250),
        "18 requests within {span:?}"
    );
    // And a retry waits the second the consumer asked for.
    let times: Vec<std::time::Instant> = seen
        .iter()
        .filter(|(e, _)| *e == 1)
        .map(|(_, t)| *t)
        .collect();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= std::time::Duration::from_millis(950),
            "event 1 retried after {:?}",
            pair[1] - pair[0]
        );
    }
}

/// `events` events from 10:00:01, a second apart, in `accounts` accounts, none processed; a
/// replay of them (`attempts` tries an event) to the consumer `consumer` serves at
/// `POST /events/{id}`, proposed and approved as plan 1.
async fn approved_replay(
    events: u32,
    accounts: u32,
    attempts: u32,
    consumer: axum::Router,
) -> (TestPg, tempfile::TempDir, std::path::PathBuf) {
    let data = TestPg::new().await;
    data.exec(&format!(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, account TEXT NOT NULL, seq BIGINT NOT NULL,
                              created_at TIMESTAMPTZ NOT NULL);
         INSERT INTO events SELECT g, 'acct-' || (g % {accounts}), g, TIMESTAMPTZ '2026-11-20T10:00:00Z' + g * INTERVAL '1 second'
           FROM generate_series(1, {events}) g;
         CREATE TABLE processed (event_id BIGINT NOT NULL);"
    ))
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, consumer).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("invariants")).unwrap();
    std::fs::write(
        dir.path().join("invariants/events.yaml"),
        r#"invariants:
  - name: events-consumed
    time_column: created_at
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, account, seq, created_at FROM events"}
      right: {source: upstream, query: "SELECT event_id FROM processed"}
      key: event_id
    replay:
      http: {target: consumer, path: "events/{{key.event_id}}", body: {account: "{{left.account}}", seq: "{{left.seq}}"}}
      partition: account
      attempts: ATTEMPTS
      max_window: 30m
"#
            .replace("ATTEMPTS", &attempts.to_string()),
    )
    .unwrap();
    let config = dir.path().join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {}\nsources:\n  upstream: {{url: \"{}\"}}\ntargets:\n  consumer:\n    base_url: {base}\n    allow_private_network: true\n",
            sqlite_url(&dir.path().join("trueup.db")),
            data.reader_url
        ),
    )
    .unwrap();
    replay_proposed_and_approved(&config).await;
    (data, dir, config)
}

/// Under `config`: a run of `events-consumed`, then a replay of 10:00–10:30 proposed and
/// approved as plan 1.
async fn replay_proposed_and_approved(config: &std::path::Path) {
    let run = |args: &'static [&'static str]| {
        let mut c = trueup(config);
        c.args(args);
        output(c)
    };
    run(&["check"]).await;
    let proposed = run(&[
        "replay",
        "-i",
        "events-consumed",
        "--from",
        "2026-11-20T10:00:00Z",
        "--to",
        "2026-11-20T10:30:00Z",
        "--execute",
    ])
    .await;
    assert!(proposed.status.success(), "{}", text(&proposed));
    assert!(run(&["plan", "approve", "1"]).await.status.success());
}

/// Three events of one account (one partition, so only a second worker could take it over),
/// a replay of them approved as plan 1 with two attempts, and a consumer that answers event
/// 1's first delivery 503 with a 6 s Retry-After and takes every other request: what it
/// answered, in order, is in the returned list.
async fn busy_once_replay() -> (
    TestPg,
    std::sync::Arc<std::sync::Mutex<Vec<(i64, u16)>>>,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    // Event 1's first delivery is answered 503 with a 6 s Retry-After (three leases of 2 s);
    // every other request is taken.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(i64, u16)>>>;
    let seen: Seen = Default::default();
    async fn busy_once(
        axum::extract::State(seen): axum::extract::State<Seen>,
        axum::extract::Path(id): axum::extract::Path<i64>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let mut seen = seen.lock().unwrap();
        let first = !seen.iter().any(|(e, _)| *e == id);
        if id == 1 && first {
            seen.push((id, 503));
            let busy = axum::http::StatusCode::SERVICE_UNAVAILABLE;
            return (busy, [("retry-after", "6")]).into_response();
        }
        seen.push((id, 200));
        axum::http::StatusCode::OK.into_response()
    }
    let app = axum::Router::new()
        .route("/events/{id}", axum::routing::post(busy_once))
        .with_state(seen.clone());
    // Three events of one account: one partition, so a second worker could only take it over.
    let (data, dir, config) = approved_replay(3, 1, 2, app).await;
    (data, seen, dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_waits_longer_than_the_lease_keeps_its_partition_and_delivers_once() {
    let (_data, seen, _dir, config) = busy_once_replay().await;
    let run = |args: &'static [&'static str]| {
        let mut c = trueup(&config);
        c.args(args);
        output(c)
    };
    // A second worker is idle, waiting for a partition whose lease runs out.
    let applied = run(&[
        "apply",
        "1",
        "--rate",
        "unlimited",
        "--concurrency",
        "2",
        "--lease",
        "2s",
        "-f",
        "json",
    ])
    .await;
    let report: serde_json::Value =
        serde_json::from_slice(&applied.stdout).unwrap_or_else(|_| panic!("{}", text(&applied)));
    assert_eq!(report["counts"]["applied"], 3, "{report}");
    assert_eq!(report["state"], "applied", "{report}");
    let seen = seen.lock().unwrap().clone();
    // Event 1: refused once, taken once; never sent by two workers. Then 2 and 3, in order.
    assert_eq!(seen, [(1, 503), (1, 200), (2, 200), (3, 200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_interrupted_while_a_retry_waits_sends_nothing_more_and_the_next_apply_goes_on_at_once()
 {
    let (_data, seen, _dir, config) = busy_once_replay().await;
    let run = |args: &'static [&'static str]| {
        let mut c = trueup(&config);
        c.args(args);
        output(c)
    };
    // Interrupted while event 1's retry waits out its 6 s: nothing more goes out, the apply
    // ends at once, and it gives the partition back (a 30 s lease would otherwise hold the
    // next apply up).
    let child = trueup(&config)
        .args(["apply", "1", "--rate", "unlimited", "--lease", "30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::helpers::wait_for("a delivery", std::time::Duration::from_secs(30), || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    // Whether the signal finds it reading the answer or already waiting, the retry waits
    // no more.
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let interrupted_at = std::time::Instant::now();
    let interrupted = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        interrupted_at.elapsed() < std::time::Duration::from_secs(4),
        "the apply waited out the retry: {:?}",
        interrupted_at.elapsed()
    );
    let said = text(&interrupted);
    assert_eq!(interrupted.status.code(), Some(1), "{said}");
    assert!(said.contains("plan 1 is stopped"), "{said}");
    assert_eq!(seen.lock().unwrap().clone(), [(1, 503)], "{said}");
    // The next apply takes the partition at once and delivers each event once, in order.
    let next_started = std::time::Instant::now();
    let rest = run(&["apply", "1", "--rate", "unlimited", "--lease", "30s"]).await;
    assert!(rest.status.success(), "{}", text(&rest));
    assert!(
        next_started.elapsed() < std::time::Duration::from_secs(20),
        "the next apply waited for the lease: {:?}",
        next_started.elapsed()
    );
    assert_eq!(
        seen.lock().unwrap().clone(),
        [(1, 503), (1, 200), (2, 200), (3, 200)]
    );
}

/// Every event is delivered, and then the re-check of the replay's window fails (its run
/// cannot stage what it found): the apply fails saying why, and the plan, applied, says its
/// re-check failed and what to run, where it would otherwise read as re-checking for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_window_recheck_fails_is_applied_and_says_the_recheck_failed() {
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<i64>>>;
    let seen: Seen = Default::default();
    async fn take(
        axum::extract::State(seen): axum::extract::State<Seen>,
        axum::extract::Path(id): axum::extract::Path<i64>,
    ) -> axum::http::StatusCode {
        seen.lock().unwrap().push(id);
        axum::http::StatusCode::OK
    }
    let app = axum::Router::new()
        .route("/events/{id}", axum::routing::post(take))
        .with_state(seen.clone());
    let (_data, _dir, config) = approved_replay(3, 1, 1, app).await;
    let mut apply = trueup(&config);
    apply
        .args(["apply", "1", "--rate", "unlimited"])
        .env("FAILPOINTS", "runner.stage=return");
    let applied = output(apply).await;
    let said = text(&applied);
    assert_eq!(applied.status.code(), Some(2), "{said}");
    assert!(
        said.contains("plan 1: the replay finished, but its window could not be re-checked: "),
        "{said}"
    );
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);

    let read = |args: &'static [&'static str]| {
        let mut c = trueup(&config);
        c.args(args);
        output(c)
    };
    let shown = text(&read(&["plan", "show", "1"]).await);
    assert!(shown.contains("\n  status:    applied\n"), "{shown}");
    assert!(!shown.contains("verified:"), "{shown}");
    let recheck = shown
        .lines()
        .find(|l| l.starts_with("  re-check:  "))
        .unwrap_or_else(|| panic!("no re-check line: {shown}"));
    assert!(
        recheck.starts_with(
            "  re-check:  failed: the replay finished, but its window could not be re-checked: "
        ) && recheck.ends_with("(the plan is applied; run `trueup check -i events-consumed --full` to see what holds now)"),
        "{recheck}"
    );
    // The key's trace says the same, never that the replay was verified.
    let traced = text(&read(&["trace", "1", "-i", "events-consumed"]).await);
    assert!(
        traced.contains(
            "re-check failed  replay plan 1 applied; re-check failed: the replay finished, but its window could not be re-checked: "
        ) && !traced.contains("verified"),
        "{traced}"
    );
}

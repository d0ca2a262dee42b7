//! Replaying lost events: seeing the gap (histogram by event time).

use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use trueup::app::App;
use trueup::config::Config;
use trueup::domain::ViolationKind;
use trueup::store::{StatusFilter, ViolationFilter};

use crate::helpers::{TestPg, sqlite_file, sqlite_url};

/// 300 upstream events a minute apart from 00:00; the downstream lost the 30 from 02:00 to
/// 02:29. With `compensated`, a `missing` event is repaired by inserting it downstream.
pub(crate) async fn outage(dir: &Path, store: &str, compensated: bool) -> std::path::PathBuf {
    let start: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
    let mut up =
        String::from("CREATE TABLE events (id INTEGER PRIMARY KEY, created_at DATETIME NOT NULL);");
    let mut down = String::from("CREATE TABLE processed (event_id INTEGER PRIMARY KEY);");
    for i in 0..300 {
        let at = start + TimeDelta::minutes(i);
        up.push_str(&format!(
            "INSERT INTO events VALUES ({i}, '{}');",
            at.format("%Y-%m-%d %H:%M:%S")
        ));
        if !(120..150).contains(&i) {
            down.push_str(&format!("INSERT INTO processed VALUES ({i});"));
        }
    }
    sqlite_file(&dir.join("up.db"), &up).await;
    sqlite_file(&dir.join("down.db"), &down).await;
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    let compensation = if compensated {
        "    compensate:\n      missing:\n        sql:\n          target: down-writer\n          statement: INSERT INTO processed (event_id) VALUES ({{key.event_id}})\n"
    } else {
        ""
    };
    std::fs::write(
        dir.join("invariants/events.yaml"),
        format!(
            r#"invariants:
  - name: events-processed
    severity: high
    owner: billing-team
    time_column: created_at
    reconcile:
      left: {{source: up, query: "SELECT id AS event_id, created_at FROM events"}}
      right: {{source: down, query: "SELECT event_id FROM processed"}}
      key: event_id
{compensation}"#
        ),
    )
    .unwrap();
    let config = dir.join("trueup.yaml");
    let down = sqlite_url(&dir.join("down.db"));
    std::fs::write(
        &config,
        format!(
            "store: {store}\nsources:\n  up: {{url: {}}}\n  down: {{url: {down}}}\ntargets:\n  down-writer: {{url: {down}}}\n",
            sqlite_url(&dir.join("up.db")),
        ),
    )
    .unwrap();
    config
}

async fn the_histogram_shows_the_outage_window(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = outage(dir.path(), store, false).await;
    let app = App::with_config(Config::load(&config).unwrap())
        .await
        .unwrap();
    let outcomes = app
        .check(&[], &trueup::domain::Actor::local("test"))
        .await
        .unwrap();
    assert_eq!(outcomes[0].run.open_after, 30, "{:?}", outcomes[0]);
    let filter = ViolationFilter {
        invariants: vec!["events-processed".into()],
        status: StatusFilter::Active,
        kind: Some(ViolationKind::Missing),
        ..ViolationFilter::default()
    };
    let times = app.store.event_times(&filter).await.unwrap();
    let buckets = trueup::domain::histogram(&times, TimeDelta::minutes(10)).unwrap();
    let shown: Vec<(String, u64)> = buckets
        .iter()
        .map(|b| (b.start.format("%H:%M").to_string(), b.count))
        .collect();
    assert_eq!(
        shown,
        [
            ("02:00".into(), 10),
            ("02:10".into(), 10),
            ("02:20".into(), 10)
        ]
    );
    // A window on the event time selects part of it.
    let part = app
        .store
        .event_times(&ViolationFilter {
            event_from: Some("2026-11-20T02:05:00Z".parse().unwrap()),
            event_until: Some("2026-11-20T02:15:00Z".parse().unwrap()),
            ..filter
        })
        .await
        .unwrap();
    assert_eq!(part.len(), 10);
    app.close().await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trueup"))
        .arg("--config")
        .arg(&config)
        .args([
            "violations",
            "-i",
            "events-processed",
            "-k",
            "missing",
            "--histogram",
            "--bucket",
            "10m",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2026-11-20 02:00       10  ██"), "{text}");
    assert!(
        text.contains("30 violation(s) with an event time, in 3 bucket(s)"),
        "{text}"
    );
}

#[tokio::test]
async fn the_histogram_shows_the_outage_window_on_the_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    the_histogram_shows_the_outage_window(&sqlite_url(&dir.path().join("trueup.db"))).await;
}

#[tokio::test]
async fn the_histogram_shows_the_outage_window_on_the_postgres_store() {
    let pg = TestPg::new().await;
    the_histogram_shows_the_outage_window(&pg.url).await;
}

/// A downstream consumer: books each event once per Idempotency-Key into `processed`, and
/// checks that each account's events arrive in sequence order.
mod consumer {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};

    #[derive(Clone, Default)]
    pub struct Seen {
        pub requests: HashMap<String, u32>,
        pub last_seq: HashMap<String, i64>,
        pub out_of_order: Vec<String>,
    }

    #[derive(Clone)]
    pub struct Consumer {
        pub seen: Arc<Mutex<Seen>>,
        pub db: sqlx::PgPool,
        /// Events this consumer refuses (HTTP 500) for now.
        pub failing: Arc<Mutex<std::collections::HashSet<i64>>>,
    }

    async fn receive(
        State(c): State<Consumer>,
        Path(id): Path<i64>,
        headers: HeaderMap,
        body: String,
    ) -> StatusCode {
        let Some(key) = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            return StatusCode::BAD_REQUEST;
        };
        // A real consumer books the key and the effect together: run it to the end even if
        // the sender dies mid-request (axum drops a handler whose client went away).
        tokio::spawn(process(c, id, key, body)).await.unwrap()
    }

    async fn process(c: Consumer, id: i64, key: String, body: String) -> StatusCode {
        if c.failing.lock().unwrap().contains(&id) {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        let event: serde_json::Value = serde_json::from_str(&body).unwrap();
        let account = event["account"].as_str().unwrap().to_owned();
        let seq = event["seq"].as_i64().unwrap();
        let first = {
            let mut seen = c.seen.lock().unwrap();
            let n = seen.requests.entry(key.to_owned()).or_default();
            *n += 1;
            let first = *n == 1;
            if first {
                let last = seen.last_seq.entry(account.clone()).or_insert(i64::MIN);
                if seq <= *last {
                    let msg = format!("{account}: seq {seq} after {last}");
                    seen.out_of_order.push(msg);
                } else {
                    *last = seq;
                }
            }
            first
        };
        if first {
            sqlx::query("INSERT INTO processed (event_id) VALUES ($1)")
                .bind(id)
                .execute(&c.db)
                .await
                .unwrap();
        }
        StatusCode::OK
    }

    pub async fn start(c: Consumer) -> String {
        let app = axum::Router::new()
            .route("/events/{id}", axum::routing::post(receive))
            .with_state(c);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/")
    }
}

use crate::helpers::{combined_output as text, output_off_runtime as output};
use trueup::incident::render::thousands;

fn trueup(config: &Path) -> std::process::Command {
    crate::helpers::trueup_cli(config, "oncall")
}

// Multi-threaded, and every child process awaited off the runtime: the consumer this test
// runs must keep answering while trueup delivers to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_six_hour_outage_is_replayed_once_in_order_across_a_crash_the_gap_closes_and_the_incident_closes_on_evidence()
 {
    use std::time::{Duration, Instant};
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
    let started = Instant::now();
    loop {
        let done: u64 = store
            .action_progress(1)
            .await
            .unwrap()
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| *n)
            .sum();
        if done >= 2000 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay ended before the kill"
        );
        assert!(started.elapsed() < Duration::from_secs(180), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

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
        .audit_log(Some("plan:1"), None, 10_000)
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
    assert!(md.contains("**Verdict: ready to close**"), "{md}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_failing_is_parked_the_replay_goes_on_and_a_retry_delivers_it() {
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
    let audit = store.audit_log(Some("plan:1"), None, 50).await.unwrap();
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
    use std::time::{Duration, Instant};
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
    let finished = async || -> u64 {
        store
            .action_progress(1)
            .await
            .unwrap()
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| *n)
            .sum()
    };
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
        let started = Instant::now();
        while finished().await < point {
            if started.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("the replay made no progress past {point}");
            }
            if child.try_wait().unwrap().is_some() {
                panic!("the replay ended before the kill point {point}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        killed_at.push(finished().await);
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

//! Replaying lost events: seeing the gap (histogram by event time).

pub(crate) mod failures;
mod outage;
mod stream;

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
        .check(&[], &trueup::domain::Actor::local("test"), false)
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
pub(crate) mod consumer {
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

/// How many of `plan`'s actions are in a final state.
pub(crate) async fn finished_actions(store: &dyn trueup::store::Store, plan: i64) -> u64 {
    store
        .action_progress(plan)
        .await
        .unwrap()
        .iter()
        .filter(|(s, _)| s.is_final())
        .map(|(_, n)| *n)
        .sum()
}

/// Sends SIGKILL to `child` (an `apply` of `plan`) once at least `point` of the plan's actions
/// are finished, and waits for it to die; returns how many were finished then. Fails the test
/// when the apply ends first or stops making progress for two minutes.
pub(crate) async fn kill_at(
    child: &mut std::process::Child,
    store: &dyn trueup::store::Store,
    plan: i64,
    point: u64,
) -> u64 {
    let started = std::time::Instant::now();
    while finished_actions(store, plan).await < point {
        if started.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the apply made no progress past {point}");
        }
        if child.try_wait().unwrap().is_some() {
            panic!("the apply ended before the kill point {point}");
        }
        // Polling the store: the kill should land close after the point.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    finished_actions(store, plan).await
}

fn trueup(config: &Path) -> std::process::Command {
    crate::helpers::trueup_cli(config, "oncall")
}

// Multi-threaded, and every child process awaited off the runtime: the consumer this test
// runs must keep answering while trueup delivers to it.

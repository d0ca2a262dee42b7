//! Replaying lost events: seeing the gap (histogram by event time).

use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use trueup::app::App;
use trueup::config::Config;
use trueup::domain::ViolationKind;
use trueup::store::{StatusFilter, ViolationFilter};

use crate::helpers::{TestPg, sqlite_file, sqlite_url};

/// 300 upstream events a minute apart from 00:00; the downstream lost the 30 from 02:00 to
/// 02:29.
async fn outage(dir: &Path, store: &str) -> std::path::PathBuf {
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
    std::fs::write(
        dir.join("invariants/events.yaml"),
        r#"invariants:
  - name: events-processed
    time_column: created_at
    reconcile:
      left: {source: up, query: "SELECT id AS event_id, created_at FROM events"}
      right: {source: down, query: "SELECT event_id FROM processed"}
      key: event_id
"#,
    )
    .unwrap();
    let config = dir.join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {store}\nsources:\n  up: {{url: {}}}\n  down: {{url: {}}}\n",
            sqlite_url(&dir.join("up.db")),
            sqlite_url(&dir.join("down.db"))
        ),
    )
    .unwrap();
    config
}

async fn the_histogram_shows_the_outage_window(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = outage(dir.path(), store).await;
    let app = App::with_config(Config::load(&config).unwrap())
        .await
        .unwrap();
    let outcomes = app.check(&[]).await.unwrap();
    assert_eq!(outcomes[0].open_after, 30, "{:?}", outcomes[0]);
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

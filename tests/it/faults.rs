//! The fault suite of docs/reliability.md: a failure injected at each stage of a run — read,
//! decode, merge, stage, commit — by a fail point in the test build's `trueup` (set through
//! `FAILPOINTS`, so each injection is its own process), as an error and as a panic, never
//! resolves a violation: the run fails, exits 2, and the ledger is as it was.

use std::path::Path;

use trueup::config::SecretUrl;
use trueup::store::{RunStatus, StatusFilter, Store, ViolationFilter};

use crate::helpers::{combined_output, sqlite_file, sqlite_url, trueup_cli};

/// Every fail point on the path of a run, in the order a run meets them.
pub const RUN_POINTS: [&str; 6] = [
    "source.read",
    "source.batch",
    "source.decode",
    "engine.merge",
    "runner.stage",
    "store.commit",
];

async fn active(store: &dyn Store) -> usize {
    store
        .violations(&ViolationFilter {
            status: StatusFilter::Active,
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

/// Two SQLite sources and a reconcile that finds 10 missing rows and 1 mismatch.
async fn project(dir: &Path) -> std::path::PathBuf {
    let mut up = String::from("CREATE TABLE events (id INTEGER PRIMARY KEY, amount INTEGER);");
    let mut down =
        String::from("CREATE TABLE records (event_id INTEGER PRIMARY KEY, amount INTEGER);");
    for id in 1..=20 {
        up.push_str(&format!("INSERT INTO events VALUES ({id}, {});", id * 100));
        if id <= 10 {
            let amount = if id == 3 { 1 } else { id * 100 };
            down.push_str(&format!("INSERT INTO records VALUES ({id}, {amount});"));
        }
    }
    sqlite_file(&dir.join("up.db"), &up).await;
    sqlite_file(&dir.join("down.db"), &down).await;
    let config = dir.join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {}\nsources:\n  up: {{url: {}}}\n  down: {{url: {}}}\n",
            sqlite_url(&dir.join("trueup.db")),
            sqlite_url(&dir.join("up.db")),
            sqlite_url(&dir.join("down.db")),
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(
        dir.join("invariants/events.yaml"),
        r#"invariants:
  - name: events-recorded
    reconcile:
      left: {source: up, query: "SELECT id, amount FROM events"}
      right: {source: down, query: "SELECT event_id AS id, amount FROM records"}
      key: id
      compare: [amount]
"#,
    )
    .unwrap();
    config
}

#[tokio::test]
async fn a_failure_injected_at_any_stage_of_a_run_fails_it_and_resolves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path()).await;
    let first = trueup_cli(&config, "tester").arg("check").output().unwrap();
    assert_eq!(first.status.code(), Some(1), "{}", combined_output(&first));
    let store = trueup::store::open(&SecretUrl::new(sqlite_url(&tmp.path().join("trueup.db"))))
        .await
        .unwrap();
    assert_eq!(active(store.as_ref()).await, 11);

    // Repair everything: from now on, any run that completes resolves all eleven.
    let mut fix = String::from("UPDATE records SET amount = 300 WHERE event_id = 3;");
    for id in 11..=20 {
        fix.push_str(&format!("INSERT INTO records VALUES ({id}, {});", id * 100));
    }
    sqlite_file(&tmp.path().join("down.db"), &fix).await;

    let mut table = Vec::new();
    for point in RUN_POINTS {
        for action in ["return", "panic"] {
            let out = trueup_cli(&config, "tester")
                .arg("check")
                .env("FAILPOINTS", format!("{point}={action}"))
                .output()
                .unwrap();
            let text = combined_output(&out);
            let open = active(store.as_ref()).await;
            let last = store.runs(Some("events-recorded"), 1).await.unwrap();
            table.push(format!(
                "{point:<14} {action:<7} exit {:?}  run {:?}  still open {open}/11",
                out.status.code(),
                last[0].status
            ));
            assert_eq!(out.status.code(), Some(2), "{point}={action}: {text}");
            assert_eq!(open, 11, "{point}={action} resolved something: {text}");
            assert_eq!(
                last[0].status,
                RunStatus::Failed,
                "{point}={action}: {text}"
            );
            let error = last[0].error.as_deref().unwrap_or_default();
            assert!(
                error.contains("injected")
                    || error.contains("panicked")
                    || error.contains("did not finish"),
                "{point}={action}: the run says why it failed: {error}"
            );
        }
    }
    println!("{}", table.join("\n"));
    println!(
        "{} injections ({} points × return/panic): 0 resolved",
        table.len(),
        RUN_POINTS.len()
    );
    // The same run without a fault resolves all eleven: the faults were all that held them.
    let clean = trueup_cli(&config, "tester").arg("check").output().unwrap();
    assert_eq!(clean.status.code(), Some(0), "{}", combined_output(&clean));
    assert_eq!(active(store.as_ref()).await, 0);
}

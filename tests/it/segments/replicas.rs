//! Three `trueup serve` replicas share one split run; one of them, holding a segment, is
//! killed; another finishes that segment, and the run's counts are exact.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use trueup::config::SecretUrl;
use trueup::domain::{RunStatus, ViolationKind};
use trueup::store::{self, SegmentStatus, StatusFilter, ViolationFilter};

use crate::helpers::TestPg;
use crate::replicas::{Replica, spawn_serve};

const ROWS: i64 = 3000;

#[tokio::test]
async fn a_replica_killed_holding_a_segment_loses_it_to_another_and_the_run_counts_exactly() {
    let db = TestPg::new().await;
    // 30 missing (every 100th key), 20 mismatched (7 mod 150), 10 extra (past the end).
    db.exec(&format!(
        "CREATE TABLE payments (id bigint PRIMARY KEY, amount int NOT NULL);
         INSERT INTO payments SELECT i, i % 97 FROM generate_series(1, {ROWS}) AS i;
         CREATE TABLE entries (id bigint PRIMARY KEY, amount int NOT NULL);
         INSERT INTO entries SELECT id, amount FROM payments WHERE id % 100 <> 0;
         UPDATE entries SET amount = amount + 1 WHERE id % 150 = 7;
         INSERT INTO entries SELECT i, 1 FROM generate_series({ROWS} + 1, {ROWS} + 10) AS i;"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("invariants")).unwrap();
    // Every read of a side takes 2 s, so that segments are in flight long enough to kill a
    // replica holding one.
    std::fs::write(
        dir.path().join("invariants/split.yaml"),
        "invariants:
  - name: payments-ledger
    schedule: \"*/2 * * * * *\"
    reconcile:
      left: {source: pg, query: \"SELECT id, amount FROM payments, (SELECT pg_sleep(2)) AS s\"}
      right: {source: pg, query: \"SELECT id, amount FROM entries, (SELECT pg_sleep(2)) AS s\"}
      key: id
      mode: stream
      segments: 8
",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("trueup.yaml"),
        format!(
            "store: {url}\nsources:\n  pg:\n    url: {reader}\nserve:\n  lease: 2s\n  run_timeout: 90s\n",
            url = db.url,
            reader = db.reader_url
        ),
    )
    .unwrap();
    let store = store::open(&SecretUrl::new(db.url.clone())).await.unwrap();
    let mut replicas: Vec<Replica> = (0..3).map(|n| spawn_serve(dir.path(), n)).collect();
    let pid_of = |owner: &str, replicas: &[Replica]| {
        replicas
            .iter()
            .position(|r| owner.contains(&format!("-{}-", r.0.id())))
    };

    // A segment of the first run held by a replica that did not begin the run.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (run, seq, victim) = 'found: loop {
        assert!(
            Instant::now() < deadline,
            "no segment held by another replica"
        );
        let runs = store.runs(Some("payments-ledger"), 10).await.unwrap();
        if let Some(run) = runs.iter().find(|r| r.status == RunStatus::Running) {
            let coordinator = store
                .ticks("payments-ledger", 1000)
                .await
                .unwrap()
                .into_iter()
                .find(|t| t.run_id == Some(run.id))
                .map(|t| t.owner);
            for s in store.segments(run.id).await.unwrap() {
                if s.status == SegmentStatus::Claimed
                    && let Some(owner) = &s.owner
                    && Some(owner) != coordinator.as_ref()
                    && let Some(i) = pid_of(owner, &replicas)
                {
                    break 'found (run.id, s.seq, i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let killed = replicas[victim].0.id();
    replicas[victim].0.kill().unwrap();
    replicas[victim].0.wait().unwrap();

    // Another worker takes the segment over; the run completes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut taken_over_by = None;
    let record = loop {
        assert!(Instant::now() < deadline, "run {run} did not complete");
        if let Some(s) = store
            .segments(run)
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.seq == seq && s.attempt > 1)
        {
            taken_over_by = s.owner;
        }
        let record = store
            .runs(Some("payments-ledger"), 100)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.id == run)
            .unwrap();
        if record.status != RunStatus::Running {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record.status, RunStatus::Succeeded, "{:?}", record.error);
    let new_owner = taken_over_by.expect("the killed replica's segment was claimed again");
    assert!(!new_owner.contains(&format!("-{killed}-")), "{new_owner}");

    // Exactly the planted differences, counted once each.
    assert_eq!(
        (record.stats.rows_left, record.stats.rows_right),
        (ROWS as u64, (ROWS - 30 + 10) as u64)
    );
    let counts: BTreeMap<ViolationKind, u64> = record.stats.counts.clone();
    assert_eq!(
        counts,
        BTreeMap::from([
            (ViolationKind::Missing, 30),
            (ViolationKind::Mismatch, 20),
            (ViolationKind::Extra, 10),
        ])
    );
    // (New if this is the first run to complete; else still open from an earlier one.)
    assert_eq!(
        (
            record.change.new + record.change.still_open,
            record.change.resolved
        ),
        (60, 0)
    );
    let open = store
        .violations(&ViolationFilter {
            invariants: vec!["payments-ledger".into()],
            status: StatusFilter::Active,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let keys = |kind: &str| -> BTreeSet<i64> {
        open.iter()
            .filter(|v| v.kind == kind)
            .map(|v| v.key[0].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        keys("missing"),
        (1..=ROWS).filter(|i| i % 100 == 0).collect()
    );
    assert_eq!(
        keys("mismatch"),
        (1..=ROWS).filter(|i| i % 150 == 7).collect()
    );
    assert_eq!(keys("extra"), (ROWS + 1..=ROWS + 10).collect());
    assert_eq!(open.len(), 60);
    drop(replicas);
    store.close().await;
}

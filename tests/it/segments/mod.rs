//! Split runs: segments in the store the same on both backends (claims, leases, takeovers
//! whose earlier attempt never reaches the ledger), and replicas sharing one run's segments.

mod replicas;

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use serde_json::json;
use trueup::config::SecretUrl;
use trueup::domain::{InvariantName, RunStats, Value, Violation, ViolationKind};
use trueup::store::{self, SegmentStatus, StatusFilter, Store, StoreError, ViolationFilter};

use crate::helpers::TestPg;

fn missing(key: i64, note: &str) -> Violation {
    Violation {
        kind: ViolationKind::Missing,
        key: vec![Value::Int(key)],
        discriminator: None,
        event_at: None,
        evidence: json!({"left": {"id": key}, "note": note}),
    }
}

fn rows(n: u64) -> RunStats {
    RunStats {
        rows_left: n,
        rows_right: n,
        ..RunStats::default()
    }
}

async fn segment_story(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let inv = InvariantName::parse("split").unwrap();
    let now = Utc::now();
    let lease = |s: i64| now + TimeDelta::seconds(s);
    let defs = ["d1".to_owned()];

    let run = store.begin_run(&inv, now).await.unwrap();
    store
        .split_run(run, &inv, "d1", &[(1, 100), (101, 200), (201, 300)])
        .await
        .unwrap();
    // A worker without the run's definition claims nothing.
    let none = store
        .claim_segment("x", None, &["d0".to_owned()], now, lease(30))
        .await
        .unwrap();
    assert_eq!(none, None);

    // Three workers, one segment each, in key order.
    let a = store
        .claim_segment("a", Some(run), &defs, now, lease(10))
        .await
        .unwrap()
        .unwrap();
    let b = store
        .claim_segment("b", None, &defs, now, lease(60))
        .await
        .unwrap()
        .unwrap();
    let c = store
        .claim_segment("c", None, &defs, now, lease(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.seq, a.low, a.high, a.attempt), (0, 1, 100, 1));
    assert_eq!((b.seq, c.seq), (1, 2));
    assert_eq!(a.invariant.as_str(), "split");
    assert_eq!(a.run_started_at.timestamp(), now.timestamp());
    assert_eq!(
        store
            .claim_segment("d", None, &defs, now, lease(60))
            .await
            .unwrap(),
        None
    );

    // `a` stages a violation, then stops answering: after its lease, `d` takes the segment
    // over, and what `a` staged is gone.
    store
        .observe_segment(&a, 0, &[missing(5, "stale")])
        .await
        .unwrap();
    assert!(store.renew_segment(&a, lease(20)).await.unwrap());
    let taken = store
        .claim_segment("d", None, &defs, lease(21), lease(80))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (taken.seq, taken.attempt, taken.owner.as_str()),
        (0, 2, "d")
    );
    // The old claim can no longer renew, stage or finish.
    assert!(!store.renew_segment(&a, lease(90)).await.unwrap());
    assert!(matches!(
        store.observe_segment(&a, 1, &[missing(6, "late")]).await,
        Err(StoreError::LostSegment { segment: 0, .. })
    ));
    assert!(!store.finish_segment(&a, Ok(&rows(100))).await.unwrap());

    store
        .observe_segment(&taken, 0, &[missing(7, "fresh")])
        .await
        .unwrap();
    store
        .observe_segment(&b, 0, &[missing(150, "b")])
        .await
        .unwrap();
    assert!(store.finish_segment(&taken, Ok(&rows(100))).await.unwrap());
    assert!(store.finish_segment(&b, Ok(&rows(90))).await.unwrap());
    // A segment finishes once.
    assert!(!store.finish_segment(&b, Ok(&rows(90))).await.unwrap());
    assert!(store.finish_segment(&c, Ok(&rows(80))).await.unwrap());

    let segments = store.segments(run).await.unwrap();
    assert_eq!(segments.len(), 3);
    assert!(segments.iter().all(|s| s.status == SegmentStatus::Done));
    assert_eq!(segments[0].owner.as_deref(), Some("d"));
    assert_eq!(segments[0].attempt, 2);
    assert_eq!(segments[1].stats.as_ref().map(|s| s.rows_left), Some(90));

    let change = store
        .complete_run(run, &inv, &rows(270), Utc::now(), None)
        .await
        .unwrap();
    assert_eq!((change.new, change.still_open), (2, 0));
    let open: Vec<(serde_json::Value, serde_json::Value)> = store
        .violations(&ViolationFilter {
            invariants: vec!["split".into()],
            status: StatusFilter::Active,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.key, v.evidence["note"].clone()))
        .collect();
    assert_eq!(
        open,
        vec![(json!([7]), json!("fresh")), (json!([150]), json!("b"))]
    );
    // A completed run keeps no segments.
    assert!(store.segments(run).await.unwrap().is_empty());

    // A failed segment says why; a run that ended leaves nothing to claim.
    let run = store.begin_run(&inv, now).await.unwrap();
    store
        .split_run(run, &inv, "d1", &[(1, 300), (301, 600)])
        .await
        .unwrap();
    let s = store
        .claim_segment("a", None, &defs, now, lease(30))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .finish_segment(&s, Err("connection reset"))
            .await
            .unwrap()
    );
    let segments = store.segments(run).await.unwrap();
    assert_eq!(segments[0].status, SegmentStatus::Failed);
    assert_eq!(segments[0].error.as_deref(), Some("connection reset"));
    store
        .abandon_run(
            run,
            trueup::domain::RunStatus::Failed,
            "segment failed",
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_segment("b", None, &defs, now, lease(30))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn the_sqlite_store_shares_segments_and_drops_what_a_lost_attempt_staged() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!("sqlite://{}", dir.path().join("t.db").display()));
    segment_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn the_postgres_store_shares_segments_and_drops_what_a_lost_attempt_staged() {
    let db = TestPg::new().await;
    segment_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

/// The CLI on two SQLite files: a split run reports its segments and the same figures as a
/// whole one; a failure in any segment (a read, the merge, the commit; returned or panicking)
/// fails the run and changes nothing; a key that cannot be split says so.
#[tokio::test]
async fn a_split_check_reports_its_segments_and_any_failure_in_one_fails_the_run() {
    use crate::helpers::{combined_output, sqlite_file, trueup_cli};
    let tmp = tempfile::tempdir().unwrap();
    let (config, store_url, _app, ledger) = crate::helpers::app_and_ledger_project(
        tmp.path(),
        "CREATE TABLE events (id INTEGER PRIMARY KEY, code TEXT, amount INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO events SELECT i, 'e' || i, i * 10 FROM n;",
        "CREATE TABLE records (event_id INTEGER PRIMARY KEY, code TEXT, amount INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5003)
         INSERT INTO records SELECT i, 'e' || i, CASE WHEN i % 1250 = 1 THEN 0 ELSE i * 10 END
           FROM n WHERE i % 1000 <> 0;",
    )
    .await;
    let invariant = |key: &str| {
        format!(
            "invariants:
  - name: events-recorded
    reconcile:
      left: {{source: app, query: \"SELECT id, code, amount FROM events\"}}
      right: {{source: ledger, query: \"SELECT event_id AS id, code, amount FROM records\"}}
      key: {key}
      compare: amount
      segments: 4
"
        )
    };
    std::fs::write(tmp.path().join("invariants/events.yaml"), invariant("id")).unwrap();
    let check = |failpoints: Option<&str>| {
        let mut cmd = trueup_cli(&config, "tester");
        cmd.arg("check");
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        let out = cmd.output().unwrap();
        (out.status.code(), combined_output(&out))
    };
    // 5 missing, 4 mismatched (1, 1251, 2501, 3751: one per segment), 3 extra.
    let (code, text) = check(None);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("read 5000 left / 4998 right rows"), "{text}");
    assert!(
        text.contains("split into 4 segments of the key range, evaluated by check-"),
        "{text}"
    );
    assert!(text.contains("12 violations open: 12 new"), "{text}");
    let store = store::open(&SecretUrl::new(store_url.clone()))
        .await
        .unwrap();
    let active = |store: Arc<dyn Store>| async move {
        let list = store
            .violations(&ViolationFilter {
                status: StatusFilter::Active,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut by_kind = std::collections::BTreeMap::<String, Vec<i64>>::new();
        for v in list {
            by_kind
                .entry(v.kind)
                .or_default()
                .push(v.key[0].as_i64().unwrap());
        }
        by_kind.values_mut().for_each(|keys| keys.sort_unstable());
        by_kind
    };
    let before = active(store.clone()).await;
    assert_eq!(before["missing"], vec![1000, 2000, 3000, 4000, 5000]);
    assert_eq!(before["mismatch"], vec![1, 1251, 2501, 3751]);
    assert_eq!(before["extra"], vec![5001, 5002, 5003]);

    // Repair one key on the ledger, then fail at each step: nothing changes.
    sqlite_file(
        &ledger,
        "UPDATE records SET amount = 10 WHERE event_id = 1;",
    )
    .await;
    for point in ["source.read", "engine.merge", "store.commit"] {
        for action in ["return", "panic"] {
            let (code, text) = check(Some(&format!("{point}={action}")));
            assert_eq!(code, Some(2), "{point}={action}: {text}");
            // (A store that cannot commit is the command's error, not the run's.)
            assert!(
                point == "store.commit" || text.contains("nothing in the ledger changed"),
                "{point}={action}: {text}"
            );
            assert_eq!(active(store.clone()).await, before, "{point}={action}");
        }
    }
    let (code, text) = check(None);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("11 violations open: 0 new, 11 still open, 0 reopened; 1 resolved"),
        "{text}"
    );

    // A text key cannot be split: the run says why and what to do.
    std::fs::write(tmp.path().join("invariants/events.yaml"), invariant("code")).unwrap();
    let (code, text) = check(None);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("the key `code` holds `e1`, not an integer: segments of a key range split integer keys only"),
        "{text}"
    );
    store.close().await;
}

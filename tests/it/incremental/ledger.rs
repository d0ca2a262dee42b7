//! The ledger of incremental runs, the same on both store backends: a violation the run did
//! not see resolves only on a key it covered; the watermark moves only with a completed run
//! that stored all it found.

use std::sync::Arc;

use chrono::{TimeDelta, TimeZone, Utc};
use serde_json::json;
use trueup::config::SecretUrl;
use trueup::domain::{Coverage, InvariantName, Marks, RunStats, RunStatus, Value, Violation};
use trueup::domain::{ViolationKind, ViolationStatus};
use trueup::store::{self, StatusFilter, Store, ViolationFilter};

use crate::helpers::TestPg;

fn missing(key: i64) -> Violation {
    Violation {
        kind: ViolationKind::Missing,
        key: vec![Value::Int(key)],
        discriminator: None,
        event_at: None,
        evidence: json!({"left": {"id": key}}),
    }
}

/// Marks as a run at `minute` (of a fixed day) reads them: the left side's latest change.
fn marks(minute: i64) -> Marks {
    Marks {
        definition: "d1".into(),
        left: Some(
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap() + TimeDelta::minutes(minute),
        ),
        right: None,
    }
}

/// One run: `seen` staged, `covered` keys staged (an incremental run when `Some`), then
/// completed with `marks`.
async fn run(
    store: &dyn Store,
    inv: &InvariantName,
    seen: &[Violation],
    covered: Option<&[i64]>,
    marks: Marks,
) -> trueup::domain::LedgerChange {
    let id = store.begin_run(inv, Utc::now()).await.unwrap();
    store.observe(id, inv, 0, seen).await.unwrap();
    let coverage = match covered {
        None => Coverage::Full,
        Some(keys) => {
            let json: Vec<serde_json::Value> = keys.iter().map(|k| json!([k])).collect();
            store.cover(id, &json).await.unwrap();
            Coverage::Changed {
                keys: keys.len() as u64,
                left_since: marks.left,
                right_since: None,
            }
        }
    };
    let stats = RunStats {
        observed: seen.len() as u64,
        coverage,
        marks: Some(marks),
        ..Default::default()
    };
    store
        .complete_run(id, inv, &stats, Utc::now(), None)
        .await
        .unwrap()
}

async fn statuses(store: &dyn Store, inv: &InvariantName) -> Vec<(i64, ViolationStatus)> {
    let mut out: Vec<(i64, ViolationStatus)> = store
        .violations(&ViolationFilter {
            invariants: vec![inv.to_string()],
            status: StatusFilter::All,
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.key[0].as_i64().unwrap(), v.status))
        .collect();
    out.sort_by_key(|(k, _)| *k);
    out
}

async fn coverage_story(store: Arc<dyn Store>) {
    use ViolationStatus::{Open, Resolved};
    let store = store.as_ref();
    let inv = InvariantName::parse("incremental").unwrap();
    assert_eq!(store.watermark(&inv).await.unwrap(), None);

    // A full pass: three violations, and the first watermark.
    let first = run(
        store,
        &inv,
        &[missing(1), missing(2), missing(3)],
        None,
        marks(1),
    )
    .await;
    assert_eq!((first.new, first.uncovered), (3, 0));
    let mark = store.watermark(&inv).await.unwrap().unwrap();
    assert_eq!(mark.marks, marks(1));
    let full_at = mark.full_at;

    // Incremental: keys 1 and 4 covered, 4 seen. 1 resolves; 2 and 3 stay open, counted as
    // uncovered; the last full pass's time stays.
    let second = run(store, &inv, &[missing(4)], Some(&[1, 4]), marks(2)).await;
    assert_eq!(
        (
            second.new,
            second.still_open,
            second.resolved,
            second.uncovered
        ),
        (1, 0, 1, 2)
    );
    assert_eq!(second.open_after(), 3);
    assert_eq!(
        statuses(store, &inv).await,
        [(1, Resolved), (2, Open), (3, Open), (4, Open)]
    );
    let mark = store.watermark(&inv).await.unwrap().unwrap();
    assert_eq!(mark.marks, marks(2));
    assert_eq!(mark.full_at, full_at);

    // The run's record keeps its coverage and what it left alone.
    let recorded = store.runs(Some("incremental"), 1).await.unwrap();
    assert!(
        matches!(
            recorded[0].stats.coverage,
            Coverage::Changed { keys: 2, .. }
        ),
        "{:?}",
        recorded[0].stats.coverage
    );
    assert_eq!(recorded[0].change.uncovered, 2);

    // An abandoned run drops what it covered: the next run covering nothing resolves nothing.
    let id = store.begin_run(&inv, Utc::now()).await.unwrap();
    store.cover(id, &[json!([2]), json!([3])]).await.unwrap();
    store
        .abandon_run(id, RunStatus::Failed, "it failed", Utc::now())
        .await
        .unwrap();
    assert_eq!(store.watermark(&inv).await.unwrap().unwrap(), mark);
    let idle = run(store, &inv, &[], Some(&[]), marks(3)).await;
    assert_eq!((idle.resolved, idle.uncovered), (0, 3));

    // A key covered but seen again stays open; a full pass resolves what it did not see.
    let third = run(store, &inv, &[missing(2)], Some(&[2]), marks(4)).await;
    assert_eq!(
        (third.still_open, third.resolved, third.uncovered),
        (1, 0, 2)
    );
    let full = run(store, &inv, &[missing(2)], None, marks(5)).await;
    assert_eq!((full.still_open, full.resolved, full.uncovered), (1, 2, 0));
    assert!(store.watermark(&inv).await.unwrap().unwrap().full_at > full_at);
    assert_eq!(
        statuses(store, &inv).await,
        [(1, Resolved), (2, Open), (3, Resolved), (4, Resolved)]
    );

    // A truncated full pass (over its violation budget: key 5 stored, one more found) resolves
    // nothing and leaves the marks and the last full pass where they were: its marks would
    // have the next incremental run skip what it did not store.
    let before = store.watermark(&inv).await.unwrap().unwrap();
    let id = store.begin_run(&inv, Utc::now()).await.unwrap();
    store.observe(id, &inv, 0, &[missing(5)]).await.unwrap();
    let stats = RunStats {
        observed: 2,
        truncated: true,
        coverage: Coverage::Full,
        marks: Some(marks(6)),
        ..Default::default()
    };
    let truncated = store
        .complete_run(id, &inv, &stats, Utc::now(), None)
        .await
        .unwrap();
    assert_eq!((truncated.new, truncated.resolved), (1, 0));
    assert_eq!(store.watermark(&inv).await.unwrap().unwrap(), before);
}

#[tokio::test]
async fn the_sqlite_store_resolves_only_covered_keys_and_moves_the_watermark_with_completed_runs() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!("sqlite://{}", dir.path().join("t.db").display()));
    coverage_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn the_postgres_store_resolves_only_covered_keys_and_moves_the_watermark_with_completed_runs()
{
    let db = TestPg::new().await;
    coverage_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

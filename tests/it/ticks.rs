//! Scheduled ticks in the store, the same on both backends: one outcome per fire time, a run
//! linked to its tick, a takeover that fails exactly that run.

use std::sync::Arc;

use chrono::{TimeDelta, TimeZone, Utc};
use trueup::config::SecretUrl;
use trueup::domain::{InvariantName, RunStatus};
use trueup::store::{self, Store, StoreError, TickRef};

use crate::helpers::TestPg;

async fn tick_story(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let inv = InvariantName::parse("hourly").unwrap();
    let at = |s: i64| Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap() + TimeDelta::seconds(s);
    let now = Utc::now();
    let lease = now + TimeDelta::seconds(30);

    // A claimed fire time, and its run linked to it.
    assert!(store.claim_tick("hourly", at(0), "a", lease).await.unwrap());
    assert!(!store.claim_tick("hourly", at(0), "b", lease).await.unwrap());
    let tick = TickRef {
        fire_at: at(0),
        owner: "a".into(),
    };
    let run = store.begin_tick_run(&inv, now, &tick).await.unwrap();
    // Another replica cannot begin a run for a tick it does not hold.
    let stolen = TickRef {
        fire_at: at(0),
        owner: "b".into(),
    };
    assert!(matches!(
        store.begin_tick_run(&inv, now, &stolen).await,
        Err(StoreError::LostTick)
    ));

    // While it is unfinished, the next fire times are recorded as missed, once each.
    assert!(!store.claim_tick("hourly", at(1), "b", lease).await.unwrap());
    assert!(!store.claim_tick("hourly", at(1), "a", lease).await.unwrap());
    assert!(!store.claim_tick("hourly", at(2), "b", lease).await.unwrap());
    // Another invariant is not held up (its lease outlives the first one's).
    assert!(
        store
            .claim_tick("other", at(1), "b", now + TimeDelta::seconds(120))
            .await
            .unwrap()
    );
    let other = store
        .begin_tick_run(
            &InvariantName::parse("other").unwrap(),
            now,
            &TickRef {
                fire_at: at(1),
                owner: "b".into(),
            },
        )
        .await
        .unwrap();

    // Replica `a` dies: once its lease has run out, its tick is taken over and exactly its
    // run fails; `other`'s run, still running, is untouched.
    let later = lease + TimeDelta::seconds(1);
    let taken = store
        .take_over_tick("c", later, later + TimeDelta::seconds(30))
        .await
        .unwrap()
        .expect("the abandoned tick");
    assert_eq!((taken.fire_at, taken.run_id), (at(0), Some(run)));
    let runs = store.runs(None, 100).await.unwrap();
    let status = |id: i64| runs.iter().find(|r| r.id == id).unwrap().status;
    assert_eq!(status(run), RunStatus::Failed);
    assert_eq!(status(other), RunStatus::Running);
    // `other`'s tick has a live lease: nothing else to take over.
    assert!(
        store
            .take_over_tick("c", later, later + TimeDelta::seconds(30))
            .await
            .unwrap()
            .is_none()
    );

    // The new owner runs and finishes it; the schedule goes on.
    let retaken = TickRef {
        fire_at: at(0),
        owner: "c".into(),
    };
    let rerun = store.begin_tick_run(&inv, later, &retaken).await.unwrap();
    store
        .finish_tick("hourly", at(0), "c", Some(rerun))
        .await
        .unwrap();
    // Finished, the tick is still its owner's: what the run does after committing (its plan,
    // its alert) goes on under a lease that renews, and never under one taken for lost.
    let renewed = later + TimeDelta::seconds(60);
    assert!(
        store
            .renew_tick("hourly", at(0), "c", renewed)
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_tick("hourly", at(0), "a", renewed)
            .await
            .unwrap()
    );
    // A finished tick keeps its outcome: a later failure of the same attempt (after the run
    // committed) does not rewrite it as missed.
    store.finish_tick("hourly", at(0), "c", None).await.unwrap();
    assert!(
        store
            .claim_tick("hourly", at(3), "b", later + TimeDelta::seconds(30))
            .await
            .unwrap()
    );

    // Fire times a replica let pass while its run went on are recorded as missed; one that
    // another replica holds keeps its outcome.
    store
        .record_missed_ticks("hourly", &[at(3), at(4), at(5)], "a", later)
        .await
        .unwrap();

    let ticks = store.ticks("hourly", 100).await.unwrap();
    let outcomes: Vec<(i64, bool, Option<i64>, bool)> = ticks
        .iter()
        .map(|t| {
            (
                (t.fire_at - at(0)).num_seconds(),
                t.missed,
                t.run_id,
                t.taken_over,
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (0, false, Some(rerun), true),
            (1, true, None, false),
            (2, true, None, false),
            (3, false, None, false),
            (4, true, None, false),
            (5, true, None, false),
        ]
    );
    assert!(ticks[1].finished && ticks[2].finished && !ticks[3].finished);
    assert!(ticks[4].finished && ticks[5].finished);

    // A tick finished with no run (a takeover found the invariant already running there) is
    // missed: no fire time ends without an outcome.
    store.finish_tick("hourly", at(3), "b", None).await.unwrap();
    let third = store.ticks("hourly", 100).await.unwrap()[3].clone();
    assert_eq!(
        (third.finished, third.missed, third.run_id),
        (true, true, None)
    );

    // The scheduler's path claims a tick and begins its run in one transaction. A fire time
    // that is not ours, or comes while an earlier tick is unfinished, records no run.
    let minutely = InvariantName::parse("minutely").unwrap();
    let lease = later + TimeDelta::seconds(30);
    let runs_before = store.runs(None, 1000).await.unwrap().len();
    let run = store
        .claim_tick_run(&minutely, at(0), "a", lease, at(10))
        .await
        .unwrap()
        .expect("a free fire time is ours");
    let not_ours = store
        .claim_tick_run(&minutely, at(0), "b", lease, at(10))
        .await
        .unwrap();
    let while_running = store
        .claim_tick_run(&minutely, at(1), "b", lease, at(10))
        .await
        .unwrap();
    assert_eq!((not_ours, while_running), (None, None));
    let runs = store.runs(None, 1000).await.unwrap();
    assert_eq!(
        runs.len(),
        runs_before + 1,
        "one run recorded, the claimed one's"
    );
    let recorded = runs.iter().find(|r| r.id == run).unwrap();
    assert_eq!(
        (recorded.status, recorded.started_at),
        (RunStatus::Running, at(10))
    );
    // Its completion finishes the tick, linked to the run.
    let tick = TickRef {
        fire_at: at(0),
        owner: "a".into(),
    };
    store
        .complete_run(
            run,
            &minutely,
            &trueup::domain::RunStats::default(),
            later,
            Some(&tick),
        )
        .await
        .unwrap();
    let ticks: Vec<(i64, bool, bool, Option<i64>)> = store
        .ticks("minutely", 100)
        .await
        .unwrap()
        .iter()
        .map(|t| {
            (
                (t.fire_at - at(0)).num_seconds(),
                t.finished,
                t.missed,
                t.run_id,
            )
        })
        .collect();
    assert_eq!(ticks, [(0, true, false, Some(run)), (1, true, true, None)]);
    // A completed run cannot complete again (nor can one a takeover failed).
    assert!(matches!(
        store
            .complete_run(
                run,
                &minutely,
                &trueup::domain::RunStats::default(),
                later,
                None
            )
            .await,
        Err(StoreError::NoSuchRun(id)) if id == run
    ));
}

#[tokio::test]
async fn the_sqlite_store_gives_each_fire_time_one_outcome_and_fails_only_the_dead_ticks_run() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!("sqlite://{}", dir.path().join("t.db").display()));
    tick_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn the_postgres_store_gives_each_fire_time_one_outcome_and_fails_only_the_dead_ticks_run() {
    let db = TestPg::new().await;
    tick_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

//! `retain:` purges old events, but never one an open violation, an unfinished plan or an
//! open incident of an invariant reading the log may need.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use serde_json::json;
use trueup::capture::retention::{Purge, Reader, purge};
use trueup::config::SecretUrl;
use trueup::domain::{
    CapturedEvent, EventIdentity, HumanDuration, InvariantName, LogName, Value, Violation,
    ViolationKind,
};
use trueup::store::{self, NewIncident, Store};

use crate::helpers::TestPg;

fn missing(key: &str, event_at: Option<chrono::DateTime<Utc>>) -> Violation {
    Violation {
        kind: ViolationKind::Missing,
        key: vec![Value::Text(key.into())],
        discriminator: None,
        event_at,
        evidence: json!({}),
    }
}

async fn retention_story(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let log = LogName::parse("orders").unwrap();
    let inv = InvariantName::parse("orders-received").unwrap();
    // Milliseconds: what both stores keep of a time.
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 3);
    let days = |d: f64| now - TimeDelta::milliseconds((d * 86_400_000.0) as i64);
    for (id, captured, happened) in [
        ("four-days", days(4.0), Some(days(4.0))),
        ("three-days", days(3.0), Some(days(3.0))),
        ("two-days", days(2.0), Some(days(2.0))),
        ("two-days-untimed", days(2.0), None),
        ("an-hour", days(0.04), Some(days(0.04))),
    ] {
        let event = CapturedEvent {
            identity: EventIdentity {
                event_id: id.into(),
                event_at: happened,
            },
            source: "webhook".into(),
            position: None,
            headers: Default::default(),
            payload: b"{}".to_vec(),
        };
        store
            .ingest(&log, std::slice::from_ref(&event), captured)
            .await
            .unwrap();
        if id == "four-days" {
            // Delivered twice: its duplicate goes with it.
            store.ingest(&log, &[event], captured).await.unwrap();
        }
    }
    let retain = HumanDuration::parse("1d").unwrap();
    let readers = [Reader {
        invariant: inv.clone(),
        grace: Some(HumanDuration::parse("2h").unwrap()),
    }];

    // No run of the reader has judged the log yet (say every run failed through a downstream
    // outage): nothing goes, or events nobody looked at would never show as missing.
    let done = purge(store, "orders", &readers, retain, now, 10)
        .await
        .unwrap();
    assert!(
        matches!(&done, Purge::Held(why) if why.contains("`orders-received` reads the log and has no completed full run yet")),
        "{done:?}"
    );
    // A full run that began 4.5 days ago, then only failures: the cut is that run's start,
    // less its grace (2h) and a commit margin (1 min), so nothing of the 4 days goes.
    let old = store.begin_run(&inv, days(4.5)).await.unwrap();
    store
        .complete_run(old, &inv, &Default::default(), days(4.5), None)
        .await
        .unwrap();
    // An incremental run since read only the keys that changed: it judged nothing else.
    let incremental = store.begin_run(&inv, days(1.5)).await.unwrap();
    let changed = trueup::domain::RunStats {
        coverage: trueup::domain::Coverage::Changed {
            keys: 0,
            left_since: Some(days(1.6)),
            right_since: None,
        },
        ..Default::default()
    };
    store
        .complete_run(incremental, &inv, &changed, days(1.5), None)
        .await
        .unwrap();
    let failed = store.begin_run(&inv, now).await.unwrap();
    store
        .abandon_run(
            failed,
            trueup::domain::RunStatus::Failed,
            "the ledger database is down",
            now,
        )
        .await
        .unwrap();
    let done = purge(store, "orders", &readers, retain, now, 10)
        .await
        .unwrap();
    assert_eq!(
        done,
        Purge::Purged {
            count: 0,
            before: days(4.5) - TimeDelta::hours(2) - TimeDelta::minutes(1)
        }
    );
    assert_eq!(store.log_counts("orders").await.unwrap().events, 5);

    // An open violation of an event 3.5 days old: only what is older may go.
    crate::store::run_with(store, &inv, &[missing("x", Some(days(3.5)))]).await;
    let done = purge(store, "orders", &readers, retain, now, 10)
        .await
        .unwrap();
    let Purge::Purged { count, before } = done else {
        panic!("{done:?}")
    };
    assert_eq!((count, before), (1, days(3.5)));
    assert!(
        store
            .logged_event("orders", "four-days")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .logged_event("orders", "three-days")
            .await
            .unwrap()
            .is_some()
    );

    // An open violation without an event time: any event may be needed.
    crate::store::run_with(store, &inv, &[missing("y", None)]).await;
    let done = purge(store, "orders", &readers, retain, now, 10)
        .await
        .unwrap();
    assert!(
        matches!(&done, Purge::Held(why) if why.contains("1 open violation(s) or unfinished plan action(s)")),
        "{done:?}"
    );
    assert_eq!(store.log_counts("orders").await.unwrap().events, 4);

    // Resolved; an open incident of this invariant from 2.5 days ago holds its window, one
    // of another invariant holds nothing.
    crate::store::run_with(store, &inv, &[]).await;
    for (name, invariant, from) in [
        ("orders-outage", "orders-received", days(2.5)),
        ("payments-outage", "payments", days(10.0)),
    ] {
        store
            .open_incident(&NewIncident {
                name: name.into(),
                summary: None,
                window_from: from,
                window_to: None,
                invariants: vec![invariant.into()],
                opened_by: "oncall".into(),
                opened_at: now,
            })
            .await
            .unwrap();
    }
    let done = purge(store, "orders", &readers, retain, now, 10)
        .await
        .unwrap();
    assert_eq!(
        done,
        Purge::Purged {
            count: 1,
            before: days(2.5)
        }
    );
    let left: Vec<String> = store
        .logged_events("orders", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(left, ["two-days", "two-days-untimed", "an-hour"]);
    let counts = store.log_counts("orders").await.unwrap();
    assert_eq!((counts.events, counts.duplicates), (3, 0));
    store.close().await;
}

#[tokio::test]
async fn retention_keeps_what_open_violations_and_incidents_may_need_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    retention_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn retention_keeps_what_open_violations_and_incidents_may_need_on_postgres() {
    let db = TestPg::new().await;
    retention_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

#[tokio::test]
async fn serve_on_postgresql_makes_each_logs_day_ready_before_it_captures_into_it() {
    use sqlx::Connection;
    let db = TestPg::new().await;
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::TestServer::start(super::config_with_store(
        dir.path(),
        &db.url,
        "event_logs:\n  orders:\n    event_id: id\n    retain: 30d\n    from:\n      - webhook: {secret: \"${ORDERS_SECRET}\"}\n",
    ))
    .await;
    super::deliver(&server.base, &json!({"id": "evt_1"})).await;
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // (By the event's own day: the test may run across midnight.)
    let (home, at): (String, chrono::DateTime<Utc>) = sqlx::query_as(
        "SELECT tableoid::regclass::text, ingested_at FROM log_events WHERE event_id = 'evt_1'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    let day = at.format("%Y%m%d").to_string();
    assert!(
        home.starts_with("log_events_") && home.ends_with(&day),
        "{home}"
    );
    let days: Vec<chrono::NaiveDate> =
        sqlx::query_scalar("SELECT day FROM log_partitions WHERE log = 'orders' ORDER BY day")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert!(days.contains(&at.date_naive()), "{days:?}");
    assert!(
        days.contains(&(at.date_naive() + TimeDelta::days(1))),
        "{days:?}"
    );
    c.close().await.unwrap();
    server.stop().await;
}

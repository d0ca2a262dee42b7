//! A Redis Streams feed: entries stored once by id, duplicates counted, malformed ones refused
//! and acknowledged, and entries a dead consumer left pending claimed and stored.

use redis::AsyncCommands;

use super::{config, sample};
use crate::helpers::TestServer;
use crate::helpers::{REDIS_URL, TestRedis, wait_for};

#[tokio::test]
async fn a_consumer_group_feed_stores_each_id_once_counts_duplicates_and_takes_over_a_dead_consumers_entries()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = TestRedis::new().await;
    let key = redis.key("orders");
    let con = &mut redis.con;
    for i in 0..1_000 {
        let event = format!(r#"{{"id":"r-{i}","at":"2026-12-05T10:00:00Z"}}"#);
        let _: String = con
            .xadd(&key, "*", &[("json", event.as_str())])
            .await
            .unwrap();
        if i % 20 == 0 {
            let _: String = con
                .xadd(&key, "*", &[("json", event.as_str())])
                .await
                .unwrap();
        }
    }
    let _: String = con.xadd(&key, "*", &[("json", "not json")]).await.unwrap();
    // A replica that read the first 100 entries and died before acknowledging them.
    let _: () = con.xgroup_create(&key, "trueup-orders", "0").await.unwrap();
    let taken: redis::streams::StreamReadReply = con
        .xread_options(
            &[&key],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("trueup-orders", "dead-replica")
                .count(100),
        )
        .await
        .unwrap();
    assert_eq!(taken.keys[0].ids.len(), 100);

    let server = TestServer::start(config(
        dir.path(),
        &format!(
            "sources:\n  cache:\n    url: {REDIS_URL}\nevent_logs:\n  orders:\n    event_id: id\n    event_time: at\n    from:\n      - redis: {{source: cache, stream: \"{key}\", field: json, claim_after: 1s, batch: 64}}\n"
        ),
    ))
    .await;
    let pending = || async {
        let mut con = redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let reply: redis::streams::StreamPendingReply =
            con.xpending(&key, "trueup-orders").await.unwrap();
        reply.count()
    };
    let store = server.store.clone();
    wait_for(
        "every entry stored and acknowledged",
        std::time::Duration::from_secs(60),
        || async {
            store.log_counts("orders").await.unwrap().events == 1_000 && pending().await == 0
        },
    )
    .await;
    let counts = server.store.log_counts("orders").await.unwrap();
    assert_eq!((counts.events, counts.duplicates), (1_000, 50));
    let first = server
        .store
        .logged_event("orders", "r-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.deliveries, 2);
    assert_eq!(first.source, format!("redis:cache/{key}"));
    assert_eq!(
        first.payload,
        br#"{"id":"r-0","at":"2026-12-05T10:00:00Z"}"#
    );
    assert!(
        first.position.as_deref().unwrap().contains('-'),
        "{:?}",
        first.position
    );

    let (status, metrics) = crate::serve::get(&format!("{}/metrics", server.base)).await;
    assert_eq!(status, 200);
    let feed = format!(r#"feed="redis:cache/{key}",log="orders""#);
    assert_eq!(
        sample(
            &metrics,
            &format!("trueup_log_events_ingested_total{{{feed}}} ")
        ),
        1_000
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("trueup_log_duplicate_deliveries_total{{{feed}}} ")
        ),
        50
    );
    assert_eq!(
        sample(
            &metrics,
            &format!(r#"trueup_log_events_rejected_total{{{feed},reason="malformed"}} "#)
        ),
        1
    );
    assert_eq!(
        sample(&metrics, &format!("trueup_log_feed_up{{{feed}}} ")),
        1
    );
    server.stop().await;
}

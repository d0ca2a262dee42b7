//! `cargo bench --bench ingest [-- N]`: capture N events (default 200,000) from a JetStream
//! stream into an event log, once into the SQLite store and once into the PostgreSQL store,
//! through the same feed `trueup serve` runs (durable consumer, a batch stored in one
//! transaction, then acknowledged). Prints events per second for each store against issue
//! 16's target (≥ 5,000/s into SQLite), beside the floor: the same stream read by a consumer
//! that stores nothing and acknowledges nothing. Checks that every event id was stored once.
//!
//! Needs NATS with JetStream on 127.0.0.1:4222 and PostgreSQL on 127.0.0.1:5432
//! (`TRUEUP_BENCH_NATS`, `TRUEUP_BENCH_PG` to point elsewhere). Streams, databases and
//! files are made for the run and removed after it.

#[path = "common/rss.rs"]
mod rss;
use rss::{peak_rss_kib, reset_peak_rss};

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use sqlx::Connection as _;
use sqlx::Executor as _;
use trueup::capture::{CaptureMetrics, spawn_feeds};
use trueup::config::{EventLogConfig, FeedStart, LogFeed, NatsFeed, NatsSource, SecretUrl};
use trueup::domain::{EventShape, HumanDuration, JsonPath, LogName, SourceName};

/// The target of issue 16: events per second from JetStream into the SQLite store.
const TARGET: f64 = 5_000.0;

fn event(i: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": format!("evt_{i:09}"),
        "type": "order.created",
        "created": 1_764_925_200 + i,
        "data": {"order": i, "account": i % 97, "total": format!("{}.{:02}", i % 1000, i % 100)},
    }))
    .expect("json")
}

async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    n: u64,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut acks = Vec::with_capacity(1_000);
    for i in 0..n {
        acks.push(js.publish(subject.to_owned(), event(i).into()).await?);
        if acks.len() == 1_000 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Reads the whole stream with a consumer that acknowledges nothing and keeps nothing.
async fn floor(js: &async_nats::jetstream::Context, stream: &str, n: u64) -> anyhow::Result<f64> {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    let consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let t = Instant::now();
    let mut seen = 0u64;
    let mut bytes = 0usize;
    while seen < n {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!(e))?;
            bytes += m.payload.len();
            seen += 1;
        }
    }
    std::hint::black_box(bytes);
    Ok(t.elapsed().as_secs_f64())
}

/// Captures the stream into `store_url`'s event log; seconds until every event is stored and
/// acknowledged, and peak RSS.
async fn capture(
    nats_url: &str,
    stream: &str,
    store_url: &str,
    n: u64,
) -> anyhow::Result<(f64, u64)> {
    let store = trueup::store::open(&SecretUrl::new(store_url.to_owned())).await?;
    let log = EventLogConfig {
        name: LogName::parse("orders")?,
        shape: EventShape {
            event_id: JsonPath::parse("id").map_err(anyhow::Error::msg)?,
            event_time: Some(JsonPath::parse("created").map_err(anyhow::Error::msg)?),
            max_event_bytes: 1024 * 1024,
        },
        feeds: vec![LogFeed::Nats(NatsFeed {
            server: NatsSource {
                name: SourceName::parse("bus")?,
                url: SecretUrl::new(nats_url.to_owned()),
                timeout: HumanDuration::parse("10s").map_err(anyhow::Error::msg)?,
            },
            stream: stream.to_owned(),
            subject: None,
            durable: format!("bench-{}", store_url.split(':').next().unwrap_or("store")),
            start: FeedStart::All,
            ack_wait: HumanDuration::parse("30s").map_err(anyhow::Error::msg)?,
            batch: 500,
        })],
        retain: None,
    };
    let metrics = Arc::new(CaptureMetrics::register(&prometheus::Registry::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    // As `serve` does: today's partition on PostgreSQL, nothing on SQLite.
    trueup::capture::prepare_days(std::slice::from_ref(&log), store.as_ref()).await;
    reset_peak_rss();
    let t = Instant::now();
    let tasks = spawn_feeds(
        [log],
        store.clone(),
        metrics,
        Arc::from("bench"),
        stop.clone(),
    );
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let counts = store.log_counts("orders").await?;
        if counts.events >= n {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "only {} of {n} events stored after 10 minutes",
            counts.events
        );
    }
    let secs = t.elapsed().as_secs_f64();
    let rss = peak_rss_kib();
    stop.cancel();
    for task in tasks {
        task.await?;
    }
    let counts = store.log_counts("orders").await?;
    anyhow::ensure!(
        counts.events == n && counts.duplicates == 0,
        "expected {n} events once each, found {counts:?}"
    );
    store.close().await;
    Ok((secs, rss))
}

async fn bench(nats_url: &str, pg_server: &str, n: u64) -> anyhow::Result<()> {
    let tag = format!("trueup_bench_ingest_{}", std::process::id());
    let stream = tag.to_uppercase();
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("NATS with JetStream on {nats_url}"))?;
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(&stream).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{tag}.>")],
        ..Default::default()
    })
    .await?;
    let mut admin = sqlx::PgConnection::connect(&format!("{pg_server}/postgres")).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {tag}").as_str())
        .await?;
    admin
        .execute(format!("CREATE DATABASE {tag}").as_str())
        .await?;
    let dir = tempfile::tempdir()?;
    let result = async {
        let published = publish(&js, &format!("{tag}.orders.created"), n).await?;
        let floor = floor(&js, &stream, n).await?;
        let sqlite = capture(
            nats_url,
            &stream,
            &format!("sqlite://{}", dir.path().join("trueup.db").display()),
            n,
        )
        .await?;
        let pg = capture(nats_url, &stream, &format!("{pg_server}/{tag}"), n).await?;
        anyhow::Ok((published, floor, sqlite, pg))
    }
    .await;
    let _ = js.delete_stream(&stream).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {tag} WITH (FORCE)").as_str())
        .await?;
    let (published, floor, (sqlite, sqlite_rss), (pg, pg_rss)) = result?;
    let rate = |secs: f64| n as f64 / secs;
    println!(
        "\ningest {n} JetStream events ({} bytes each on average) into an event log; published in {published:.2} s\n",
        (0..n.min(1000)).map(|i| event(i).len()).sum::<usize>() / n.min(1000) as usize
    );
    println!("| step | seconds | events/s | vs. the floor | vs. the target (5,000/s) | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| floor: the stream read, nothing stored or acknowledged | {floor:.2} | {:.0} | 1.00× | – | – |",
        rate(floor)
    );
    for (store, secs, rss) in [("SQLite", sqlite, sqlite_rss), ("PostgreSQL", pg, pg_rss)] {
        println!(
            "| captured into the {store} store | {secs:.2} | {:.0} | {:.2}× | {:.1}× | {} MiB |",
            rate(secs),
            secs / floor,
            rate(secs) / TARGET,
            rss / 1024
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // As `trueup` itself does: its peak memory is what this measures.
    trueup::disable_huge_pages();
    let n: u64 = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    anyhow::ensure!(n >= 1_000, "give at least 1,000 events");
    let nats =
        std::env::var("TRUEUP_BENCH_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let pg = std::env::var("TRUEUP_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(&nats, &pg, n))
}

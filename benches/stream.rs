//! `cargo bench --bench stream [-- N]`: a NATS JetStream side of N order messages (default
//! 1,000,000, published in no key order) reconciled against a PostgreSQL table of the same
//! orders with planted differences. Prints, for the stream read alone (messages put in key
//! order) and for the whole reconcile: seconds, rows per second and peak RSS, and checks that
//! exactly the planted keys were found.
//!
//! Needs the NATS server with JetStream on 127.0.0.1:4222 and PostgreSQL on 127.0.0.1:5432
//! (`TRUEUP_BENCH_NATS`, `TRUEUP_BENCH_PG` to point elsewhere). The stream and the database
//! are made for the run and removed after it.

#[path = "common/rss.rs"]
mod rss;
use rss::{peak_rss_kib, reset_peak_rss};

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use sqlx::Connection as _;
use sqlx::Executor as _;
use trueup::config::{
    NatsSource, PrivilegedPolicy, SecretUrl, SourceConfig, SourceKind, SqlSource, WritablePolicy,
};
use trueup::domain::{
    ColumnName, Expect, Field, FieldFrom, FieldKind, HumanDuration, Invariant, InvariantName,
    InvariantSpec, JsonPath, QuerySide, Read, ReconcileMode, ReconcileSpec, Severity, SourceName,
    StreamRead, ViolationKind,
};
use trueup::runner::run_invariant;
use trueup::source::{ReadRequest, Sources};

fn order(id: u64) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "total": format!("{}.{:02}", id % 1000, id % 100),
        "currency": if id.is_multiple_of(3) { "EUR" } else { "USD" },
    })
}

/// Planted: every 1,000th order missing in PostgreSQL, every 1,777th with another amount,
/// 100 orders in PostgreSQL the stream never carried.
fn expected(n: u64) -> (u64, u64, u64) {
    let missing = n / 1000;
    let mismatch = (1..=n)
        .filter(|i| i.is_multiple_of(1777) && !i.is_multiple_of(1000))
        .count() as u64;
    (missing, mismatch, 100)
}

fn field(column: &str, path: &str, kind: FieldKind) -> Field {
    Field {
        column: ColumnName::parse(column).expect("column"),
        from: FieldFrom::Json(JsonPath::parse(path).expect("path")),
        kind,
    }
}

fn invariant(stream: &str, subject: &str) -> Invariant {
    let left = QuerySide {
        source: SourceName::parse("orders").expect("name"),
        query: Read::Stream(Box::new(StreamRead {
            stream: stream.to_owned(),
            subject: Some(subject.to_owned()),
            columns: vec![
                field("id", "id", FieldKind::Int),
                field("amount", "total", FieldKind::Decimal),
                field("currency", "currency", FieldKind::Text),
            ],
            lookup: None,
        })),
    };
    let right = QuerySide {
        source: SourceName::parse("fulfilment").expect("name"),
        query: Read::Sql("SELECT id, amount, currency FROM fulfilled".into()),
    };
    Invariant {
        name: InvariantName::parse("orders-fulfilled").expect("name"),
        description: None,
        owner: None,
        severity: Severity::Low,
        schedule: None,
        time_column: None,
        grace: None,
        alert: Default::default(),
        notify: None,
        sample_limit: 0,
        violation_budget: 1_000_000,
        spec: InvariantSpec::Reconcile(ReconcileSpec {
            left,
            right,
            key: vec![ColumnName::parse("id").expect("column")],
            expect: Expect::ExactlyOne,
            compare: None,
            mode: ReconcileMode::Auto,
            incremental: None,
            segments: None,
            window: None,
        }),
        compensate: Default::default(),
        replay: None,
        slo: None,
        runbook_url: None,
        labels: Default::default(),
        defined_at: (PathBuf::from("bench"), 0),
    }
}

async fn bench(nats_url: &str, pg_server: &str, n: u64) -> anyhow::Result<()> {
    let tag = format!("trueup_bench_{}", std::process::id());
    let (stream, subject) = (tag.to_uppercase(), format!("{tag}.orders.created"));
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
    let pg_url = format!("{pg_server}/{tag}");
    let result = run(&js, &stream, &subject, &pg_url, n).await;
    let _ = js.delete_stream(&stream).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {tag} WITH (FORCE)").as_str())
        .await?;
    result
}

async fn run(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
    pg_url: &str,
    n: u64,
) -> anyhow::Result<()> {
    // Published in a scattered order (a multiplicative permutation of 1..=n).
    let t = Instant::now();
    let step = (1..n)
        .rev()
        .find(|s| gcd(*s, n) == 1 && *s > n / 3)
        .unwrap_or(1);
    let mut acks = Vec::with_capacity(10_000);
    for i in 0..n {
        let id = (i * step) % n + 1;
        acks.push(
            js.publish(subject.to_owned(), serde_json::to_vec(&order(id))?.into())
                .await?,
        );
        if acks.len() == 1_000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    let published = t.elapsed().as_secs_f64();

    let mut pg = sqlx::PgConnection::connect(pg_url).await?;
    pg.execute(
        format!(
            "CREATE UNLOGGED TABLE fulfilled (id bigint NOT NULL, amount numeric(12,2) NOT NULL, currency text NOT NULL);
             INSERT INTO fulfilled
               SELECT i, (i % 1000) + (i % 100) / 100.0 + CASE WHEN i % 1777 = 0 THEN 0.01 ELSE 0 END,
                      CASE WHEN i % 3 = 0 THEN 'EUR' ELSE 'USD' END
               FROM generate_series(1, {n}) AS i WHERE i % 1000 <> 0;
             INSERT INTO fulfilled SELECT i, 1, 'USD' FROM generate_series({n} + 1, {n} + 100) AS i;
             CREATE INDEX ON fulfilled (id);
             ANALYZE fulfilled;"
        )
        .as_str(),
    )
    .await?;
    pg.close().await?;

    let configs = [
        SourceConfig::Nats(NatsSource {
            name: SourceName::parse("orders")?,
            url: SecretUrl::new(
                std::env::var("TRUEUP_BENCH_NATS")
                    .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            ),
            timeout: HumanDuration::parse("30s")?,
        }),
        SourceConfig::Sql(SqlSource {
            name: SourceName::parse("fulfilment")?,
            kind: SourceKind::Postgres,
            url: SecretUrl::new(pg_url.to_owned()),
            pool_size: 2,
            statement_timeout: HumanDuration::parse("1h")?,
            on_writable: WritablePolicy::Warn,
            // The benchmark connects as the server's superuser, which trueup refuses by default.
            on_privileged: PrivilegedPolicy::Allow,
        }),
    ];
    let sources =
        Sources::open_all(&configs.into_iter().map(|c| (c.name().clone(), c)).collect()).await?;
    let inv = invariant(stream, subject);
    let InvariantSpec::Reconcile(spec) = &inv.spec else {
        unreachable!("the benchmark's invariant is a reconcile")
    };

    // The stream alone, in key order (what the merge join reads).
    reset_peak_rss();
    let t = Instant::now();
    let mut rows = sources
        .get(&spec.left.source)?
        .read(ReadRequest {
            query: spec.left.query.clone(),
            needed: Vec::new(),
            order_by: spec.key.clone(),
            filter: Vec::new(),
            digest_long_except: Some(Vec::new()),
            key_ranges: None,
            keys: None,
            changed_since: None,
        })
        .await?;
    let mut read = 0u64;
    while let Some(batch) = rows.next_batch().await {
        read += batch?.len() as u64;
    }
    let read_secs = t.elapsed().as_secs_f64();
    let read_rss = peak_rss_kib() as f64 / 1024.0;
    anyhow::ensure!(read == n, "the stream read gave {read} rows of {n}");

    // The whole reconcile.
    let dir = tempfile::tempdir()?;
    let store = trueup::store::open(&SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    )))
    .await?;
    reset_peak_rss();
    let t = Instant::now();
    let outcome = run_invariant(&inv, &sources, store.as_ref()).await?;
    let secs = t.elapsed().as_secs_f64();
    let rss = peak_rss_kib() as f64 / 1024.0;
    if let Some(e) = outcome.error {
        anyhow::bail!("the reconcile failed: {e}");
    }
    let count = |k| outcome.stats.counts.get(&k).copied().unwrap_or(0);
    let got = (
        count(ViolationKind::Missing),
        count(ViolationKind::Mismatch),
        count(ViolationKind::Extra),
    );
    anyhow::ensure!(
        got == expected(n) && outcome.stats.observed == got.0 + got.1 + got.2,
        "found (missing, mismatch, extra) {got:?}, planted {:?}",
        expected(n)
    );
    let both = outcome.stats.rows_left + outcome.stats.rows_right;
    println!(
        "\nJetStream ({n} messages, published in {published:.1} s) against PostgreSQL ({} rows); found {got:?} (missing, mismatch, extra), as planted\n",
        outcome.stats.rows_right
    );
    println!("| step | seconds | rows/s | peak RSS |");
    println!("|---|---:|---:|---:|");
    println!(
        "| stream read alone, in key order | {read_secs:.2} | {:.0} | {read_rss:.0} MiB |",
        n as f64 / read_secs
    );
    println!(
        "| reconcile (stream ↔ PostgreSQL) | {secs:.2} | {:.0} ({:.0} messages/s) | {rss:.0} MiB |",
        both as f64 / secs,
        n as f64 / secs
    );
    sources.close().await;
    store.close().await;
    Ok(())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn main() -> anyhow::Result<()> {
    // As `trueup` itself does: its peak memory is what this measures.
    trueup::disable_huge_pages();
    let n: u64 = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    anyhow::ensure!(n >= 2_000, "give at least 2,000 messages");
    let nats =
        std::env::var("TRUEUP_BENCH_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let pg = std::env::var("TRUEUP_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(&nats, &pg, n))
}

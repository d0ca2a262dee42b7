//! Reconcile throughput and peak memory, PostgreSQL → PostgreSQL.
//!
//!     cargo bench --bench reconcile                 # 1M and 10M rows per side
//!     cargo bench --bench reconcile -- 100000       # other sizes
//!
//! For each size it creates a fresh database on TRUEUP_BENCH_PG (default
//! postgres://postgres@127.0.0.1:5432) with two tables of N rows (id bigint primary key,
//! amount numeric(12,2), currency text) that differ in 1 row in 10,000 (missing, extra,
//! mismatched), runs one full `reconcile` through the real runner into a SQLite ledger, and
//! prints rows read per second (median of 3 runs; TRUEUP_BENCH_REPEAT) and the process's peak RSS (VmHWM, what `/usr/bin/time -v`
//! reports as "Maximum resident set size"). The database is dropped afterwards.

use std::path::PathBuf;
use std::time::Instant;

use sqlx::{Connection, Executor};
use trueup::config::{SecretUrl, SourceConfig, SourceKind, WritablePolicy};
use trueup::domain::{
    ColumnName, Expect, HumanDuration, Invariant, InvariantName, InvariantSpec, QuerySide,
    ReconcileSpec, Severity, SourceName,
};
use trueup::runner::run_invariant;
use trueup::source::Sources;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs per size (TRUEUP_BENCH_REPEAT, default 3); the median is reported.
fn repeats() -> usize {
    std::env::var("TRUEUP_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

fn invariant() -> Invariant {
    let side = |q: &str| QuerySide {
        source: SourceName::parse("pg").expect("name"),
        query: q.into(),
    };
    Invariant {
        name: InvariantName::parse("bench").expect("name"),
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
            left: side("SELECT id, amount, currency FROM l"),
            right: side("SELECT id, amount, currency FROM r"),
            key: vec![ColumnName::parse("id").expect("column")],
            expect: Expect::ExactlyOne,
            compare: None,
        }),
        compensate: Default::default(),
        replay: None,
        defined_at: (PathBuf::from("bench"), 0),
    }
}

async fn bench(server: &str, rows: u64) -> anyhow::Result<()> {
    let db = format!("trueup_bench_{}_{}", rows, std::process::id());
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    admin
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await?;
    let url = format!("{server}/{db}");
    let result = async {
        let t = Instant::now();
        let mut c = sqlx::PgConnection::connect(&url).await?;
        c.execute(
            format!(
                "CREATE UNLOGGED TABLE l (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, currency text NOT NULL);
                 CREATE UNLOGGED TABLE r (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, currency text NOT NULL);
                 INSERT INTO l SELECT i, (i % 100000) / 100.0, CASE WHEN i % 3 = 0 THEN 'EUR' ELSE 'USD' END
                   FROM generate_series(1, {rows}) i;
                 INSERT INTO r SELECT id + CASE WHEN id % 10000 = 0 THEN {rows} ELSE 0 END,
                                      amount + CASE WHEN id % 10000 = 5000 THEN 0.01 ELSE 0 END, currency FROM l;"
            )
            .as_str(),
        )
        .await?;
        // VACUUM refuses to run inside the implicit transaction of a multi-statement string.
        c.execute("VACUUM ANALYZE l").await?;
        c.execute("VACUUM ANALYZE r").await?;
        c.close().await?;
        println!("  loaded {rows} + {rows} rows in {:.1}s", t.elapsed().as_secs_f64());

        let cfg = SourceConfig {
            name: SourceName::parse("pg")?,
            kind: SourceKind::Postgres,
            url: SecretUrl::new(url.clone()),
            pool_size: 2,
            statement_timeout: HumanDuration::parse("1h")?,
            on_writable: WritablePolicy::Warn,
        // The benchmark connects as the server's superuser, which trueup refuses by default.
        on_privileged: trueup::config::PrivilegedPolicy::Allow,
        };
        let sources = Sources::open_all(&[(cfg.name.clone(), cfg)].into()).await?;
        let dir = tempfile::tempdir()?;
        let store = trueup::store::open(&SecretUrl::new(format!(
            "sqlite://{}",
            dir.path().join("ledger.db").display()
        )))
        .await?;
        let rss_before = peak_rss_kib();
        let mut timings = Vec::new();
        for attempt in 1..=repeats() {
            let t = Instant::now();
            let outcome = run_invariant(&invariant(), &sources, store.as_ref()).await?;
            let secs = t.elapsed().as_secs_f64();
            if let Some(e) = outcome.error {
                anyhow::bail!("the reconcile failed: {e}");
            }
            let read = outcome.stats.rows_left + outcome.stats.rows_right;
            println!(
                "  run {attempt}: {secs:.2}s, {:.0} rows/s read and compared, {} violations {:?}",
                read as f64 / secs,
                outcome.stats.observed,
                outcome.stats.counts,
            );
            timings.push((secs, read));
        }
        timings.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (median, read) = timings[timings.len() / 2];
        println!(
            "  reconcile {rows} x {rows}: median {median:.2}s, {:.2}M rows/s read and compared \
             ({:.2}M keys/s); peak RSS {:.1} MiB (before the first run {:.1} MiB)",
            read as f64 / median / 1e6,
            rows as f64 / median / 1e6,
            peak_rss_kib() as f64 / 1024.0,
            rss_before as f64 / 1024.0,
        );
        sources.close().await;
        store.close().await;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await?;
    result
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        sizes
    };
    let server = std::env::var("TRUEUP_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "reconcile PostgreSQL -> PostgreSQL ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for rows in sizes {
        runtime.block_on(bench(&server, rows))?;
    }
    Ok(())
}

//! Load on `GET /api/v1/violations` with 100,000 violations in the store, on both backends.
//!
//!     apt-get install wrk          # the load generator (Debian's package)
//!     cargo bench --bench api      # [-- ROWS]; PostgreSQL on TRUEUP_BENCH_PG
//!
//! For each backend it fills a fresh store through the `Store` trait (one run staging ROWS
//! violations, then completing), starts `trueup serve` in-process on a free port, and runs wrk
//! (2 threads, 32 connections, 10 s) against the first page and a page deep in the keyset
//! (`after` near the end), printing requests/s and the latency percentiles wrk reports.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use chrono::Utc;
use sqlx::{Connection, Executor};
use trueup::app::App;
use trueup::config::{ApiToken, Config};
use trueup::domain::RunStats;
use trueup::domain::{InvariantName, Value, Violation, ViolationKind};
use trueup::serve::Application;

const TOKEN: &str = "bench-viewer-token-0123456789";

async fn fill(config: &Config, rows: u64) -> anyhow::Result<()> {
    let store = trueup::store::open(&config.store).await?;
    let inv = InvariantName::parse("payments-ledger")?;
    let t = Instant::now();
    let run = store.begin_run(&inv, Utc::now()).await?;
    let kinds = [
        ViolationKind::Missing,
        ViolationKind::Extra,
        ViolationKind::Mismatch,
    ];
    let mut batch = Vec::with_capacity(1000);
    for i in 0..rows {
        batch.push(Violation {
            kind: kinds[(i % 3) as usize],
            key: vec![Value::Int(i as i64)],
            discriminator: None,
            event_at: Some(Utc::now()),
            evidence: serde_json::json!({"left": {"payment_id": i, "amount_cents": 1000 + i % 500, "currency": "USD"}}),
        });
        if batch.len() == 1000 {
            store.observe(run, &inv, i + 1 - 1000, &batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store
            .observe(run, &inv, rows - batch.len() as u64, &batch)
            .await?;
    }
    let stats = RunStats {
        observed: rows,
        ..Default::default()
    };
    store
        .complete_run(run, &inv, &stats, Utc::now(), None)
        .await?;
    store.close().await;
    println!(
        "  stored {rows} violations in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn wrk(url: &str) -> anyhow::Result<()> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            "-d10s",
            "--latency",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            url,
        ])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run wrk ({e}); install it: apt-get install wrk"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pick = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    println!(
        "    {url}\n      {} | p50 {} | p99 {} | non-2xx: {}",
        pick("Requests/sec"),
        pick("50%").trim_start_matches("50% "),
        pick("99%").trim_start_matches("99% "),
        if text.contains("Non-2xx") {
            pick("Non-2xx")
        } else {
            "none".into()
        }
    );
    Ok(())
}

async fn bench(name: &str, dir: &Path, store_url: &str, rows: u64) -> anyhow::Result<()> {
    println!("{name} store");
    std::fs::create_dir_all(dir.join("invariants"))?;
    std::fs::write(
        dir.join("trueup.yaml"),
        format!(
            "store: {store_url}\nserve:\n  tokens:\n    - {{name: bench, role: viewer, sha256: {}}}\n",
            hex::encode(ApiToken::digest(TOKEN))
        ),
    )?;
    let config = Config::load(&dir.join("trueup.yaml")).map_err(|d| anyhow::anyhow!("{d}"))?;
    fill(&config, rows).await?;
    let mut settings = config.serve.clone();
    settings.listen = "127.0.0.1:0".parse()?;
    let app = App::with_config(config).await?;
    let application = Application::build(app, settings).await?;
    let base = format!("http://{}", application.addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async {
        let _ = stopped.await;
    }));
    let deep = rows.saturating_sub(150);
    for url in [
        format!("{base}/api/v1/violations?limit=100"),
        format!(
            "{base}/api/v1/violations?invariant=payments-ledger&kind=mismatch&limit=100&after={deep}"
        ),
    ] {
        tokio::task::spawn_blocking(move || wrk(&url)).await??;
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rows: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let server = std::env::var("TRUEUP_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let sqlite_dir = dir.path().join("sqlite");
        std::fs::create_dir_all(&sqlite_dir)?;
        bench("SQLite", &sqlite_dir, "sqlite://trueup.db", rows).await?;

        let db = format!("trueup_bench_api_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
        admin
            .execute(format!("CREATE DATABASE {db}").as_str())
            .await?;
        let pg_dir = dir.path().join("pg");
        let result = bench("PostgreSQL", &pg_dir, &format!("{server}/{db}"), rows).await;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
            .await?;
        result
    })
}

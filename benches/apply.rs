//! Apply throughput without a rate limit, on both store backends.
//!
//!     cargo bench --bench apply                 # 5,000 SQL actions, 1 and 4 appliers
//!     cargo bench --bench apply -- 20000        # another plan size
//!
//! For each store (SQLite file, PostgreSQL database) it creates a fresh PostgreSQL database on
//! TRUEUP_BENCH_PG (default postgres://postgres@127.0.0.1:5432) with N payments and an empty
//! ledger, lets `check` propose the plan (one INSERT per missing ledger entry), approves it
//! and applies it with `--rate unlimited` through the real apply path: claim under a lease,
//! already-applied checks, per-key re-check of the violation against the source, the INSERT
//! with its marker row in one target transaction, and the outcome with its audit entry in the
//! store. It prints actions per second (median of TRUEUP_BENCH_REPEAT runs, default 3) for one
//! apply and for four applies of the same plan racing, and the verification time.

use std::sync::Arc;

use chrono::Utc;
use sqlx::{Connection, Executor};
use tokio_util::sync::CancellationToken;
use trueup::app::App;
use trueup::config::Config;
use trueup::domain::Actor;
use trueup::domain::Role;
use trueup::plan::apply::{self, ApplyEnv, ApplyOptions, Outcome, Rate};
use trueup::plan::targets::Targets;
use trueup::plan::{self, Proposal};

fn repeats() -> usize {
    std::env::var("TRUEUP_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

const RULES: &str = r#"invariants:
  - name: payments-booked
    severity: high
    reconcile:
      left: {source: shop, query: "SELECT id AS payment_id, amount FROM payments"}
      right: {source: shop, query: "SELECT payment_id, amount FROM ledger_entries"}
      key: payment_id
    compensate:
      missing:
        sql:
          target: ledger-writer
          statement: INSERT INTO ledger_entries (payment_id, amount) VALUES ({{key.payment_id}}, {{left.amount}})
"#;

struct Run {
    secs: f64,
    applied: u64,
    verify_secs: f64,
}

async fn one_run(
    server: &str,
    store_kind: &str,
    actions: u64,
    appliers: usize,
) -> anyhow::Result<Run> {
    let tag = format!("{}_{}", std::process::id(), rand::random::<u32>());
    let data_db = format!("trueup_bench_apply_data_{tag}");
    let store_db = format!("trueup_bench_apply_store_{tag}");
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    admin
        .execute(format!("CREATE DATABASE {data_db}").as_str())
        .await?;
    if store_kind == "postgres" {
        admin
            .execute(format!("CREATE DATABASE {store_db}").as_str())
            .await?;
    }
    let dir = tempfile::tempdir()?;
    let result = async {
        let data_url = format!("{server}/{data_db}");
        let mut c = sqlx::PgConnection::connect(&data_url).await?;
        c.execute(
            format!(
                "CREATE TABLE payments (id BIGINT PRIMARY KEY, amount NUMERIC(12,2) NOT NULL);
                 INSERT INTO payments SELECT g, 10 + g / 100.0 FROM generate_series(1, {actions}) g;
                 CREATE TABLE ledger_entries (payment_id BIGINT NOT NULL, amount NUMERIC(12,2) NOT NULL);
                 CREATE INDEX ON ledger_entries (payment_id);"
            )
            .as_str(),
        )
        .await?;
        c.close().await?;
        let store_url = match store_kind {
            "postgres" => format!("{server}/{store_db}"),
            _ => format!("sqlite://{}", dir.path().join("trueup.db").display()),
        };
        std::fs::create_dir_all(dir.path().join("invariants"))?;
        // Every missing payment is stored (and so becomes an action).
        let rules = RULES.replace(
            "    severity: high\n",
            &format!("    severity: high\n    violation_budget: {}\n", actions.max(1)),
        );
        std::fs::write(dir.path().join("invariants/rules.yaml"), rules)?;
        let config_path = dir.path().join("trueup.yaml");
        std::fs::write(
            &config_path,
            format!(
                "store: {store_url}\nsources:\n  shop: {{url: \"{data_url}\", pool_size: 8, allow_privileged_role: true}}\ntargets:\n  ledger-writer: {{url: \"{data_url}\"}}\n"
            ),
        )?;
        let app = Arc::new(
            App::with_config(Config::load(&config_path).map_err(|d| anyhow::anyhow!("{d}"))?)
                .await?,
        );
        let targets = Arc::new(Targets::open(&app.config).map_err(anyhow::Error::msg)?);
        let outcomes = app.check(&[], &trueup::domain::Actor::local("test"), false).await?;
        let Some(Proposal::Created { plan: id, .. }) = outcomes[0].proposal.clone() else {
            anyhow::bail!("no plan proposed: {:?}", outcomes[0].run.error);
        };
        let approver = Actor {
            name: "bench".into(),
            role: Role::Approver,
        };
        plan::approve(
            app.store.as_ref(),
            id,
            app.invariants.first(),
            &approver,
            None,
            Utc::now(),
        )
        .await?;
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..appliers {
            let app = Arc::clone(&app);
            let targets = Arc::clone(&targets);
            let approver = approver.clone();
            tasks.spawn(async move {
                let env = ApplyEnv {
                    store: app.store.as_ref(),
                    sources: &app.sources,
                    targets: &targets,
                    invariant: app.invariants.first(),
                    actor: &approver,
                    worker: format!("bench-{n}"),
                };
                let opts = ApplyOptions {
                    rate: Rate::Unlimited,
                    ..ApplyOptions::default()
                };
                apply::apply(&env, id, &opts, &CancellationToken::new(), &|_| {}).await
            });
        }
        let mut run = Run {
            secs: 0.0,
            applied: 0,
            verify_secs: 0.0,
        };
        while let Some(report) = tasks.join_next().await {
            match report? {
                Ok(r) => {
                    run.applied += r.counts.get(&Outcome::Applied).copied().unwrap_or(0);
                    // All appliers start together: the plan is done when the last one is.
                    run.secs = run.secs.max(r.actions_secs);
                    if r.verification.is_some() {
                        run.verify_secs = r.elapsed_secs - r.actions_secs;
                    }
                }
                Err(e) if e.to_string().contains("already been applied") => {}
                Err(e) => anyhow::bail!("apply failed: {e}"),
            }
        }
        targets.close().await;
        app.close().await;
        Ok::<_, anyhow::Error>(run)
    }
    .await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {data_db} WITH (FORCE)").as_str())
        .await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {store_db} WITH (FORCE)").as_str())
        .await?;
    result
}

fn main() -> anyhow::Result<()> {
    let actions: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000);
    let server = std::env::var("TRUEUP_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "apply {actions} SQL actions without a rate limit, target PostgreSQL ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for store in ["sqlite", "postgres"] {
        for appliers in [1, 4] {
            let mut runs = Vec::new();
            for attempt in 1..=repeats() {
                let run = runtime.block_on(one_run(&server, store, actions, appliers))?;
                anyhow::ensure!(
                    run.applied == actions,
                    "applied {} of {actions}",
                    run.applied
                );
                println!(
                    "  {store} store, {appliers} applier(s), run {attempt}: {:.2}s, {:.0} actions/s (verification {:.2}s)",
                    run.secs,
                    actions as f64 / run.secs,
                    run.verify_secs
                );
                runs.push(run);
            }
            runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
            let m = &runs[runs.len() / 2];
            println!(
                "  => {store} store, {appliers} applier(s): median {:.2}s, {:.0} actions/s; verification of {actions} actions {:.2}s",
                m.secs,
                actions as f64 / m.secs,
                m.verify_secs
            );
        }
    }
    Ok(())
}

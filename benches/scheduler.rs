//! The scheduler at scale: N cheap `check` invariants on one `trueup serve`, each scheduled
//! every P seconds, on both store backends (issue 18: 1,000 every second on PostgreSQL and
//! every 10 s on SQLite with missed ticks under 1 % and start lateness p99 under 1 s).
//!
//!     cargo bench --bench scheduler                 # the four standard cases, 30 s each
//!     cargo bench --bench scheduler -- STORE N P S  # one case: sqlite|postgres, N invariants,
//!                                                   # every P s, measured for S s
//!
//! PostgreSQL on TRUEUP_BENCH_PG (default postgres://postgres@127.0.0.1:5432), a fresh database
//! per case. Each case runs in a child process of its own, so its peak RSS is its own. The
//! server runs in-process; after a warm-up the bench measures S seconds of fire times, stops
//! the server gracefully, and reads every fire time's outcome from the store's `ticks` table
//! (the source of truth replicas share): a run (with its start lateness, the run's start minus
//! the fire time), a recorded miss, or nothing at all.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{Connection, Executor};
use trueup::app::App;
use trueup::config::Config;
use trueup::serve::Application;

const WARMUP: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Case {
    backend: Backend,
    invariants: usize,
    every_secs: u32,
    measure_secs: u32,
}

/// One fire time's outcome, read from the store.
struct Outcome {
    missed: bool,
    /// Run start minus fire time, for a tick that ran.
    lateness: Option<TimeDelta>,
    /// How long the run took, start to finish (its reads and its ledger change).
    duration: Option<TimeDelta>,
}

fn invariants_yaml(n: usize, every_secs: u32) -> String {
    let schedule = if every_secs == 1 {
        "* * * * * *".to_owned()
    } else {
        format!("*/{every_secs} * * * * *")
    };
    let mut out = String::from("invariants:\n");
    for i in 0..n {
        out.push_str(&format!(
            "  - name: inv-{i:05}\n    schedule: \"{schedule}\"\n    check: {{source: app, query: \"SELECT id FROM items WHERE id < 0\", key: id}}\n"
        ));
    }
    out
}

async fn outcomes(
    store_url: &str,
    backend: Backend,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Vec<Outcome>> {
    const SQL: &str = "SELECT t.missed, t.fire_at, r.started_at, r.finished_at FROM ticks t \
                       LEFT JOIN runs r ON r.id = t.run_id \
                       WHERE t.fire_at >= $1 AND t.fire_at < $2";
    type Row = (
        bool,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = match backend {
        Backend::Sqlite => {
            let path = store_url.trim_start_matches("sqlite://");
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await?;
            sqlx::query_as(SQL)
                .bind(from)
                .bind(to)
                .fetch_all(&mut c)
                .await?
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(store_url).await?;
            sqlx::query_as(SQL)
                .bind(from)
                .bind(to)
                .fetch_all(&mut c)
                .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(missed, fire_at, started, finished)| Outcome {
            missed,
            lateness: started.map(|s| s - fire_at),
            duration: started.zip(finished).map(|(s, f)| f - s),
        })
        .collect())
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs one case in this process and prints its line.
async fn run_case(case: &Case, pg_server: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let app_db = dir.path().join("app.db");
    {
        let mut c =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", app_db.display()))
                .await?;
        c.execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY); INSERT INTO items VALUES (1), (2), (3);",
        )
        .await?;
    }
    let pg_db = format!("trueup_bench_sched_{}", std::process::id());
    let store_url = match case.backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("trueup.db").display()),
        Backend::Postgres => {
            let mut admin = sqlx::PgConnection::connect(&format!("{pg_server}/postgres")).await?;
            admin
                .execute(format!("CREATE DATABASE {pg_db}").as_str())
                .await?;
            format!("{pg_server}/{pg_db}")
        }
    };
    let result = measure(case, dir.path(), &app_db, &store_url).await;
    if case.backend == Backend::Postgres {
        let mut admin = sqlx::PgConnection::connect(&format!("{pg_server}/postgres")).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {pg_db} WITH (FORCE)").as_str())
            .await?;
    }
    result
}

async fn measure(case: &Case, dir: &Path, app_db: &Path, store_url: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("invariants"))?;
    std::fs::write(
        dir.join("invariants/bench.yaml"),
        invariants_yaml(case.invariants, case.every_secs),
    )?;
    std::fs::write(
        dir.join("trueup.yaml"),
        format!(
            "store: {store_url}\nsources:\n  app: {{url: \"sqlite://{}\"}}\ninvariants: invariants\n",
            app_db.display()
        ),
    )?;
    let config = Config::load(&dir.join("trueup.yaml")).map_err(|d| anyhow::anyhow!("{d}"))?;
    let mut settings = config.serve.clone();
    settings.listen = "127.0.0.1:0".parse()?;
    let app = App::with_config(config).await?;
    let application = Application::build(app, settings).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(WARMUP).await;
    // Whole seconds, so every invariant has the same fire times in the window.
    let from = Utc::now()
        .with_timezone(&Utc)
        .checked_add_signed(TimeDelta::seconds(1))
        .unwrap();
    let from = DateTime::from_timestamp(from.timestamp(), 0).unwrap();
    let to = from + TimeDelta::seconds(i64::from(case.measure_secs));
    let wait = (to - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(3);
    tokio::time::sleep(wait).await;
    let _ = stop.send(());
    server.await??;

    let seen = outcomes(store_url, case.backend, from, to).await?;
    let fire_times = (from.timestamp()..to.timestamp())
        .filter(|t| t % i64::from(case.every_secs) == 0)
        .count();
    let expected = fire_times * case.invariants;
    let ran = seen.iter().filter(|o| o.lateness.is_some()).count();
    let missed = seen.iter().filter(|o| o.missed).count();
    let no_outcome = expected.saturating_sub(ran + missed);
    let secs = |d: TimeDelta| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
    let mut late: Vec<f64> = seen.iter().filter_map(|o| o.lateness).map(secs).collect();
    late.sort_by(f64::total_cmp);
    let mut took: Vec<f64> = seen.iter().filter_map(|o| o.duration).map(secs).collect();
    took.sort_by(f64::total_cmp);
    println!(
        "{:<10} {:>6} every {:>2}s | fire times {:>7} | runs/s {:>7.1} | missed {:>6} ({:>5.2}%) | no outcome {:>5} | lateness p50 {:>6.3}s p90 {:>6.3}s p99 {:>6.3}s max {:>6.3}s | run p50 {:>6.3}s p99 {:>6.3}s | peak RSS {:>6.1} MiB",
        match case.backend {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        },
        case.invariants,
        case.every_secs,
        expected,
        ran as f64 / f64::from(case.measure_secs),
        missed,
        (missed + no_outcome) as f64 / expected.max(1) as f64 * 100.0,
        no_outcome,
        percentile(&late, 50.0),
        percentile(&late, 90.0),
        percentile(&late, 99.0),
        late.last().copied().unwrap_or(f64::NAN),
        percentile(&took, 50.0),
        percentile(&took, 99.0),
        peak_rss_mib(),
    );
    Ok(())
}

fn parse_case(args: &[String]) -> anyhow::Result<Case> {
    let backend = match args[0].as_str() {
        "sqlite" => Backend::Sqlite,
        "postgres" => Backend::Postgres,
        other => anyhow::bail!("store `{other}`: sqlite or postgres"),
    };
    let number = |i: usize, what: &str| -> anyhow::Result<u64> {
        args.get(i)
            .ok_or_else(|| anyhow::anyhow!("missing {what}"))?
            .parse()
            .map_err(|_| anyhow::anyhow!("{what} `{}` is not a number", args[i]))
    };
    Ok(Case {
        backend,
        invariants: number(1, "the number of invariants")? as usize,
        every_secs: u32::try_from(number(2, "the period in seconds")?)?,
        measure_secs: u32::try_from(number(3, "the measured seconds")?)?,
    })
}

fn main() -> anyhow::Result<()> {
    // cargo bench passes `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let pg_server = std::env::var("TRUEUP_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    if args.len() >= 4 {
        let case = parse_case(&args)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(run_case(&case, &pg_server));
    }
    println!(
        "scheduler: N `check` invariants on one serve; outcome of every fire time in the measured window, read from the store"
    );
    let me = std::env::current_exe()?;
    for (store, n, every) in [
        ("sqlite", 100, 10),
        ("sqlite", 1000, 10),
        ("postgres", 100, 1),
        ("postgres", 1000, 1),
    ] {
        let status = std::process::Command::new(&me)
            .args([store, &n.to_string(), &every.to_string(), "30"])
            .status()?;
        anyhow::ensure!(
            status.success(),
            "the {store} case with {n} invariants failed"
        );
    }
    Ok(())
}

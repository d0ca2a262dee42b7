//! Reconcile at scale against its floor and its peer, in one run on the same tables.
//!
//!     cargo bench --bench reconcile                 # 1M and 10M rows per side
//!     cargo bench --bench reconcile -- 100000       # other sizes (multiples of 10,000)
//!
//! For each size it creates a fresh database on TRUEUP_BENCH_PG (default
//! postgres://postgres@127.0.0.1:5432) and on TRUEUP_BENCH_MARIADB (default
//! mysql://root@127.0.0.1:3306; `none` leaves the cross-engine case out) with a left table of N
//! rows (id bigint primary key, amount numeric(12,2), currency text) and a right table per case
//! (`fixture.rs`): uniform differences, identical, an outage of 10,000 consecutive keys; and the
//! uniform case with its right side in MariaDB, and again between the PostgreSQL tables with
//! `mode: stream` (the cross-engine case's own work, set beside it after the table). Per case,
//! interleaved, it measures:
//!
//! - the floor: both sides read in key order at once, as cheaply as each engine sends them
//!   (PostgreSQL binary COPY, MariaDB's text protocol through the `mysql` client), and
//!   discarded (`floor.rs`);
//! - trueup: one full `reconcile` through the real runner into a SQLite ledger, its violation
//!   counts checked against what the case planted (a wrong answer fails the benchmark), and
//!   its peak RSS (VmHWM, reset before the case);
//! - reladiff, when installed (`peer.rs`), once per case, with its peak RSS (not for the
//!   `mode: stream` row, whose tables the uniform case's run compared already).
//!
//! Then the incremental case: tables `li`/`ri` with a change column, a full pass to set the
//! watermark, and per repeat 10,000 rows changed (5,000 keys on both sides, 50 of them left
//! mismatched) and one incremental run timed (its floor is
//! still both sides read whole: what a run without incremental would at least cost).
//!
//! Seconds are medians of TRUEUP_BENCH_REPEAT runs (default 3; of an even count, the mean of the
//! middle two); each case has its own invariant, so the first run of a case stores its
//! violations and the later ones find them open. Each repeat reads the floor and then runs
//! trueup, and trueup / floor is the median of those pairs' ratios, with their lowest and
//! highest: a machine whose speed drifts moves both halves of a pair alike, so the ratios'
//! spread is what pairing did not cancel (and the first repeat, which writes the case's
//! violations); each case's line shows the seconds' own spread. The floor and trueup columns
//! are the medians of the seconds, so their quotient need not be the ratio column. It prints
//! one table per size: seconds, trueup as a multiple of the floor, reladiff (run once) as a
//! multiple of trueup. The databases are dropped afterwards.

#[path = "../common/rss.rs"]
mod rss;
use rss::{peak_rss_kib, reset_peak_rss};

mod fixture;
mod floor;
mod peer;

use std::path::PathBuf;
use std::time::Instant;

use fixture::{CASES, Case, Fixture};
use floor::Side;
use trueup::config::{SecretUrl, SourceConfig, SourceKind, SqlSource, WritablePolicy};
use trueup::domain::Read;
use trueup::domain::{
    ColumnName, CompareMethod, Expect, HumanDuration, Incremental, Invariant, InvariantName,
    InvariantSpec, QuerySide, ReconcileMode, ReconcileSpec, Severity, SourceName, ViolationKind,
};
use trueup::runner::run_invariant;
use trueup::source::Sources;

/// Runs per case (TRUEUP_BENCH_REPEAT, default 3); the median is reported.
fn repeats() -> usize {
    std::env::var("TRUEUP_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len().is_multiple_of(2) {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

/// The median of a case's repeats and their lowest and highest.
struct Spread {
    low: f64,
    median: f64,
    high: f64,
}

impl Spread {
    fn of(xs: &[f64]) -> Self {
        let mut sorted = xs.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            low: sorted[0],
            high: sorted[sorted.len() - 1],
            median: median(sorted),
        }
    }

    /// trueup / floor, repeat by repeat.
    fn of_pairs(trueups: &[f64], floors: &[f64]) -> Self {
        debug_assert_eq!(trueups.len(), floors.len(), "each repeat is a pair");
        let ratios: Vec<f64> = trueups.iter().zip(floors).map(|(t, f)| t / f).collect();
        Self::of(&ratios)
    }

    /// `4.21s (4.10-4.60)` or `0.41x (0.36-0.43)`: the median in `unit` and, where the repeats
    /// differ, their lowest and highest.
    fn show(&self, unit: &str) -> String {
        if self.low == self.high {
            format!("{:.2}{unit}", self.median)
        } else {
            format!(
                "{:.2}{unit} ({:.2}-{:.2})",
                self.median, self.low, self.high
            )
        }
    }
}

/// One row of the table: a case on a pair of engines.
struct Measured {
    case: String,
    engines: &'static str,
    /// trueup / floor per repeat.
    ratio: Spread,
    /// The seconds: their medians in the table, with their spreads under the case.
    floor_spread: Spread,
    trueup_spread: Spread,
    trueup_rss_mib: f64,
    /// How trueup compared the sides in the case's mode (stream, or checksum and what it
    /// read).
    how: String,
    peer: Option<peer::PeerRun>,
}

/// A run's comparison in a few words: `stream`, or
/// `checksum, 2112 segments summarised, 5 read`.
fn how(compared: Option<&trueup::domain::Compared>) -> String {
    match compared {
        Some(c) if c.method == CompareMethod::Checksum => format!(
            "checksum, {} segments summarised, {} read",
            c.segments, c.segments_streamed
        ),
        Some(c) => c.method.as_str().to_owned(),
        None => "?".to_owned(),
    }
}

/// One invariant per case (`name`), so no case's runs open or resolve another's violations.
fn invariant(
    name: &str,
    left: &str,
    right_source: &str,
    right: &str,
    mode: ReconcileMode,
) -> Invariant {
    let side = |source: &str, table: &str| QuerySide {
        source: SourceName::parse(source).expect("name"),
        query: Read::Sql(format!("SELECT id, amount, currency FROM {table}")),
    };
    Invariant {
        name: InvariantName::parse(name).expect("name"),
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
            left: side("pg", left),
            right: side(right_source, right),
            key: vec![ColumnName::parse("id").expect("column")],
            expect: Expect::ExactlyOne,
            compare: None,
            mode,
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

fn source(name: &str, kind: SourceKind, url: &str) -> anyhow::Result<(SourceName, SourceConfig)> {
    let name = SourceName::parse(name)?;
    Ok((
        name.clone(),
        SourceConfig::Sql(SqlSource {
            name,
            kind,
            url: SecretUrl::new(url.to_owned()),
            pool_size: 2,
            statement_timeout: HumanDuration::parse("1h")?,
            on_writable: WritablePolicy::Warn,
            // The benchmark connects as the servers' superusers, which trueup refuses by default.
            on_privileged: trueup::config::PrivilegedPolicy::Allow,
        }),
    ))
}

async fn bench(pg_server: &str, maria_server: Option<&str>, n: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    let fixture = Fixture::create(pg_server, maria_server, n).await?;
    println!(
        "\n{n} x {n} rows: tables loaded in {:.0}s",
        t.elapsed().as_secs_f64()
    );
    let result = measure(&fixture, n).await;
    fixture.drop_all().await?;
    let rows = result?;
    print_table(n, &rows);
    Ok(())
}

async fn measure(fixture: &Fixture, n: u64) -> anyhow::Result<Vec<Measured>> {
    let mut configs = vec![source("pg", SourceKind::Postgres, &fixture.pg_url)?];
    if let Some(url) = &fixture.maria_url {
        configs.push(source("maria", SourceKind::MySql, url)?);
    }
    let sources = Sources::open_all(&configs.into_iter().collect()).await?;
    let dir = tempfile::tempdir()?;
    let store = trueup::store::open(&SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    )))
    .await?;
    let peer_version = peer::installed();

    let mut pairs: Vec<(Case, &'static str, ReconcileMode)> = CASES
        .iter()
        .map(|c| (*c, "pg-pg", ReconcileMode::Auto))
        .collect();
    if fixture.maria_url.is_some() {
        pairs.push((Case::Uniform, "pg-mariadb", ReconcileMode::Auto));
        // The same work as the cross-engine case's (both sides streamed, no pushdown, which
        // needs a hash both servers compute cheaply): what its cost is to be set beside.
        pairs.push((Case::Uniform, "pg-pg", ReconcileMode::Stream));
    }
    let mut measured = Vec::new();
    for (case, engines, mode) in pairs {
        let streamed = mode == ReconcileMode::Stream;
        let table = case.table();
        let (right_source, right_side, peer_right) = match (engines, &fixture.maria_url) {
            ("pg-mariadb", Some(url)) => (
                "maria",
                Side::MariaDb {
                    url: url.clone(),
                    table: table.clone(),
                },
                peer::url(url),
            ),
            _ => (
                "pg",
                Side::Postgres {
                    url: fixture.pg_url.clone(),
                    table: table.clone(),
                },
                peer::url(&fixture.pg_url),
            ),
        };
        let left_side = Side::Postgres {
            url: fixture.pg_url.clone(),
            table: "l".into(),
        };
        let inv = invariant(
            &format!(
                "bench-{}-{engines}{}",
                case.label(),
                if streamed { "-stream" } else { "" }
            ),
            "l",
            right_source,
            &table,
            mode,
        );
        let (want_missing, want_mismatch, want_extra) = case.expected(n);
        let (mut floors, mut trueups) = (Vec::new(), Vec::new());
        let mut peak_mib: f64 = 0.0;
        let mut compared = String::new();
        for _ in 0..repeats() {
            let (secs, rows) = floor::floor(&left_side, &right_side).await?;
            anyhow::ensure!(
                rows == 2 * n - want_missing + want_extra,
                "{} {engines}: the floor read {rows} rows",
                case.label()
            );
            floors.push(secs);

            reset_peak_rss();
            let t = Instant::now();
            let outcome = run_invariant(&inv, &sources, store.as_ref()).await?;
            let secs = t.elapsed().as_secs_f64();
            peak_mib = peak_mib.max(peak_rss_kib() as f64 / 1024.0);
            if let Some(e) = outcome.error {
                anyhow::bail!("{} {engines}: the reconcile failed: {e}", case.label());
            }
            let count = |k| outcome.stats.counts.get(&k).copied().unwrap_or(0);
            let got = (
                count(ViolationKind::Missing),
                count(ViolationKind::Mismatch),
                count(ViolationKind::Extra),
            );
            anyhow::ensure!(
                got == (want_missing, want_mismatch, want_extra)
                    && outcome.stats.observed == want_missing + want_mismatch + want_extra,
                "{} {engines}: trueup found (missing, mismatch, extra) {got:?} and {} in all; planted {:?}",
                case.label(),
                outcome.stats.observed,
                (want_missing, want_mismatch, want_extra),
            );
            trueups.push(secs);
            compared = how(outcome.stats.compared.as_ref());
        }
        // (reladiff ran on these tables for the case in `auto` already.)
        let peer = match &peer_version {
            Some(_) if !streamed => Some(peer::run(
                (&peer::url(&fixture.pg_url), "l"),
                (&peer_right, &table),
            )?),
            _ => None,
        };
        let row = Measured {
            case: if streamed {
                format!("{}, mode: stream", case.label())
            } else {
                case.label().to_owned()
            },
            engines,
            ratio: Spread::of_pairs(&trueups, &floors),
            floor_spread: Spread::of(&floors),
            trueup_spread: Spread::of(&trueups),
            trueup_rss_mib: peak_mib,
            how: compared,
            peer,
        };
        println!(
            "  {} {}: floor {}, trueup {} ({}){}",
            row.case,
            row.engines,
            row.floor_spread.show("s"),
            row.trueup_spread.show("s"),
            row.how,
            row.peer
                .as_ref()
                .map(|p| format!(", reladiff {:.2}s ({})", p.secs, p.said))
                .unwrap_or_default()
        );
        measured.push(row);
    }
    let row = measure_incremental(fixture, &sources, store.as_ref(), n).await?;
    println!(
        "  {} {}: floor {}, trueup {} ({})",
        row.case,
        row.engines,
        row.floor_spread.show("s"),
        row.trueup_spread.show("s"),
        row.how
    );
    measured.push(row);
    match peer_version {
        Some(v) => println!("  peer: {v}, `--algorithm hashdiff`, its defaults otherwise"),
        None => println!(
            "  peer: reladiff is not installed (pip install 'reladiff[postgresql,mysql]'): its columns are empty"
        ),
    }
    sources.close().await;
    store.close().await;
    Ok(measured)
}

/// The incremental case: a full pass sets the watermark (not timed); then per repeat, 10,000
/// rows change (5,000 keys on both sides) and one incremental run is timed. It must read only
/// those keys (and those at the last marks) and find exactly the planted mismatches.
async fn measure_incremental(
    fixture: &Fixture,
    sources: &Sources,
    store: &dyn trueup::store::Store,
    n: u64,
) -> anyhow::Result<Measured> {
    let mut inv = invariant(
        "bench-incremental-pg-pg",
        "li",
        "pg",
        "ri",
        ReconcileMode::Auto,
    );
    if let InvariantSpec::Reconcile(spec) = &mut inv.spec {
        spec.compare = Some(vec![
            ColumnName::parse("amount")?,
            ColumnName::parse("currency")?,
        ]);
        spec.incremental = Some(Incremental {
            left: Some(ColumnName::parse("changed_at")?),
            right: Some(ColumnName::parse("changed_at")?),
            lookback: HumanDuration::parse("1s")?,
            full_every: HumanDuration::parse("1d")?,
        });
        for side in [&mut spec.left, &mut spec.right] {
            if let Read::Sql(sql) = &mut side.query {
                *sql = sql.replace("currency FROM", "currency, changed_at FROM");
            }
        }
    }
    let full = run_invariant(&inv, sources, store).await?;
    anyhow::ensure!(
        full.error.is_none() && full.stats.observed == 0,
        "incremental: the first full pass found {} or failed: {:?}",
        full.stats.observed,
        full.error
    );
    let (left_side, right_side) = (
        Side::Postgres {
            url: fixture.pg_url.clone(),
            table: "li".into(),
        },
        Side::Postgres {
            url: fixture.pg_url.clone(),
            table: "ri".into(),
        },
    );
    let (mut floors, mut trueups) = (Vec::new(), Vec::new());
    let mut peak_mib: f64 = 0.0;
    let mut how = String::new();
    for round in 0..repeats() as u64 {
        let (secs, _) = floor::floor(&left_side, &right_side).await?;
        floors.push(secs);
        fixture.change(n, round).await?;
        reset_peak_rss();
        let t = Instant::now();
        let outcome = run_invariant(&inv, sources, store).await?;
        let secs = t.elapsed().as_secs_f64();
        peak_mib = peak_mib.max(peak_rss_kib() as f64 / 1024.0);
        if let Some(e) = outcome.error {
            anyhow::bail!("incremental: the run failed: {e}");
        }
        let trueup::domain::Coverage::Changed { keys, .. } = outcome.stats.coverage else {
            anyhow::bail!("incremental: round {round} read every row");
        };
        // Also read: the key at each side's last mark (the full pass's last row, or the last
        // round's last key), changed alike on both sides.
        let mismatches = outcome
            .stats
            .counts
            .get(&ViolationKind::Mismatch)
            .copied()
            .unwrap_or(0);
        anyhow::ensure!(
            mismatches == fixture::INCREMENTAL_MISMATCHES
                && outcome.stats.observed == mismatches
                && keys <= fixture::INCREMENTAL_CHANGED / 2 + 2,
            "incremental: round {round} covered {keys} keys and found {mismatches} mismatches, {} in all",
            outcome.stats.observed
        );
        trueups.push(secs);
        how = format!("incremental, {keys} keys read");
    }
    Ok(Measured {
        case: format!("{} changed of {n}", fixture::INCREMENTAL_CHANGED),
        engines: "pg-pg",
        ratio: Spread::of_pairs(&trueups, &floors),
        floor_spread: Spread::of(&floors),
        trueup_spread: Spread::of(&trueups),
        trueup_rss_mib: peak_mib,
        how,
        peer: None,
    })
}

fn print_table(n: u64, rows: &[Measured]) {
    println!(
        "\n| case ({n} x {n}) | engines | floor | trueup | trueup / floor, median of repeats (lowest-highest) | trueup compared by | reladiff | reladiff / trueup | trueup peak RSS | reladiff peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (peer, ratio, peer_rss) = match &r.peer {
            Some(p) => (
                format!("{:.2} s", p.secs),
                format!("{:.1}x", p.secs / r.trueup_spread.median),
                p.peak_rss_mib
                    .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.0} MiB")),
            ),
            None => ("not run".into(), "-".into(), "-".into()),
        };
        let to_floor = r.ratio.show("x");
        println!(
            "| {} | {} | {:.2} s | {:.2} s | {to_floor} | {} | {peer} | {ratio} | {:.0} MiB | {peer_rss} |",
            r.case,
            r.engines,
            r.floor_spread.median,
            r.trueup_spread.median,
            r.how,
            r.trueup_rss_mib,
        );
    }
    let seconds = |case: &str, engines: &str| {
        rows.iter()
            .find(|r| r.case == case && r.engines == engines)
            .map(|r| r.trueup_spread.median)
    };
    if let (Some(cross), Some(auto), Some(streamed)) = (
        seconds("uniform", "pg-mariadb"),
        seconds("uniform", "pg-pg"),
        seconds("uniform, mode: stream", "pg-pg"),
    ) {
        println!(
            "\nPostgreSQL <-> MariaDB, uniform: {:.2}x PostgreSQL <-> PostgreSQL as each compares by default ({cross:.2} s / {auto:.2} s), {:.2}x where both stream ({cross:.2} s / {streamed:.2} s)",
            cross / auto,
            cross / streamed
        );
    }
}

fn main() -> anyhow::Result<()> {
    // As `trueup` itself does: its peak memory is what this measures.
    trueup::disable_huge_pages();
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
    if let Some(bad) = sizes.iter().find(|n| **n < 20_000 || **n % 10_000 != 0) {
        anyhow::bail!(
            "size {bad}: give multiples of 10,000 from 20,000 (the planted differences are exact \
             fractions, and the outage's 10,000 keys must fit in the second half)"
        );
    }
    let pg = std::env::var("TRUEUP_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let maria = std::env::var("TRUEUP_BENCH_MARIADB")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let maria = (maria != "none").then_some(maria);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "reconcile: floor, trueup and reladiff on the same tables ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for n in sizes {
        runtime.block_on(bench(&pg, maria.as_deref(), n))?;
    }
    Ok(())
}

use std::path::Path;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::config::Config;
use crate::domain::ViolationKind;
use crate::domain::ViolationStatus;
use crate::store::{self, StatusFilter, ViolationFilter};

use super::output::{evidence, key, truncate};
use super::{EXIT_ERROR, EXIT_OK, Format, RunsArgs, StatusArg, ViolationsArgs};

fn load_config(config: Option<&Path>) -> Result<Config, u8> {
    Config::discover(config).map_err(|d| {
        eprintln!("{d}");
        EXIT_ERROR
    })
}

/// One line per bucket with a bar scaled to the fullest bucket.
fn print_histogram(
    buckets: &[crate::domain::Bucket],
    total: usize,
    format: Format,
) -> anyhow::Result<()> {
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "total": total, "buckets": buckets })
            )?
        );
        return Ok(());
    }
    if buckets.is_empty() {
        println!("no violations with an event time match");
        return Ok(());
    }
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    for b in buckets {
        let width = (b.count * 50).div_ceil(max) as usize;
        println!(
            "{}  {:>7}  {}",
            b.start.format("%Y-%m-%d %H:%M"),
            b.count,
            "█".repeat(width)
        );
    }
    println!(
        "{total} violation(s) with an event time, in {} bucket(s)",
        buckets.len()
    );
    Ok(())
}

pub(super) async fn run(config: Option<&Path>, args: ViolationsArgs) -> anyhow::Result<u8> {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let kind = match &args.kind {
        Some(k) => match ViolationKind::parse(k) {
            Some(kind) => Some(kind),
            None => {
                eprintln!(
                    "error: `{k}` is not a violation kind; use missing, extra, duplicate, mismatch, check or transition"
                );
                return Ok(EXIT_ERROR);
            }
        },
        None => None,
    };
    let status = match args.status {
        StatusArg::Active => StatusFilter::Active,
        StatusArg::Open => StatusFilter::Only(ViolationStatus::Open),
        StatusArg::Reopened => StatusFilter::Only(ViolationStatus::Reopened),
        StatusArg::Resolved => StatusFilter::Only(ViolationStatus::Resolved),
        StatusArg::All => StatusFilter::All,
    };
    let store = store::open(&config.store).await?;
    if args.histogram {
        let bucket = match crate::domain::HumanDuration::parse(&args.bucket) {
            Ok(b) => b.as_chrono(),
            Err(e) => {
                store.close().await;
                eprintln!("error: --bucket: {e}");
                return Ok(EXIT_ERROR);
            }
        };
        let filter = ViolationFilter {
            invariants: args.invariant,
            status,
            kind,
            since: args.since,
            until: args.until,
            event_from: args.event_from,
            event_until: args.event_until,
            ..ViolationFilter::default()
        };
        let times = store.event_times(&filter).await;
        store.close().await;
        let times = times?;
        let Some(buckets) = crate::domain::histogram(&times, bucket) else {
            eprintln!("error: --bucket must be at least one second");
            return Ok(EXIT_ERROR);
        };
        print_histogram(&buckets, times.len(), args.format)?;
        return Ok(EXIT_OK);
    }
    let list = store
        .violations(&ViolationFilter {
            invariants: args.invariant,
            status,
            kind,
            new_in_run: None,
            since: args.since,
            until: args.until,
            event_from: args.event_from,
            event_until: args.event_until,
            window: None,
            after_id: args.after,
            limit: args.limit,
        })
        .await;
    store.close().await;
    let list = list?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        Format::Table => {
            if list.is_empty() {
                println!("no violations match");
                return Ok(EXIT_OK);
            }
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED).set_header([
                "id",
                "invariant",
                "kind",
                "key",
                "status",
                "first seen",
                "last seen",
                "evidence",
            ]);
            for v in &list {
                table.add_row([
                    v.id.to_string(),
                    v.invariant.clone(),
                    v.kind.clone(),
                    truncate(&key(&v.key), 24),
                    v.status.as_str().to_owned(),
                    v.first_seen.format("%Y-%m-%d %H:%M:%S").to_string(),
                    v.last_seen.format("%Y-%m-%d %H:%M:%S").to_string(),
                    truncate(&evidence(v), 60),
                ]);
            }
            println!("{table}");
            if list.len() as u32 == args.limit
                && let Some(last) = list.last()
            {
                println!("more may follow: add `--after {}`", last.id);
            }
        }
    }
    Ok(EXIT_OK)
}

pub(super) async fn runs(config: Option<&Path>, args: RunsArgs) -> anyhow::Result<u8> {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = store::open(&config.store).await?;
    let list = store.runs(args.invariant.as_deref(), args.limit).await;
    store.close().await;
    let list = list?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        Format::Table => {
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED).set_header([
                "run",
                "invariant",
                "started",
                "status",
                "rows",
                "seen",
                "new",
                "open",
                "resolved",
                "error",
            ]);
            for r in &list {
                table.add_row([
                    r.id.to_string(),
                    r.invariant.clone(),
                    r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    r.status.as_str().to_owned(),
                    format!("{}/{}", r.stats.rows_left, r.stats.rows_right),
                    r.stats.observed.to_string(),
                    r.change.new.to_string(),
                    r.change.open_after().to_string(),
                    r.change.resolved.to_string(),
                    truncate(r.error.as_deref().unwrap_or(""), 50),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(EXIT_OK)
}

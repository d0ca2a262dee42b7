//! `trueup events LOG`: an event log's events, oldest first, each with what became of it —
//! `event_id | ingested_at | processed_at | outcome | target_record_id`, one line per
//! invariant that judged it.

use std::path::Path;

use super::{EXIT_ERROR, EventsArgs, Format};

pub(super) async fn run(config: Option<&Path>, args: EventsArgs) -> anyhow::Result<u8> {
    let config = match crate::config::Config::discover(config) {
        Ok(c) => c,
        Err(d) => {
            eprintln!("{d}");
            return Ok(EXIT_ERROR);
        }
    };
    if !config.event_logs.keys().any(|l| l.as_str() == args.log) {
        let known: Vec<&str> = config.event_logs.keys().map(|l| l.as_str()).collect();
        eprintln!(
            "error: no event log is named `{}` (trueup.yaml declares {}); add it under `event_logs:` or pick one of those",
            args.log,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return Ok(EXIT_ERROR);
    }
    let store = crate::store::open(&config.store).await?;
    let query = crate::store::OutcomeQuery {
        log: args.log.clone(),
        invariant: args.invariant.clone(),
        outcome: args.outcome,
        after: args.after,
        limit: args.limit,
    };
    let lines = store.event_lines(&query).await;
    store.close().await;
    let lines = lines?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&lines)?),
        Format::Table => {
            if lines.is_empty() {
                println!(
                    "log `{}` holds no event{}{}",
                    args.log,
                    if args.after > 0 {
                        format!(" after sequence {}", args.after)
                    } else {
                        String::new()
                    },
                    args.outcome
                        .map(|o| format!(" with the outcome {o}"))
                        .unwrap_or_default()
                );
                return Ok(0);
            }
            let width = lines
                .iter()
                .map(|l| l.event_id.chars().count())
                .max()
                .unwrap_or(0)
                .max("event_id".len());
            println!(
                "{:>8}  {:<width$}  {:<24}  {:<24}  {:<10}  {:<16}  invariant",
                "sequence",
                "event_id",
                "ingested_at",
                "processed_at",
                "outcome",
                "target_record_id"
            );
            let time =
                |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string();
            for l in &lines {
                println!(
                    "{:>8}  {:<width$}  {:<24}  {:<24}  {:<10}  {:<16}  {}",
                    l.sequence,
                    l.event_id,
                    time(l.ingested_at),
                    l.processed_at.map(time).unwrap_or_else(|| "-".into()),
                    l.outcome.map_or("-", |o| o.as_str()),
                    l.target_record_id.as_deref().unwrap_or("-"),
                    l.invariant.as_deref().unwrap_or("(not judged yet)"),
                );
            }
            if let Some(after) = crate::store::next_after(&lines, args.limit) {
                println!("next page: --after {after}");
            }
        }
    }
    Ok(0)
}

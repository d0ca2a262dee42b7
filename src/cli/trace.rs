//! `trueup trace KEY`: one event's or key's timeline (see `crate::trace`).

use std::path::Path;

use super::{EXIT_ERROR, Format, TraceArgs};

pub(super) async fn run(config: Option<&Path>, args: TraceArgs) -> anyhow::Result<u8> {
    let config = match crate::config::Config::discover(config) {
        Ok(c) => c,
        Err(d) => {
            eprintln!("{d}");
            return Ok(EXIT_ERROR);
        }
    };
    let invariants =
        match crate::rules::load(&config.invariants_dir, &crate::rules::Known::of(&config)) {
            Ok(list) => list,
            Err(d) => {
                eprintln!("{d}");
                return Ok(EXIT_ERROR);
            }
        };
    let names: Vec<_> = invariants.iter().map(|i| i.name.clone()).collect();
    let logs: Vec<_> = config.event_logs.keys().cloned().collect();
    let store = crate::store::open(&config.store).await?;
    let traced = crate::trace::trace(
        store.as_ref(),
        &names,
        &logs,
        &args.key,
        args.invariant.as_deref(),
    )
    .await;
    store.close().await;
    let traced = match traced {
        Ok(t) => t,
        Err(crate::trace::TraceError::Store(e)) => return Err(e.into()),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&traced)?),
        Format::Table => {
            if traced.steps.is_empty() {
                println!(
                    "nothing is known of `{}`: no event log holds it, and no invariant{} has a violation, action or incident for it",
                    traced.key,
                    traced
                        .invariant
                        .as_deref()
                        .map(|i| format!(" (of `{i}`)"))
                        .unwrap_or_default()
                );
            } else {
                println!("trace of `{}`:", traced.key);
                for step in &traced.steps {
                    println!(
                        "  {}  {:<15}  {}",
                        step.at.format("%Y-%m-%d %H:%M:%S%.3fZ"),
                        step.kind.label(),
                        step.summary
                    );
                }
            }
        }
    }
    Ok(0)
}

//! `trueup silence add|list|expire`: hold an alert's notices during planned work.

use std::path::Path;

use chrono::{SecondsFormat, Utc};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::domain::{HumanDuration, NewSilence, Silence};
use crate::store::SilenceExpiry;

use super::{EXIT_ERROR, EXIT_OK, Format, SilenceCommand, open_app};

fn stamp(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn matchers(s: &Silence) -> String {
    s.matchers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) async fn run(config: Option<&Path>, cmd: SilenceCommand) -> anyhow::Result<u8> {
    let app = match open_app(config).await? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let store = app.store.as_ref();
    let now = Utc::now();
    match cmd {
        SilenceCommand::Add {
            matcher,
            length,
            reason,
        } => {
            let length = match HumanDuration::parse(&length) {
                Ok(d) => d.as_chrono(),
                Err(e) => {
                    eprintln!("error: --for: {e}; write a length such as 30m, 2h or 1d");
                    return Ok(EXIT_ERROR);
                }
            };
            let new = match NewSilence::parse(&matcher, length, &reason, now) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(EXIT_ERROR);
                }
            };
            let silence = store
                .create_silence(&new, &super::local_actor().name, now)
                .await?;
            println!(
                "silence {} holds the notices of alerts matching {} until {} ({})",
                silence.id,
                matchers(&silence),
                stamp(silence.ends_at),
                silence.reason
            );
            let held = silence.matching(&app.invariants);
            if held.is_empty() {
                println!(
                    "note: it matches none of the {} invariants loaded now; check the label names and values (`trueup silence expire {}` ends it)",
                    app.invariants.len(),
                    silence.id
                );
            } else {
                println!("it matches {} now: {}", held.len(), held.join(", "));
            }
            println!(
                "alerts still change state; notices held are summarised when it ends if the alert still fires"
            );
            Ok(EXIT_OK)
        }
        SilenceCommand::List { all, format } => {
            let list = store.silences(now, all, 500).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Format::Table => {
                    if list.is_empty() {
                        println!(
                            "{}",
                            if all {
                                "no silences"
                            } else {
                                "no active silences (`--all` shows those that ended)"
                            }
                        );
                        return Ok(EXIT_OK);
                    }
                    let mut table = Table::new();
                    table.load_preset(UTF8_FULL_CONDENSED).set_header([
                        "id",
                        "state",
                        "matchers",
                        "until",
                        "by",
                        "reason",
                        "matches now",
                    ]);
                    for s in &list {
                        let state = if s.is_active(now) {
                            "active".to_owned()
                        } else if let Some(by) = &s.expired_by {
                            format!("expired by {by}")
                        } else {
                            "ended".to_owned()
                        };
                        table.add_row([
                            s.id.to_string(),
                            state,
                            matchers(s),
                            stamp(s.ended_at()),
                            s.created_by.clone(),
                            s.reason.clone(),
                            s.matching(&app.invariants).join(", "),
                        ]);
                    }
                    println!("{table}");
                }
            }
            Ok(EXIT_OK)
        }
        SilenceCommand::Expire { id } => {
            match store
                .expire_silence(id, &super::local_actor().name, now)
                .await?
            {
                SilenceExpiry::Expired(s) => {
                    println!(
                        "silence {} expired; notices it held go out summarised within seconds if `trueup serve` runs and the alert still fires",
                        s.id
                    );
                    Ok(EXIT_OK)
                }
                SilenceExpiry::AlreadyEnded(s) => {
                    println!(
                        "silence {} had already ended at {}",
                        s.id,
                        stamp(s.ended_at())
                    );
                    Ok(EXIT_OK)
                }
                SilenceExpiry::NotFound => {
                    eprintln!("error: no silence {id}; `trueup silence list --all` lists them");
                    Ok(EXIT_ERROR)
                }
            }
        }
    }
}

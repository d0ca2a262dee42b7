//! `trueup incident open|list|show|phase|note`.

use std::path::Path;

use chrono::Utc;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::incident::{self, IncidentError};

use super::output::truncate;
use super::{EXIT_ERROR, EXIT_OK, EXIT_VIOLATIONS, Format, IncidentCommand, VerifyArgs, open_app};

fn failed(e: IncidentError) -> anyhow::Result<u8> {
    match e {
        IncidentError::Store(e) => Err(e.into()),
        other => {
            eprintln!(
                "error: {}",
                super::output::with_next_step(&other, other.next_step())
            );
            Ok(EXIT_ERROR)
        }
    }
}

pub(super) async fn run(config: Option<&Path>, cmd: IncidentCommand) -> anyhow::Result<u8> {
    let app = match open_app(config).await? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let store = app.store.as_ref();
    let actor = super::local_actor();
    let now = Utc::now();
    let result = match cmd {
        IncidentCommand::Open {
            name,
            from,
            to,
            invariant,
            summary,
        } => match incident::open(
            store,
            &app.invariants,
            &name,
            from,
            to,
            &invariant,
            summary.as_deref(),
            &actor,
            now,
        )
        .await
        {
            Ok(i) => {
                println!(
                    "opened incident `{}` (window from {}{}; scope: {})",
                    i.name,
                    i.window_from.to_rfc3339(),
                    i.window_to
                        .map(|t| format!(" to {}", t.to_rfc3339()))
                        .unwrap_or_default(),
                    if i.invariants.is_empty() {
                        "every invariant with violations in the window".to_owned()
                    } else {
                        i.invariants.join(", ")
                    }
                );
                Ok(EXIT_OK)
            }
            Err(e) => failed(e),
        },
        IncidentCommand::List { format } => {
            let list = store.incidents(100).await?;
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no incidents; open one with `trueup incident open NAME --from TIME`");
            } else {
                let mut table = Table::new();
                table
                    .load_preset(UTF8_FULL_CONDENSED)
                    .set_header(["name", "state", "window", "scope", "opened", "summary"]);
                for i in &list {
                    table.add_row([
                        i.name.clone(),
                        format!("{:?}", i.state).to_lowercase(),
                        format!(
                            "{} – {}",
                            i.window_from.format("%Y-%m-%d %H:%M"),
                            i.window_to
                                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                                .unwrap_or_else(|| "now".into())
                        ),
                        if i.invariants.is_empty() {
                            "all in window".into()
                        } else {
                            i.invariants.join(", ")
                        },
                        format!(
                            "{} by {}",
                            i.opened_at.format("%Y-%m-%d %H:%M"),
                            i.opened_by
                        ),
                        truncate(i.summary.as_deref().unwrap_or(""), 40),
                    ]);
                }
                println!("{table}");
            }
            Ok(EXIT_OK)
        }
        IncidentCommand::Show { name, format } => match incident::view(store, &name).await {
            Ok(v) => {
                if format == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    let i = &v.incident;
                    println!("incident `{}` ({:?})", i.name, i.state);
                    if let Some(s) = &i.summary {
                        println!("  summary: {s}");
                    }
                    println!(
                        "  window:  {} – {}",
                        i.window_from.to_rfc3339(),
                        i.window_to
                            .map_or_else(|| "now".to_owned(), |t| t.to_rfc3339())
                    );
                    println!(
                        "  scope:   {}",
                        if i.invariants.is_empty() {
                            "every invariant with violations in the window".to_owned()
                        } else {
                            i.invariants.join(", ")
                        }
                    );
                    println!("  opened:  {} by {}", i.opened_at.to_rfc3339(), i.opened_by);
                    for m in &v.phases {
                        println!(
                            "  {:<9} {} by {}",
                            format!("{}:", m.phase),
                            m.at.to_rfc3339(),
                            m.by
                        );
                    }
                    for e in &v.events {
                        println!(
                            "  {} {} {}{}",
                            e.at.format("%Y-%m-%d %H:%M:%S"),
                            e.actor,
                            e.phase
                                .as_deref()
                                .map(|p| format!("[{p}] "))
                                .unwrap_or_default(),
                            e.text.as_deref().unwrap_or("")
                        );
                    }
                }
                Ok(EXIT_OK)
            }
            Err(e) => failed(e),
        },
        IncidentCommand::Phase { name, phase, note } => {
            match incident::mark_phase(store, &name, &phase, note.as_deref(), &actor, now).await {
                Ok(()) => {
                    println!("incident `{name}`: {phase} marked by {}", actor.name);
                    Ok(EXIT_OK)
                }
                Err(e) => failed(e),
            }
        }
        IncidentCommand::Report {
            name,
            format,
            output,
            verify,
        } => {
            if let Err(code) = verify_scope(&app, &name, &verify).await? {
                app.close().await;
                return Ok(code);
            }
            match incident::report(store, &app.invariants, &name).await {
                Ok(report) => {
                    // Each sample key links to its trace in the console, when its address is known.
                    let links = incident::render::ReportLinks {
                        back: None,
                        console: app.config.serve.external_url.as_ref().map(|u| u.as_str()),
                    };
                    let text = incident::render::render_linked(&report, format, &links)?;
                    match output {
                        Some(path) => {
                            write_atomically(&path, &text)?;
                            eprintln!(
                                "wrote the {} report of `{name}` to {} ({})",
                                format.extension(),
                                path.display(),
                                report.verdict.summary
                            );
                        }
                        None => print!("{text}"),
                    }
                    Ok(EXIT_OK)
                }
                Err(e) => failed(e),
            }
        }
        IncidentCommand::Close {
            name,
            override_,
            reason,
            verify,
        } => {
            if let Err(code) = verify_scope(&app, &name, &verify).await? {
                app.close().await;
                return Ok(code);
            }
            let reason = if override_ { reason } else { None };
            match incident::close(
                store,
                &app.invariants,
                &name,
                reason.as_deref(),
                &actor,
                now,
            )
            .await
            {
                Ok(report) => {
                    match &report.closure {
                        Some(c) if c.overridden => println!(
                            "closed incident `{name}` with {} blocker(s) overridden: {}",
                            report.verdict.blockers.len(),
                            c.override_reason.as_deref().unwrap_or("")
                        ),
                        _ => println!("closed incident `{name}`: ready to close"),
                    }
                    println!(
                        "report frozen, sha256 {}",
                        report.content_hash.as_deref().unwrap_or("")
                    );
                    Ok(EXIT_OK)
                }
                Err(e @ IncidentError::Blocked { .. }) => {
                    let next = e.next_step().map(|s| super::output::next_step(&s));
                    eprintln!("{e}\n{}", next.unwrap_or_default());
                    Ok(EXIT_VIOLATIONS)
                }
                Err(e) => failed(e),
            }
        }
        IncidentCommand::Note { name, text } => {
            match incident::add_note(store, &name, &text, &actor, now).await {
                Ok(()) => {
                    println!("incident `{name}`: note added");
                    Ok(EXIT_OK)
                }
                Err(e) => failed(e),
            }
        }
    };
    app.close().await;
    result
}

/// Evaluates what the incident's verification needs (unless `--no-verify`), saying so on
/// stderr. `Err(code)` when the arguments are wrong.
async fn verify_scope(
    app: &crate::app::App,
    name: &str,
    args: &VerifyArgs,
) -> anyhow::Result<Result<(), u8>> {
    if args.no_verify {
        return Ok(Ok(()));
    }
    let fresh_within = match crate::domain::HumanDuration::parse(&args.fresh_within) {
        Ok(d) => d.as_chrono(),
        Err(e) => {
            eprintln!("error: --fresh-within: {e}");
            return Ok(Err(EXIT_ERROR));
        }
    };
    let names = match incident::unverified(
        app.store.as_ref(),
        &app.invariants,
        name,
        fresh_within,
        Utc::now(),
    )
    .await
    {
        Ok(names) => names,
        Err(e) => return failed(e).map(Err),
    };
    if names.is_empty() {
        return Ok(Ok(()));
    }
    // The same evaluation as `trueup check` (it may propose plans for what it finds).
    for r in app.check(&names, &super::local_actor(), true).await? {
        let r = r.run;
        eprintln!(
            "verified `{}`: run {} {}{}",
            r.invariant,
            r.run_id,
            r.status.as_str(),
            match &r.error {
                Some(e) => format!(": {e}"),
                None => format!(", {} open", r.open_after),
            }
        );
    }
    Ok(Ok(()))
}

/// Writes the whole file or nothing: a temporary file beside it, renamed into place.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    // A report is for sharing: readable like any new file (a temporary file is owner-only).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

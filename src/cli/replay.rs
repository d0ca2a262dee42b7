//! `trueup replay`: dry-run (default) or propose a replay of lost events over a window; pause,
//! resume and cancel a replay plan.

use std::path::Path;

use chrono::Utc;

use crate::plan::apply::{ApplyEnv, Rate};
use crate::plan::replay::{self, Window};
use crate::plan::targets::Targets;
use crate::plan::{self, Proposal};

use super::output::{key, truncate};
use super::{EXIT_ERROR, EXIT_OK, Format, ReplayArgs, ReplayCommand, open_app};

pub(super) async fn run(config: Option<&Path>, args: ReplayArgs) -> anyhow::Result<u8> {
    if let Some(cmd) = args.command {
        return control(config, cmd).await;
    }
    let rate = match args.rate.as_deref().map(Rate::parse).transpose() {
        Ok(r) => r.unwrap_or(Rate::DEFAULT_REPLAY),
        Err(e) => {
            eprintln!("error: --{e}");
            return Ok(EXIT_ERROR);
        }
    };
    let Some(name) = args.invariant.clone() else {
        eprintln!("error: say which invariant's events to replay: --invariant NAME");
        return Ok(EXIT_ERROR);
    };
    let app = match open_app(config).await? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let result = async {
        let inv = match app.select(std::slice::from_ref(&name)) {
            Ok(mut found) => found.remove(0),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(EXIT_ERROR);
            }
        };
        let (spec, window) = match replay::check_window(
            inv,
            args.from,
            args.to,
            args.wide,
            args.reason.as_deref(),
        ) {
            Ok(ok) => ok,
            Err(e) => {
                eprintln!("error: {}", window_refusal(&e));
                return Ok(EXIT_ERROR);
            }
        };
        let actor = super::local_actor();
        if args.execute {
            let proposal = plan::replay::propose(
                app.store.as_ref(),
                &app.config,
                inv,
                spec,
                window,
                args.reason.as_deref(),
                &actor,
                Utc::now(),
            )
            .await;
            return match proposal {
                Ok(Proposal::Created { plan: id, actions }) => {
                    let p = plan::load(app.store.as_ref(), id).await?;
                    println!(
                        "proposed replay plan {id}: {actions} event(s) of `{name}` between {} and {} (content {}).\nIt needs {} distinct approver(s): `trueup plan show {id}`, `trueup plan approve {id}`, then `trueup apply {id}` (default rate {}).",
                        window.from.to_rfc3339(),
                        window.to.to_rfc3339(),
                        plan::short(&p.content_hash),
                        p.approvals_required,
                        Rate::DEFAULT_REPLAY
                    );
                    Ok(EXIT_OK)
                }
                Ok(_) => {
                    println!("nothing to replay: no open `missing` violation of `{name}` has its event in the window");
                    Ok(EXIT_OK)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(EXIT_ERROR)
                }
            };
        }
        let targets = match Targets::open(&app.config) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(EXIT_ERROR);
            }
        };
        let env = ApplyEnv {
            store: app.store.as_ref(),
            sources: &app.sources,
            targets: &targets,
            invariant: Some(inv),
            actor: &actor,
            worker: "dry-run".into(),
        };
        let dry = replay::dry_run(
            &env,
            &app.config,
            inv,
            spec,
            window,
            args.reason.as_deref(),
            rate,
            5,
        )
        .await;
        targets.close().await;
        let dry = match dry {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(EXIT_ERROR);
            }
        };
        print_dry_run(&name, window, &dry, args.format, &args)?;
        Ok(EXIT_OK)
    }
    .await;
    app.close().await;
    result
}

fn print_dry_run(
    name: &str,
    window: Window,
    dry: &replay::DryRun,
    format: Format,
    args: &ReplayArgs,
) -> anyhow::Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(dry)?);
        return Ok(());
    }
    println!(
        "dry run: replay of `{name}` for events between {} and {}",
        window.from.to_rfc3339(),
        window.to.to_rfc3339()
    );
    for (label, n, category) in [
        ("would replay", dry.would_replay, "would_replay"),
        (
            "would skip, already processed",
            dry.would_skip_processed,
            "would_skip_processed",
        ),
        ("outside the window", dry.outside_window, ""),
        ("parked by an earlier replay", dry.parked, "parked"),
    ] {
        println!("  {label:<32}{n}");
        for s in dry.samples.get(category).into_iter().flatten() {
            println!(
                "      {}  {}{}",
                key(&s.key),
                truncate(&s.action, 80),
                s.detail
                    .as_ref()
                    .map(|d| format!(" — {}", truncate(d, 70)))
                    .unwrap_or_default()
            );
        }
    }
    match dry.estimated_secs {
        Some(secs) => println!(
            "  at {}: about {}",
            dry.rate,
            humantime::format_duration(std::time::Duration::from_secs(secs.ceil() as u64))
        ),
        None => println!("  at an unlimited rate"),
    }
    let wide = if args.wide {
        format!(
            " --wide --reason {:?}",
            args.reason.as_deref().unwrap_or("")
        )
    } else {
        String::new()
    };
    println!(
        "Nothing was delivered. To replay, propose it as a plan: trueup replay -i {name} --from {} --to {}{wide} --execute",
        window.from.to_rfc3339(),
        window.to.to_rfc3339()
    );
    Ok(())
}

async fn control(config: Option<&Path>, cmd: ReplayCommand) -> anyhow::Result<u8> {
    let (id, control) = match &cmd {
        ReplayCommand::Pause { plan } => (*plan, plan::Control::Pause),
        ReplayCommand::Resume { plan, .. } => (*plan, plan::Control::Resume),
        ReplayCommand::Cancel { plan } => (*plan, plan::Control::Cancel),
    };
    let app = match open_app(config).await? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let actor = super::local_actor();
    let moved = plan::control(app.store.as_ref(), id, control, &actor, Utc::now()).await;
    app.close().await;
    if let Err(e) = moved {
        eprintln!("error: {e}");
        return Ok(EXIT_ERROR);
    }
    match cmd {
        ReplayCommand::Pause { .. } => {
            println!(
                "plan {id} paused: no action starts now, those under way finish; `trueup replay resume {id}` goes on"
            );
            Ok(EXIT_OK)
        }
        ReplayCommand::Cancel { .. } => {
            println!("plan {id} cancelled: nothing more will be delivered");
            Ok(EXIT_OK)
        }
        ReplayCommand::Resume { plan, rate } => {
            println!("plan {id} resumed");
            let rate = match rate.as_deref().map(Rate::parse).transpose() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: --{e}");
                    return Ok(EXIT_ERROR);
                }
            };
            super::plans::run_apply(
                config,
                plan,
                rate,
                crate::plan::apply::ApplyOptions::default(),
                Format::Table,
            )
            .await
        }
    }
}

/// A refused replay window, in the flags that fix it.
fn window_refusal(e: &replay::WindowError) -> String {
    use replay::WindowError as W;
    match e {
        W::NotReplayable { .. } => e.to_string(),
        W::Unbounded => "a replay needs a window on the events' own time: give both --from and --to (RFC 3339, e.g. --from 2026-11-25T01:00:00Z --to 2026-11-25T07:00:00Z). There is no \"replay everything\"; nothing was done".into(),
        W::Reversed { from, to } => format!(
            "--from {} is not before --to {}; nothing was done",
            from.to_rfc3339(),
            to.to_rfc3339()
        ),
        W::TooWide { .. } => format!(
            "{e}; narrow it, or pass --wide with --reason \"...\" (recorded in the audit log). Nothing was done"
        ),
        W::WideWithoutReason => "--wide needs --reason \"...\": why a window this wide is safe (recorded in the audit log). Nothing was done".into(),
    }
}

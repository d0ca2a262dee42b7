//! `trueup plans`, `trueup plan create|show|approve|reject`, `trueup apply` and `trueup audit`.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::domain::ActionSpec;
use crate::domain::{ActionStatus, PlanState};
use crate::plan::apply::{self, ApplyEnv, ApplyOptions, Outcome, Progress, Rate};
use crate::plan::targets::Targets;
use crate::plan::{self, PlanError, Proposal};
use crate::store::ActionRecord;

use super::output::{evidence_of, key, plural, truncate};
use super::{
    ApplyArgs, AuditArgs, EXIT_ERROR, EXIT_OK, EXIT_VIOLATIONS, Format, PlanCommand, PlansArgs,
    open_app,
};

/// A refusal or a missing plan is the user's input, not a crash: print it, exit 2.
fn refused(e: PlanError) -> anyhow::Result<u8> {
    match e {
        PlanError::Store(e) => Err(e.into()),
        other => {
            eprintln!(
                "error: {}",
                super::output::with_next_step(&other, other.next_step())
            );
            Ok(EXIT_ERROR)
        }
    }
}

pub(super) async fn list(config: Option<&Path>, args: PlansArgs) -> anyhow::Result<u8> {
    let app = match open_app(config).await? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let plans = app
        .store
        .plans(args.invariant.as_deref(), args.limit)
        .await?;
    let now = Utc::now();
    let mut views = Vec::new();
    for p in plans {
        let inv = app.invariant(&p.invariant);
        views.push(plan::view(app.store.as_ref(), p, inv, now).await?);
    }
    app.close().await;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        Format::Table => {
            if views.is_empty() {
                println!(
                    "no plans; they are proposed after a run finds violations with a `compensate:` entry, or with `trueup plan create --invariant NAME`"
                );
                return Ok(EXIT_OK);
            }
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED).set_header([
                "id",
                "invariant",
                "status",
                "actions",
                "approvals",
                "hash",
                "proposed",
                "expires",
            ]);
            for v in &views {
                table.add_row([
                    v.plan.id.to_string(),
                    v.plan.invariant.clone(),
                    v.status.to_owned(),
                    v.plan.action_count.to_string(),
                    format!("{}/{}", v.approvers.len(), v.plan.approvals_required),
                    plan::short(&v.plan.content_hash).to_owned(),
                    format!(
                        "{} by {}",
                        v.plan.proposed_at.format("%Y-%m-%d %H:%M"),
                        v.plan.proposed_by
                    ),
                    v.plan.expires_at.format("%Y-%m-%d %H:%M").to_string(),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(EXIT_OK)
}

pub(super) async fn command(config: Option<&Path>, cmd: PlanCommand) -> anyhow::Result<u8> {
    let app = match open_app(config).await? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let result = match cmd {
        PlanCommand::Create { invariant } => create(&app, &invariant).await,
        PlanCommand::Show { id, limit, format } => show(&app, id, limit, format).await,
        PlanCommand::Approve { id, hash } => approve(&app, id, hash.as_deref()).await,
        PlanCommand::Reject { id, reason } => reject(&app, id, &reason).await,
    };
    app.close().await;
    result
}

async fn create(app: &App, name: &str) -> anyhow::Result<u8> {
    let inv = match app.select(&[name.to_owned()]) {
        Ok(mut found) => found.remove(0),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    let proposal = plan::propose(
        app.store.as_ref(),
        &app.config,
        inv,
        &super::local_actor(),
        None,
        Utc::now(),
    )
    .await;
    match proposal {
        Ok(Proposal::Created { plan: id, actions }) => {
            let p = plan::load(app.store.as_ref(), id).await?;
            println!(
                "proposed plan {id} for `{name}`: {} (content {}); needs {} to approve.\nReview it with `trueup plan show {id}`.",
                plural(actions, "action", "actions"),
                plan::short(&p.content_hash),
                plural(
                    u64::from(p.approvals_required),
                    "approver",
                    "distinct approvers"
                ),
            );
            Ok(EXIT_OK)
        }
        Ok(Proposal::Unchanged { plan: id }) => {
            println!(
                "plan {id} already proposes exactly these actions; review it with `trueup plan show {id}`"
            );
            Ok(EXIT_OK)
        }
        Ok(Proposal::Failed { error }) => {
            eprintln!("error: {error}");
            Ok(EXIT_ERROR)
        }
        Ok(Proposal::Nothing) => {
            println!(
                "nothing to propose: `{name}` has no open violation of a kind it compensates (run `trueup check -i {name}` first?)"
            );
            Ok(EXIT_OK)
        }
        Err(e) => refused(e),
    }
}

fn print_action(a: &ActionRecord) {
    let status = match a.status {
        ActionStatus::Pending => String::new(),
        s => format!("  [{}]", s.as_str()),
    };
    println!(
        "{} #{} {} {}{status}",
        plan::diff_marker(&a.violation_kind),
        a.seq,
        a.violation_kind,
        key(&a.key)
    );
    match &a.spec {
        ActionSpec::Sql {
            target, statement, ..
        } => {
            println!("    sql on {target}:");
            for line in statement.lines() {
                println!("      {line}");
            }
            for (n, p) in a.spec.sql_bindings() {
                println!("        {n} = {p}");
            }
        }
        ActionSpec::Http {
            target,
            method,
            url,
            headers,
            body,
        } => {
            println!("    http on {target}: {method} {url}");
            println!("      Idempotency-Key: {}", a.idempotency_key);
            for (k, v) in headers {
                println!("      {k}: {v}");
            }
            if let Some(b) = body {
                println!("      body: {b}");
            }
        }
        ActionSpec::Nats {
            target,
            subject,
            headers,
            body,
        } => {
            println!("    nats on {target}: publish to {subject}");
            println!("      Nats-Msg-Id: {}", a.idempotency_key);
            for (k, v) in headers {
                println!("      {k}: {v}");
            }
            println!("      body: {body}");
        }
        ActionSpec::Redis {
            target,
            stream,
            fields,
        } => {
            println!("    redis on {target}: XADD {stream}");
            println!("      marker: {}", a.idempotency_key);
            for (k, v) in fields {
                println!("      {k} = {v}");
            }
        }
        ActionSpec::Manual { instructions } => println!("    manual step: {instructions}"),
    }
    println!(
        "    evidence: {}",
        truncate(&evidence_of(&a.violation_kind, &a.evidence), 110)
    );
    if let Some(o) = &a.outcome {
        println!("    outcome: {o}");
    }
}

async fn show(app: &App, id: i64, limit: u32, format: Format) -> anyhow::Result<u8> {
    let p = match plan::load(app.store.as_ref(), id).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let inv = app.invariant(&p.invariant);
    let view = plan::view(app.store.as_ref(), p, inv, Utc::now()).await?;
    let actions = app.store.plan_actions(id, None, limit).await?;
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "plan": view, "actions": actions }))?
        );
        return Ok(EXIT_OK);
    }
    let p = &view.plan;
    println!(
        "plan {} for invariant `{}` ({})",
        p.id, p.invariant, p.severity
    );
    println!("  status:    {}", view.status);
    if let Some(why) = &view.stale {
        println!(
            "             {}",
            super::output::with_next_step(why, view.stale_next.clone())
        );
    }
    println!("  content:   {}", p.content_hash);
    println!(
        "  proposed:  {} by {}{}",
        p.proposed_at.to_rfc3339(),
        p.proposed_by,
        p.source_run_id
            .map(|r| format!(" after run {r}"))
            .unwrap_or_default()
    );
    println!("  expires:   {}", p.expires_at.to_rfc3339());
    println!(
        "  approvals: {} of {} distinct approvers{}",
        view.approvers.len(),
        p.approvals_required,
        if view.approvers.is_empty() {
            String::new()
        } else {
            format!(" ({})", view.approvers.join(", "))
        }
    );
    if let Some(reason) = &p.state_reason {
        println!(
            "  {}: {} by {}",
            p.state.as_str(),
            reason,
            p.state_by.as_deref().unwrap_or("?")
        );
    }
    let counts: Vec<String> = p
        .counts
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(ty, kinds)| {
            kinds
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(k, n)| format!("{n} {ty} for {k}"))
        })
        .collect();
    println!("  actions:   {} ({})", p.action_count, counts.join(", "));
    let progress: Vec<String> = view
        .progress
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    println!("  progress:  {}", progress.join(", "));
    if let Some(v) = &p.verification {
        match v["failed"].as_str() {
            Some(why) => println!(
                "  re-check:  failed: {why} (the plan is applied; run `trueup check -i {} --full` to see what holds now)",
                p.invariant
            ),
            None => println!(
                "  verified:  {} of {} applied action(s) closed their violation",
                v["closed"], v["checked"]
            ),
        }
    }
    println!();
    for a in &actions {
        print_action(a);
    }
    if (actions.len() as u64) < p.action_count {
        println!(
            "… {} more (use --limit)",
            p.action_count - actions.len() as u64
        );
    }
    if view.status == "proposed" {
        println!(
            "\nApprove exactly this content with `trueup plan approve {} --hash {}`",
            p.id,
            plan::short(&p.content_hash)
        );
    }
    Ok(EXIT_OK)
}

async fn approve(app: &App, id: i64, hash: Option<&str>) -> anyhow::Result<u8> {
    let seen = match hash.map(plan::ReviewedHash::prefix).transpose() {
        Ok(seen) => seen,
        Err(e) => {
            eprintln!("error: --hash: {e}; `trueup plan show {id}` prints it");
            return Ok(EXIT_ERROR);
        }
    };
    let inv = match app.store.plan(id).await? {
        Some(p) => app.invariant(&p.invariant),
        None => None,
    };
    match plan::approve(
        app.store.as_ref(),
        id,
        inv,
        &super::local_actor(),
        seen.as_ref(),
        Utc::now(),
    )
    .await
    {
        Ok(s) => {
            if !s.counted {
                println!(
                    "you ({}) had already approved plan {id}; an identity counts once",
                    super::local_actor().name
                );
            }
            if s.approved {
                println!(
                    "plan {id} is approved ({} of {}: {}); apply it with `trueup apply {id} --dry-run`, then `trueup apply {id}`",
                    s.approvers.len(),
                    s.required,
                    s.approvers.join(", ")
                );
            } else {
                println!(
                    "plan {id}: {} of {} distinct approvers so far ({}); it needs {} more",
                    s.approvers.len(),
                    s.required,
                    s.approvers.join(", "),
                    s.required as usize - s.approvers.len()
                );
            }
            Ok(EXIT_OK)
        }
        Err(e) => refused(e),
    }
}

async fn reject(app: &App, id: i64, reason: &str) -> anyhow::Result<u8> {
    match plan::reject(
        app.store.as_ref(),
        id,
        &super::local_actor(),
        reason,
        Utc::now(),
    )
    .await
    {
        Ok(()) => {
            println!("plan {id} rejected");
            Ok(EXIT_OK)
        }
        Err(e) => refused(e),
    }
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} actions  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

pub(super) async fn apply(config: Option<&Path>, args: ApplyArgs) -> anyhow::Result<u8> {
    let rate = match args.rate.as_deref().map(Rate::parse).transpose() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: --{e}");
            return Ok(EXIT_ERROR);
        }
    };
    let lease = match args.lease.as_deref().map(humantime::parse_duration) {
        None => crate::plan::apply::DEFAULT_LEASE,
        Some(Ok(d)) if d >= Duration::from_secs(1) => d,
        Some(_) => {
            eprintln!(
                "error: --lease `{}`: give a duration of at least 1s, e.g. 60s",
                args.lease.as_deref().unwrap_or_default()
            );
            return Ok(EXIT_ERROR);
        }
    };
    let opts = ApplyOptions {
        dry_run: args.dry_run,
        max_failures: args.max_failures,
        lease,
        retry_failed: args.retry_failed,
        concurrency: args.concurrency.max(1),
        ..ApplyOptions::default()
    };
    run_apply(config, args.plan, rate, opts, args.format).await
}

/// Applies (or dry-runs) plan `id`; `rate` `None`: the default for the plan's kind.
pub(super) async fn run_apply(
    config: Option<&Path>,
    id: i64,
    rate: Option<Rate>,
    mut opts: ApplyOptions,
    format: Format,
) -> anyhow::Result<u8> {
    let app = match open_app(config).await? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let targets = match Targets::open(&app.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            app.close().await;
            return Ok(EXIT_ERROR);
        }
    };
    let plan_record = match plan::load(app.store.as_ref(), id).await {
        Ok(p) => p,
        Err(e) => {
            app.close().await;
            return refused(e);
        }
    };
    let actor = super::local_actor();
    let env = ApplyEnv {
        store: app.store.as_ref(),
        sources: &app.sources,
        targets: &targets,
        invariant: app.invariant(&plan_record.invariant),
        actor: &actor,
        worker: format!("{}:{}:{}", actor.name, hostname(), std::process::id()),
    };
    opts.rate = rate.unwrap_or(Rate::default_for(plan_record.kind));
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after the action in flight (Ctrl-C again to abort)…");
            on_signal.cancel();
        }
    });
    let bar =
        (!opts.dry_run && format == Format::Table).then(|| progress_bar(plan_record.action_count));
    let draw = |p: &Progress| {
        if let Some(bar) = &bar {
            bar.set_position(p.finished());
            let skipped = p
                .by_status
                .get(&ActionStatus::Skipped)
                .copied()
                .unwrap_or(0);
            let failed = p.by_status.get(&ActionStatus::Failed).copied().unwrap_or(0);
            let parked = p.by_status.get(&ActionStatus::Parked).copied().unwrap_or(0);
            bar.set_message(format!(
                "{skipped} skipped, {parked} parked, {failed} failed"
            ));
        }
    };
    let result = apply::apply(&env, id, &opts, &cancel, &draw).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    targets.close().await;
    app.close().await;
    let report = match result {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let verb = if report.dry_run {
            "dry run of plan"
        } else {
            "plan"
        };
        println!("{verb} {} ({:.1} s):", report.plan, report.elapsed_secs);
        for (outcome, n) in &report.counts {
            println!("  {:<28}{n}", outcome.as_str().replace('_', " "));
            for s in report.samples.get(outcome).into_iter().flatten() {
                println!(
                    "      #{} {}  {}{}",
                    s.seq,
                    key(&s.key),
                    truncate(&s.action, 80),
                    s.detail
                        .as_ref()
                        .map(|d| format!(" — {}", truncate(d, 80)))
                        .unwrap_or_default()
                );
            }
        }
        if let Some(why) = &report.stopped {
            println!(
                "stopped: {}",
                super::output::with_next_step(why, report.next.clone())
            );
        }
        if let Some(v) = &report.verification {
            println!(
                "verified: {} of {} applied action(s) closed their violation ({} still open, {} could not be re-checked)",
                v.closed, v.checked, v.still_open, v.errors
            );
            if let Some(n) = v.remaining_in_window {
                println!(
                    "re-checked the replay window: {n} missing event(s) remain{}",
                    if n == 0 { " (the gap is closed)" } else { "" }
                );
            }
        }
        if !report.dry_run {
            println!("plan {} is {}", report.plan, report.state.as_str());
        }
    }
    let failed = report.counts.get(&Outcome::Failed).copied().unwrap_or(0);
    Ok(
        if failed > 0
            || report.stopped.is_some()
            || (!report.dry_run && report.state != PlanState::Applied)
        {
            EXIT_VIOLATIONS
        } else {
            EXIT_OK
        },
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub(super) async fn audit(config: Option<&Path>, args: AuditArgs) -> anyhow::Result<u8> {
    let config = match crate::config::Config::discover(config) {
        Ok(c) => c,
        Err(d) => {
            eprintln!("{d}");
            return Ok(EXIT_ERROR);
        }
    };
    let target = match (args.plan, &args.target) {
        (Some(p), _) => Some(format!("plan:{p}")),
        (None, Some(t)) => Some(t.clone()),
        (None, None) => None,
    };
    let store = crate::store::open(&config.store).await?;
    let entries = store
        .audit_log(
            &crate::store::AuditFilter {
                target: target.clone(),
                ..Default::default()
            },
            crate::store::AuditPage::After(args.after),
            args.limit,
        )
        .await;
    store.close().await;
    let entries = entries?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
        Format::Table => {
            if entries.is_empty() {
                println!("no audit entries match");
                return Ok(EXIT_OK);
            }
            let mut table = Table::new();
            table
                .load_preset(UTF8_FULL_CONDENSED)
                .set_header(["id", "at", "actor", "action", "target", "details"]);
            for e in &entries {
                table.add_row([
                    e.id.to_string(),
                    e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    e.actor.clone(),
                    e.action.clone(),
                    e.target.clone(),
                    truncate(&e.details.to_string(), 70),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(EXIT_OK)
}

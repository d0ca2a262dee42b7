//! The `trueup` commands: a thin layer over the library that prints and sets the exit code.
//!
//! Exit codes: 0 every invariant holds, 1 violations are open, 2 trueup could not do what was
//! asked (bad input, an unreachable database, a failed evaluation).

mod check;
mod demo_cmd;
mod events;
mod incident;
mod output;
mod plans;
mod replay;
mod serve_cmd;
mod silence;
mod trace;
mod validate;
mod violations;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::incident::ReportFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub const EXIT_OK: u8 = 0;
pub const EXIT_VIOLATIONS: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

/// Reconciliation and invariant monitoring: declare the business rules that must hold across
/// your systems, check them against the real databases, and keep a ledger of what is broken.
#[derive(Debug, Parser)]
#[command(
    name = "trueup",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Start with `trueup demo`: it builds a small shop and ledger with planted \
problems and checks them.\n\nExit codes: 0 all invariants hold, 1 violations are open, 2 error."
)]
pub struct Cli {
    /// Configuration file [default: ./trueup.yaml if present, else built-in defaults]
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "TRUEUP_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Log filter (e.g. `debug`, `trueup=trace`); logs go to stderr
    #[arg(
        long,
        global = true,
        env = "TRUEUP_LOG",
        default_value = "warn",
        value_name = "FILTER"
    )]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check invariant files for mistakes, reporting every one with file:line:column
    Validate(ValidateArgs),
    /// Evaluate invariants now and record the results in the ledger
    Check(CheckArgs),
    /// Run invariants on their schedules and serve /metrics, /healthz and /readyz
    Serve(ServeArgs),
    /// List violations from the ledger
    Violations(ViolationsArgs),
    /// List recent evaluation runs
    Runs(RunsArgs),
    /// List compensation plans
    Plans(PlansArgs),
    /// Create, show, approve or reject a compensation plan
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Apply an approved plan (or dry-run any plan), at a bounded rate, resumably
    Apply(ApplyArgs),
    /// Replay lost events over a time window (dry run unless --execute); pause, resume, cancel
    Replay(ReplayArgs),
    /// Incidents: open one, mark its phases, add notes, show its timeline
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// Silences: hold an alert's notices during planned work (add, list, expire)
    #[command(subcommand)]
    Silence(SilenceCommand),
    /// Show the append-only audit log
    Audit(AuditArgs),
    /// What happened to one event or key: captured, violations, actions, verification, incidents
    Trace(TraceArgs),
    /// An event log's events and what became of each (processed, missing, mismatched, replayed)
    Events(EventsArgs),
    /// Create a self-contained demo (SQLite shop and ledger with planted problems) and check it
    Demo(DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum SilenceCommand {
    /// Hold the notices of the alerts matching every matcher, for a while, with a reason
    Add {
        /// label=value, label!=value, label=~regex or label!~regex; labels are invariant,
        /// severity, owner and the invariants' own (repeat for several)
        #[arg(long = "matcher", short = 'm', value_name = "MATCHER", required = true)]
        matcher: Vec<String>,
        /// How long (e.g. 30m, 2h; at most 30d)
        #[arg(long = "for", value_name = "DURATION")]
        length: String,
        /// Why (shown with the silence and in the notices summarised after it)
        #[arg(long)]
        reason: String,
    },
    /// List active silences (with --all, those that ended too)
    List {
        #[arg(long)]
        all: bool,
        /// Output format
        #[arg(long, short = 'f', value_enum, default_value_t)]
        format: Format,
    },
    /// End a silence now
    Expire { id: i64 },
}

#[derive(Debug, Args)]
pub struct PlansArgs {
    /// Only this invariant's plans
    #[arg(long, short = 'i', value_name = "NAME")]
    pub invariant: Option<String>,
    /// At most this many, newest first
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Output format
    #[arg(long, short = 'f', value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Propose a plan now from the invariant's open violations
    Create {
        /// The invariant
        #[arg(long, short = 'i', value_name = "NAME")]
        invariant: String,
    },
    /// Show a plan as a diff: each statement with its bound values, each request, the evidence
    Show {
        id: i64,
        /// Show at most this many actions
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Output format
        #[arg(long, short = 'f', value_enum, default_value_t)]
        format: Format,
    },
    /// Approve a plan (as `cli:$USER`, or $TRUEUP_ACTOR)
    Approve {
        id: i64,
        /// The content hash you reviewed (its first 12 characters or more); refused if the
        /// plan is not that content
        #[arg(long, value_name = "HASH")]
        hash: Option<String>,
    },
    /// Reject a plan
    Reject {
        id: i64,
        /// Why (recorded in the audit log)
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The plan's id
    pub plan: i64,
    /// Walk every action and report what would happen, changing nothing
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many actions: N/s, N/m, N/h or `unlimited` [default: 5/s]
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,
    /// Stop after this many actions fail
    #[arg(long, default_value_t = crate::plan::apply::DEFAULT_MAX_FAILURES, value_name = "N")]
    pub max_failures: u64,
    /// How long an action claimed by an apply that died stays claimed before another apply
    /// takes it over [default: 60s]
    #[arg(long, value_name = "DURATION")]
    pub lease: Option<String>,
    /// Try actions that failed (or replayed events that were parked) in an earlier apply again
    #[arg(long)]
    pub retry_failed: bool,
    /// Replays: how many partitions to deliver at once (events of one partition always go in
    /// order, one at a time)
    #[arg(long, default_value_t = crate::plan::apply::DEFAULT_CONCURRENCY, value_name = "N")]
    pub concurrency: usize,
    /// Output format
    #[arg(long, short = 'f', value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReplayArgs {
    #[command(subcommand)]
    pub command: Option<ReplayCommand>,
    /// The reconcile invariant whose missing events to replay
    #[arg(long, short = 'i', value_name = "NAME")]
    pub invariant: Option<String>,
    /// Start of the window on the events' own time (RFC 3339); required
    #[arg(long, value_name = "TIME")]
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// End of the window, exclusive (RFC 3339); required
    #[arg(long, value_name = "TIME")]
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// Propose the live replay as a plan (to approve, then `trueup apply`) instead of a dry run
    #[arg(long)]
    pub execute: bool,
    /// Allow a window wider than the invariant's replay.max_window (needs --reason)
    #[arg(long)]
    pub wide: bool,
    /// Why a wide window is safe (recorded in the audit log)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// The rate to estimate the duration at: N/s, N/m, N/h or `unlimited` [default: 10/s]
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,
    /// Output format
    #[arg(long, short = 'f', value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Pause a replay plan: no action starts after it; those under way finish
    Pause { plan: i64 },
    /// Resume a paused replay plan and apply it
    Resume {
        plan: i64,
        /// At most this many events: N/s, N/m, N/h or `unlimited` [default: 10/s]
        #[arg(long, value_name = "RATE")]
        rate: Option<String>,
    },
    /// Cancel a replay plan: nothing more is delivered
    Cancel { plan: i64 },
}

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Open an incident over a window
    Open {
        /// e.g. 2026-11-25-billing-outage
        name: String,
        /// When it started (RFC 3339)
        #[arg(long, value_name = "TIME")]
        from: chrono::DateTime<chrono::Utc>,
        /// When it ended, if known (RFC 3339)
        #[arg(long, value_name = "TIME")]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// An invariant in scope (repeatable) [default: every invariant with violations in the window]
        #[arg(long, short = 'i', value_name = "NAME")]
        invariant: Vec<String>,
        /// One line on what happened
        #[arg(long)]
        summary: Option<String>,
    },
    /// List incidents, newest first
    List {
        #[arg(long, short = 'f', value_enum, default_value_t)]
        format: Format,
    },
    /// An incident with its phases and notes
    Show {
        name: String,
        #[arg(long, short = 'f', value_enum, default_value_t)]
        format: Format,
    },
    /// Mark that the response reached a phase: contain, restore, reconcile or verify
    Phase {
        name: String,
        phase: String,
        /// A note to go with it
        #[arg(long)]
        note: Option<String>,
    },
    /// Add a note to the incident's timeline
    Note { name: String, text: String },
    /// The closure report: what happened, what was repaired, what was verified, and whether
    /// the incident is ready to close. Evaluates the in-scope invariants first unless a
    /// recent evaluation after the last repair exists.
    Report {
        name: String,
        #[arg(long, short = 'f', value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
        /// Write it to FILE instead of printing it
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        verify: VerifyArgs,
    },
    /// Close the incident: refused while the report has blockers; the report is frozen
    Close {
        name: String,
        /// Close despite the blockers (approver or admin); needs --reason
        #[arg(long = "override", requires = "reason")]
        override_: bool,
        /// Why it closes despite the blockers (recorded in the report and the audit log)
        #[arg(long, requires = "override_")]
        reason: Option<String>,
        #[command(flatten)]
        verify: VerifyArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Do not evaluate anything: use the runs already recorded
    #[arg(long)]
    pub no_verify: bool,
    /// Evaluate again when the latest run after the last repair is older than this
    #[arg(long, value_name = "DURATION", default_value = "15m")]
    pub fresh_within: String,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries about this plan
    #[arg(long, value_name = "ID")]
    pub plan: Option<i64>,
    /// Only entries about this target (e.g. `invariant:payments-ledger`)
    #[arg(long, value_name = "TARGET", conflicts_with = "plan")]
    pub target: Option<String>,
    /// Only entries with an id greater than this (for paging)
    #[arg(long, value_name = "ID")]
    pub after: Option<i64>,
    /// At most this many, oldest first
    #[arg(long, default_value_t = 200)]
    pub limit: u32,
    /// Output format
    #[arg(long, short = 'f', value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// An invariant file or a folder of them [default: the config's invariants folder]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only this invariant (repeatable) [default: all]
    #[arg(long, short = 'i', value_name = "NAME")]
    pub invariant: Vec<String>,
    /// Output format
    #[arg(long, short = 'f', value_enum, default_value_t)]
    pub format: Format,
    /// Read every row, also of reconciles declared `incremental:` (which otherwise read only
    /// the rows changed since their last run)
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: `serve.listen` in the config, else 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum StatusArg {
    /// open or reopened
    #[default]
    Active,
    Open,
    Reopened,
    Resolved,
    All,
}

#[derive(Debug, Args)]
pub struct ViolationsArgs {
    /// Only this invariant (repeatable)
    #[arg(long, short = 'i', value_name = "NAME")]
    pub invariant: Vec<String>,
    /// Which violations
    #[arg(long, short = 's', value_enum, default_value_t)]
    pub status: StatusArg,
    /// Only this kind: missing, extra, duplicate, mismatch, check, transition
    #[arg(long, short = 'k', value_name = "KIND")]
    pub kind: Option<String>,
    /// Only violations seen at or after this time (RFC 3339, e.g. 2026-11-25T02:00:00Z)
    #[arg(long, value_name = "TIME")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only violations first seen before this time (RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only violations whose business event happened at or after this time (RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub event_from: Option<chrono::DateTime<chrono::Utc>>,
    /// Only violations whose business event happened before this time (RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub event_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Instead of listing, count them by event time (the outage window stands out)
    #[arg(long)]
    pub histogram: bool,
    /// The histogram's bucket width
    #[arg(
        long,
        default_value = "5m",
        value_name = "DURATION",
        requires = "histogram"
    )]
    pub bucket: String,
    /// At most this many
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Only violations with an id greater than this (for paging)
    #[arg(long, value_name = "ID")]
    pub after: Option<i64>,
    /// Output format
    #[arg(long, short = 'f', value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only this invariant
    #[arg(long, short = 'i', value_name = "NAME")]
    pub invariant: Option<String>,
    /// At most this many, newest first
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Output format
    #[arg(long, short = 'f', value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The event id or key (a JSON array for a key of several columns)
    pub key: String,
    /// Only this invariant's violations and actions
    #[arg(long, short = 'i', value_name = "NAME")]
    pub invariant: Option<String>,
    /// Output format
    #[arg(long, short = 'f', value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The event log (a name under `event_logs:` in trueup.yaml)
    pub log: String,
    /// Only events with this outcome: processed, missing, mismatched or replayed
    #[arg(long, value_parser = parse_outcome)]
    pub outcome: Option<crate::domain::EventOutcome>,
    /// Only this invariant's outcomes
    #[arg(long, short = 'i', value_name = "NAME")]
    pub invariant: Option<String>,
    /// Events captured after this sequence (the last one of the previous page)
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// At most this many events, oldest first
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Output format
    #[arg(long, short = 'f', value_enum, default_value_t)]
    pub format: Format,
}

fn parse_outcome(raw: &str) -> Result<crate::domain::EventOutcome, String> {
    crate::domain::EventOutcome::parse(raw)
        .ok_or_else(|| "one of processed, missing, mismatched, replayed".to_owned())
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder to create the demo in (re-created if it holds a previous demo)
    #[arg(long, default_value = "trueup-demo", value_name = "DIR")]
    pub dir: PathBuf,
    /// Instead of creating the demo, repair two of its planted problems and check again
    #[arg(long)]
    pub repair: bool,
}

/// The person running this command, as the audit log names them: `$TRUEUP_ACTOR`, else the
/// login name.
fn local_actor() -> crate::domain::Actor {
    let user = std::env::var("TRUEUP_ACTOR")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    crate::domain::Actor::local(&user)
}

pub fn run(cli: Cli) -> ExitCode {
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Validate(args) => validate::run(cli.config.as_deref(), args).await,
            Command::Check(args) => check::run(cli.config.as_deref(), args).await,
            Command::Serve(args) => serve_cmd::run(cli.config.as_deref(), args).await,
            Command::Violations(args) => violations::run(cli.config.as_deref(), args).await,
            Command::Runs(args) => violations::runs(cli.config.as_deref(), args).await,
            Command::Plans(args) => plans::list(cli.config.as_deref(), args).await,
            Command::Plan(cmd) => plans::command(cli.config.as_deref(), cmd).await,
            Command::Apply(args) => plans::apply(cli.config.as_deref(), args).await,
            Command::Audit(args) => plans::audit(cli.config.as_deref(), args).await,
            Command::Trace(args) => trace::run(cli.config.as_deref(), args).await,
            Command::Events(args) => events::run(cli.config.as_deref(), args).await,
            Command::Silence(cmd) => silence::run(cli.config.as_deref(), cmd).await,
            Command::Replay(args) => replay::run(cli.config.as_deref(), args).await,
            Command::Incident(cmd) => incident::run(cli.config.as_deref(), cmd).await,
            Command::Demo(args) => demo_cmd::run(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Opens everything a command needs. Mistakes in the user's files are printed as they are
/// (file:line: …) and become exit code 2; other failures are errors for the caller.
async fn open_app(config: Option<&std::path::Path>) -> anyhow::Result<Result<crate::app::App, u8>> {
    match crate::app::App::open(config).await {
        Ok(app) => {
            serve_demo_provider(&app.config).await;
            Ok(Ok(app))
        }
        Err(crate::app::AppError::Config(d) | crate::app::AppError::Rules(d)) => {
            eprintln!("{d}");
            Ok(Err(EXIT_ERROR))
        }
        Err(e) => Err(e.into()),
    }
}

/// On a demo folder, its payment provider's API must answer while this command runs.
async fn serve_demo_provider(config: &crate::config::Config) {
    if let Some(Err(e)) = crate::demo::serve_provider(config).await {
        eprintln!("warning: {e}");
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
